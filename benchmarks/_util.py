"""Small helpers shared by the benchmarks: timing and memory figures."""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any

import httpx
import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


REPEAT = 3  # best of three: the machine is shared, and the best run is the least disturbed


def timed_both(fn: Callable[[], Any], repeat: int = REPEAT) -> tuple[float, float]:
    """The shortest wall time and the shortest CPU time (this process's, threads included) of
    ``repeat`` runs of ``fn()``, in seconds: on a loaded machine only the CPU time holds."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def timed(fn: Callable[[], Any], repeat: int = REPEAT) -> float:
    """The shortest of ``repeat`` runs of ``fn()``, in seconds."""
    return timed_both(fn, repeat)[0]


@contextmanager
def emulator_process(platform: str, ack_delay: float = 0.0) -> Iterator[dict[str, Any]]:
    """``python -m trio_chatbridge emulate <platform>`` in a child process; yields its JSON line.

    A real server runs apart from its clients: so does the emulator, for the figures to be
    about the client side. ``ack_delay`` (seconds) delays the emulator's answers to replies.
    """
    command = ["-m", "trio_chatbridge", "emulate", platform]
    if ack_delay:
        command = ["-m", "benchmarks._serve", platform, str(ack_delay)]
    with subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            info: dict[str, Any] = json.loads(child.stdout.readline())
            yield info
        finally:
            child.terminate()


def best_of_fresh(
    platform: str,
    load: Callable[[dict[str, Any]], Awaitable[Any]],
    loops: Sequence[Callable[[dict[str, Any]], Awaitable[float]]],
    *,
    collector: bool = True,
    repeat: int = REPEAT,
) -> list[float]:
    """The best time of each loop over ``repeat`` rounds, the loops taking turns.

    Every run gets a fresh emulator process, loaded by ``load``: an emulator keeps what it
    was given and grows slower as it grows, which would favour whichever loop ran first.
    ``collector=False`` runs the loops with the garbage collector off (a diagnostic: how much
    of a gap is the collector walking the messages kept alive).
    """
    best = [float("inf")] * len(loops)
    for _ in range(repeat):
        for i, loop in enumerate(loops):
            with emulator_process(platform) as info:
                trio.run(load, info)
                gc.collect()
                if not collector:
                    gc.disable()
                try:
                    best[i] = min(best[i], trio.run(loop, info))
                finally:
                    gc.enable()
    return best


def versus_raw(
    platform: str,
    load: Callable[[dict[str, Any]], Awaitable[Any]],
    raw: Callable[[dict[str, Any]], Awaitable[float]],
    connector: Callable[[dict[str, Any]], Awaitable[float]],
    count: int,
    raw_label: str,
    floor: Callable[[dict[str, Any]], Awaitable[float]] | None = None,
    target: float = 0.8,
) -> list[tuple[str, str]]:
    """Report rows for a connector against its raw baseline: both times, the ratio (with the
    platform's ``target``), and the ratio with the collector off (see :func:`best_of_fresh`).

    ``floor``, if given, is the raw loop that also builds each message's :class:`Message` and
    keeps it: what any pipeline handing messages on must pay at least, so its ratio bounds
    the connector's.
    """
    loops = [raw, connector] if floor is None else [raw, connector, floor]
    times = best_of_fresh(platform, load, loops)
    off = best_of_fresh(platform, load, loops, collector=False)
    raw_s, ours_s = times[0], times[1]
    rows = [(raw_label, f"{raw_s:.3f} s  ({count / raw_s:,.0f}/s)")]
    if floor is not None:
        rows.append(
            (
                "same + a Message per message, kept (floor)",
                f"{times[2]:.3f} s: {raw_s / times[2]:.2f}x; collector off: {off[0] / off[2]:.2f}x",
            )
        )
    return [
        *rows,
        ("connector into the inbox", f"{ours_s:.3f} s  ({count / ours_s:,.0f}/s)"),
        ("ratio (connector / raw)", f"{raw_s / ours_s:.2f}x  (target >= {target}x)"),
        ("same, garbage collector off (diagnostic)", f"{off[0] / off[1]:.2f}x"),
    ]


async def post_burst(info: dict[str, Any], burst: list[dict[str, str]]) -> None:
    """Make users speak through the emulator's admin API (queued until a client takes them)."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(info["admin_url"] + "/messages", json=burst, timeout=120)
        answer.raise_for_status()


class CountingStore(cb.MemoryStore):
    """A MemoryStore that sets ``done`` once ``target`` messages reached the journal."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target
        self.journaled = 0
        self.done = trio.Event()

    async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
        added = await super().journal_add(messages)
        self.journaled += len(messages)
        if self.journaled >= self.target:
            self.done.set()
        return added


INBOX_DEADLINE = 120.0  # seconds before a run into the inbox fails; 20k messages take ~1 s


async def time_into_inbox(
    connector: Connector,
    store: CountingStore,
    clock: Callable[[], float] = time.perf_counter,
    deadline: float = INBOX_DEADLINE,
) -> float:
    """Seconds from the bridge's start until ``store`` has journaled its target, by ``clock``
    (``time.process_time``: this process's CPU over the same span).

    The debouncer holds every session (1 h window), so what is timed is the path from the
    platform into the inbox, not agent runs. The bridge's ``queue_size`` is the target: with
    the default 1,024, more chats than that fill the debouncer, which stops reading, and the
    puts wait for the window (20,000 WeCom callbacks from 10,000 users stall so in memory,
    where the puts are small). A run that has not got there within
    ``deadline`` seconds fails (a lost message would otherwise hang the benchmark).
    """

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    bridge = cb.Bridge(
        [connector],
        agent,
        store=store,
        debounce=cb.Debounce(window=3600.0, max_delay=None),
        queue_size=store.target,
    )
    with trio.fail_after(deadline):
        async with trio.open_nursery() as nursery:
            start = clock()
            await nursery.start(bridge.run)
            await store.done.wait()
            elapsed = clock() - start
            nursery.cancel_scope.cancel()
    return elapsed


def report(name: str, rows: list[tuple[str, str]]) -> None:
    """Print one benchmark's figures as an aligned block."""
    print(f"## {name}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print()


class OpcodeCensus:
    """A clock for the loops timed between two readings that also counts the Python bytecode
    instructions run between them, by function (``sys.settrace`` with opcode events, in this
    thread: where Trio runs every task). The count does not depend on the machine's load or
    caches, so one run tells where Python steps go per message; the traced run itself is
    some hundred times slower, its time meaningless."""

    def __init__(self) -> None:
        self.readings = 0
        self.counts: Counter[str] = Counter()

    def __call__(self) -> float:
        sys.settrace(self._trace if self.readings % 2 == 0 else None)
        self.readings += 1
        return time.process_time()

    def _trace(self, frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return self._count

    def _count(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            code = frame.f_code
            self.counts[f"{_short(code.co_filename)}:{code.co_name}"] += 1
        return self._count

    def rows(self, per: int, top: int = 8) -> list[tuple[str, str]]:
        """The total and the ``top`` functions' counts, each divided by ``per``."""
        total = sum(self.counts.values())
        return [("opcodes in all", f"{total / per:,.1f}")] + [
            (f"  {name}", f"{count / per:,.1f}") for name, count in self.counts.most_common(top)
        ]


def _short(path: str) -> str:
    """A code file's path from the package's or the project's folder on."""
    for mark in ("site-packages/", "/trio_chatbridge/", "/benchmarks/"):
        if mark in path:
            head = "" if mark == "site-packages/" else mark.strip("/") + "/"
            return head + path.rsplit(mark, 1)[1]
    return path.rsplit("/", 1)[-1]

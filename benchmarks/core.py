"""Benchmarks of the core: the whole pipeline, the debouncer alone, the SQLite journal."""

from __future__ import annotations

import gc
import math
import sqlite3
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from itertools import groupby, repeat
from operator import attrgetter
from pathlib import Path
from typing import Final

import msgspec
import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.testing import FakeConnector

from ._util import REPEAT, OpcodeCensus, peak_rss_mib, report, timed, timed_both

MESSAGES = 200_000
SESSIONS = 20_000
PAGE = 100  # messages per put, as a long-poll page would bring them
_ID: Final = attrgetter("id")
_CHAT: Final = attrgetter("chat.id")


def _messages(count: int, sessions: int, per_session_run: int = 10) -> list[cb.Message]:
    """``count`` messages; each session gets ``per_session_run`` in a row, like a burst."""
    fake = FakeConnector()
    return [
        fake.message(f"m{i}", chat=f"c{(i // per_session_run) % sessions}", id=str(i))
        for i in range(count)
    ]


class _PageConnector(Connector):
    """Puts pre-built messages into the inbox a page at a time, as fast as it is allowed."""

    def __init__(self, messages: list[cb.Message]) -> None:
        self.platform, self.account = "fake", "bot"
        self.messages = messages
        self.go = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.go.wait()
        for start in range(0, len(self.messages), PAGE):
            await self.ctx.put(self.messages[start : start + PAGE])
        await trio.sleep_forever()

    async def send(self, target: cb.Message, text: str) -> None:
        pass


def _core_bridge(connector: Connector, agent: cb.Agent) -> cb.Bridge:
    """The core benchmarks' bridge: every message due at once (window 0), MemoryStore."""
    return cb.Bridge(
        connectors=[connector],
        agent=agent,
        store=cb.MemoryStore(),
        debounce=cb.Debounce(window=0.0),
        concurrency=64,
    )


async def _through_bridge(messages: list[cb.Message], census: OpcodeCensus | None = None) -> int:
    """``messages`` through the bridge, a page at a time, to a no-op agent; returns how many
    batches it ran. ``census`` counts the Python steps from the first page to the last run."""
    handled = batches = 0
    done = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        nonlocal handled, batches
        handled += len(batch.messages)
        batches += 1
        if handled == len(messages):
            done.set()

    connector = _PageConnector(messages)
    bridge = _core_bridge(connector, agent)
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        if census is not None:
            census()
        connector.go.set()
        await done.wait()
        if census is not None:
            census()
        nursery.cancel_scope.cancel()
    return batches


def bench_pipeline_opcodes() -> None:
    """Python bytecode instructions per message through the pipeline, by function (one traced
    run): where its steps go, against the floor's dozen or so per message."""
    census = OpcodeCensus()
    trio.run(_through_bridge, _messages(MESSAGES, SESSIONS), census)
    report(
        f"pipeline opcodes per message: {MESSAGES // 1000}k messages, pages of {PAGE}, "
        f"{SESSIONS // 1000}k sessions (a batch of {MESSAGES // SESSIONS} messages each)",
        census.rows(MESSAGES, top=12),
    )


def bench_pipeline() -> None:
    """(a) 200k messages over 20k sessions, inbox -> debouncer -> dispatcher -> no-op agent."""
    messages = _messages(MESSAGES, SESSIONS)

    pages = [messages[start : start + PAGE] for start in range(0, MESSAGES, PAGE)]

    async def noop_agent(group: list[cb.Message]) -> None:
        pass

    async def raw_channel(tasks: bool = False, floor: bool = False, in_c: bool = False) -> None:
        """The same pages through one raw channel; the receiver splits each page into its
        sessions and runs the no-op agent once per session: the same batches, by hand.
        ``tasks``: each agent run in a task of its own, as a concurrent dispatcher needs.
        ``floor``: also the work no design can skip, in plain Python: a dedup index looked
        up and filled per message (by id, in a dict per account), a session looked up and
        appended to per message, a run per session. ``in_c``: the floor's per-message work
        done by the interpreter's C builtins instead (the ids by ``attrgetter``, the dedup
        by ``isdisjoint`` and ``update``, the sessions by ``groupby``, as this benchmark's
        pages hold each session's messages together): what a compiled floor would cost."""
        send, receive = trio.open_memory_channel[list[cb.Message]](16)
        seen: dict[tuple[str, str], dict[str, list[cb.Message]]] = {}

        async def produce() -> None:
            async with send:
                for page in pages:
                    await send.send(page)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive:
                async for page in receive:
                    groups: dict[str, list[cb.Message]] = {}
                    if in_c:
                        first = page[0]
                        index = seen.setdefault((first.platform, first.account), {})
                        ids = list(map(_ID, page))
                        assert index.keys().isdisjoint(ids)  # (no duplicates in this benchmark)
                        index.update(zip(ids, repeat(page)))
                        groups = {chat: list(run) for chat, run in groupby(page, _CHAT)}
                    elif floor:
                        first = page[0]
                        index = seen.setdefault((first.platform, first.account), {})
                        for message in page:
                            if message.id not in index:
                                index[message.id] = page
                                groups.setdefault(message.chat.id, []).append(message)
                    else:
                        for message in page:
                            groups.setdefault(message.chat.id, []).append(message)
                    for group in groups.values():
                        if tasks:
                            nursery.start_soon(noop_agent, group)
                        else:
                            await noop_agent(group)

    raw, raw_cpu = timed_both(lambda: trio.run(raw_channel))
    raw_tasks, raw_tasks_cpu = timed_both(lambda: trio.run(lambda: raw_channel(tasks=True)))
    _, floor_cpu = timed_both(lambda: trio.run(lambda: raw_channel(floor=True)))
    _, floor_tasks_cpu = timed_both(lambda: trio.run(lambda: raw_channel(tasks=True, floor=True)))
    _, floor_c_cpu = timed_both(lambda: trio.run(lambda: raw_channel(in_c=True)))
    batches = 0

    def pipeline() -> None:
        nonlocal batches
        batches = trio.run(_through_bridge, messages)

    piped, piped_cpu = timed_both(pipeline)
    report(
        "pipeline: 200k messages in 2k pages of 100, 20k sessions, MemoryStore, no-op agent",
        [
            (
                "raw channel, same pages, split by session by hand",
                f"{raw:.3f} s  ({MESSAGES / raw:,.0f} messages/s)",
            ),
            (
                "same, each agent run a task of its own",
                f"{raw_tasks:.3f} s  ({MESSAGES / raw_tasks:,.0f} messages/s)",
            ),
            ("bridge pipeline", f"{piped:.3f} s  ({MESSAGES / piped:,.0f} messages/s)"),
            ("batches / agent runs", f"{batches:,}"),
            ("ratio (pipeline / raw throughput)", f"{raw / piped:.2f}x  (target >= 0.7x)"),
            ("ratio (pipeline / raw with a task per run)", f"{raw_tasks / piped:.2f}x"),
            (
                "CPU per message: raw, raw with tasks, pipeline",
                f"{raw_cpu / MESSAGES * 1e6:.2f} us, {raw_tasks_cpu / MESSAGES * 1e6:.2f} us, "
                f"{piped_cpu / MESSAGES * 1e6:.2f} us",
            ),
            (
                "ratio by CPU (raw / pipeline; raw with tasks / pipeline)",
                f"{raw_cpu / piped_cpu:.2f}x; {raw_tasks_cpu / piped_cpu:.2f}x",
            ),
            (
                "floor (raw + dedup index + sessions): CPU per message, inline; task per run",
                f"{floor_cpu / MESSAGES * 1e6:.2f} us; {floor_tasks_cpu / MESSAGES * 1e6:.2f} us",
            ),
            (
                "best ratio any design reaches (raw / floor by CPU, inline; task per run)",
                f"{raw_cpu / floor_cpu:.2f}x; {raw_cpu / floor_tasks_cpu:.2f}x",
            ),
            (
                "floor with its per-message work in C builtins: CPU per message; raw / it",
                f"{floor_c_cpu / MESSAGES * 1e6:.2f} us; {raw_cpu / floor_c_cpu:.2f}x",
            ),
            ("peak RSS of the process", f"{peak_rss_mib():.0f} MiB"),
        ],
    )


PUT_MESSAGES = 60_000
PUT_PAGES = (100, 30, 1)  # messages per put: a WeChat page, a WeCom burst, one callback


class _TaskCPU(trio.abc.Instrument):
    """The CPU time of one task's steps (``task``'s, once set): what a call made from that
    task costs it, whatever other tasks do with what it handed over."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.cpu = 0.0
        self._start = 0.0

    def start(self) -> None:
        """Measure the calling task from now on (its current step included)."""
        self.task = trio.lowlevel.current_task()
        self._start = time.process_time()

    def stop(self) -> None:
        """Stop measuring (the calling task's current step included)."""
        self.after_task_step(trio.lowlevel.current_task())
        self.task = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self._start = time.process_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.cpu += time.process_time() - self._start


class _PutConnector(Connector):
    """Puts pre-built pages into the inbox, in the task whose CPU ``meter`` measures."""

    def __init__(self, pages: list[list[cb.Message]], meter: _TaskCPU) -> None:
        self.platform, self.account = "fake", "bot"
        self.pages, self.meter = pages, meter
        self.finished = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        self.meter.start()
        for page in self.pages:
            await self.ctx.put(page)
        self.meter.stop()
        self.finished.set()
        await trio.sleep_forever()

    async def send(self, target: cb.Message, text: str) -> None:
        pass


def _put_cpu(pages: list[list[cb.Message]], how: str) -> float:
    """CPU seconds of the task that hands ``pages`` over: by ``ctx.put`` into a bridge (a
    no-op agent, window 0, MemoryStore), or by a raw channel send of each page (``raw``),
    or by the send plus a dedup index filled per message, by id (``floor``)."""
    meter = _TaskCPU()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    async def bridged() -> None:
        connector = _PutConnector(pages, meter)
        bridge = _core_bridge(connector, agent)
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await connector.finished.wait()
            nursery.cancel_scope.cancel()

    async def raw(floor: bool) -> None:
        send, receive = trio.open_memory_channel[list[cb.Message]](1024)

        async def produce() -> None:
            seen: dict[str, list[cb.Message]] = {}
            meter.start()
            async with send:
                for page in pages:
                    if floor:
                        for message in page:
                            if message.id not in seen:
                                seen[message.id] = page
                    await send.send(page)
            meter.stop()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive:
                async for _ in receive:
                    pass

    trio.run(bridged if how == "put" else lambda: raw(how == "floor"), instruments=[meter])
    return meter.cpu


def bench_put() -> None:
    """(e) ``ctx.put`` alone, as connectors call it: the CPU of the calling task per message
    (journal, inbox, the hand-off to the debouncer) against a raw channel send of the same
    pages, and against that send plus a dedup index (the floor), in the same run."""
    messages = _messages(PUT_MESSAGES, PUT_MESSAGES // 10)
    rows: list[tuple[str, str]] = []
    for size in PUT_PAGES:
        pages = [messages[start : start + size] for start in range(0, PUT_MESSAGES, size)]
        best = {how: math.inf for how in ("raw", "floor", "put")}
        for _ in range(REPEAT):
            for how in best:  # taking turns, so that a burst of load hits each alike
                best[how] = min(best[how], _put_cpu(pages, how) / PUT_MESSAGES)
        raw, floor, put = best["raw"], best["floor"], best["put"]
        rows.append(
            (
                f"pages of {size}: CPU per message: raw send, floor, ctx.put",
                f"{raw * 1e6:.2f} us, {floor * 1e6:.2f} us, {put * 1e6:.2f} us",
            )
        )
        rows.append(
            (
                f"pages of {size}: ratio by CPU (raw / put; floor / put)",
                f"{raw / put:.2f}x; {floor / put:.2f}x",
            )
        )
    report(
        f"ctx.put: {PUT_MESSAGES:,} messages, CPU of the putting task (an Instrument per step)",
        rows,
    )


PROBE = 10_000  # messages timed once the debouncer holds N pending sessions


async def _probe_debouncer(pending: int, keep: list[cb.Debouncer]) -> float:
    """Fill a debouncer (1 h window) with ``pending`` sessions, then time PROBE more messages.

    Each probe message opens a new session, the costlier case (a heap push); returns CPU
    seconds.
    """
    messages = _messages(pending + PROBE, pending + PROBE, per_session_run=1)
    pages = [tuple(messages[i : i + PAGE]) for i in range(0, len(messages), PAGE)]
    split = pending // PAGE
    # Its bound (100k by default) would stop it short of the probe: it has to hold them all.
    debouncer = cb.Debouncer(cb.Debounce(window=3600.0, max_delay=None), max_pending=len(messages))
    keep.append(debouncer)
    send_in, recv_in = trio.open_memory_channel[tuple[cb.Message, ...]](math.inf)
    send_out, _recv_out = trio.open_memory_channel[cb.Batch](math.inf)

    async def filed(count: int) -> None:
        # The debouncer has no "idle" event to wait on: yield until it has filed every page.
        while debouncer.pending_sessions < count:
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(debouncer.run, recv_in, send_out)
        for page in pages[:split]:
            send_in.send_nowait(page)
        await filed(pending)
        start = time.process_time()  # CPU: the machine may be shared
        for page in pages[split:]:
            send_in.send_nowait(page)
        await filed(pending + PROBE)
        seconds = time.process_time() - start
        nursery.cancel_scope.cancel()
    return seconds


def bench_debouncer() -> None:
    """(b) The debouncer alone with 1k, 10k, 100k pending sessions: time and memory."""
    rows: list[tuple[str, str]] = []
    per_message: dict[int, float] = {}
    for pending in (1_000, 10_000, 100_000):
        kept: list[cb.Debouncer] = []
        seconds = min(trio.run(_probe_debouncer, pending, kept) for _ in range(REPEAT))
        kept.clear()
        gc.collect()
        tracemalloc.start()
        messages = _messages(pending, pending, per_session_run=1)
        with_messages = tracemalloc.get_traced_memory()[0]
        trio.run(_fill_only, messages, kept)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - with_messages
        tracemalloc.stop()
        del messages
        kept.clear()
        per_message[pending] = seconds / PROBE
        rows.append(
            (
                f"{pending:>7,} pending sessions",
                f"{seconds / PROBE * 1e6:6.2f} us/message, {held / pending:6.0f} B/pending "
                "session (messages themselves not counted)",
            )
        )
    ratio = per_message[100_000] / per_message[1_000]
    rows.append(("100k vs 1k time per message", f"{ratio:.2f}x (target <= 2x)"))
    one, ten = _tracked(TRACKED, 1), _tracked(TRACKED, 10)
    rows.append(
        (
            "GC-tracked objects held (10k sessions)",
            f"{one / TRACKED:.2f} per pending session, {(ten - one) / (9 * TRACKED):.3f} per "
            "kept message (target <= 1)",
        )
    )
    report(f"debouncer alone: {PROBE:,} new sessions timed while N are pending (window 1 h)", rows)


async def _fill_only(
    messages: list[cb.Message], keep: list[cb.Debouncer], sessions: int | None = None
) -> None:
    """Leave a debouncer holding ``sessions`` pending sessions (default: one per message)."""
    debouncer = cb.Debouncer(cb.Debounce(window=3600.0, max_delay=None), max_pending=len(messages))
    keep.append(debouncer)
    send_in, recv_in = trio.open_memory_channel[tuple[cb.Message, ...]](math.inf)
    send_out, _recv_out = trio.open_memory_channel[cb.Batch](math.inf)
    send_in.send_nowait(tuple(messages))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(debouncer.run, recv_in, send_out)
        while debouncer.pending_sessions < (sessions or len(messages)):
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()


TRACKED = 10_000  # pending sessions for the count of GC-tracked objects


def _tracked(sessions: int, per_session: int) -> int:
    """GC-tracked objects a debouncer holds for ``sessions`` pending sessions of
    ``per_session`` messages each (the messages themselves built before the count)."""
    messages = _messages(sessions * per_session, sessions, per_session_run=per_session)
    kept: list[cb.Debouncer] = []
    gc.collect()
    before = len(gc.get_objects())
    trio.run(_fill_only, messages, kept, sessions)
    gc.collect()
    return len(gc.get_objects()) - before


def bench_sqlite_journal() -> None:
    """(c) SQLiteStore.journal_add against a bare executemany of the same rows."""
    count = 50_000
    messages = _messages(count, count // 10)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)

        def bare() -> None:
            (base / "bare.db").unlink(missing_ok=True)
            db = sqlite3.connect(base / "bare.db", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE journal (seq INTEGER PRIMARY KEY, platform TEXT, account TEXT, "
                "message_id TEXT, body TEXT, received_at REAL, "
                "UNIQUE (platform, account, message_id))"
            )
            for start in range(0, count, PAGE):
                page = messages[start : start + PAGE]
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO journal (platform, account, message_id, body, received_at) "
                    "VALUES (?, ?, ?, ?, 0)",
                    [(m.platform, m.account, m.id, msgspec.json.encode(m).decode()) for m in page],
                )
                db.execute("COMMIT")
            db.close()

        async def store() -> None:
            async with cb.SQLiteStore(base / "store.db") as journal:
                for start in range(0, count, PAGE):
                    await journal.journal_add(messages[start : start + PAGE])

        def fresh_store() -> None:
            for leftover in base.glob("store.db*"):
                leftover.unlink()
            trio.run(store)

        raw = timed(bare)
        ours = timed(fresh_store)
    report(
        f"SQLite journal: {count:,} messages in pages of {PAGE}, one transaction a page",
        [
            ("bare executemany, same rows", f"{raw:.3f} s  ({count / raw:,.0f} rows/s)"),
            ("SQLiteStore.journal_add", f"{ours:.3f} s  ({count / ours:,.0f} messages/s)"),
            ("ratio (journal / bare throughput)", f"{raw / ours:.2f}x"),
            ("peak RSS of the process", f"{peak_rss_mib():.0f} MiB"),
        ],
    )


WRITERS = 16  # concurrent agent runs by default
WRITTEN = 8_000
CONCURRENT_DEADLINE = 120.0  # seconds one run of the writers may take (~1 s when well)


def bench_sqlite_concurrent() -> None:
    """(d) Concurrent writers, each journaling one message and marking it done, as agent runs
    and connectors do: CPU per message on SQLiteStore against MemoryStore, same run."""
    messages = _messages(WRITTEN, WRITTEN, per_session_run=1)

    async def write(store: cb.Store) -> None:
        async def writer(first: int) -> None:
            for message in messages[first::WRITERS]:
                await store.journal_add([message])
                await store.journal_done([message])

        with trio.fail_after(CONCURRENT_DEADLINE):  # a wedged writer fails, not hangs
            async with store, trio.open_nursery() as nursery:
                for first in range(WRITERS):
                    nursery.start_soon(writer, first)

    def cpu(make: Callable[[Path], cb.Store]) -> float:
        best = float("inf")
        for _ in range(REPEAT):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.process_time()  # the worker thread's CPU included
                trio.run(write, make(Path(tmp) / "store.db"))
                best = min(best, time.process_time() - start)
        return best / WRITTEN

    memory = cpu(lambda _: cb.MemoryStore())
    sqlite = cpu(cb.SQLiteStore)
    report(
        f"SQLite group commits: {WRITERS} concurrent writers, each message added then marked done",
        [
            ("MemoryStore", f"{memory * 1e6:.0f} us CPU per message"),
            ("SQLiteStore", f"{sqlite * 1e6:.0f} us CPU per message"),
            ("ratio (SQLite / memory CPU)", f"{sqlite / memory:.1f}x"),
        ],
    )


BENCHMARKS = {
    "pipeline": bench_pipeline,
    "pipeline-opcodes": bench_pipeline_opcodes,
    "put": bench_put,
    "debouncer": bench_debouncer,
    "sqlite": bench_sqlite_journal,
    "sqlite-concurrent": bench_sqlite_concurrent,
}

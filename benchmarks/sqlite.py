"""Where a message's SQLite journal cost goes, in the bridge's own pattern.

A producer journals pages (as connectors put them), each message is then "run" (some Python
work on the event loop, as an agent's run and its reply are) and handed to a marker task
that marks everything finished since its last write done, as the dispatcher does. The same
workload on ``MemoryStore`` is the baseline: SQLite's cost is its CPU per message minus the
memory store's, the worker thread's CPU included (``time.process_time`` counts all threads).
The store commits a small group commit on the event loop; the same store with every commit in
its worker thread (as before the sixth session) shows what the thread hops cost. The
transactions and statements per message are counted with the connection's trace callback,
and the bytes a message writes to the WAL in a run of its own with no checkpoint.

``sqlite-bot``: the WeCom whole bot (``benchmarks/bot.py``) on both stores in one process,
taking turns, and where SQLite's share goes: the store's statements built, run on the event
loop, and the worker thread's calls (checkpoints and the commits they carry), by thread CPU.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

import trio_chatbridge as cb
from trio_chatbridge.stores import _sqlite

from . import bot
from ._util import REPEAT, emulator_process, report
from .core import _messages

MESSAGES = 6_000
PAGES = (1, 30, 100)  # messages per journal_add: a lone callback, a WeCom burst, a WeChat page
WORK = 400  # loop iterations of Python work per message "run" (some tens of microseconds)
DEADLINE = 120.0  # seconds a run may take before the benchmark gives up


class _Counts:
    """Transactions and statements a connection ran (its trace callback)."""

    def __init__(self) -> None:
        self.transactions = self.statements = 0
        self._open = False

    def __call__(self, sql: str) -> None:
        if sql.startswith("BEGIN"):
            self.transactions += 1
            self._open = True
        elif sql in ("COMMIT", "ROLLBACK"):
            self._open = False
        elif sql.startswith("PRAGMA"):
            pass  # the worker thread's busy timeout, set and reset around its calls
        else:
            self.statements += 1
            self.transactions += not self._open  # autocommit: a transaction of its own


def _work() -> int:
    return sum(i * i for i in range(WORK))


async def _bridge_pattern(store: cb.Store, messages: list[cb.Message], page: int) -> None:
    finished: list[cb.Message] = []
    due = trio.Event()
    produced = trio.Event()

    async def marker() -> None:
        nonlocal due
        while True:
            if not finished:
                if produced.is_set():
                    return
                due = trio.Event()
                await due.wait()
            batch = finished[:]
            finished.clear()
            await store.journal_done(batch)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(marker)
            for start in range(0, len(messages), page):
                chunk = messages[start : start + page]
                await store.journal_add(chunk)
                for message in chunk:  # each one run, then handed to the marker
                    _work()
                    finished.append(message)
                    due.set()
                    await trio.lowlevel.checkpoint()
            produced.set()
            due.set()


def _cpu(make: Callable[[Path], cb.Store], page: int, counts: _Counts | None) -> float:
    """CPU seconds per message of one run on a fresh store."""
    return _run(make, page, counts)[0]


def _run(
    make: Callable[[Path], cb.Store], page: int, counts: _Counts | None = None
) -> tuple[float, int]:
    """CPU seconds per message of one run on a fresh store, and the size of its WAL file
    at the end (read before the store closes: closing the last connection checkpoints)."""
    messages = _messages(MESSAGES, MESSAGES, per_session_run=1)
    wal = 0

    async def main(store: cb.Store) -> None:
        nonlocal wal
        async with store:
            if isinstance(store, cb.SQLiteStore) and counts is not None:
                assert store._db is not None
                store._db.set_trace_callback(counts)
            await _bridge_pattern(store, messages, page)
            if isinstance(store, cb.SQLiteStore):
                wal = (await trio.Path(store.path + "-wal").stat()).st_size

    with tempfile.TemporaryDirectory() as tmp:
        store = make(Path(tmp) / "journal.db")
        start = time.process_time()  # the worker thread's CPU included
        trio.run(main, store)
        return (time.process_time() - start) / MESSAGES, wal


def _wal_bytes(page: int) -> float:
    """Bytes a message writes to the WAL (every page a commit touched, a frame each): a run
    with the store's checkpoints put off, untimed."""
    original = _sqlite.CHECKPOINT_AFTER
    _sqlite.CHECKPOINT_AFTER = 10**12  # type: ignore[misc]
    try:
        return _run(cb.SQLiteStore, page)[1] / MESSAGES
    finally:
        _sqlite.CHECKPOINT_AFTER = original  # type: ignore[misc]


def _threaded(path: Path) -> cb.SQLiteStore:
    """A store that commits in its worker thread only (as before the sixth session)."""
    store = cb.SQLiteStore(path)
    store._inline = False  # read when it opens: its connection checkpoints by itself
    return store


def bench_sqlite_journal() -> None:
    """Per page size: memory, SQLite, SQLite committing in its thread only, medians of
    ``REPEAT`` alternated."""
    stores: dict[str, Callable[[Path], cb.Store]] = {
        "memory": lambda _: cb.MemoryStore(),
        "sqlite": cb.SQLiteStore,
        "thread": _threaded,
    }
    rows: list[tuple[str, str]] = []
    for page in PAGES:
        runs: dict[str, list[float]] = {name: [] for name in stores}
        counts = _Counts()
        for _ in range(REPEAT):
            for name, make in stores.items():
                runs[name].append(_cpu(make, page, counts if name == "sqlite" else None))
        cpu = {name: statistics.median(r) for name, r in runs.items()}
        added = cpu["sqlite"] - cpu["memory"]
        threaded = cpu["thread"] - cpu["memory"]
        per = MESSAGES * REPEAT
        rows.append(
            (
                f"pages of {page}",
                f"memory {cpu['memory'] * 1e6:5.1f} us/msg; SQLite adds {added * 1e6:5.1f} "
                f"(every commit in a thread {threaded * 1e6:5.1f}) = "
                f"{cpu['sqlite'] / cpu['memory']:.2f}x memory; "
                f"{counts.transactions / per:.3f} transactions, "
                f"{counts.statements / per:.3f} statements, "
                f"{_wal_bytes(page):,.0f} WAL bytes per message",
            )
        )
    report(
        f"SQLite journal in the bridge's pattern: {MESSAGES:,} messages, each run then marked "
        "done by a marker task (CPU per message, medians)",
        rows,
    )


BOT_MESSAGES = 4_000  # WeCom callbacks a bot run answers (as ``wecom-bot``)
BOT_RUNS = 5  # turns of each store: the whole bot's CPU moves ±50 µs a message between runs


class _Parts:
    """The SQLite store's work in a bot run, by thread CPU (``time.thread_time``), wrapped
    around its module's functions: statements built, run on the event loop, and every call
    in the worker thread (``_patiently``: checkpoints, and the commits that follow them)."""

    def __init__(self) -> None:
        self.seconds = {"built": 0.0, "on the loop": 0.0, "in the thread": 0.0}
        self._loop = threading.get_ident()

    def _timed(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            if name != "on the loop" or threading.get_ident() == self._loop:
                self.seconds[name] += time.thread_time() - start

    @contextmanager
    def wrapped(self) -> Iterator[None]:
        originals = {n: getattr(_sqlite, n) for n in ("_statements", "_execute", "_patiently")}
        parts = {"_statements": "built", "_execute": "on the loop", "_patiently": "in the thread"}
        for name, original in originals.items():
            setattr(_sqlite, name, functools.partial(self._timed, parts[name], original))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(_sqlite, name, original)


def _bot_cpu(sqlite: bool, parts: _Parts | None = None) -> float:
    """CPU seconds per message of one WeCom bot run (the emulator in its own process)."""
    run = bot._bridged(bot._wecom_connector, sqlite=sqlite)
    with emulator_process("wecom") as info:
        trio.run(bot._load, info, BOT_MESSAGES)
        start = time.process_time()
        with parts.wrapped() if parts else contextlib.nullcontext():
            trio.run(bot._bounded, run, info, BOT_MESSAGES)
        return (time.process_time() - start) / BOT_MESSAGES


def bench_sqlite_bot() -> None:
    """The WeCom whole bot on memory and on SQLite, taking turns ``BOT_RUNS`` times, ack 0 ms."""
    memory: list[float] = []
    sqlite: list[float] = []
    parts = _Parts()
    for _ in range(BOT_RUNS):
        memory.append(_bot_cpu(sqlite=False))
        sqlite.append(_bot_cpu(sqlite=True, parts=parts))
    mem, sql = statistics.median(memory), statistics.median(sqlite)
    pairs = sorted((b - a) * 1e6 for a, b in zip(memory, sqlite, strict=True))
    per = BOT_MESSAGES * BOT_RUNS
    rows = [
        ("MemoryStore", f"{mem * 1e6:5.0f} us CPU/message (runs {_us(memory)})"),
        ("SQLiteStore", f"{sql * 1e6:5.0f} us CPU/message (runs {_us(sqlite)})"),
        (
            "SQLite - memory",
            f"{(sql - mem) * 1e6:+5.0f} us/message, median of pairs "
            f"{statistics.median(pairs):+.0f} (pairs {', '.join(f'{p:+.0f}' for p in pairs)})",
        ),
        *(
            (f"  store: {name}", f"{seconds / per * 1e6:5.1f} us/message (thread CPU)")
            for name, seconds in parts.seconds.items()
        ),
    ]
    report(f"WeCom whole bot, {BOT_MESSAGES:,} callbacks, ack 0 ms: SQLite against memory", rows)


def _us(seconds: list[float]) -> str:
    return ", ".join(f"{s * 1e6:.0f}" for s in seconds)


LEASES = 1_000


def bench_sqlite_leases() -> None:
    """A lease round of 1,000 accounts on a file: ``SQLiteStore.acquire_leases`` and
    ``renew_leases`` (one transaction) against the base class's way, one call (and one
    transaction, one commit) per lease, on the same store in the same run: medians of three."""
    names = [f"weixin:acct{i}" for i in range(LEASES)]

    async def round_trip(batched: bool) -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as folder:
            async with cb.SQLiteStore(Path(folder) / "leases.db") as store:
                take = (
                    store.acquire_leases
                    if batched
                    else functools.partial(cb.Store.acquire_leases, store)
                )
                renew = (
                    store.renew_leases
                    if batched
                    else functools.partial(cb.Store.renew_leases, store)
                )
                start = time.perf_counter()
                assert all(await take(names, "p1", 30.0))
                taken = time.perf_counter()
                assert all(await renew(names, "p1", 30.0))
                return taken - start, time.perf_counter() - taken

    runs = {
        batched: [trio.run(round_trip, batched) for _ in range(REPEAT)] for batched in (False, True)
    }
    rows = []
    for at, what in enumerate(("acquire_leases", "renew_leases")):
        one_each, batched = (statistics.median(r[at] for r in runs[b]) for b in (False, True))
        rows.append(
            (
                f"{what} of {LEASES:,}: one call each (base class), one transaction",
                f"{one_each:.3f} s, {batched:.4f} s: {one_each / batched:,.0f}x",
            )
        )
    report(f"sqlite leases: a round of {LEASES:,} on a file (medians of {REPEAT})", rows)


BENCHMARKS = {
    "sqlite-journal": bench_sqlite_journal,
    "sqlite-bot": bench_sqlite_bot,
    "sqlite-leases": bench_sqlite_leases,
}

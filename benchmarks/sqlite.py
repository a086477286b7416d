"""Where a message's SQLite journal cost goes, in the bridge's own pattern.

A producer journals pages (as connectors put them), each message is then "run" (some Python
work on the event loop, as an agent's run and its reply are) and handed to a marker task
that marks everything finished since its last write done, as the dispatcher does. The same
workload on ``MemoryStore`` is the baseline: SQLite's cost is its CPU per message minus the
memory store's, the worker thread's CPU included (``time.process_time`` counts all threads).
The store commits a small group commit on the event loop; the same store with every commit in
its worker thread (as before the sixth session) shows what the thread hops cost. The
transactions and statements per message are counted with the connection's trace callback.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

import trio_chatbridge as cb

from ._util import REPEAT, report
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
    messages = _messages(MESSAGES, MESSAGES, per_session_run=1)

    async def main(store: cb.Store) -> None:
        async with store:
            if isinstance(store, cb.SQLiteStore) and counts is not None:
                assert store._db is not None
                store._db.set_trace_callback(counts)
            await _bridge_pattern(store, messages, page)

    with tempfile.TemporaryDirectory() as tmp:
        store = make(Path(tmp) / "journal.db")
        start = time.process_time()  # the worker thread's CPU included
        trio.run(main, store)
        return (time.process_time() - start) / MESSAGES


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
                f"{counts.statements / per:.3f} statements per message",
            )
        )
    report(
        f"SQLite journal in the bridge's pattern: {MESSAGES:,} messages, each run then marked "
        "done by a marker task (CPU per message, medians)",
        rows,
    )


BENCHMARKS = {"sqlite-journal": bench_sqlite_journal}

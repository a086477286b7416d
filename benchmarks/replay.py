"""What replaying costs at start on a large SQLite journal: the store's query for pending rows
(a scan of the journal's unique index, every row checked against the outcomes) against a
prototype of the floor, a low-water mark (the same query from the oldest pending row on,
which a schema with ``AUTOINCREMENT`` would make safe), in the same run on one file. The
journal holds handled rows and, at its end, one pending row in 100 of the newest 1%."""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
from contextlib import closing
from pathlib import Path

import trio

import trio_chatbridge as cb
from trio_chatbridge.stores import _sqlite
from trio_chatbridge.stores._codec import encode_message
from trio_chatbridge.testing import FakeConnector

from ._util import REPEAT, report

SIZES = (100_000, 1_000_000)  # journal rows
DEADLINE = 120.0  # seconds one query may take before the benchmark gives up
LOW_WATER = (
    "SELECT seq, body FROM journal AS j WHERE seq >= ? AND NOT EXISTS "
    "(SELECT 1 FROM outcomes AS o WHERE o.seq = j.seq) ORDER BY seq"
)
"""The prototype: the pending rows from ``seq`` ``?`` on (the mark a low-water scheme keeps)."""


def _journal(path: Path, rows: int) -> int:
    """A version 2 file of ``rows`` journal rows, as the store writes it; returns the oldest
    pending row's ``seq`` (the low-water mark)."""

    async def create() -> None:
        async with cb.SQLiteStore(path):
            pass

    trio.run(create)
    body = encode_message(FakeConnector("bot").message("text", id="m" * 20))  # ~300 bytes
    recent = rows - rows // 100
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO journal (seq, platform, account, message_id, body, received_at) "
            "VALUES (?, 'fake', 'bot', ?, ?, ?)",
            ((i, f"m{i:08x}", body, i) for i in range(1, rows + 1)),
        )
        db.executemany(
            "INSERT INTO outcomes (seq, state) VALUES (?, 'done')",
            ((i,) for i in range(1, rows + 1) if not (i > recent and i % 100 == 0)),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (low,) = db.execute(
            "SELECT min(seq) FROM journal WHERE seq NOT IN (SELECT seq FROM outcomes)"
        ).fetchone()
    return int(low)


def _cpu(path: Path, sql: str, params: tuple[int, ...]) -> tuple[float, int]:
    """CPU seconds of one run of ``sql`` on a fresh connection (its cache cold, the OS's
    warm), and the rows it found."""
    with closing(sqlite3.connect(path)) as db:
        deadline = time.monotonic() + DEADLINE
        db.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)  # aborts it
        db.execute("PRAGMA user_version").fetchone()
        start = time.process_time()
        found = len(db.execute(sql, params).fetchall())
        return time.process_time() - start, found


def bench_sqlite_replay() -> None:
    """Both queries at each size, alternated ``REPEAT`` times; medians of CPU time."""
    lines: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in SIZES:
            path = Path(tmp) / f"j{rows}.db"
            low = _journal(path, rows)
            store: list[float] = []
            mark: list[float] = []
            for _ in range(REPEAT):
                cpu, found = _cpu(path, _sqlite._PENDING, ())
                store.append(cpu)
                cpu, same = _cpu(path, LOW_WATER, (low,))
                mark.append(cpu)
                assert found == same, (found, same)
            ours, floor = statistics.median(store), statistics.median(mark)
            lines.append(
                (
                    f"{rows:,} rows, {found:,} pending",
                    f"store {ours * 1e3:.1f} ms CPU, low-water mark {floor * 1e3:.1f} ms "
                    f"({ours / floor:.0f}x)",
                )
            )
    report("SQLite replay at start: the pending rows' query (medians of CPU)", lines)


BENCHMARKS = {"sqlite-replay": bench_sqlite_replay}

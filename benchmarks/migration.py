"""How long opening a version 1 SQLite file takes (its migration to version 2), against the
migration as first written, which also dropped the journal's ``state`` and ``error`` columns
(a rewrite of every row), in the same run on copies of one file. While a store migrates it
holds the file's write lock: another process opening the file waits that long."""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import trio

import trio_chatbridge as cb
from trio_chatbridge.stores import _sqlite
from trio_chatbridge.stores._codec import encode_message
from trio_chatbridge.testing import FakeConnector

from ._util import REPEAT, report

ROWS = 300_000  # journal rows of the version 1 file, one in 100 pending
DEADLINE = 120.0  # seconds one migration may take before the benchmark gives up
VERSION_1 = """
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY,
    platform TEXT NOT NULL,
    account TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    received_at REAL NOT NULL,
    UNIQUE (platform, account, message_id)
);
CREATE INDEX journal_pending ON journal (seq) WHERE state = 'pending';
CREATE TABLE kv (
    platform TEXT NOT NULL,
    account TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (platform, account, key)
);
CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (grp, member)
);
PRAGMA user_version = 1;
"""
"""The schema of version 1, as trio_chatbridge wrote it before version 2 (docs/changelog.md);
the tests build version 1 files with it too."""

DROPS = ("ALTER TABLE journal DROP COLUMN state", "ALTER TABLE journal DROP COLUMN error")


def _version_1(path: Path) -> None:
    body = encode_message(FakeConnector("bot").message("text", id="m" * 20))  # ~300 bytes
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(VERSION_1)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO journal (platform, account, message_id, body, state, received_at) "
            "VALUES ('fake', 'bot', ?, ?, ?, ?)",
            ((f"m{i}", body, "pending" if i % 100 == 0 else "done", i) for i in range(ROWS)),
        )
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _store_opens(path: Path) -> None:
    async def main() -> None:
        with trio.fail_after(DEADLINE):
            async with cb.SQLiteStore(path):
                pass

    trio.run(main)


def _dropping(path: Path) -> None:
    """The migration with its two DROP COLUMNs, in one transaction, as a store opened it."""
    deadline = time.monotonic() + DEADLINE
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)  # aborts it
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        for statement in (*_sqlite._MIGRATION, *DROPS):
            db.execute(statement)
        db.execute("COMMIT")


def _timed(migrate: Callable[[Path], None], original: Path, copy: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds (all threads) of ``migrate`` on a fresh copy, and its WAL's bytes."""
    for stale in (copy, Path(f"{copy}-wal"), Path(f"{copy}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copy(original, copy)
    with closing(sqlite3.connect(copy)) as keeper:  # open: the WAL outlives migrate's close
        keeper.execute("PRAGMA user_version").fetchone()
        wall, cpu = time.perf_counter(), time.process_time()
        migrate(copy)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, Path(f"{copy}-wal").stat().st_size


def bench_sqlite_migration() -> None:
    """Both migrations on copies of one file, alternated ``REPEAT`` times, medians."""
    runs: dict[str, list[tuple[float, float, int]]] = {"store": [], "dropping": []}
    with tempfile.TemporaryDirectory() as tmp:
        original, copy = Path(tmp) / "v1.db", Path(tmp) / "copy.db"
        _version_1(original)
        size = os.path.getsize(original)
        for _ in range(REPEAT):
            runs["store"].append(_timed(_store_opens, original, copy))
            runs["dropping"].append(_timed(_dropping, original, copy))
    wall, cpu, wal = (
        {k: statistics.median(r[i] for r in v) for k, v in runs.items()} for i in (0, 1, 2)
    )
    report(
        f"SQLite migration of a version 1 file: {ROWS:,} journal rows, {size / 1e6:.0f} MB "
        "(medians)",
        [
            (
                name,
                f"{wall[name]:.2f} s wall ({wall[name] / wall['dropping']:.2f}x dropping), "
                f"{cpu[name]:.2f} s CPU, {wal[name] / 1e6:.0f} MB of WAL",
            )
            for name in runs
        ],
    )


BENCHMARKS = {"sqlite-migration": bench_sqlite_migration}

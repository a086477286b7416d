"""The SQLite store's schema: version 2 (outcomes in a table of their own; 3 adds values'
expiry, tests/test_store_ttl.py), and the migration of files written by version 1 (a
``state`` column and a partial index of pending rows)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import trio_chatbridge as cb
from benchmarks.migration import VERSION_1
from trio_chatbridge.stores import _sqlite
from trio_chatbridge.stores._base import JournalState
from trio_chatbridge.stores._codec import encode_message
from trio_chatbridge.testing import FakeConnector

fake = FakeConnector("bot")


# The version 1 file's journal: (message id, state, error, received_at), in seq order.
ROWS: list[tuple[str, JournalState, str | None, float]] = [
    ("p1", "pending", None, 10.0),
    ("d1", "done", None, 11.0),
    ("f1", "failed", "agent raised ValueError", 12.0),
    ("p2", "pending", None, 13.0),
    ("d2", "done", None, 14.0),
]


def _version_1_file(path: Path) -> None:
    """A file as version 1 left it: pending, done and failed rows, a cursor."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(VERSION_1)
        for message_id, state, error, received_at in ROWS:
            db.execute(
                "INSERT INTO journal (platform, account, message_id, body, state, error, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    "fake",
                    "bot",
                    message_id,
                    encode_message(_message(message_id)),
                    state,
                    error,
                    received_at,
                ),
            )
        db.execute("INSERT INTO kv VALUES ('fake', 'bot', '_cursor', 'c7')")


def _message(message_id: str) -> cb.Message:
    message = fake.message(f"text of {message_id}", id=message_id)
    return msgspec.structs.replace(message, timestamp=1_700_000_000.0)  # the same each call


def _layout(path: Path) -> tuple[int, list[str], list[str]]:
    """The file's schema version, its tables and indexes, and the journal's columns."""
    with closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        names = [name for (name,) in db.execute("SELECT name FROM sqlite_master ORDER BY name")]
        columns = [row[1] for row in db.execute("PRAGMA table_info(journal)")]
    return version, names, columns


async def test_a_version_1_file_keeps_its_pending_messages_and_history(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    async with cb.SQLiteStore(path) as store:
        assert await store.journal_pending() == [_message("p1"), _message("p2")]  # in order
        for message_id, state, error, received_at in ROWS:
            entry = await store.journal_entry(("fake", "bot", message_id))
            assert entry == cb.JournalEntry(_message(message_id), state, error, received_at)
        assert await store.journal_add([_message("d1"), _message("new")]) == [False, True]
        await store.journal_done([_message("p1")])
        await store.journal_done([_message("f1")])  # a replayed failure, handled this time
        assert await store.journal_pending() == [_message("p2"), _message("new")]
        assert await store.get_cursor("fake", "bot") == "c7"
        assert await store.journal_prune(12.5) == 3  # d1, f1, p1: handled, accepted before
    version, names, columns = _layout(path)
    assert version == _sqlite.SCHEMA_VERSION == 3
    assert "journal_pending" not in names and "outcomes" in names
    assert "state" in columns and "error" in columns  # left unused: dropping rewrote the journal
    async with cb.SQLiteStore(path) as reopened:  # version 3 now: opened as it is
        assert await reopened.journal_pending() == [_message("p2"), _message("new")]
        entry = await reopened.journal_entry(("fake", "bot", "d2"))
        assert entry is not None and entry.state == "done"


async def test_an_older_version_still_running_on_a_migrated_file_cannot_mark_runs_done(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    async with cb.SQLiteStore(path) as store:
        await store.journal_pending()
    with closing(sqlite3.connect(path, isolation_level=None)) as old:  # version 1's statements
        with pytest.raises(sqlite3.IntegrityError, match="older trio_chatbridge is still running"):
            old.execute(
                "UPDATE journal SET state = ?, error = ? "
                "WHERE platform = ? AND account = ? AND message_id = ?",
                ("done", None, "fake", "bot", "p1"),
            )
        old.execute(  # its adds still go in, pending
            "INSERT INTO journal (platform, account, message_id, body, received_at) "
            "VALUES (?, ?, ?, ?, ?)",
            ("fake", "bot", "late", encode_message(_message("late")), 20.0),
        )
    async with cb.SQLiteStore(path) as store:
        assert await store.journal_pending() == [_message("p1"), _message("p2"), _message("late")]


async def test_a_migration_that_fails_midway_leaves_the_version_1_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    before = _layout(path)
    # Fails after the outcomes were copied, the pending index dropped and a trigger made.
    failing = (*_sqlite._MIGRATION[:4], "SELECT * FROM no_such_table")
    monkeypatch.setattr(_sqlite, "_MIGRATION", failing)
    with pytest.raises(cb.StoreError, match=r"cannot open .* no such table"):
        await cb.SQLiteStore(path).open()
    assert _layout(path) == before  # rolled back whole: still version 1
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT message_id, state, error, received_at FROM journal ORDER BY seq")
        assert [tuple(row) for row in rows] == ROWS
    monkeypatch.undo()
    async with cb.SQLiteStore(path) as store:  # the next start migrates it
        assert await store.journal_pending() == [_message("p1"), _message("p2")]


async def test_two_processes_opening_a_version_1_file_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    one, two = cb.SQLiteStore(path), cb.SQLiteStore(path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one.open)
            nursery.start_soon(two.open)
    try:
        for store in (one, two):
            assert await store.journal_pending() == [_message("p1"), _message("p2")]
            entry = await store.journal_entry(("fake", "bot", "f1"))
            assert entry is not None and entry.error == "agent raised ValueError"
    finally:
        await one.aclose()
        await two.aclose()


@pytest.fixture
def migrating(tmp_path: Path) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A version 1 file, and another process's connection to it midway through its
    migration: the file's write lock held, the migration run, not committed."""
    path = tmp_path / "old.db"
    _version_1_file(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        for statement in _sqlite._MIGRATION:
            db.execute(statement)
        db.execute(f"PRAGMA user_version={_sqlite.SCHEMA_VERSION}")
        yield path, db


async def test_a_store_opening_while_another_process_migrates_waits_for_it(
    migrating: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A migration longer than a call's busy timeout (5 s; 10 ms in this test): the store
    # opening meanwhile waits up to the opening's own, longer bound (2 s in this test).
    path, first = migrating
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_MS", 10)
    monkeypatch.setattr(_sqlite, "OPEN_BUSY_TIMEOUT_MS", 2_000)
    second = cb.SQLiteStore(path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(second.open)
            await trio.sleep(0.2)  # real time: SQLite's busy wait, in the worker thread
            first.execute("COMMIT")
    try:
        assert await second.journal_pending() == [_message("p1"), _message("p2")]
    finally:
        await second.aclose()


async def test_a_store_that_waited_its_bound_for_a_migration_says_what_to_do(
    migrating: tuple[Path, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "OPEN_BUSY_TIMEOUT_MS", 50)
    locked = r"held its write lock for over .* Start again"
    with trio.fail_after(10), pytest.raises(cb.StoreError, match=locked):
        await cb.SQLiteStore(migrating[0]).open()


@pytest.mark.parametrize(
    ("made_with", "error", "layout"),
    [
        # A newer trio_chatbridge's file: refused with what to do.
        ("PRAGMA user_version = 4", r"schema version 4, newer .* Upgrade", (4, [], [])),
        # Another application's file with a table of our names.
        (
            "CREATE TABLE journal (entry TEXT)",
            r"not a trio_chatbridge store: .*\(journal\), left untouched. Give",
            (0, ["journal"], ["entry"]),
        ),
        # Another application's file: our tables were added to it, silently.
        (
            "CREATE TABLE users (name TEXT)",
            r"other.db is not a trio_chatbridge store: .*\(users\), left untouched",
            (0, ["users"], []),
        ),
    ],
)
async def test_a_file_the_store_cannot_use_is_refused_untouched(
    tmp_path: Path, made_with: str, error: str, layout: tuple[int, list[str], list[str]]
) -> None:
    path = tmp_path / "other.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(made_with)
    with pytest.raises(cb.StoreError, match=error):
        await cb.SQLiteStore(path).open()
    assert _layout(path) == layout


async def test_a_message_accepted_after_a_prune_emptied_the_journal_is_pending(
    tmp_path: Path,
) -> None:
    # Pruning the newest row frees its seq for the next message: its outcome must go with
    # the row, or the next message would read as done and never be run.
    first, second = _message("1"), _message("2")
    async with cb.SQLiteStore(tmp_path / "j.db", done_linger=0, wall_clock=lambda: 5.0) as store:
        await store.journal_add([first])
        await store.journal_done([first])
        assert await store.journal_prune(10.0) == 1
        assert await store.journal_add([second]) == [True]
        assert await store.journal_pending() == [second]
        entry = await store.journal_entry(("fake", "bot", "2"))
        assert entry is not None and entry.state == "pending"


async def test_a_store_refused_at_once_by_a_writer_outside_wal_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process writing to the file in rollback-journal mode (the sqlite3 shell, say) makes
    SQLite refuse the opening at once, not after the opening's wait: the error says which."""
    monkeypatch.setattr(_sqlite, "OPEN_BUSY_TIMEOUT_MS", 5_000)  # bounds the test before the fix
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path, threaded=False):
        pass
    with closing(sqlite3.connect(path, isolation_level=None)) as shell:
        assert shell.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
        shell.execute("BEGIN IMMEDIATE")
        shell.execute(
            "INSERT INTO kv (platform, account, key, value) VALUES ('weixin', 'bot', 'k', 'v')"
        )
        with pytest.raises(cb.StoreError) as raised:
            await cb.SQLiteStore(path).open()
        shell.execute("ROLLBACK")
    message = str(raised.value)
    assert "gave up after 0.0 s of the 5 s it may wait" in message
    assert "outside WAL mode" in message and "End that transaction" in message
    assert "held its write lock" not in message
    assert message.endswith("SQLite said: database is locked")


async def test_a_lock_wait_that_returned_at_once_is_waited_out_not_called_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SQLite built without ``usleep`` waits in whole seconds, so a busy timeout under one
    returns at once: an open meeting another process's write in WAL mode (an ordinary wait)
    was reported as SQLite refusing to wait ("gave up after 0.0 s ... outside WAL mode").
    Here every busy timeout is 0: the open tries again until the writer is done."""
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path, threaded=False):
        pass
    attempts = 0
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO kv (platform, account, key, value) VALUES ('weixin', 'bot', 'k', 'v')"
        )

        class NoWait(sqlite3.Connection):
            """A connection whose busy timeouts return at once, as without usleep."""

            def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
                nonlocal attempts
                if sql.startswith("PRAGMA busy_timeout="):
                    sql = "PRAGMA busy_timeout=0"
                elif sql == "BEGIN IMMEDIATE":
                    attempts += 1
                    if attempts == 3:  # the writer commits while the store tries again
                        writer.execute("COMMIT")
                return super().execute(sql, *args)

        connect = functools.partial(sqlite3.connect, factory=NoWait)
        monkeypatch.setattr(sqlite3, "connect", connect)  # the store's connections
        with trio.fail_after(10):
            async with cb.SQLiteStore(path, threaded=False) as store:
                assert await store.get("weixin", "bot", "k") == "v"
    assert attempts >= 3


async def test_a_lock_waited_for_while_switching_to_wal_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file already in WAL mode, held exclusively by another process for a moment (as a
    closing process checkpointing it does): the switch to WAL waits its attempt's 0.2 s and
    meets the lock. That is an ordinary wait, tried again, not SQLite refusing to wait on a
    file outside WAL mode (the open failed at once, saying so)."""
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path, threaded=False) as store:
        await store.set("weixin", "bot", "k", "v")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("COMMIT")  # the exclusive lock stays held until the connection closes
    switches = 0

    class Counting(sqlite3.Connection):
        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            nonlocal switches
            if sql == "PRAGMA journal_mode=WAL":
                switches += 1
                if switches == 3:  # the holder lets go while the store tries again
                    holder.close()
            return super().execute(sql, *args)

    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, factory=Counting))
    try:
        with trio.fail_after(10):
            async with cb.SQLiteStore(path, threaded=False) as store:
                assert await store.get("weixin", "bot", "k") == "v"
    finally:
        holder.close()
    assert switches >= 3

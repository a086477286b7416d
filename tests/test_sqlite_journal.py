"""The SQLite journal's group commits: lingering done-marks, and few statements per turn."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given, settings

import trio_chatbridge as cb
from trio_chatbridge.stores import _sqlite, journal_key
from trio_chatbridge.stores._sqlite import DONE_LINGER, _commit, _execute, _statements, _Write
from trio_chatbridge.testing import FakeConnector

fakes = {account: FakeConnector(account) for account in ("x", "y")}
fake = fakes["x"]


def _trace(store: cb.SQLiteStore) -> list[str]:
    """The first word of every statement the store's connection runs from now on."""
    seen: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(lambda sql: seen.append(sql.split()[0]))
    return seen


async def _state(store: cb.Store, message: cb.Message) -> str | None:
    entry = await store.journal_entry((message.platform, message.account, message.id))
    return None if entry is None else entry.state


async def test_a_done_mark_lingers_and_shares_the_next_add_s_commit(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    first, second = fake.message("1", id="1"), fake.message("2", id="2")
    async with cb.SQLiteStore(tmp_path / "j.db", threaded=False) as store:
        await store.journal_add([first])
        trace = _trace(store)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.journal_done, [first])
                await trio.testing.wait_all_tasks_blocked()
                assert trace == []  # lingering: nothing written yet (the read below: a SELECT)
                assert await _state(store, first) == "pending"
                await store.journal_add([second])  # takes the done-mark along
        assert trio.current_time() == 0  # no linger ran out: the clock never moved
        assert trace[1:] == ["BEGIN", "INSERT", "INSERT", "COMMIT"]  # one transaction, in order
        assert [await _state(store, m) for m in (first, second)] == ["done", "pending"]


async def test_a_lone_done_mark_commits_once_its_linger_is_over(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    message = fake.message("1", id="1")
    finished = trio.Event()

    async def mark() -> None:
        await store.journal_done([message], error="boom")
        finished.set()

    async with cb.SQLiteStore(tmp_path / "j.db", threaded=False) as store:
        await store.journal_add([message])
        trace = _trace(store)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mark)
                await trio.testing.wait_all_tasks_blocked()  # lingering
                mock_clock.jump(DONE_LINGER * 0.9)
                await trio.testing.wait_all_tasks_blocked()
                assert not finished.is_set()
                mock_clock.jump(DONE_LINGER * 0.2)
        assert finished.is_set()
        assert trace == ["INSERT"]  # one statement: its own transaction, no BEGIN/COMMIT
        entry = await store.journal_entry(("fake", "x", "1"))
        assert entry is not None and (entry.state, entry.error) == ("failed", "boom")


async def test_a_done_mark_does_not_linger_behind_a_commit_under_way(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    # The clock never moves here: a done-mark that lingered would wait forever (and the
    # test's real-time bound would fail it). Behind a commit under way, the next turn comes
    # as soon as that commit ends, so lingering would only delay it.
    first, second = fake.message("1", id="1"), fake.message("2", id="2")
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path) as store:
        await store.journal_add([first])
        other = sqlite3.connect(path, isolation_level=None)  # as another process would
        other.execute("BEGIN IMMEDIATE")  # holds the file's write lock
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.journal_add, [second])
                await trio.testing.wait_all_tasks_blocked()  # its commit waits in the thread
                nursery.start_soon(store.journal_done, [first])
                await trio.testing.wait_all_tasks_blocked()
                other.execute("COMMIT")
        finally:
            other.close()
        assert trio.current_time() == 0
        assert [await _state(store, m) for m in (first, second)] == ["done", "pending"]


async def test_a_done_mark_cancelled_while_it_lingers_writes_nothing(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    message = fake.message("1", id="1")
    async with cb.SQLiteStore(tmp_path / "j.db", threaded=False) as store:
        await store.journal_add([message])
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def mark() -> None:
                    with scope:
                        await store.journal_done([message])

                nursery.start_soon(mark)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        await store.journal_add([fake.message("2", id="2")])  # a later commit: not taken along
        assert await _state(store, message) == "pending"


async def test_no_linger_commits_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    message = fake.message("1", id="1")
    async with cb.SQLiteStore(tmp_path / "j.db", threaded=False, done_linger=0) as store:
        await store.journal_add([message])
        await store.journal_done([message])
        assert trio.current_time() == 0
        assert await _state(store, message) == "done"


async def test_a_done_mark_of_more_ids_than_a_statement_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "IDS_PER_STATEMENT", 3)
    messages = [fakes[a].message(str(i), id=str(i)) for i in range(8) for a in ("x", "y")]
    async with cb.SQLiteStore(tmp_path / "j.db", done_linger=0) as store:
        await store.journal_add(messages)
        trace = _trace(store)
        await store.journal_done(messages[:-1])
        assert trace.count("INSERT") == 6  # 8 ids of x and 7 of y, 3 a statement
        assert trace[0] == "BEGIN" and trace[-1] == "COMMIT"  # all in one transaction
        assert [await _state(store, m) for m in messages] == ["done"] * 15 + ["pending"]


messages = st.builds(
    lambda account, id: fakes[account].message(id, id=id),
    st.sampled_from(["x", "y"]),
    st.sampled_from(["a", "b", "c"]),
)
writes = st.lists(
    st.tuples(st.sampled_from([None, "done", "failed"]), st.lists(messages, max_size=4)),
    max_size=8,
)


@contextmanager
def _database() -> Iterator[sqlite3.Connection]:
    with closing(_connected(":memory:")) as db:
        yield db


def _connected(path: str | Path) -> sqlite3.Connection:
    """A connection to ``path`` set up as the store's own (its schema created)."""
    store = cb.SQLiteStore(path)
    db = store._connect()
    assert store._attempt(db, 1.0) is None
    return db


def _table(db: sqlite3.Connection) -> list[Any]:
    return db.execute(
        "SELECT platform, account, message_id, coalesce(state, 'pending'), error "
        "FROM journal LEFT JOIN outcomes USING (seq) ORDER BY seq"
    ).fetchall()


@settings(max_examples=60, deadline=None)
@given(writes=writes)
def test_one_group_commit_writes_what_the_writes_one_by_one_would(
    writes: list[tuple[str | None, list[cb.Message]]],
) -> None:
    """Merging a turn's done-marks into few statements keeps the callers' order: done before
    add, done then failed, one account's ids and another's, duplicates within one write."""

    def turn() -> list[_Write]:
        made: list[_Write] = []
        for mark, batch in writes:
            if mark is None:
                made.append(_Write(batch, None, 1.0))
            else:
                made.append(_Write(batch, "done" if mark == "done" else "failed", mark))
        return made

    grouped, one_by_one = turn(), turn()
    with _database() as together, _database() as apart:
        _commit(grouped, together)
        for write in one_by_one:
            _commit([write], apart)
        assert _table(together) == _table(apart)
    assert [w.added for w in grouped] == [w.added for w in one_by_one]
    assert all(w.error is None for w in grouped)


steps = st.lists(st.just(None) | st.lists(messages, max_size=7), max_size=8)


@settings(max_examples=80, deadline=None)
@given(steps=steps)
def test_an_add_tells_its_new_messages_from_duplicates(
    steps: list[list[cb.Message] | None],
) -> None:
    """Rows all new (counted), or some not (found by their seq range), in statements of
    three rows; a duplicate within one add; seqs used again after a prune emptied the
    journal (a step of None: everything marked done, then pruned)."""

    async def main() -> None:
        seen: set[tuple[str, str, str]] = set()
        async with cb.SQLiteStore(":memory:", threaded=False, done_linger=0) as store:
            for step in steps:
                if step is None:
                    await store.journal_done(await store.journal_pending())
                    await store.journal_prune(float("inf"))
                    seen.clear()
                    continue
                expected = []
                for message in step:
                    expected.append(journal_key(message) not in seen)
                    seen.add(journal_key(message))
                assert await store.journal_add(step) == expected
            assert {journal_key(m) for m in await store.journal_pending()} == seen

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_sqlite, "ROWS_PER_STATEMENT", 3)
        trio.run(main)


def _threads(store: cb.SQLiteStore) -> list[tuple[str, bool]]:
    """Every statement the store's connection runs from now on: its first word, and whether
    it ran on the event loop's thread (False: in a worker thread)."""
    seen: list[tuple[str, bool]] = []
    loop = threading.get_ident()
    assert store._db is not None
    store._db.set_trace_callback(
        lambda sql: seen.append((sql.split()[0], threading.get_ident() == loop))
    )
    return seen


async def test_a_small_group_commit_runs_on_the_event_loop(tmp_path: Path) -> None:
    messages = [fake.message(str(i), id=str(i)) for i in range(3)]
    async with cb.SQLiteStore(tmp_path / "j.db", done_linger=0) as store:
        statements = _threads(store)
        assert await store.journal_add(messages) == [True] * 3
        await store.journal_done(messages[:2])
        # No thread hop. An add is a transaction (its rows are told apart after its INSERT);
        # a lone done-mark is a statement of its own.
        assert statements == [(w, True) for w in ("BEGIN", "INSERT", "COMMIT", "INSERT")]
        assert [await _state(store, m) for m in messages] == ["done", "done", "pending"]
    async with cb.SQLiteStore(tmp_path / "j.db") as reopened:  # durable, as in the thread
        assert await reopened.journal_pending() == messages[2:]


async def test_a_large_group_commit_runs_in_the_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_sqlite, "INLINE_ROWS", 2)
    messages = [fake.message(str(i), id=str(i)) for i in range(3)]
    async with cb.SQLiteStore(tmp_path / "j.db", done_linger=0) as store:
        statements = _threads(store)
        await store.journal_add(messages[:2])  # as large as the loop takes
        await store.journal_add(messages)  # larger
        inserts = [on_loop for word, on_loop in statements if word == "INSERT"]
        assert inserts == [True, False]
        assert [m.id for m in await store.journal_pending()] == ["0", "1", "2"]


async def test_with_synchronous_full_every_commit_runs_in_the_worker_thread(
    tmp_path: Path,
) -> None:
    message = fake.message("1", id="1")
    async with cb.SQLiteStore(tmp_path / "j.db", synchronous="FULL", done_linger=0) as store:
        statements = _threads(store)
        await store.journal_add([message])
        await store.journal_done([message])
        assert statements == [("INSERT", False), ("INSERT", False)]  # an fsync each


async def test_a_commit_that_finds_the_file_locked_waits_for_it_in_the_worker_thread(
    tmp_path: Path,
) -> None:
    # Another connection (as another process would) holds the write lock: the loop's attempt
    # is refused at once and rolled back, the turn is written in the thread once the lock is
    # free, and each caller gets its own answer once (the refused attempt returned nothing).
    first, second = fake.message("1", id="1"), fake.message("2", id="2")
    path = tmp_path / "j.db"
    results: list[list[bool]] = []
    async with cb.SQLiteStore(path, done_linger=60) as store:  # the add takes it along
        await store.journal_add([first])
        statements = _threads(store)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def add() -> None:
                        results.append(await store.journal_add([first, second]))

                    nursery.start_soon(store.journal_done, [first])
                    await trio.testing.wait_all_tasks_blocked()  # lingering, queued
                    nursery.start_soon(add)
                    await trio.testing.wait_all_tasks_blocked()
                    assert results == []  # waiting for the lock, in the thread
                    other.execute("COMMIT")
        finally:
            other.close()
        assert results == [[False, True]]
        # One turn: refused at its BEGIN IMMEDIATE on the loop (nothing written), then whole
        # in the thread: the done-mark, the add, and (a duplicate in it) its new rows read.
        ran = [(word, loop) for word, loop in statements if word != "PRAGMA"]
        assert ran == [("BEGIN", True)] + [
            (w, False) for w in ("BEGIN", "INSERT", "INSERT", "SELECT", "COMMIT")
        ]
        assert [await _state(store, m) for m in (first, second)] == ["done", "pending"]


def test_a_refused_turn_of_several_statements_is_rolled_back_whole(tmp_path: Path) -> None:
    message = fake.message("1", id="1")
    path = tmp_path / "j.db"
    db = _connected(path)
    with closing(db), closing(sqlite3.connect(path, isolation_level=None)) as other:
        db.execute("PRAGMA busy_timeout=0")  # as the store's own, on the event loop
        other.execute("BEGIN IMMEDIATE")
        turn = [_Write([message], None, 1.0), _Write([message], "done", None)]
        assert not _execute(turn, _statements(turn), db, wait=False)
        assert [w.added for w in turn] == [[], []]
        assert [w.error for w in turn] == [None, None]  # not failed: to be run again
        assert _table(db) == []
        other.execute("COMMIT")
        assert _execute(turn, _statements(turn), db, wait=False)  # free now: written
        assert turn[0].added == [True]
        assert _table(db) == [("fake", "x", "1", "done", None)]


async def test_commits_on_the_event_loop_are_checkpointed_in_the_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store's connection never checkpoints by itself (a checkpoint syncs the file): every
    # CHECKPOINT_AFTER rows, the next commit goes to the thread and checkpoints first, so the
    # WAL's restart (which syncs its header) is that commit's too, and the WAL stays bounded.
    monkeypatch.setattr(_sqlite, "CHECKPOINT_AFTER", 50)
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path, done_linger=0) as store:
        statements = _threads(store)
        for page in range(40):
            await store.journal_add([fake.message(str(page * 10 + i)) for i in range(10)])
        # Each commit counts its rows and 4: after four (56 > 50), the fifth checkpoints first.
        inserts = [on_loop for word, on_loop in statements if word == "INSERT"]
        assert inserts == [not (i and i % 4 == 0) for i in range(40)]
        pragmas = [s for s in statements if s[0] == "PRAGMA"]
        assert pragmas == [("PRAGMA", False)] * 9 * 3  # busy timeout set, checkpoint, reset
        frames = (path.parent / "j.db-wal").stat().st_size / (24 + 4096)  # header + page
        assert frames < 100  # its most at any time: 36 here, 228 with no checkpoint
        assert len(await store.journal_pending()) == 400


async def test_two_stores_on_one_file_never_both_take_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As two processes sharing the file: commits on the loop, checkpoints and refused commits
    # retried in the thread interleave; every message is new to exactly one of them.
    monkeypatch.setattr(_sqlite, "CHECKPOINT_AFTER", 20)  # often in the thread
    path = tmp_path / "j.db"
    taken: list[str] = []

    async def writer(store: cb.SQLiteStore, offset: int) -> None:
        for page in range(30):
            batch = [fake.message(str(i), id=str(i)) for i in range(page * 4, page * 4 + 8)]
            batch = batch[offset:] + batch[:offset]
            added = await store.journal_add(batch)
            taken.extend(m.id for m, new in zip(batch, added, strict=True) if new)
            await store.journal_done([m for m, new in zip(batch, added, strict=True) if new])

    async with cb.SQLiteStore(path) as one, cb.SQLiteStore(path) as two:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, one, 0)
                nursery.start_soon(writer, two, 3)
        assert sorted(taken, key=int) == [str(i) for i in range(30 * 4 + 4)]  # each once
        assert await one.journal_pending() == []


async def test_writes_outside_the_journal_are_checkpointed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle bridge on a shared file writes only leases, heartbeats and cursors: they count
    # towards the next checkpoint as journal rows do, so the WAL stays bounded with no journal
    # traffic at all.
    monkeypatch.setattr(_sqlite, "CHECKPOINT_AFTER", 50)
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path) as store:
        statements: list[str] = []
        assert store._db is not None
        store._db.set_trace_callback(statements.append)
        assert await store.acquire_lease("weixin:bot", "me", 30.0)
        for i in range(100):
            assert await store.renew_lease("weixin:bot", "me", 30.0)
            await store.heartbeat("bridges", "me", 30.0)
            await store.set("weixin", "bot", "cursor", str(i))
            await store.set_many("weixin", "bot", {f"k{i % 7}": str(i), "gone": None})
        await store.release_lease("weixin:bot", "me")
        # Every write here changes one row and counts 5 (a row, and 4 a commit), so
        # from the eleventh on, every tenth write checkpoints first: 40 times in the 402.
        assert statements.count("PRAGMA wal_checkpoint(PASSIVE)") == 40
        frames = (path.parent / "j.db-wal").stat().st_size / (24 + 4096)  # header + page
        assert frames < 60  # its most at any time: 30 here, 428 with no checkpoint
        assert await store.get("weixin", "bot", "cursor") == "99"
        assert await store.lease_remaining("weixin:bot") == 0.0

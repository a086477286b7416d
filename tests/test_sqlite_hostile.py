"""SQLiteStore under hostile conditions: a file another connection keeps locked past the busy
wait, a damaged file (another application's: test_sqlite_schema.py). Each is a clear
StoreError naming the file and what to do; nothing handled is lost (it replays) and the
bridge keeps running.

These tests run on Trio's real clock (the store's worker thread and SQLite's busy wait are
real time), with a debounce window of 0 and a busy wait cut to a few milliseconds: nothing in
them sleeps."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge._metrics import bridge_registry
from trio_chatbridge.stores import _sqlite
from trio_chatbridge.testing import FakeConnector, running_bridge

BUSY_WAIT_MS = 20  # the store's busy wait in these tests, instead of 5 s


@pytest.fixture(autouse=True)
def _short_busy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sqlite, "BUSY_TIMEOUT_MS", BUSY_WAIT_MS)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds ``path``'s write lock for the block."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        yield
        other.execute("ROLLBACK")
    finally:
        other.close()


class _Seen(logging.Handler):
    """Sets ``event`` when the dispatcher logs a refused done-mark; keeps the messages."""

    def __init__(self) -> None:
        super().__init__()
        self.event = trio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "not marked done" in record.getMessage():
            self.messages.append(record.getMessage())
            self.event.set()


@pytest.mark.parametrize("threaded", [True, False])
async def test_done_mark_refused_by_a_locked_file_keeps_the_bridge_and_replays(
    tmp_path: Path, threaded: bool
) -> None:
    """A done-mark the locked file refuses (the lock held past the busy wait) is logged
    with the path and what to do, and counted; the bridge goes on answering; the message
    stays pending and replays, exactly once more, at the next start. It crashed the bridge
    with a bare ``sqlite3.OperationalError``."""
    path = tmp_path / "j.db"
    seen = _Seen()
    logging.getLogger("trio_chatbridge.dispatch").addHandler(seen)
    handled: list[str] = []
    lock = locked(path)

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.text for m in batch.messages)
        await reply.send(batch.text)
        if batch.text == "first":
            lock.__enter__()  # its done-mark, after this run, finds the file locked

    def bridge(chat: FakeConnector) -> cb.Bridge:
        store = cb.SQLiteStore(path, threaded=threaded)
        return cb.Bridge([chat], agent, store=store, debounce=cb.Debounce(window=0))

    try:
        with trio.fail_after(10):
            chat = FakeConnector()
            async with running_bridge(bridge(chat), fail_on_agent_error=False) as running:
                await chat.say("first")
                await seen.event.wait()
                lock.__exit__(None, None, None)
                await chat.say("second", chat="other")  # still running, the file usable again
                assert (await chat.next_reply()).text == "first"
                assert (await chat.next_reply()).text == "second"
                assert running.stats().other["journal.unmarked"] == 1
            assert handled == ["first", "second"]
            (warning,) = seen.messages
            assert str(path) in warning and "another connection held" in warning

            again = FakeConnector()
            async with running_bridge(bridge(again), fail_on_agent_error=False) as restarted:
                assert (await again.next_reply()).text == "first"  # replayed, once
                assert restarted.stats().replayed == 1
            assert handled == ["first", "second", "first"]
            async with cb.SQLiteStore(path) as store:
                assert await store.journal_pending() == []
    finally:
        logging.getLogger("trio_chatbridge.dispatch").removeHandler(seen)


async def test_put_refused_by_a_locked_file_writes_nothing_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    """A journal write the locked file refuses raises a StoreError naming the file and the
    cause, having written nothing: the same messages are new once the lock is gone (the
    connector, not having acknowledged them, gets them again)."""
    path = tmp_path / "j.db"
    message = FakeConnector().message("hello")
    with trio.fail_after(10):
        async with cb.SQLiteStore(path) as store:
            with locked(path), pytest.raises(cb.StoreError) as refused:
                await store.journal_add([message])
            assert str(path) in str(refused.value)
            assert "another connection held the file's lock" in str(refused.value)
            assert str(refused.value).endswith("are replayed at the next start")
            assert "not acknowledged (the connector gets them again)" in str(refused.value)
            assert isinstance(refused.value.__cause__, sqlite3.OperationalError)
            assert await store.journal_add([message]) == [True]
            with locked(path), pytest.raises(cb.StoreError, match="another connection") as kv:
                await store.set("fake", "bot", "cursor", "1")
            # A value's write promises nothing of the journal's: its advice ends at what to do.
            assert str(kv.value).endswith("a backup in a transaction): end it")


async def test_an_open_that_fails_gives_advice_for_opening(tmp_path: Path) -> None:
    """An open's error says what to do about the file, and promises no retry or replay of
    writes (it wrote nothing; its advice was a write's)."""
    with pytest.raises(cb.StoreError) as refused:
        await cb.SQLiteStore(tmp_path / "missing-dir" / "j.db").open()
    message = str(refused.value)
    assert "its directory does not exist: create it, or name another path." in message
    # Not SQLite's words: the file's creation failed before SQLite was asked.
    assert "the operating system said: [Errno 2]" in message
    assert "SQLite said" not in message
    assert "retried" not in message and "replayed" not in message


async def test_damaged_file_names_the_file_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    with pytest.raises(cb.StoreError) as refused:
        await cb.SQLiteStore(path).open()
    assert str(path) in str(refused.value) and "move it away" in str(refused.value)


async def test_a_pending_row_that_does_not_decode_is_set_aside_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged journal body (bit rot, another program's write) is logged with its row,
    marked failed and counted; the pending messages around it replay, and the next start
    does not meet it again. It raised out of journal_pending, so the bridge could not start."""
    path = tmp_path / "j.db"
    chat = FakeConnector()
    messages = [chat.message(text, id=text) for text in ("one", "two", "three")]
    async with cb.SQLiteStore(path) as store:
        assert await store.journal_add(messages) == [True] * 3
    with sqlite3.connect(path) as db:
        db.execute("UPDATE journal SET body = '{not json' WHERE message_id = 'two'")
    db.close()
    with trio.fail_after(10):
        async with cb.SQLiteStore(path) as store:
            assert await store.journal_pending() == [messages[0], messages[2]]
            assert store.undecodable == 1
            assert await store.journal_pending() == [messages[0], messages[2]]  # once
            assert store.undecodable == 1
    (record,) = [r for r in caplog.records if "set aside" in r.message]
    assert str(path) in record.message and "journal row 2" in record.message
    with sqlite3.connect(path) as db:
        (state, error) = db.execute("SELECT state, error FROM outcomes WHERE seq = 2").fetchone()
    db.close()
    assert state == "failed" and error.startswith("undecodable journal record: ")


async def test_a_record_set_aside_shows_in_the_bridge_stats_and_metrics(tmp_path: Path) -> None:
    """The records set aside at start are counted where an operator looks: ``bridge.stats()``
    and ``/metrics`` (they were only on the store, which nothing reported); the good message
    next to it is answered once."""
    path = tmp_path / "j.db"
    chat = FakeConnector()
    async with cb.SQLiteStore(path) as store:
        await store.journal_add([chat.message("good", id="1"), chat.message("bad", id="2")])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE journal SET body = x'ff00' WHERE message_id = '2'")
    db.close()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(batch.text)

    bridge = cb.Bridge([chat], agent, debounce=cb.Debounce(window=0), store=cb.SQLiteStore(path))
    registry = bridge_registry(bridge)
    with trio.fail_after(10):
        async with running_bridge(bridge):
            assert (await chat.next_reply()).text == "good"
            assert bridge.stats().undecodable == 1
            assert registry.get_sample_value("chatbridge_undecodable_total") == 1.0


async def test_a_start_cancelled_while_another_process_holds_the_lock_ends_promptly(
    tmp_path: Path,
) -> None:
    """A signal while the store's open waits for a lock another process holds (up to 2
    minutes) stops the bridge within one attempt of the open (0.2 s), not at the end of the
    wait; the file is unharmed and the store not left open. The open waited the whole 2
    minutes in its thread (a watchdog here lets the lock go after 3 s: the test fails then
    instead of hanging)."""
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path) as store:
        await store.journal_add([FakeConnector().message("kept")])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    async def let_go() -> None:
        await trio.sleep(3)  # real time, and only when the cancellation did not end the open
        other.execute("ROLLBACK")

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise AssertionError("never started")

    store = cb.SQLiteStore(path)
    bridge = cb.Bridge([FakeConnector()], agent, store=store)
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as watchdog:
                watchdog.start_soon(let_go)
                async with trio.open_nursery() as starting:
                    starting.start_soon(bridge.run)
                    await trio.testing.wait_all_tasks_blocked()  # the open waits for the lock
                    cancelled_at = time.monotonic()
                    starting.cancel_scope.cancel()
                took = time.monotonic() - cancelled_at
                watchdog.cancel_scope.cancel()
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert took < 1.0
    with pytest.raises(cb.StoreError, match="is not open"):
        await store.get("fake", "bot", "k")
    async with cb.SQLiteStore(path) as again:
        assert [m.text for m in await again.journal_pending()] == ["kept"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """``path``'s directory, seen read-only: a read-only bind mount of it (which root cannot
    write through either); skips where mounting is not allowed."""
    view = path.parent.with_name(path.parent.name + "-ro")
    view.mkdir()
    mount = ["mount", "-o", "bind,ro", str(path.parent), str(view)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount read-only here")
    try:
        yield view / path.name
    finally:
        subprocess.run(["umount", str(view)], check=True)


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` immutable (``chattr +i``: root cannot write it either); skips where the file
    system or the process cannot."""
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i does not work here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def _store_with_one_message(path: Path) -> None:
    async with cb.SQLiteStore(path) as store:
        await store.journal_add([FakeConnector().message("kept")])


async def test_a_file_that_cannot_be_written_is_refused_at_open(tmp_path: Path) -> None:
    """An immutable store file opened (reads work) and every put then failed: connectors
    retried for ever, the bridge looked up. The open now writes, so it says at once what to
    do, naming the file."""
    path = tmp_path / "j.db"
    await _store_with_one_message(path)
    with immutable(path), pytest.raises(cb.StoreError) as refused:
        await cb.SQLiteStore(path).open()
    message = str(refused.value)
    assert str(path) in message and "make the file and its directory writable" in message
    async with cb.SQLiteStore(path) as store:  # once writable again: nothing lost
        assert [m.text for m in await store.journal_pending()] == ["kept"]


@pytest.mark.parametrize("existing", [True, False])
async def test_a_read_only_directory_is_refused_with_what_to_do(
    tmp_path: Path, existing: bool
) -> None:
    """A store in a directory mounted read-only (an existing file: SQLite cannot create its
    ``-wal`` and ``-shm`` files; a new one: nor the file) says so and what to do; it said
    "check the path, the disk and the file's permissions"."""
    path = tmp_path / "data" / "j.db"
    path.parent.mkdir()
    if existing:
        await _store_with_one_message(path)
    with read_only(path) as seen, pytest.raises(cb.StoreError) as refused:
        await cb.SQLiteStore(seen).open()
    message = str(refused.value)
    assert str(seen) in message and "read-only" in message
    assert "make the file and its directory writable" in message


async def test_a_full_disk_refuses_a_put_whole_and_loses_nothing(tmp_path: Path) -> None:
    """A put on a full disk (the file's size capped: ``max_page_count``) raises a StoreError
    naming the file and what to do and writes nothing: the connector, not having acknowledged
    them, gets them again, and they are new then; the messages journaled before are kept."""
    path = tmp_path / "j.db"
    chat = FakeConnector()
    kept = chat.message("kept", id="0")
    big = [chat.message("x" * 4_000, id=str(n)) for n in range(1, 40)]
    with trio.fail_after(10):
        async with cb.SQLiteStore(path) as store:
            assert await store.journal_add([kept]) == [True]
            db = store._db
            assert db is not None
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            db.execute(f"PRAGMA max_page_count={pages}")
            with pytest.raises(cb.StoreError) as refused:
                await store.journal_add(big)
            message = str(refused.value)
            assert str(path) in message and "free space on the disk" in message
            assert "not acknowledged (the connector gets them again)" in message
            assert await store.journal_pending() == [kept]
            db.execute("PRAGMA max_page_count=1073741823")  # space freed
            assert await store.journal_add(big) == [True] * len(big)
            assert await store.journal_pending() == [kept, *big]


async def test_opens_at_once_share_one_connection_which_aclose_closes(tmp_path: Path) -> None:
    """Two tasks opening one store together (the bridge, and the application's ``async
    with``) open it once: the second connection was left open for good, after ``aclose``
    (the file's ``-wal``, which the last connection's close removes, stayed)."""
    path = tmp_path / "j.db"
    store = cb.SQLiteStore(path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.open)
            nursery.start_soon(store.open)
        assert await store.journal_add([FakeConnector().message("hi")]) == [True]
        await store.aclose()
    assert not await trio.Path(f"{path}-wal").exists()


async def test_a_message_that_is_not_unicode_costs_only_itself(tmp_path: Path) -> None:
    """A message with a lone surrogate (from a user's own connector) failed its put whole, at
    every redelivery: the connector's loop restarted on it for ever, and the good message
    behind it never came. It is set aside, counted in ``undecodable``; the good one is
    answered, once, and the connector never restarted."""
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.text for m in batch.messages)
        await reply.send(batch.text)

    chat = FakeConnector()
    store = cb.SQLiteStore(tmp_path / "j.db")
    bridge = cb.Bridge([chat], agent, store=store, debounce=cb.Debounce(window=0))
    with trio.fail_after(10):
        async with running_bridge(bridge) as running:
            chat.deliver(chat.message("lone \ud800", id="bad"))
            await chat.say("good", id="good")
            assert (await chat.next_reply()).text == "good"
            assert running.stats().undecodable == 1
            assert running.stats().reconnects == 0 and chat.runs == 1
    assert handled == ["good"]

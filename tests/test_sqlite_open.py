"""SQLiteStore's open against its close: an ``aclose`` while ``open`` waits for the file's
lock ends with the store closed. Real clock: the store's worker thread and SQLite's busy wait
are real time; nothing here sleeps (the open waits in attempts of at most 0.2 s)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.stores import _sqlite as sqlite_store
from trio_chatbridge.testing import FakeConnector


async def locked_file(tmp_path: Path) -> tuple[Path, sqlite3.Connection]:
    """A store's file in WAL mode (where an open waits for the lock), and another connection
    holding its write lock (the caller closes it)."""
    path = tmp_path / "j.db"
    async with cb.SQLiteStore(path):
        pass
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    return path, other


def recording_open(
    store: cb.SQLiteStore, outcomes: list[BaseException | None]
) -> Callable[[], Awaitable[None]]:
    """``store.open()``, its outcome (a StoreError, or None: it opened) added to ``outcomes``."""

    async def opening() -> None:
        try:
            await store.open()
        except cb.StoreError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    return opening


async def assert_closed_after_failed_opens(
    store: cb.SQLiteStore, path: Path, outcomes: list[BaseException | None], opens: int
) -> None:
    assert len(outcomes) == opens, outcomes
    assert all(o is not None and "closed while it was opening" in str(o) for o in outcomes)
    with pytest.raises(cb.StoreError, match="not open"):
        await store.journal_add([FakeConnector().message("hi")])
    assert not await trio.Path(f"{path}-wal").exists()  # no connection left on the file


@pytest.mark.parametrize("opens", [1, 2], ids=["under-way", "queued"])
async def test_aclose_while_opens_wait_for_the_lock_leaves_the_store_closed(
    tmp_path: Path, opens: int
) -> None:
    """The open went on waiting after ``aclose`` returned, and opened the store once the lock
    was free: a store its owner had closed, holding the file open for good. And a second
    ``open`` queued behind it when ``aclose`` began took its turn after that one failed,
    opened the file, and returned open; ``aclose`` then closed it under its caller. Now
    ``aclose`` stops the open (within one attempt), every open fails saying so, and the store
    is closed with nothing left open on the file; a later open opens it."""
    path, other = await locked_file(tmp_path)
    store = cb.SQLiteStore(path)
    outcomes: list[BaseException | None] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(opens):  # the first waits in the thread, the second behind it
                    nursery.start_soon(recording_open(store, outcomes))
                    await trio.testing.wait_all_tasks_blocked()
                other.execute("ROLLBACK")  # free: an open still going would now succeed
                await store.aclose()
    finally:
        other.close()
    await assert_closed_after_failed_opens(store, path, outcomes, opens)
    await store.open()  # opened after the close: a new open is not refused
    await store.aclose()


async def test_aclose_waits_a_bounded_time_for_an_open_stuck_in_the_worker_thread(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open whose call in the worker thread does not return (a hung file system; a long
    migration): ``aclose``, shielded, waited for it without end. Now it returns after
    ``CLOSE_WAIT`` (Trio's clock), and the open, once its call returns, closes its
    connection and fails as closed."""
    released = threading.Event()
    connect = sqlite3.connect

    def stuck_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        released.wait(30)  # real seconds: a safety net, the test sets it long before
        made: sqlite3.Connection = connect(*args, **kwargs)
        return made

    monkeypatch.setattr(sqlite3, "connect", stuck_connect)
    path = tmp_path / "j.db"
    store = cb.SQLiteStore(path)
    outcomes: list[BaseException | None] = []
    closed_at: list[float] = []

    async def release_later() -> None:
        await trio.sleep(3 * sqlite_store.CLOSE_WAIT)
        released.set()

    try:  # bounded by conftest's real-time limit: a Trio deadline jumps while the thread runs
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            nursery.start_soon(recording_open(store, outcomes))
            await trio.testing.wait_all_tasks_blocked()  # in the thread, stuck
            start = trio.current_time()
            await store.aclose()
            closed_at.append(trio.current_time() - start)
    finally:
        released.set()
    assert closed_at == [sqlite_store.CLOSE_WAIT]
    await assert_closed_after_failed_opens(store, path, outcomes, 1)


@pytest.mark.parametrize(
    ("where", "advice"),
    [
        ("missing/j.db", "its directory does not exist: create it"),
        ("a-file/j.db", "a part of its path is a file, not a directory"),
        ("a-dir", "it is a directory: name a file in it"),
    ],
)
async def test_a_path_it_cannot_be_at_is_refused_saying_why(
    tmp_path: Path, where: str, advice: str
) -> None:
    """A path in no directory, under a file, or naming a directory: each said "check the
    path, the disk and the file's permissions" or that it was not writable, which sent a
    user to the permissions."""
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(cb.StoreError, match=advice) as caught:
        await cb.SQLiteStore(tmp_path / where).open()
    assert str(tmp_path / where) in str(caught.value)

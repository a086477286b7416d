"""Every table kept per user, request or message is bounded: each driven past its bound."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.stores import journal_key
from trio_chatbridge.testing import FakeConnector, running_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_journal_is_pruned_while_the_bridge_runs(
    autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path
) -> None:
    """A day of messages, one a minute, with an hour of retention: what was handled more
    than an hour ago is gone while the bridge still runs, the last hour is still there."""
    store: cb.Store = (
        cb.MemoryStore(wall_clock=trio.current_time)
        if kind == "memory"
        else cb.SQLiteStore(tmp_path / "j.db", wall_clock=trio.current_time, threaded=False)
    )
    chat = FakeConnector()
    bridge = cb.Bridge(
        [chat],
        echo,
        store=store,
        debounce=cb.Debounce(window=1.0),
        journal_retention=3600.0,
        wall_clock=trio.current_time,
    )
    said = []
    async with running_bridge(bridge):
        for n in range(24 * 60):
            said.append(await chat.say(f"m{n}", chat=f"c{n % 7}"))
            await trio.sleep(60)
        kept = [await store.journal_entry(journal_key(m)) is not None for m in said]
    assert len(chat.sent) == len(said)  # every message was answered
    assert not any(kept[: 22 * 60])  # older than the retention and a pruning period: gone
    assert all(kept[-60:])  # the last hour: kept (duplicates still caught)


async def test_a_new_sqlite_store_and_its_wal_files_are_readable_by_their_owner_only(
    tmp_path: Path,
) -> None:
    """The file holds the WeChat token: 0600 whatever the umask lets through."""
    path = tmp_path / "chatbridge.db"
    previous = os.umask(0o022)
    try:
        async with cb.SQLiteStore(path) as store:
            await store.set("weixin", "bot", "token", "a-token")
            files = [path, tmp_path / "chatbridge.db-wal", tmp_path / "chatbridge.db-shm"]
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    finally:
        os.umask(previous)
    assert modes == {f.name: 0o600 for f in files}


async def test_a_store_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(cb.StoreError, match="cannot open"):
        await cb.SQLiteStore(tmp_path / "nowhere" / "x.db").open()


class _PruneFailsWhileRunning(cb.MemoryStore):
    """A store whose pruning works at start, then fails (a busy or unreachable database)."""

    prunes = 0

    async def journal_prune(self, before: float) -> int:
        self.prunes += 1
        if self.prunes > 1:
            raise OSError("database is locked")
        return await super().journal_prune(before)


async def test_a_failed_pruning_while_running_is_logged_and_retried_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Pruning is housekeeping: its failure must not stop the bridge answering messages."""
    store = _PruneFailsWhileRunning()
    chat = FakeConnector()
    bridge = cb.Bridge([chat], echo, store=store, journal_retention=60.0)
    async with running_bridge(bridge):
        await trio.sleep(3 * 60 + 1)  # three prunings, each failing
        await chat.say("still there?")
        await trio.sleep(10)
    assert store.prunes == 4
    assert [r.text for r in chat.sent] == ["still there?"]
    assert any("pruning the journal failed" in r.getMessage() for r in caplog.records)


async def test_sessions_waiting_for_a_slot_are_bounded_and_push_back_on_the_connector(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With every slot taken by a stuck agent, the dispatcher holds at most ``queue_size``
    sessions waiting for one; beyond that the inbox stops accepting (the connector's put
    waits) instead of the bridge holding ever more. Shutdown still ends on time."""
    store = cb.MemoryStore()
    chat = FakeConnector()

    async def stuck(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep_forever()

    bridge = cb.Bridge(
        [chat],
        stuck,
        store=store,
        debounce=cb.Debounce(window=0.1),
        concurrency=1,
        queue_size=4,
        shutdown_grace=5.0,
    )
    accepted = 0

    async def say(n: int) -> None:
        nonlocal accepted
        await chat.say(f"m{n}", chat=f"c{n}")
        accepted += 1

    async with running_bridge(bridge), trio.open_nursery() as users:
        for n in range(50):
            users.start_soon(say, n)
        await trio.sleep(60)
        held = accepted
        users.cancel_scope.cancel()
    # one running, four waiting for a slot, four in each of the two channels, one batch
    # in hand in the debouncer and one in the dispatcher: far from all 50
    assert held <= 20
    assert trio.current_time() < 60 + 5 + 5  # the grace period still bounds the shutdown
    # a put left waiting at shutdown was journaled for the next start, not a failure; the one
    # warning is that 50 chats at once overflow a debouncer holding queue_size (4) sessions
    assert [r.getMessage()[:24] for r in caplog.records if r.levelno >= logging.WARNING] == [
        "more chats talk within o"
    ]
    assert len(await store.journal_pending()) == 50  # every one journaled, none handled


@pytest.mark.parametrize("chats", [3, 4, 5, 10])
async def test_more_chats_in_one_window_than_queue_size_are_counted_and_warned_once(
    chats: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The debouncer holds at most ``queue_size`` sessions: with more chats talking within
    one window, a new chat's messages wait (parked, or unread) for a session to leave, up to
    a window. Each such wait is counted and warned about once, naming the fix; every chat is
    still answered. As many chats as ``queue_size`` never wait, also when each speaks again
    within its window (full, the debouncer still files messages for sessions it holds)."""
    chat = FakeConnector()
    bridge = cb.Bridge(
        [chat], echo, store=cb.MemoryStore(), debounce=cb.Debounce(window=3.0), queue_size=4
    )
    with trio.fail_after(60):
        async with running_bridge(bridge):
            for _ in range(2):  # each chat says something, and again a second later
                chat.deliver(*(chat.message("hi", chat=f"c{n}") for n in range(chats - 1)))
                await chat.say("hi", chat=f"c{chats - 1}")
                await trio.sleep(1.0)
            for _ in range(chats):
                await chat.next_reply()
            full = bridge.stats().other.get("debouncer.full", 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if chats <= 4:
        assert (full, warnings) == (0, [])
    else:
        assert full >= chats - 4  # each chat beyond queue_size waited at least once
        assert len(warnings) == 1
        assert "queue_size (4)" in warnings[0]
        assert "Raise the bridge's queue_size" in warnings[0]


async def test_cancelled_puts_waiting_in_memory_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from collections import Counter

    from trio_chatbridge._inbox import ORPHANS, Inbox

    counters: Counter[str] = Counter()
    out, _stuck = trio.open_memory_channel[tuple[cb.Message, ...]](0)  # nobody reads
    inbox = Inbox(cb.MemoryStore(), out, counters)
    chat = FakeConnector()
    for n in range(ORPHANS + 5):
        with trio.move_on_after(1):  # journaled, then cancelled waiting for room
            await inbox.put([chat.message(f"m{n}")])
    assert counters["deferred"] == 5  # the rest wait in the journal, not in memory
    assert counters["received"] == ORPHANS + 5


async def test_latency_notes_of_messages_whose_run_never_comes_are_bounded() -> None:
    from trio_chatbridge._latency import Latencies

    seen: list[tuple[str, float]] = []
    latencies = Latencies([lambda kind, seconds: seen.append((kind, seconds))], limit=10)
    chat = FakeConnector()
    messages = [chat.message(f"m{n}", user=f"u{n}") for n in range(15)]
    latencies.received(messages)  # past the bound: the older notes go, down to half of it
    assert len(latencies._arrived) == 5
    latencies.run_started(cb.Batch("s", messages[:10]), lambda: None)
    assert seen == []  # their notes were dropped: not measured, not wrong
    latencies.run_started(cb.Batch("s", messages[10:11]), lambda: None)
    assert [kind for kind, _ in seen] == ["agent_start"]

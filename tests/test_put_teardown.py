"""A WebSocket connection torn down while its put waits: what is counted, logged and lost.

WeCom never pushes a callback again, so what the driver took off the socket and could not
journal within the teardown's grace (``PUT_GRACE``) is lost: these tests pin that it is counted
(``wecom.unconfirmed_at_teardown``), logged once at ERROR, never acked, that what the store did
write is still handled, and that the connector comes back and later callbacks flow. Lark pushes
an event again until it is ACKed: there the same cut loses nothing. A stall alone, however
long, ends no connection: while the reader is stopped by our backpressure, neither the silence
watchdog nor a heartbeat's answer window runs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import pytest
import trio
import trio.testing
from support import emulator_bridge

import trio_chatbridge as cb
from trio_chatbridge._websocket import BACKLOG, PUT_BATCH, PUT_GRACE, UNCONFIRMED
from trio_chatbridge.testing import LarkEmulator, WeComEmulator

COUNTER = f"wecom.{UNCONFIRMED}"


class StallingStore(cb.MemoryStore):
    """A memory store whose journal writes wait while ``stalled`` (cancelled: nothing written)."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self.unstalled = trio.Event()

    async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
        if self.stalled:
            await self.unstalled.wait()
        return await super().journal_add(messages)

    def unstall(self) -> None:
        self.stalled = False
        self.unstalled.set()


@asynccontextmanager
async def watched_bridge(
    emu: WeComEmulator | LarkEmulator, **options: Any
) -> AsyncIterator[tuple[cb.Bridge, StallingStore, list[str]]]:
    """A bridge on ``emu`` over a :class:`StallingStore`, and the text of every message its
    agent was given, in order."""
    seen: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(m.text for m in batch.messages)

    store = StallingStore()
    async with emulator_bridge(emu, emu.connector, agent, store=store, **options) as bridge:
        yield bridge, store, seen


async def cut_at_teardown(
    store: StallingStore, emu: WeComEmulator | LarkEmulator, *said: tuple[str, str]
) -> None:
    """Users say ``said`` (user, text) into a stalled store, the platform drops the
    connection, and the teardown's grace runs out: the put is cut."""
    store.stalled = True
    for user, text in said:
        emu.user_says(user, text)
    await trio.sleep(1)  # all in the put worker's stalled journal write
    await emu.drop_connection()
    await trio.sleep(PUT_GRACE + 0.5)


def teardown_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "trio_chatbridge.websocket" and record.levelno == logging.ERROR
    ]


async def test_a_put_stalled_in_the_store_past_the_grace_is_counted_and_the_link_comes_back(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(300):
        async with watched_bridge(emu := WeComEmulator()) as (bridge, store, seen):
            emu.user_says("ann", "before")
            await trio.sleep(2)
            await cut_at_teardown(store, emu, ("bob", "one"), ("cat", "two"))
            assert bridge.stats().other.get(COUNTER) == 2
            errors = teardown_errors(caplog)
            assert len(errors) == 1
            assert "2 messages" in errors[0] and "WeCom" in errors[0]
            assert "emulator-bot" in errors[0]  # names the account
            store.unstall()
            await emu.wait_connected()  # the supervisor reconnected
            emu.user_says("dan", "after")
            await trio.sleep(5)
            assert bridge.stats().reconnects == 1
    # The cut write never reached the store and WeCom does not push again: "one" and "two"
    # are lost, and said so above; before and after the teardown, everything is handled.
    assert seen == ["before", "after"]
    assert bridge.stats().other.get(COUNTER) == 2
    assert len(teardown_errors(caplog)) == 1


async def test_a_put_waiting_for_a_full_inbox_past_the_grace_is_still_handled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The connector benchmark's stall: more chats in a long debounce window than the bridge's
    ``queue_size`` and the overflow it parks, so the debouncer stops reading and a put waits
    for room for the window."""
    hour = cb.Debounce(window=3600.0)
    with trio.fail_after(3 * 3600):
        async with watched_bridge(emu := WeComEmulator(), debounce=hour, queue_size=2) as (
            bridge,
            _,
            seen,
        ):
            # one put each: two sessions held, one parked, one in hand where reading stopped,
            # two puts queued, one waits
            for n in range(7):
                emu.user_says(f"user{n}", f"m{n}")
                await trio.sleep(1)
            assert bridge.stats().received == 7  # all journaled; the last put still waits
            await emu.drop_connection()
            await emu.wait_connected()
            assert bridge.stats().other.get(COUNTER) == 1  # its put did not return
            emu.user_says("user9", "after")
            await trio.sleep(2 * 3600)  # the window passes: the debouncer reads again
            assert sorted(seen) == ["after", *(f"m{n}" for n in range(7))]
            assert bridge.stats().reconnects == 1
    assert len(teardown_errors(caplog)) == 1


async def test_an_event_whose_put_the_grace_cut_is_not_acked_and_lark_pushes_it_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(300):
        async with watched_bridge(emu := LarkEmulator()) as (bridge, store, seen):
            await cut_at_teardown(store, emu, ("ou_ann", "again"))
            assert bridge.stats().other.get(f"lark.{UNCONFIRMED}") == 1
            store.unstall()
            await trio.sleep(30)  # reconnected; the emulator pushes the unACKed event again
            assert bridge.stats().reconnects == 1
    assert seen == ["again"]  # handled once: journaled from the second push
    assert len(teardown_errors(caplog)) == 1


# -- a stall without a teardown: the reader stops, and the connection stays -----------------------

STALL: Final = 100.0
"""Seconds the store stalls: past a heartbeat's interval and answer window (30 + 10 s on WeCom)
and past the silence watchdog's time."""


async def stall_through_a_heartbeat(
    store: StallingStore, emu: WeComEmulator | LarkEmulator, n: int, users: int
) -> list[str]:
    """``n`` messages from ``users`` users into a store stalled for :data:`STALL` seconds,
    then some time to handle them; the texts said."""
    said = [f"m{i}" for i in range(n)]
    store.stalled = True
    for i, text in enumerate(said):
        emu.user_says(f"user{i % users}", text)
    await trio.sleep(STALL)
    store.unstall()
    await trio.sleep(30)
    return said


async def test_a_store_stalled_past_a_heartbeat_keeps_the_wecom_connection_and_every_callback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """More callbacks than the reader reads while stopped (a put, then twice the backlog while
    the ping waits for its answer): the ping's answer sits behind unread frames."""
    caplog.set_level(logging.INFO, logger="trio-websocket")  # not a record a frame
    n = 2 * BACKLOG + 3 * PUT_BATCH
    with trio.fail_after(600):
        async with watched_bridge(emu := WeComEmulator(in_flight_limit=31)) as (
            bridge,
            store,
            seen,
        ):
            said = await stall_through_a_heartbeat(store, emu, n, n // 30)
            assert len(emu.commands("ping")) >= 2  # one answered after the stall, then on
            assert bridge.stats().reconnects == 0 and emu.subscribes == 1
    assert sorted(seen) == sorted(said)  # each handled once
    assert COUNTER not in bridge.stats().other
    assert teardown_errors(caplog) == []


async def test_a_store_stalled_past_the_silence_keeps_the_lark_connection_and_every_event(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Lark pings without waiting for the pong, and pushes an event again until it is ACKed:
    the re-pushes wait in the socket too, and the journal drops them."""
    caplog.set_level(logging.INFO, logger="trio-websocket")
    n = BACKLOG + 2 * PUT_BATCH  # the reader stops
    with trio.fail_after(600):
        async with watched_bridge(emu := LarkEmulator(ping_interval=20)) as (bridge, store, seen):
            said = await stall_through_a_heartbeat(store, emu, n, 50)
            assert emu.pings >= 2
            assert bridge.stats().reconnects == 0 and emu.connections == 1
            assert bridge.stats().duplicates > 0  # the re-pushes, dropped by the journal
    assert sorted(seen) == sorted(said)  # each handled once
    assert f"lark.{UNCONFIRMED}" not in bridge.stats().other
    assert teardown_errors(caplog) == []


async def test_a_peer_that_stops_answering_while_the_reader_reads_still_ends_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The ping at 30 s, unanswered: the connection ends when its 10 s window is over."""
    with trio.fail_after(300):
        async with watched_bridge(emu := WeComEmulator()) as (bridge, _, _):
            emu.ignore_pings = True
            await trio.sleep(39.9)
            assert bridge.stats().reconnects == 0
            await trio.sleep(0.2)
            assert bridge.stats().reconnects == 1

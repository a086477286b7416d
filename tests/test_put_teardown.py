"""A WebSocket connection torn down while its put waits: what is counted, logged and lost.

WeCom never pushes a callback again, so what the driver took off the socket and could not
journal within the teardown's grace (``PUT_GRACE``) is lost: these tests pin that it is counted
(``wecom.unconfirmed_at_teardown``), logged once at ERROR, never acked, that what the store did
write is still handled, and that the connector comes back and later callbacks flow. Lark pushes
an event again until it is ACKed: there the same cut loses nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from support import emulator_bridge

import trio_chatbridge as cb
from trio_chatbridge._websocket import PUT_GRACE, UNCONFIRMED
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
    ``queue_size``, so the debouncer stops reading and a put waits for room for the window."""
    hour = cb.Debounce(window=3600.0)
    with trio.fail_after(3 * 3600):
        async with watched_bridge(emu := WeComEmulator(), debounce=hour, queue_size=2) as (
            bridge,
            _,
            seen,
        ):
            for n in range(5):  # one put each: two sessions held, two puts queued, one waits
                emu.user_says(f"user{n}", f"m{n}")
                await trio.sleep(1)
            assert bridge.stats().received == 5  # all journaled; the last put still waits
            await emu.drop_connection()
            await emu.wait_connected()
            assert bridge.stats().other.get(COUNTER) == 1  # its put did not return
            emu.user_says("user9", "after")
            await trio.sleep(2 * 3600)  # the window passes: the debouncer reads again
            assert sorted(seen) == ["after", "m0", "m1", "m2", "m3", "m4"]
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

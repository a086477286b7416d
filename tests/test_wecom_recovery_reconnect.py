"""WeCom: a reply sent again another way (its final frame unanswered) whose send was cut by
its connection's close goes on the next connection and shows once, without a restart
(docs/wecom.md, "Replies confirmed after the run")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from test_wecom_confirm import answering, bridge_on, other, state
from trio_websocket import ConnectionClosed

import trio_chatbridge as cb
from trio_chatbridge._websocket import WebSocket
from trio_chatbridge._ws_client import SendFailed
from trio_chatbridge.platforms.wecom import LongConnection
from trio_chatbridge.testing import WeComEmulator


class Stalling:
    """The emulator's socket, whose writes wait once ``stalled`` (a server that stopped
    reading), as the library's own client's do behind a write that does not end: when the
    connection is lost they fail, nothing of them written (``may_have_been_sent=False``)."""

    def __init__(self, emu: WeComEmulator) -> None:
        self.emu = emu
        self.stalled = False

    @asynccontextmanager
    async def open_websocket(self, url: str) -> AsyncIterator[WebSocket]:
        lost = trio.Event()
        async with self.emu.open_websocket(url) as ws:
            outer = self

            class Socket:
                async def get_message(self) -> str | bytes:
                    try:
                        return await ws.get_message()
                    except ConnectionClosed:
                        lost.set()
                        raise

                async def send_message(self, message: str | bytes) -> None:
                    if outer.stalled:
                        await lost.wait()
                        raise SendFailed(None, may_have_been_sent=False)
                    await ws.send_message(message)

            yield Socket()


@asynccontextmanager
async def fallback_cut(
    emu: WeComEmulator, **options: Any
) -> AsyncIterator[tuple[cb.Bridge, cb.MemoryStore, LongConnection]]:
    """The final frame is written and never acknowledged; the server then stops reading, so
    the reply sent again proactively at the ACK timeout is never written; the connection
    drops (the bridge reconnects 1 s on, unless ``options`` say otherwise)."""
    emu.fail_next("aibot_respond_msg", -1)
    socket = Stalling(emu)
    connector = emu.connector(open_websocket=socket.open_websocket)
    agent, ended = answering()
    async with bridge_on(emu, agent, connector, **options) as (bridge, store):
        emu.user_says("eve", "question", msgid="m-1")
        await ended.wait()
        socket.stalled = True
        await trio.sleep(connector.ack_timeout + 1)
        assert emu.sent == []  # the fallback waits behind a write that does not end
        socket.stalled = False
        await emu.drop_connection()
        yield bridge, store, connector


async def test_a_fallback_cut_by_its_connection_closing_goes_on_the_next_and_shows_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing of the fallback was written: it goes on the next connection, the user sees
    the answer once, the run is done, without a restart (it stayed pending until one)."""
    emu = WeComEmulator()
    async with fallback_cut(emu) as (bridge, store, connector):
        await emu.wait_connected()
        await trio.sleep(connector.ack_timeout)
        assert [(s.kind, s.text) for s in emu.sent] == [("proactive", "the answer")]
        assert await state(store, "m-1") == "done"
        assert other(bridge, "replies_unconfirmed") == 0
        assert other(bridge, "replies_refused") == 1  # counted once, not at each try
        # counted as it waited for the next connection; now that connection carries it
        assert other(bridge, "requests_across_reconnects") == 1
    assert [(s.kind, s.text) for s in emu.sent] == [("proactive", "the answer")]


async def test_a_fallback_cut_then_the_connector_stopped_leaves_its_run_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connector stops before a next connection: the cut fallback is settled unknown
    (counted in ``replies_unconfirmed``, the batch pending for the next start)."""
    emu = WeComEmulator()
    backoff = cb.Backoff(initial=60.0, jitter=0.0)
    async with fallback_cut(emu, backoff=backoff) as (bridge, store, _):
        await trio.sleep(5)  # waiting to reconnect
        assert other(bridge, "replies_unconfirmed") == 0
    assert other(bridge, "replies_unconfirmed") == 1
    assert await state(store, "m-1") == "pending"
    assert emu.sent == []

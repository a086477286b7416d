"""WebSocket plumbing shared by the emulators: in-memory sockets and ordered outboxes."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Final

import attrs
import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)

GONE: Final = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)
"""What a socket that went away raises."""

Abort = Callable[[], Awaitable[None]]
Accept = Callable[[WebSocketRequest, Abort], Awaitable[None]]


@attrs.define(eq=False)
class Connection:
    """One server-side connection: frames pushed from anywhere, written in order by one task."""

    ws: WebSocketConnection
    abort: Abort
    """Cut the socket without a closing handshake (a network fault)."""
    _outbox: deque[str | bytes | None] = attrs.Factory(deque)
    _wake: trio.Event = attrs.Factory(trio.Event)

    def push(self, data: str | bytes) -> None:
        self._outbox.append(data)
        self._wake.set()

    def close_after_pushed(self) -> None:
        """Close (with a handshake) once everything pushed so far is written."""
        self._outbox.append(None)
        self._wake.set()

    async def write(self) -> None:
        """Write what is pushed until the socket goes away; run it in the connection's nursery.

        Cancelled, it stops writing; what was pushed and not written is dropped with the
        connection."""
        try:
            while True:
                while self._outbox:
                    data = self._outbox.popleft()
                    if data is None:
                        await self.ws.aclose()
                        return
                    await self.ws.send_message(data)
                self._wake = trio.Event()
                await self._wake.wait()
        except GONE:
            await self.abort()


@asynccontextmanager
async def memory_websocket(
    server: trio.Nursery, accept: Accept, host: str, resource: str, max_message_size: int
) -> AsyncIterator[WebSocketConnection]:
    """A client WebSocket over in-memory streams; ``accept`` runs the server side in ``server``.

    Cancelled (while connecting or in the block), the client side is closed on the way out."""
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            with suppress(*GONE):  # a client may go away at any point, the handshake too
                request = await wrap_server_stream(nursery, server_stream)
                await accept(request, server_stream.aclose)
            nursery.cancel_scope.cancel()

    server.start_soon(serve)
    async with trio.open_nursery() as nursery:
        try:
            ws = await wrap_client_stream(
                nursery,
                client_stream,  # type: ignore[arg-type]
                host,
                resource,
                max_message_size=max_message_size,
            )
        except BaseException:
            # A client given up during the handshake (cancelled, say): its end closes, as a
            # real socket does when dropped, or the server would keep a connection nobody
            # reads and go on pushing events into it.
            with trio.CancelScope(shield=True):
                await client_stream.aclose()
            raise
        try:
            yield ws
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()
            nursery.cancel_scope.cancel()

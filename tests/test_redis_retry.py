"""RedisStore when the connection drops after a journal write reached Redis: coredis sends
the script again on a new connection (its retry of a lost connection), and the rerun must
not call the messages it wrote the first time duplicates."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector, RedisServer


@attrs.define
class DroppingProxy:
    """A TCP proxy on 127.0.0.1 to a Redis: the first request holding ``marker`` is sent on,
    and when Redis answers it the client's connection is closed instead (the reply lost)."""

    marker: bytes
    dropped: int = 0

    async def _serve(self, client: trio.SocketStream, port: int) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", port)
        armed: list[bool] = []
        async with client, server, trio.open_nursery() as nursery:

            async def upstream() -> None:
                seen = b""
                async for data in client:
                    seen = (seen + data)[-4096:]
                    if not self.dropped and self.marker in seen:
                        armed.append(True)
                    await server.send_all(data)

            async def downstream() -> None:
                async for data in server:
                    if armed:
                        self.dropped += 1
                        nursery.cancel_scope.cancel()  # both streams closed, the reply lost
                        return
                    await client.send_all(data)

            nursery.start_soon(upstream)
            nursery.start_soon(downstream)

    @asynccontextmanager
    async def running(self, redis: RedisServer) -> AsyncIterator[str]:
        """The proxy's URL while it runs."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, host="127.0.0.1"),
                partial(self._serve, port=redis.port),
                0,
            )
            port = listeners[0].socket.getsockname()[1]
            yield f"redis://127.0.0.1:{port}/0"
            nursery.cancel_scope.cancel()


async def test_a_journal_write_rerun_after_a_dropped_reply_reports_what_it_added(
    redis_node: RedisServer,
) -> None:
    """The script landed, the reply was lost with the connection, coredis ran it again: the
    rerun answers what the first run did (added), so the message is queued and handled; it
    used to find the message journaled already and call it a duplicate (pending for good)."""
    connector = FakeConnector("bot")
    marker = f"doomed-{uuid.uuid4().hex}"
    message = connector.message("hi", id=marker)
    proxy = DroppingProxy(marker.encode())
    with trio.fail_after(10):
        async with proxy.running(redis_node) as url:
            store = cb.RedisStore.from_url(url, prefix=f"retry-{uuid.uuid4().hex}:", timeout=2)
            async with store:
                assert await store.journal_add([connector.message("warm", id="0")]) == [True]
                assert await store.journal_add([message]) == [True]
                assert proxy.dropped == 1
                assert await store.journal_add([message]) == [False]  # a real duplicate
                pending = await store.journal_pending_of("fake", "bot")
                assert [m.id for m in pending] == ["0", marker]

"""RedisStore sends the pipelines of one call together: a lease round over many accounts
costs a pipeline's round trips, not one pipeline's after another's. With Redis 250 ms away,
1,000 leases took ten round trips one after another, over the five seconds a lease round
gives them: not one account was ever acquired (docs/deploying.md)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import attrs
import trio

import trio_chatbridge as cb
from trio_chatbridge.stores._redis import BATCH
from trio_chatbridge.testing import RedisServer

ACCOUNTS = 3 * BATCH + 7  # four pipelines


@attrs.define
class GateProxy:
    """A TCP proxy on 127.0.0.1 to a Redis. Once :meth:`arm` is called, it holds what the
    clients send until ``together`` connections have sent something: pipelines sent one
    after another never get there (the first waits for its answer), sent together they do."""

    together: int
    armed: bool = False
    _senders: set[int] = attrs.Factory(set)
    _open: trio.Event = attrs.Factory(trio.Event)

    def arm(self) -> None:
        self.armed = True

    async def _serve(self, client: trio.SocketStream, port: int) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", port)
        async with client, server, trio.open_nursery() as nursery:

            async def upstream() -> None:
                async for data in client:
                    if self.armed and not self._open.is_set():
                        self._senders.add(id(client))
                        if len(self._senders) >= self.together:
                            self._open.set()
                        await self._open.wait()
                    await server.send_all(data)
                nursery.cancel_scope.cancel()

            async def downstream() -> None:
                async for data in server:
                    await client.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(upstream)
            nursery.start_soon(downstream)

    @asynccontextmanager
    async def running(self, redis: RedisServer) -> AsyncIterator[str]:
        """The proxy's URL while it runs."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, host="127.0.0.1"), partial(self._serve, port=redis.port), 0
            )
            yield f"redis://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            nursery.cancel_scope.cancel()


NAMES = [f"fake:acct{i:04}" for i in range(ACCOUNTS)]


@asynccontextmanager
async def a_third_held_then_gated(redis_node: RedisServer) -> AsyncIterator[cb.RedisStore]:
    """A store through an armed :class:`GateProxy` (four connections must send before any
    byte goes on), a third of :data:`NAMES`' leases held by another owner (no heartbeat: no
    hold-off of a new prefix)."""
    proxy = GateProxy(together=4)
    with trio.fail_after(20):
        async with proxy.running(redis_node) as url:
            prefix = f"gate-{uuid.uuid4().hex}:"
            store = cb.RedisStore.from_url(url, prefix=prefix, timeout=10)
            other = cb.RedisStore.from_url(redis_node.url, prefix=prefix, timeout=10)
            async with store, other:
                assert all(await other.acquire_leases(NAMES[::3], "other", 15))
                proxy.arm()
                yield store


async def test_the_pipelines_of_a_lease_round_are_sent_together(redis_node: RedisServer) -> None:
    async with a_third_held_then_gated(redis_node) as store:
        got = await store.acquire_leases(NAMES, "me", 15)
        renewed = await store.renew_leases(NAMES, "me", 15)
    # in the names' order, whatever pipeline answered first
    mine = [i % 3 != 0 for i in range(ACCOUNTS)]
    assert got == mine
    assert renewed == mine


async def test_the_expiries_of_a_lease_round_are_read_in_pipelines_sent_together(
    redis_node: RedisServer,
) -> None:
    """A round looks up the expiry of every lease it was refused: in pipelines sent together
    (here held until four have sent), not in a round trip each."""
    async with a_third_held_then_gated(redis_node) as store:
        left = await store.leases_remaining(NAMES)
    assert [t == 0 for t in left] == [i % 3 != 0 for i in range(ACCOUNTS)]
    assert all(14 < (t or 0) <= 15 for t in left[::3])


async def test_a_failed_pipeline_is_a_store_error_not_a_group(redis_node: RedisServer) -> None:
    """One pipeline of several failing: the caller gets the StoreError a lease round
    catches, the other pipelines cancelled."""
    prefix = f"fail-{uuid.uuid4().hex}:"
    store = cb.RedisStore.from_url(redis_node.url, prefix=prefix, timeout=2)
    lease = f"{prefix}{{{NAMES[2 * BATCH + 1]}}}:lease"  # the layout stores/_redis.py gives
    # a lease of the third pipeline is a hash: its script fails
    await trio.to_thread.run_sync(redis_node.cli, "hset", lease, "not", "a string")
    async with store:
        try:
            await store.acquire_leases(NAMES, "me", 15)
        except cb.StoreError as exc:
            assert "another kind of value" in str(exc)
        else:
            raise AssertionError("a lease script that failed was not an error")

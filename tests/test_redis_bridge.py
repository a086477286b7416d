"""A bridge on a real Redis that stops answering: its connectors stop before the lease ends.

Real time and a Redis server of its own (the test freezes it with SIGSTOP), so a few seconds.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
import trio
from redis_servers import require_redis

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector, RedisServer, redis_server

TTL = 1.5
LEASES = cb.Leases(ttl=TTL)


def states(bridge: cb.Bridge) -> set[tuple[str, str | None]]:
    return {(s.state, s.lease) for s in bridge.status().values()}


async def wait_until(check: object) -> None:
    """Poll ``check`` (the bridge's status, which has no event for it) until it holds."""
    assert callable(check)
    while True:
        if check():
            return
        await trio.sleep(0.01)


@pytest.mark.slow
async def test_a_frozen_redis_stops_the_connectors_before_the_lease_ends(tmp_path: Path) -> None:
    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("ok")

    require_redis()
    with redis_server(tmp_path) as server, trio.fail_after(30):
        store = cb.RedisStore.from_url(server.url, timeout=0.5)
        connectors = [FakeConnector("a"), FakeConnector("b")]
        bridge = cb.Bridge(connectors, agent, store=store, leases=LEASES)
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await wait_until(lambda: states(bridge) == {("running", "held")})
            paused_at = trio.current_time()
            server.pause()
            try:
                await wait_until(lambda: states(bridge) == {("paused", "lost")})
                stopped_after = trio.current_time() - paused_at
            finally:
                server.resume()
            # Renewed at most a round before the pause: stopped by expiry minus the margin.
            assert stopped_after <= TTL * (1 - LEASES.margin) + 0.1 < TTL
            # Redis is back: the bridge never stopped, it takes its accounts again.
            await wait_until(lambda: states(bridge) == {("running", "held")})
            await connectors[0].say("still there?")
            assert (await connectors[0].next_reply()).text == "ok"
            assert bridge.stats().other["lease.lost"] == 2
            bridge.shutdown()


async def test_a_bridge_on_redis_can_be_cancelled_outright(redis_node: RedisServer) -> None:
    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("ok")

    store = cb.RedisStore.from_url(redis_node.url, prefix=f"cancel-{uuid.uuid4().hex}:")
    connector = FakeConnector("a")
    bridge = cb.Bridge([connector], agent, store=store, leases=LEASES)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await bridge.wait_status(lambda s: s["fake:a"].state == "running")
            nursery.cancel_scope.cancel()  # no graceful shutdown: the store closes all the same
    assert bridge.status()["fake:a"].state == "stopped"


async def test_a_bridge_on_redis_cancelled_outright_gives_its_leases_back_at_once(
    redis_node: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The releases run (shielded) before the store's connections close, so a restart
    need not wait a TTL."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("ok")

    prefix = f"cancel-{uuid.uuid4().hex}:"
    connectors = [FakeConnector(name) for name in "abc"]
    leases = cb.Leases(ttl=60.0)  # a lease left behind would outlive the test
    # The prefix's epoch, as a bridge that ran before wrote it: a new prefix would hold
    # acquisitions off a TTL (as after Redis lost its data).
    redis_node.cli("set", f"{prefix}epoch", "earlier:0")
    bridge = cb.Bridge(
        connectors,
        agent,
        store=cb.RedisStore.from_url(redis_node.url, prefix=prefix),
        leases=leases,
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await bridge.wait_status(lambda s: {c.state for c in s.values()} == {"running"})
            nursery.cancel_scope.cancel()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    async with cb.RedisStore.from_url(redis_node.url, prefix=prefix) as store:
        for connector in connectors:
            assert await store.lease_remaining(connector.name) == 0


async def test_a_bridge_whose_store_cannot_open_raises_the_store_error_itself() -> None:
    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise AssertionError("no message comes")

    store = cb.RedisStore.from_url("redis://127.0.0.1:1", timeout=1.0)  # nothing listens
    with trio.fail_after(10), pytest.raises(cb.StoreError, match="could not connect"):
        async with cb.open_bridge([FakeConnector("a")], agent, store=store):
            raise AssertionError("the bridge cannot start")


async def test_a_second_bridge_on_the_same_store_object_is_refused_at_its_start(
    redis_node: RedisServer,
) -> None:
    """Two bridges sharing one RedisStore object would share its fencing tokens (the second
    acquisition's token would let the first, stale holder's writes through) and its
    connections (the second closing the store would close the first's). The second is
    refused before it opens anything; the first goes on."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("ok")

    store = cb.RedisStore.from_url(redis_node.url, prefix=f"twice-{uuid.uuid4().hex}:")
    first_connector, second_connector = FakeConnector("a"), FakeConnector("a")
    first = cb.Bridge([first_connector], agent, store=store, leases=LEASES)
    second = cb.Bridge([second_connector], agent, store=store, leases=LEASES)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            await first.wait_status(lambda s: s["fake:a"].state == "running")
            with pytest.raises(cb.ConfigurationError, match="one store object per bridge"):
                await second.run()
            await first_connector.say("still there?")
            assert (await first_connector.next_reply()).text == "ok"
            first.shutdown()
    # Run after run, one store object is fine: the first bridge closed it.
    third = cb.Bridge([FakeConnector("a")], agent, store=store, leases=LEASES)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(third.run)
            await third.wait_status(lambda s: s["fake:a"].state == "running")
            third.shutdown()


async def test_two_bridges_started_together_on_one_store_object_one_is_refused(
    redis_node: RedisServer,
) -> None:
    """Two bridges started together on one RedisStore object both passed the "open once"
    check (the store counted as open only once connected), shared its client, and the first
    one's connections were never closed. The store is marked as opening before its first
    wait: one bridge runs, the other is refused; a cancelled open leaves it closed, to open
    again."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("ok")

    store = cb.RedisStore.from_url(redis_node.url, prefix=f"together-{uuid.uuid4().hex}:")
    bridges = [cb.Bridge([FakeConnector("a")], agent, store=store, leases=LEASES) for _ in "ab"]
    refused: list[cb.Bridge] = []

    async def run(bridge: cb.Bridge) -> None:
        try:
            await bridge.run()
        except cb.ConfigurationError as exc:
            assert "one store object per bridge" in str(exc)
            refused.append(bridge)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for bridge in bridges:
                nursery.start_soon(run, bridge)
            await wait_until(lambda: len(refused) == 1)
            (running,) = (b for b in bridges if b not in refused)
            await running.wait_status(lambda s: s["fake:a"].state == "running")
            running.shutdown()
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.open()  # cancelled before it connected: not open, not "opening"
        await store.open()
        await store.aclose()

"""Redis coming back without its data while bridges run: no account runs in two at once.

A Redis restarted without persistence (or failed over to a replica that had not caught up)
has lost every lease while their holders still run them: they stop only at their next
renewal. Acquisitions are held off until then (``<prefix>epoch``: see docs/deploying.md).
Real time: leases expire on Redis's clock; every wait is bounded.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from redis_servers import require_redis

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.testing import RedisServer, redis_server

TTL = 3.0  # seconds, real: Redis's clock


@attrs.define
class Runs:
    """Which of the bridges' connectors of one account runs now, and every overlap seen."""

    running: list[str] = attrs.Factory(list)
    overlaps: list[str] = attrs.Factory(list)
    changed: trio.Event = attrs.Factory(trio.Event)

    def moved(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait(self, check: object) -> None:
        assert callable(check)
        while not check():
            await self.changed.wait()


class Poller(Connector):
    """One bridge's connection for account ``a``: notes when it runs (a platform that splits
    its deliveries between every connection polling it would split them between these)."""

    def __init__(self, runs: Runs, bridge: str) -> None:
        self.platform = "poll"
        self.account = "a"
        self.runs = runs
        self.bridge = bridge

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.runs.running:
            self.runs.overlaps.append(f"{self.bridge} started while {self.runs.running} ran")
        self.runs.running.append(self.bridge)
        self.runs.moved()
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.runs.running.remove(self.bridge)
            self.runs.moved()

    async def send(self, target: cb.Message, text: str) -> None:
        await trio.lowlevel.checkpoint()


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send("ok")


@pytest.mark.slow
async def test_a_bridge_started_after_redis_came_back_empty_waits_for_the_old_holder(
    tmp_path: Path,
) -> None:
    """Bridge A runs account a; Redis restarts empty; bridge B starts at once. The lease and
    the membership are gone, so B's first round gives a to B, and B used to start it while
    A still ran it (until A's next renewal, up to a round later). Now B holds off until a
    TTL after its first beat found the epoch missing: A has stopped by then."""
    require_redis()
    runs = Runs()
    with redis_server(tmp_path) as server, trio.fail_after(40):

        def bridge(name: str) -> cb.Bridge:
            store = cb.RedisStore.from_url(server.url, timeout=0.5)
            return cb.Bridge([Poller(runs, name)], agent, store=store, leases=cb.Leases(ttl=TTL))

        async with trio.open_nursery() as nursery:
            a = bridge("A")
            await nursery.start(a.run)
            await runs.wait(lambda: runs.running == ["A"])
            await trio.to_thread.run_sync(server.restart)
            restarted = trio.current_time()
            b = bridge("B")
            await nursery.start(b.run)
            await runs.wait(lambda: "A" not in runs.running)  # at its next renewal
            await runs.wait(lambda: runs.running)  # someone serves a again
            assert runs.overlaps == []
            # Held off one TTL, not two (a second hold-off ends past 2 TTL): the slack beyond
            # the one TTL is a whole TTL, for a loaded machine's real clock.
            assert trio.current_time() - restarted < 2 * TTL
            a.shutdown()
            b.shutdown()
    assert runs.overlaps == []


def prefix() -> str:
    return f"epoch-{uuid.uuid4().hex}:"


async def refused_for_a_ttl(store: cb.RedisStore, owner: str, ttl: float, before: float) -> float:
    """Check that ``store`` refuses ``owner`` the lease ``poll:a``, held off for ``ttl`` from a
    beat sent at ``before`` (Trio's clock), however long the calls took on a loaded machine:
    no more than ``ttl`` left, no less than what is left of a TTL from ``before`` (1 ms for
    Redis's clock read in whole milliseconds). Returns the seconds left."""
    assert not await store.acquire_lease("poll:a", owner, ttl)
    left = await store.lease_remaining("poll:a")
    assert left is not None
    for told in (left, store.acquisitions_held_off()):
        assert ttl - (trio.current_time() - before) - 0.001 <= told <= ttl
    return left


def lost(node: RedisServer, keys: str) -> None:
    """Delete every key under ``keys``, as Redis losing its data (one prefix of it)."""
    found = node.cli("--scan", "--pattern", f"{keys}*").split()
    if found:
        node.cli("del", *found)


@asynccontextmanager
async def two_stores(
    node: RedisServer, ttl: float
) -> AsyncIterator[tuple[str, cb.RedisStore, cb.RedisStore]]:
    """A new prefix, and two stores on it, the first past the prefix's first hold-off (it
    beat as ``me`` a TTL ago), the second not yet beaten."""
    keys = prefix()
    async with (
        cb.RedisStore.from_url(node.url, prefix=keys) as first,
        cb.RedisStore.from_url(node.url, prefix=keys) as second,
    ):
        await first.heartbeat("default", "me", ttl)
        await trio.sleep(ttl)
        yield keys, first, second


async def test_a_store_that_saw_the_epoch_lost_holds_acquisitions_off_a_ttl(
    redis_node: RedisServer,
) -> None:
    """Data lost while a bridge runs (a failover to a replica that never synced, FLUSHALL):
    Redis's uptime says nothing, but the epoch this store saw is gone: a full TTL from the
    beat that found it, then the lease is free to take."""
    ttl = 0.5
    with trio.fail_after(10):
        async with two_stores(redis_node, ttl) as (keys, store, _):
            assert await store.acquire_lease("poll:a", "me", ttl)
            lost(redis_node, keys)
            before = trio.current_time()
            await store.heartbeat("default", "me", ttl)
            await trio.sleep(await refused_for_a_ttl(store, "me", ttl, before))
            assert await store.acquire_lease("poll:a", "me", ttl)


async def test_data_lost_between_a_beat_and_an_acquisition_gives_the_lease_back(
    redis_node: RedisServer,
) -> None:
    """The epoch is read again after acquiring: Redis lost its data since the beat, so the
    lease just taken (on the empty Redis) is given back, and acquisitions are held off. A
    second store that never saw the old epoch obeys the hold-off the first one wrote."""
    ttl = 0.5
    with trio.fail_after(10):
        async with two_stores(redis_node, ttl) as (keys, store, fresh):
            await store.heartbeat("default", "me", ttl)
            lost(redis_node, keys)
            await refused_for_a_ttl(store, "me", ttl, trio.current_time())
            assert redis_node.cli("exists", f"{keys}{{poll:a}}:lease").strip() == "0"
            await fresh.heartbeat("default", "other", ttl)
            assert not await fresh.acquire_lease("poll:a", "other", ttl)


def uptime(node: RedisServer) -> int:
    """Seconds since ``node`` started, as Redis tells."""
    return int(node.cli("info", "server").split("uptime_in_seconds:")[1].split()[0])


async def test_a_user_without_info_still_beats_and_holds_off(redis_node: RedisServer) -> None:
    """An ACL without ``+info`` (or INFO renamed): the epoch script used to call INFO when it
    found no epoch, so every heartbeat failed, the epoch was never written and membership
    never ran. The store needs no INFO now: the beat writes the epoch and holds off."""
    keys, ttl = prefix(), 0.5
    user = f"noinfo-{uuid.uuid4().hex[:8]}"
    allowed = ["+@read", "+@write", "+@scripting", "+@pubsub", "+ping", "+time", "-info"]
    keyspace = [f"~{keys}*", f"~{keys}{{-}}:*", f"&{keys}released"]
    redis_node.cli("acl", "setuser", user, "on", ">noinfo-pw", *keyspace, *allowed)
    url = f"redis://{user}:noinfo-pw@127.0.0.1:{redis_node.port}/0"
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(url, prefix=keys) as store:
            assert list(await store.heartbeat("default", "me", ttl)) == ["me"]
            assert redis_node.cli("exists", f"{keys}epoch").strip() == "1"
            assert not await store.acquire_lease("poll:a", "me", ttl)


async def test_a_store_that_never_saw_the_epoch_holds_off_a_ttl_on_a_redis_up_long(
    redis_node: RedisServer,
) -> None:
    """Redis lost its data (FLUSHALL, a failover to a replica that never synced) while it has
    been up longer than a TTL, and a process that never saw the epoch beats first: nothing
    in Redis tells that apart from a new prefix, and an old holder may still run its account.
    It used to acquire at once (the hold-off was discounted by Redis's uptime); it holds off
    a full TTL from its beat."""
    ttl = 0.5
    with trio.fail_after(10):
        async with two_stores(redis_node, ttl) as (keys, old, fresh):
            assert await old.acquire_lease("poll:a", "me", ttl)
            await trio.sleep(max(0, 1 - uptime(redis_node)))  # a session's Redis, just started
            assert uptime(redis_node) > ttl
            lost(redis_node, keys)
            before = trio.current_time()
            await fresh.heartbeat("default", "fresh", ttl)
            await refused_for_a_ttl(fresh, "fresh", ttl, before)

"""Benchmarks of RedisStore against raw coredis doing the same work, on a local redis-server.

- journal puts: pages of 100 messages journaled for one leased account, against a coredis
  pipeline writing the same keys (body, pending index, time accepted) per page;
- lease renewals: one renewal at a time, against the same compare-and-set script called
  through coredis directly;
- memory per account, in Redis (lease, fence, cursor, a token, membership) and in the bridge
  (a supervisor, its lease state, an idle connector);
- takeover after SIGKILL: two bridge processes, the owner killed, until the other holds the
  lease; against the TTL.

Each figure is the median of three runs (``python -m benchmarks redis``).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import coredis
import trio

import trio_chatbridge as cb
from trio_chatbridge.stores._redis import DEFAULT_TIMEOUT
from trio_chatbridge.testing import FakeConnector, redis_server

from ._util import report
from .redis_accounts import bench_idle_accounts

RUNS = 3
MESSAGES = 20_000
PAGE = 100
RENEWALS = 5_000
ACCOUNTS = 1_000
TAKEOVER_TTL = 2.0  # seconds
RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


@contextmanager
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence; its URL."""
    with tempfile.TemporaryDirectory() as directory, redis_server(Path(directory)) as server:
        yield server.url


def raw_client(url: str) -> coredis.Redis[str]:
    """A plain coredis client with the settings RedisStore gives its own (replies decoded,
    each bounded by the default timeout), so that the ratio is what the store adds."""
    return coredis.Redis.from_url(
        url, decode_responses=True, connect_timeout=DEFAULT_TIMEOUT, stream_timeout=DEFAULT_TIMEOUT
    )


def median_of_runs(run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(RUNS))


def pages() -> list[list[cb.Message]]:
    fake = FakeConnector("bench")
    messages = [fake.message(f"m{i}", chat=f"c{i % 100}", id=str(i)) for i in range(MESSAGES)]
    return [messages[i : i + PAGE] for i in range(0, MESSAGES, PAGE)]


async def store_puts(url: str, prefix: str, work: list[list[cb.Message]]) -> float:
    async with cb.RedisStore.from_url(url, prefix=prefix) as store:
        assert await store.acquire_lease("fake:bench", "bench", 60)  # fenced writes
        start = time.perf_counter()
        for page in work:
            await store.journal_add(page)
        return time.perf_counter() - start


async def raw_puts(url: str, prefix: str, work: list[list[cb.Message]]) -> float:
    tag = f"{prefix}{{fake:bench}}"
    async with raw_client(url) as client:
        start = time.perf_counter()
        for page in work:
            now = time.time()
            async with client.pipeline(transaction=True) as pipe:
                for seq, message in enumerate(page):
                    pipe.hsetnx(f"{tag}:body", message.id, json.dumps(message.to_json()))
                    pipe.zadd(f"{tag}:pending", {message.id: seq})
                    pipe.hset(f"{tag}:recv", {message.id: str(now)})
        return time.perf_counter() - start


async def store_renewals(url: str, prefix: str) -> float:
    async with cb.RedisStore.from_url(url, prefix=prefix) as store:
        assert await store.acquire_lease("fake:bench", "bench", 60)
        start = time.perf_counter()
        for _ in range(RENEWALS):
            assert await store.renew_lease("fake:bench", "bench", 60)
        return time.perf_counter() - start


async def raw_renewals(url: str, prefix: str) -> float:
    key = f"{prefix}{{fake:bench}}:lease"
    async with raw_client(url) as client:
        await client.set(key, "bench", px=60_000)
        renew = client.register_script(RENEW)
        start = time.perf_counter()
        for _ in range(RENEWALS):
            assert await renew([key], ["bench", "60000"]) == 1
        return time.perf_counter() - start


def versus(
    url: str,
    ours: Callable[..., Awaitable[float]],
    raw: Callable[..., Awaitable[float]],
    *args: Any,
) -> tuple[float, float]:
    """Median seconds of ours and of raw, taking turns, each run on fresh keys."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(RUNS):
        for i, fn in enumerate((raw, ours)):
            times[i].append(trio.run(fn, url, f"bench-{uuid.uuid4().hex}:", *args))
    return statistics.median(times[1]), statistics.median(times[0])


async def redis_memory_per_account(url: str) -> float:
    """Bytes Redis holds per account: lease, fence, cursor, a context token, membership."""
    prefix = f"bench-{uuid.uuid4().hex}:"
    async with raw_client(url) as client, cb.RedisStore.from_url(url, prefix=prefix) as store:
        before = int(str((await client.info("memory"))["used_memory"]))
        for i in range(ACCOUNTS):
            name = f"weixin:acct{i}"
            await store.acquire_lease(name, "process-1", 60)
            await store.set_cursor("weixin", f"acct{i}", "x" * 40, with_values={"ctx:u": "y" * 40})
        await store.heartbeat("default", "process-1", 60)
        after = int(str((await client.info("memory"))["used_memory"]))
    return (after - before) / ACCOUNTS


async def bridge_memory_per_account(url: str) -> float:
    """Bytes the bridge process holds per account it serves (idle connectors, leases held)."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    async def held(bridge: cb.Bridge) -> None:
        await bridge.wait_status(lambda s: all(x.lease == "held" for x in s.values()))

    async def one(count: int) -> int:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        store = cb.RedisStore.from_url(url, prefix=f"bench-{uuid.uuid4().hex}:")
        bridge = cb.Bridge([FakeConnector(f"a{i}") for i in range(count)], agent, store=store)
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await held(bridge)
            used = tracemalloc.get_traced_memory()[0] - base
            nursery.cancel_scope.cancel()
        tracemalloc.stop()
        return used

    small, large = await one(10), await one(10 + ACCOUNTS)
    return (large - small) / ACCOUNTS


def takeover(url: str) -> float:
    """Seconds from SIGKILL of the owner until the other process holds the lease."""
    prefix = f"bench-{uuid.uuid4().hex}:"
    command = [sys.executable, "-m", "benchmarks.redis", "bridge", url, prefix]
    children = [subprocess.Popen(command) for _ in range(2)]
    try:
        return trio.run(_takeover, url, prefix, {c.pid: c for c in children})
    finally:
        for child in children:
            child.kill()
            child.wait()


async def _takeover(url: str, prefix: str, children: dict[int, subprocess.Popen[bytes]]) -> float:
    key = f"{prefix}{{fake:solo}}:lease"
    async with raw_client(url) as client:

        async def owner() -> int | None:
            holder = await client.get(key)
            return None if holder is None else int(holder.split(":")[1])

        async def ready() -> bool:
            return await client.zcard(f"{prefix}members:default") == 2 and bool(await owner())

        await poll(ready)
        victim = await owner()
        killed = time.perf_counter()
        os.kill(victim or 0, signal.SIGKILL)

        async def taken() -> bool:
            return (await owner()) not in (None, victim)

        await poll(taken)
        return time.perf_counter() - killed


async def poll(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll what other processes do (nothing to wait on here) every 5 ms until it holds."""
    while True:
        if await condition():
            return
        await trio.sleep(0.005)


async def run_bridge(url: str, prefix: str) -> None:
    """A bridge process for the takeover figure: one idle account, a short TTL."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    store = cb.RedisStore.from_url(url, prefix=prefix)
    leases = cb.Leases(ttl=TAKEOVER_TTL)
    await cb.Bridge([FakeConnector("solo")], agent, store=store, leases=leases).run()


def bench_redis() -> None:
    """RedisStore against raw coredis: journal puts, lease renewals, memory, takeover."""
    with redis_url() as url:
        work = pages()
        ours, raw = versus(url, store_puts, raw_puts, work)
        rows = [
            ("journal puts, raw coredis pipeline", f"{MESSAGES / raw:,.0f} messages/s"),
            ("journal puts, RedisStore (fenced)", f"{MESSAGES / ours:,.0f} messages/s"),
            ("ratio (RedisStore / raw)", f"{raw / ours:.2f}x  (target >= 0.7x)"),
        ]
        ours, raw = versus(url, store_renewals, raw_renewals)
        rows += [
            ("lease renewals, raw coredis script", f"{RENEWALS / raw:,.0f}/s"),
            ("lease renewals, RedisStore", f"{RENEWALS / ours:,.0f}/s"),
            ("ratio (RedisStore / raw)", f"{raw / ours:.2f}x  (target >= 0.7x)"),
        ]
        redis_bytes = median_of_runs(lambda: trio.run(redis_memory_per_account, url))
        bridge_bytes = median_of_runs(lambda: trio.run(bridge_memory_per_account, url))
        rows += [
            ("Redis memory per account", f"{redis_bytes:,.0f} bytes"),
            ("bridge memory per account (idle)", f"{bridge_bytes / 1024:,.1f} KiB"),
        ]
        took = median_of_runs(lambda: takeover(url))
        rows.append(
            (
                f"takeover after SIGKILL (TTL {TAKEOVER_TTL:g} s)",
                f"{took:.2f} s = {took / TAKEOVER_TTL:.2f} TTL",
            )
        )
    report(f"RedisStore (medians of {RUNS})", rows)


BENCHMARKS = {"redis": bench_redis, "redis-accounts": bench_idle_accounts}

if __name__ == "__main__":
    if sys.argv[1:2] == ["bridge"]:
        trio.run(run_bridge, sys.argv[2], sys.argv[3])

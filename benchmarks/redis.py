"""Benchmarks of RedisStore against raw coredis doing the same work, on a local redis-server.

- journal puts: pages of 100 messages journaled for one leased account, against a coredis
  pipeline writing the same keys (body, pending index, time accepted) per page;
- lease renewals: one renewal at a time, against the same compare-and-set script called
  through coredis directly; and a round's renewals of 1,000 leases in one ``renew_leases``,
  against the same scripts in coredis pipelines of the same size;
- memory per account, in Redis (lease, fence, cursor, a token, membership) and in the bridge
  (a supervisor, its lease state, an idle connector);
- journal_pending over many accounts: one pipelined script per account, against raw coredis
  pipelines reading the same keys (pending ids, then bodies and times), and against one HGET
  per message (how it was read before);
- takeover: two bridge processes, the owner killed (SIGKILL) or stopped (SIGTERM, a graceful
  stop), until the other's connector runs; against the TTL, median and worst of five.

Each figure is the median of three runs (``python -m benchmarks redis``).
"""

from __future__ import annotations

import math
import os
import random
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
import msgspec
import trio

import trio_chatbridge as cb
from trio_chatbridge.stores._redis import BATCH, DEFAULT_TIMEOUT
from trio_chatbridge.testing import FakeConnector, redis_server

from ._util import report
from .redis_accounts import bench_idle_accounts

RUNS = 3
MESSAGES = 20_000
PAGE = 100
RENEWALS = 5_000
ACCOUNTS = 1_000
PENDING_ACCOUNTS = 500
ANSWERS = 10_000  # one-message journal writes whose answers are measured
PENDING_EACH = 20
TAKEOVER_TTL = 2.0  # seconds
TAKEOVERS = 5
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
                    pipe.hsetnx(f"{tag}:body", message.id, msgspec.json.encode(message))
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


async def store_round_renewals(url: str, prefix: str) -> float:
    """A round's renewals of ACCOUNTS leases in one ``renew_leases``, RENEWALS in all."""
    names = [f"fake:r{i}" for i in range(ACCOUNTS)]
    async with cb.RedisStore.from_url(url, prefix=prefix) as store:
        for name in names:
            assert await store.acquire_lease(name, "bench", 60)
        start = time.perf_counter()
        for _ in range(RENEWALS // ACCOUNTS):
            assert all(await store.renew_leases(names, "bench", 60))
        return time.perf_counter() - start


async def raw_round_renewals(url: str, prefix: str) -> float:
    """The same script through coredis, pipelined as many to a round trip as the store."""
    keys = [f"{prefix}{{fake:r{i}}}:lease" for i in range(ACCOUNTS)]
    async with raw_client(url) as client:
        for key in keys:
            await client.set(key, "bench", px=60_000)
        renew = client.register_script(RENEW)
        start = time.perf_counter()
        for _ in range(RENEWALS // ACCOUNTS):
            for first in range(0, ACCOUNTS, BATCH):
                async with client.pipeline(transaction=False) as pipe:
                    sent: list[Awaitable[object]] = [
                        renew([key], ["bench", "60000"], client=pipe)
                        for key in keys[first : first + BATCH]
                    ]
                assert all([await request == 1 for request in sent])
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


async def answer_memory_per_write(url: str) -> tuple[float, float]:
    """Bytes Redis holds per one-message journal write: its answer (kept 60 s for coredis's
    rerun), and the journal record itself (the baseline, kept until pruned)."""
    prefix = f"bench-{uuid.uuid4().hex}:"
    fake = FakeConnector("answers")
    async with raw_client(url) as client, cb.RedisStore.from_url(url, prefix=prefix) as store:

        async def used() -> int:
            return int(str((await client.info("memory"))["used_memory"]))

        await store.journal_add([fake.message("warm", id="warm")])
        before = await used()
        for i in range(ANSWERS):
            await store.journal_add([fake.message("hello there", id=f"m{i}")])
        after = await used()
        answers = [key async for key in client.scan_iter(match=f"{prefix}*:add:*")]
        for first in range(0, len(answers), 1000):
            await client.delete(answers[first : first + 1000])
        journal = await used()
    return (after - journal) / ANSWERS, (journal - before) / ANSWERS


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


async def fill_pending(url: str, prefix: str) -> list[str]:
    """PENDING_ACCOUNTS accounts with PENDING_EACH pending messages each; their hash tags."""
    async with cb.RedisStore.from_url(url, prefix=prefix) as store:
        for i in range(PENDING_ACCOUNTS):
            fake = FakeConnector(f"p{i}")
            await store.journal_add([fake.message("m", id=str(n)) for n in range(PENDING_EACH)])
    return [f"fake:p{i}" for i in range(PENDING_ACCOUNTS)]


async def store_pending(url: str, prefix: str, tags: list[str]) -> float:
    async with cb.RedisStore.from_url(url, prefix=prefix) as store:
        start = time.perf_counter()
        assert len(await store.journal_pending()) == len(tags) * PENDING_EACH
        return time.perf_counter() - start


async def raw_pending(url: str, prefix: str, tags: list[str]) -> float:
    """The same reads through coredis pipelines: every account's pending ids, then their
    bodies and times; decoded and sorted as the store does."""
    async with raw_client(url) as client:
        start = time.perf_counter()
        async with client.pipeline(transaction=False) as pipe:
            listed = [pipe.zrange(f"{prefix}{{{tag}}}:pending", 0, -1) for tag in tags]
        ids = [list(await request) for request in listed]
        async with client.pipeline(transaction=False) as pipe:
            read = [
                (pipe.hmget(f"{prefix}{{{tag}}}:body", i), pipe.hmget(f"{prefix}{{{tag}}}:recv", i))
                for tag, i in zip(tags, ids, strict=True)
            ]
        found = []
        for bodies, received in read:
            for seq, (body, at) in enumerate(zip(await bodies, await received, strict=True)):
                found.append((float(at or 0), seq, msgspec.json.decode(str(body), type=cb.Message)))
        found.sort(key=lambda f: (f[0], f[1]))
        assert len(found) == len(tags) * PENDING_EACH
        return time.perf_counter() - start


async def per_message_pending(url: str, prefix: str, tags: list[str]) -> float:
    """As journal_pending read before: each account's bodies, then one HGET per message."""
    async with raw_client(url) as client:
        start = time.perf_counter()
        found = []
        for tag in tags:
            ids = list(await client.zrange(f"{prefix}{{{tag}}}:pending", 0, -1))
            bodies = await client.hmget(f"{prefix}{{{tag}}}:body", ids)
            for seq, body in enumerate(bodies):
                message = msgspec.json.decode(str(body), type=cb.Message)
                received = await client.hget(f"{prefix}{{{tag}}}:recv", message.id)
                found.append((float(received or 0), seq, message))
        found.sort(key=lambda f: (f[0], f[1]))
        return time.perf_counter() - start


def pending_times(url: str) -> tuple[float, float, float]:
    """Median seconds of the store's, the raw pipelines' and the per-message reads, taking
    turns on one filled journal (a read changes nothing)."""
    prefix = f"bench-{uuid.uuid4().hex}:"
    tags = trio.run(fill_pending, url, prefix)
    times: tuple[list[float], ...] = ([], [], [])
    for _ in range(RUNS):
        for i, fn in enumerate((store_pending, raw_pending, per_message_pending)):
            times[i].append(trio.run(fn, url, prefix, tags))
    ours, raw, before = (statistics.median(t) for t in times)
    return ours, raw, before


async def takeover(url: str, graceful: bool) -> tuple[float, float]:
    """Seconds from the owner's SIGKILL (or SIGTERM: a graceful stop) until the other
    process's connector runs (each bridge prints a line when its connector starts), and how
    much of it the killed owner's lease still had to run (read from Redis right after the
    kill; nan after a graceful stop, which releases it)."""
    prefix = f"bench-{uuid.uuid4().hex}:"
    command = [sys.executable, "-m", "benchmarks.redis", "bridge", url, prefix]
    send, receive = trio.open_memory_channel[tuple[int, float]](10)
    children: list[trio.Process] = []
    took = left = math.nan
    async with raw_client(url) as client, trio.open_nursery() as nursery:
        try:
            for _ in range(2):
                child = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
                children.append(child)
                nursery.start_soon(_say_running, child, send.clone())
            owner, _ = await receive.receive()

            async def both_members() -> bool:
                return await client.zcard(f"{prefix}members:default") == 2

            await poll(both_members)
            # Kill at a random point of the owner's round, not just after it acquired the
            # lease (its first round, as the standby joins): a lease with a whole TTL left.
            await trio.sleep(TAKEOVER_TTL * (1 + random.random()))
            killed = time.perf_counter()
            os.kill(owner, signal.SIGTERM if graceful else signal.SIGKILL)
            if not graceful:
                ttl_ms = await client.pttl(f"{prefix}{{fake:solo}}:lease")
                left = time.perf_counter() - killed + ttl_ms / 1000  # ~ when Redis read it
            while True:
                pid, at = await receive.receive()
                if pid != owner:
                    took = at - killed
                    break
        finally:
            for child in children:
                child.kill()
                await child.wait()
            nursery.cancel_scope.cancel()
    return took, left


async def _say_running(
    child: trio.Process, send: trio.MemorySendChannel[tuple[int, float]]
) -> None:
    """Send (pid, time) each time ``child`` prints that its connector runs."""
    assert child.stdout is not None
    buffer = b""
    async for chunk in child.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line == b"running":
                await send.send((child.pid, time.perf_counter()))


async def poll(condition: Callable[[], Awaitable[bool]]) -> None:
    """Poll what other processes do (nothing to wait on here) every 5 ms until it holds."""
    while True:
        if await condition():
            return
        await trio.sleep(0.005)


async def run_bridge(url: str, prefix: str) -> None:
    """A bridge process for the takeover figure: one idle account, a short TTL; prints
    ``running`` each time its connector starts; SIGTERM stops it gracefully."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    async def say_running(bridge: cb.Bridge) -> None:
        was = False
        async for statuses in bridge.status_changes():
            now = statuses["fake:solo"].state == "running"
            if now and not was:
                print("running", flush=True)
            was = now

    store = cb.RedisStore.from_url(url, prefix=prefix)
    leases = cb.Leases(ttl=TAKEOVER_TTL)
    bridge = cb.Bridge([FakeConnector("solo")], agent, store=store, leases=leases)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(say_running, bridge)
        await cb.serve(bridge)
        nursery.cancel_scope.cancel()


def takeover_rows(url: str, graceful: bool) -> list[tuple[str, str]]:
    """The takeover's median and worst; after a kill, also what it is made of: the lease
    the owner had left, then the standby's reaction (from that expiry to its connector
    running)."""
    runs = [trio.run(takeover, url, graceful) for _ in range(TAKEOVERS)]
    took = [t for t, _ in runs]
    how = "SIGTERM (graceful stop)" if graceful else "SIGKILL"
    median, worst = statistics.median(took), max(took)
    rows = [
        (
            f"takeover after {how}, TTL {TAKEOVER_TTL:g} s (median, worst of {TAKEOVERS})",
            f"{median:.3f} s = {median / TAKEOVER_TTL:.2f} TTL; worst {worst:.3f} s "
            f"= {worst / TAKEOVER_TTL:.2f} TTL",
        )
    ]
    if not graceful:
        left = [lease for _, lease in runs]
        reaction = [t - lease for t, lease in runs]
        rows += [
            (
                "  of which: the killed owner's lease left to run",
                f"median {statistics.median(left):.3f} s, worst {max(left):.3f} s",
            ),
            (
                "  of which: the standby's reaction (expiry to its connector running)",
                f"median {statistics.median(reaction) * 1000:.0f} ms, "
                f"worst {max(reaction) * 1000:.0f} ms",
            ),
        ]
    return rows


def bench_redis() -> None:
    """RedisStore against raw coredis: journal puts, lease renewals, pending reads, memory,
    takeover."""
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
        ours, raw = versus(url, store_round_renewals, raw_round_renewals)
        rows += [
            (
                f"a round's renewals ({ACCOUNTS:,} leases), raw pipelines",
                f"{RENEWALS / raw:,.0f}/s",
            ),
            (
                f"a round's renewals ({ACCOUNTS:,} leases), renew_leases",
                f"{RENEWALS / ours:,.0f}/s",
            ),
            ("ratio (RedisStore / raw)", f"{raw / ours:.2f}x  (target >= 0.7x)"),
        ]
        redis_bytes = median_of_runs(lambda: trio.run(redis_memory_per_account, url))
        bridge_bytes = median_of_runs(lambda: trio.run(bridge_memory_per_account, url))
        answer_bytes, journal_bytes = (
            statistics.median(m)
            for m in zip(
                *(trio.run(answer_memory_per_write, url) for _ in range(RUNS)), strict=True
            )
        )
        rows += [
            ("Redis memory per journal write: its record", f"{journal_bytes:,.0f} bytes"),
            ("Redis memory per journal write: its answer, 60 s", f"{answer_bytes:,.0f} bytes"),
            ("ratio (answer / record)", f"{answer_bytes / journal_bytes:.2f}x"),
        ]
        rows += [
            ("Redis memory per account", f"{redis_bytes:,.0f} bytes"),
            ("bridge memory per account (idle)", f"{bridge_bytes / 1024:,.1f} KiB"),
        ]
        ours, raw, before = pending_times(url)
        total = PENDING_ACCOUNTS * PENDING_EACH
        rows += [
            (
                f"journal_pending, {PENDING_ACCOUNTS} accounts x {PENDING_EACH}: raw pipelines",
                f"{raw * 1000:.0f} ms  ({total / raw:,.0f} messages/s)",
            ),
            ("journal_pending, RedisStore", f"{ours * 1000:.0f} ms  ({total / ours:,.0f}/s)"),
            ("ratio (RedisStore / raw)", f"{raw / ours:.2f}x  (target >= 0.7x)"),
            ("one HGET per message (the read before)", f"{before * 1000:.0f} ms"),
        ]
        rows += takeover_rows(url, graceful=False) + takeover_rows(url, graceful=True)
    report(f"RedisStore (medians of {RUNS})", rows)


def bench_takeover() -> None:
    """The takeover rows alone (``python -m benchmarks.redis takeover``)."""
    with redis_url() as url:
        rows = takeover_rows(url, graceful=False) + takeover_rows(url, graceful=True)
    report("RedisStore takeover", rows)


BENCHMARKS = {"redis": bench_redis, "redis-accounts": bench_idle_accounts}

if __name__ == "__main__":
    if sys.argv[1:2] == ["bridge"]:
        trio.run(run_bridge, sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["takeover"]:
        bench_takeover()

"""Accounts per process: idle WeChat accounts, each a real ``weixin.LongPoll`` parked in a long
poll on the loopback emulator (its own process, holding each poll 35 s as iLink does).

For N accounts (100 and 1,000: medians of three runs), each in a fresh process: the memory
the accounts added (resident set, from before the first client was built until every account
is parked), the CPU time the process spends while they sit idle, per account, and for the
bridges the leases' behaviour: acquisitions per account over the run (1 unless a lease lapsed
and was taken again), leases lost, renewals a second while idle.
Four ways, taking turns:

- ``raw``: the baseline, N tasks each polling ``getupdates`` in a loop with its own httpx
  client (as each connector has its own by default), the clients sharing one TLS context
  (as the library's do), nothing else;
- ``memory``: a bridge of N connectors on a ``MemoryStore`` (no leases), a diagnostic run
  apart (``python -m benchmarks.redis_accounts memory N REDIS_URL < emulator.json``);
- ``redis``: the same bridge on a ``RedisStore``, so each account also holds a lease, renewed
  every third of the TTL (15 s), and the process beats in the membership;
- ``shared``: as ``redis``, the connectors sharing one httpx client (``LongPoll(http=...)``,
  its pool unbounded so that every poll has its connection).

"Parked": for the bridges, every connector ``running`` (its first poll answered, the next
one in flight); for the baseline, every client built and its first poll sent.

``python -m benchmarks redis-accounts``.
"""

from __future__ import annotations

import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import httpx
import trio

import trio_chatbridge as cb
from trio_chatbridge.platforms import weixin
from trio_chatbridge.testing import redis_server

from ._util import emulator_process, report

RUNS_BY_COUNT: Final = {100: 3, 1_000: 3}
KINDS: Final = ("raw", "memory", "redis", "shared")
MEASURED: Final = ("raw", "redis", "shared")  # what a run measures (``memory``: on demand)
SETTLE_LIMIT: Final = 300.0  # seconds: a way whose accounts are not all parked by then failed
WINDOW: Final = 40.0  # seconds idle under measure: every poll (held 35 s) comes back once
SETTLE: Final = 3.0  # seconds after every account is parked, before measuring
POLL_TIMEOUT: Final = 60.0  # seconds, longer than the emulator's hold


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _raw(info: dict[str, Any], parked: list[int], tls: ssl.SSLContext) -> None:
    """One account's baseline: poll, take the cursor, poll again."""
    headers = {"Authorization": f"Bearer {info['token']}"}
    cursor = ""
    async with httpx.AsyncClient(timeout=POLL_TIMEOUT, verify=tls) as http:
        parked[0] += 1
        while True:
            response = await http.post(
                info["base_url"] + "ilink/bot/getupdates",
                content=json.dumps({"get_updates_buf": cursor}),
                headers=headers,
            )
            cursor = response.json().get("get_updates_buf", cursor)


async def _noop(batch: cb.Batch, reply: cb.Reply) -> None:
    pass


async def idle(kind: str, count: int, info: dict[str, Any], redis: str) -> dict[str, float]:
    """Park ``count`` accounts the ``kind`` way; what they cost (run in a fresh process)."""
    rss_before, cpu_before = rss_mib(), cpu_seconds()
    started = trio.current_time()
    bridge: cb.Bridge | None = None
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        if kind == "raw":
            parked, tls = [0], httpx.create_ssl_context()
            for _ in range(count):
                nursery.start_soon(_raw, info, parked, tls)
            while parked[0] < count:  # noqa: ASYNC110 - counting other tasks' progress
                await trio.sleep(0.05)
        else:
            options: dict[str, Any] = {}
            if kind == "shared":
                unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=None)
                client = httpx.AsyncClient(limits=unbounded)
                options["http"] = await stack.enter_async_context(client)
            connectors = [
                weixin.LongPoll(
                    account=f"acct{i}",
                    token=info["token"],
                    base_url=info["base_url"],
                    cdn_base_url=info["cdn_base_url"],
                    **options,
                )
                for i in range(count)
            ]
            store: cb.Store = (
                cb.MemoryStore()
                if kind == "memory"
                else cb.RedisStore.from_url(redis, prefix=f"bench-{uuid.uuid4().hex}:")
            )
            bridge = cb.Bridge(connectors, _noop, store=store)
            await nursery.start(bridge.run)
            with trio.fail_after(SETTLE_LIMIT):
                await bridge.wait_status(lambda s: all(c.state == "running" for c in s.values()))
        startup_cpu = cpu_seconds() - cpu_before
        startup_s = trio.current_time() - started
        await trio.sleep(SETTLE)
        rss_parked, cpu_parked = rss_mib(), cpu_seconds()
        renewed = _lease_counts(bridge)["lease.renewed"]
        await trio.sleep(WINDOW)
        cpu_idle = cpu_seconds() - cpu_parked
        leases = _lease_counts(bridge)
        nursery.cancel_scope.cancel()
    return {
        "kib_per_account": (rss_parked - rss_before) * 1024 / count,
        "cpu_us_per_account_s": cpu_idle / WINDOW / count * 1e6,
        "startup_cpu_ms_per_account": startup_cpu / count * 1e3,
        "startup_s": startup_s,
        "acquired_per_account": leases["lease.acquired"] / count,
        "lost": leases["lease.lost"],
        "renewals_per_s": (leases["lease.renewed"] - renewed) / WINDOW,
    }


def _lease_counts(bridge: cb.Bridge | None) -> dict[str, int]:
    """The bridge's lease counters (all zero for the baseline, which has no bridge)."""
    other = bridge.stats().other if bridge is not None else {}
    return {k: other.get(k, 0) for k in ("lease.acquired", "lease.lost", "lease.renewed")}


def _one(kind: str, count: int, redis: str) -> dict[str, float] | None:
    """One run in a fresh process, or None when its accounts were not all parked in time."""
    with emulator_process("weixin") as info:
        try:
            output = subprocess.run(
                [sys.executable, "-m", "benchmarks.redis_accounts", kind, str(count), redis],
                input=json.dumps(info),
                capture_output=True,
                text=True,
                check=True,
                timeout=SETTLE_LIMIT + WINDOW + SETTLE,
            ).stdout
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
            return None  # the child gave up waiting (fail_after) or was stopped
    result: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return result


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _lease_row(runs: list[dict[str, float]]) -> str:
    """The leases' part of a bridge's row: the worst run's acquisitions per account (1: no
    lease lapsed and was taken again) and leases lost, the median renewals a second."""
    renewals = statistics.median(run["renewals_per_s"] for run in runs)
    return (
        f"; lease acquisitions per account {max(r['acquired_per_account'] for r in runs):g} "
        f"(worst run), leases lost {max(r['lost'] for r in runs):g}, "
        f"{renewals:.0f} renewals/s"
    )


def bench_idle_accounts() -> None:
    """Memory and CPU per idle WeChat account: connectors on both stores against raw polls."""
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    failed: set[tuple[str, int]] = set()
    with tempfile.TemporaryDirectory() as directory, redis_server(Path(directory)) as server:
        for count, runs in RUNS_BY_COUNT.items():
            for _ in range(runs):
                for kind in MEASURED:
                    if (kind, count) in failed:
                        continue
                    result = _one(kind, count, server.url)
                    print(kind, count, json.dumps(result), file=sys.stderr, flush=True)
                    if result is None:
                        failed.add((kind, count))
                    else:
                        results.setdefault((kind, count), []).append(result)
    rows: list[tuple[str, str]] = []
    for count in RUNS_BY_COUNT:
        raw = _medians(results[("raw", count)])
        for kind in MEASURED:
            if (kind, count) in failed:
                rows.append((f"{count:,} accounts, {kind}", "not all parked in time"))
                continue
            m = _medians(results[(kind, count)])
            memory, cpu = m["kib_per_account"], m["cpu_us_per_account_s"]
            leases = "" if kind == "raw" else _lease_row(results[(kind, count)])
            rows.append(
                (
                    f"{count:,} accounts, {kind}",
                    f"{memory:.1f} KiB/account ({memory / raw['kib_per_account']:.2f}x raw), "
                    f"idle CPU {cpu:.1f} us/account/s ({cpu / raw['cpu_us_per_account_s']:.2f}x "
                    f"raw), start {m['startup_cpu_ms_per_account']:.1f} ms CPU/account, "
                    f"all parked in {m['startup_s']:.1f} s{leases}",
                )
            )
    how = ", ".join(f"{n:,} accounts: {r}" for n, r in RUNS_BY_COUNT.items())
    report(f"idle WeChat accounts per process (median of runs; {how})", rows)


if __name__ == "__main__":
    kind, count, redis = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    print(json.dumps(trio.run(idle, kind, count, json.loads(sys.stdin.read()), redis)))

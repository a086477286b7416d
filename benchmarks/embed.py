"""The cost of running from asyncio: a bridge as a Trio guest with an asyncio agent.

The same work both ways: MESSAGES messages, each its own session, each answered with one
``send``. The baseline is a Trio agent under ``trio.run``; against it, ``asyncio_bridge`` with
an ``asyncio_agent`` under ``asyncio.run``, where each run is an asyncio task and its reply
crosses back to Trio.
"""

from __future__ import annotations

import asyncio
import time

import trio

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector

from ._util import REPEAT, peak_rss_mib, report

MESSAGES = 5_000


def _bridge(agent: cb.Agent) -> tuple[cb.Bridge, FakeConnector, trio.Event]:
    answered = trio.Event()
    chat = FakeConnector()

    def count(target: cb.Message, text: str) -> None:
        if len(chat.sent) + 1 == MESSAGES:  # on_write comes just before the reply is recorded
            answered.set()

    chat.on_write = count
    bridge = cb.Bridge(
        [chat], agent, store=cb.MemoryStore(), debounce=cb.Debounce(window=0.0), concurrency=64
    )
    return bridge, chat, answered


async def _deliver_and_wait(chat: FakeConnector, answered: trio.Event) -> tuple[float, float]:
    """Deliver every message at once; wall and CPU seconds until the last reply (start-up
    excluded; CPU is the whole process's, Trio's I/O thread in guest mode included)."""
    messages = [chat.message("hi", chat=f"c{i}") for i in range(MESSAGES)]
    start, cpu = time.perf_counter(), time.process_time()
    chat.deliver(*messages)
    await answered.wait()
    return time.perf_counter() - start, time.process_time() - cpu


async def trio_agent(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send("ok")


async def asyncio_agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
    await reply.send("ok")


def run_trio() -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        bridge, chat, answered = _bridge(trio_agent)
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            seconds = await _deliver_and_wait(chat, answered)
            nursery.cancel_scope.cancel()
        return seconds

    return trio.run(main)


def run_asyncio() -> tuple[float, float]:
    async def main() -> tuple[float, float]:
        bridge, chat, answered = _bridge(cb.asyncio_agent(asyncio_agent))
        async with cb.asyncio_bridge(bridge) as running:
            return await running.call(_deliver_and_wait, chat, answered)

    return asyncio.run(main())


def bench_asyncio_agent() -> None:
    """An asyncio agent in guest mode against a Trio agent, same messages, same replies."""
    trio_best = asyncio_best = (float("inf"), float("inf"))
    for _ in range(REPEAT):  # taking turns, best of each
        trio_best = min(trio_best, run_trio())
        asyncio_best = min(asyncio_best, run_asyncio())
    (trio_wall, trio_cpu), (asyncio_wall, asyncio_cpu) = trio_best, asyncio_best
    report(
        f"asyncio guest: {MESSAGES:,} one-message sessions, one send each",
        [
            (
                "Trio agent, trio.run (baseline)",
                f"{trio_wall:.3f} s, CPU {trio_cpu:.3f} s  ({MESSAGES / trio_wall:,.0f}/s)",
            ),
            (
                "asyncio agent, asyncio_bridge",
                f"{asyncio_wall:.3f} s, CPU {asyncio_cpu:.3f} s"
                f"  ({MESSAGES / asyncio_wall:,.0f}/s)",
            ),
            ("ratio (asyncio / Trio time)", f"{asyncio_wall / trio_wall:.2f}x"),
            ("peak RSS of the process", f"{peak_rss_mib():.0f} MiB"),
        ],
    )


BENCHMARKS = {"asyncio": bench_asyncio_agent}

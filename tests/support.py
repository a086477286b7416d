"""What the platform tests share: small agents, and a bridge on a running emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

import trio_chatbridge as cb
from trio_chatbridge.testing import LarkEmulator, WeComEmulator, open_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def streamer(pause: float) -> cb.Agent:
    """An agent that streams the batch back word by word, ``pause`` seconds apart."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for word in batch.text.split():
                await out.write(word + " ")
                await trio.sleep(pause)

    return agent


@asynccontextmanager
async def emulator_bridge(
    emulator: LarkEmulator | WeComEmulator,
    connector: Callable[[], cb.Connector],
    agent: cb.Agent,
    **options: Any,
) -> AsyncIterator[cb.Bridge]:
    """Run ``emulator`` (in memory) and a bridge on ``connector()`` with quick test defaults:
    a memory store, a 1 s debounce window, a 1 s backoff without jitter."""
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        options.setdefault("store", cb.MemoryStore())
        options.setdefault("debounce", cb.Debounce(window=1.0))
        options.setdefault("backoff", cb.Backoff(initial=1.0, jitter=0.0))
        async with open_bridge(cb.Bridge([connector()], agent, **options)) as bridge:
            yield bridge
        nursery.cancel_scope.cancel()

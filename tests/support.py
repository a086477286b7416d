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


class Lives:
    """A bridge a test can restart, gracefully or killed (cancelled mid-run), as a process
    would be: each life is a new :class:`Bridge` from ``make``, in ``nursery``."""

    def __init__(self, nursery: trio.Nursery, make: Callable[[], cb.Bridge]) -> None:
        self._nursery = nursery
        self._make = make
        self.bridge = make()
        self._ended = trio.Event()
        self._scope = trio.CancelScope()

    async def start(self) -> None:
        self._scope = await self._nursery.start(self._live, self.bridge, self._ended)

    async def restart(self, *, kill: bool) -> None:
        """End this life (killed: cancelled at once), then start the next one."""
        await self.stop(kill=kill)
        self.bridge, self._ended = self._make(), trio.Event()
        await self.start()

    async def stop(self, *, kill: bool = False) -> None:
        if kill:
            self._scope.cancel()
        else:
            self.bridge.shutdown()
        await self._ended.wait()

    @staticmethod
    async def _live(
        bridge: cb.Bridge, ended: trio.Event, *, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                task_status.started(scope)
        ended.set()

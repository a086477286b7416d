"""Run a bridge for the length of an ``async with`` block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._bridge import Bridge


@asynccontextmanager
async def open_bridge(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Start ``bridge`` (connectors up), yield it, then shut it down gracefully on exit.

    ``async with open_bridge(bridge): ...`` is how tests talk to a running bridge.
    """
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        try:
            yield bridge
        finally:
            bridge.shutdown()

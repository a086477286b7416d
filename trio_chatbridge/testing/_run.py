"""Run a bridge for the length of an ``async with`` block, its connectors up: what tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .._bridge import Bridge, running
from .._status import Statuses


def settled(statuses: Statuses) -> bool:
    """Every connector has come up at least once, or is failed or paused (the platform said
    it cannot serve for now: an expired WeChat session)."""
    return all(s.connects > 0 or s.state in ("failed", "paused") for s in statuses.values())


@asynccontextmanager
async def running_bridge(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Start ``bridge``, wait until each connector has come up once (or failed, or paused), yield
    it, then shut it down gracefully on exit.

    ``async with running_bridge(bridge): ...`` is how tests talk to a running bridge; waiting for
    the connectors keeps a test from speaking before anyone listens. The name says what the block
    gets: a bridge whose connectors are running. :func:`trio_chatbridge.open_bridge` is the one
    that never waits (what an application uses: a slow platform must not hold up its start-up).

    If cancelled (while waiting or in the block), the bridge stops at once, as a cancelled
    ``bridge.run`` does: journaled messages not yet answered are replayed at the next start.
    """
    async with running(bridge):
        await bridge.wait_status(settled)
        yield bridge

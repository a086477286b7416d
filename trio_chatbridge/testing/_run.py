"""Run a bridge for the length of an ``async with`` block, its connectors up."""

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
async def open_bridge(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Start ``bridge``, wait until each connector has come up once (or failed, or paused), yield
    it, then shut it down gracefully on exit.

    ``async with open_bridge(bridge): ...`` is how tests talk to a running bridge; waiting for
    the connectors keeps a test from speaking before anyone listens. An application that must
    not wait uses :func:`trio_chatbridge.open_bridge` instead.
    """
    async with running(bridge):
        await bridge.wait_status(settled)
        yield bridge

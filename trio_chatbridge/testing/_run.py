"""Run a bridge for the length of an ``async with`` block, its connectors up: what tests use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .._bridge import Bridge, running
from .._status import Statuses


def settled(statuses: Statuses) -> bool:
    """Every connector has come up at least once, failed for good, or is paused (the platform
    said it cannot serve for now: an expired WeChat session)."""
    return all(s.connects > 0 or s.state in ("failed", "paused") for s in statuses.values())


@asynccontextmanager
async def running_bridge(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Start ``bridge``, wait until each connector has come up once, failed for good (state
    ``failed``: a fatal error, never retried) or paused, yield it, then shut it down gracefully
    on exit. A connector that keeps failing and retrying (``backoff``) is waited for: bound the
    block with ``trio.fail_after``.

    ``async with running_bridge(bridge): ...`` is how tests talk to a running bridge; waiting for
    the connectors keeps a test from speaking before anyone listens. The name says what the block
    gets: a bridge whose connectors are running. An application uses ``cb.open_bridge`` instead
    (:func:`trio_chatbridge.open_bridge`), which never waits for the connectors: a slow or
    unreachable platform must not hold up its start-up.

    If cancelled (while waiting or in the block), the bridge stops at once, as a cancelled
    ``bridge.run`` does: journaled messages not yet answered are replayed at the next start.
    """
    async with running(bridge):
        await bridge.wait_status(settled)
        yield bridge

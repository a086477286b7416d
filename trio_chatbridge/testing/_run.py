"""Run a bridge for the length of an ``async with`` block, its connectors up: what tests use."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._bridge import Bridge, running
from .._errors import ChatBridgeError
from .._messages import Batch
from .._status import Statuses


class AgentFailed(ChatBridgeError):
    """An agent run failed inside :func:`running_bridge`: the test's bot has a bug (the cause is
    what the agent raised), or ran past ``run_timeout``."""


class ConnectorsNotUp(ChatBridgeError):
    """A connector did not come up within :func:`running_bridge`'s ``start_timeout``: an
    emulator the test never started, a connector pointed at the wrong address. The message
    names each connector still waiting, its state and what it last failed with."""


def settled(statuses: Statuses) -> bool:
    """Every connector has come up at least once, failed for good, or is paused (the platform
    said it cannot serve for now: an expired WeChat session)."""
    return all(s.connects > 0 or s.state in ("failed", "paused") for s in statuses.values())


@asynccontextmanager
async def running_bridge(
    bridge: Bridge, *, fail_on_agent_error: bool = True, start_timeout: float | None = 60
) -> AsyncIterator[Bridge]:
    """Start ``bridge``, wait until each connector has come up once, failed for good (state
    ``failed``: a fatal error, never retried) or paused, yield it, then shut it down gracefully
    on exit.

    A connector that keeps failing and retrying (``backoff``) is waited for up to
    ``start_timeout`` seconds on Trio's clock (virtual under ``autojump_clock``: no real
    time), then the bridge stops and :class:`ConnectorsNotUp` says which connector and what
    it last failed with (an emulator not started says "start the emulator first"). A test
    that waits through long backoffs on purpose passes a larger value or None (wait for good;
    bound the block with ``trio.fail_after`` then).

    An agent run that fails (raises, or runs past ``run_timeout``) ends the block at once
    with :class:`AgentFailed`, the agent's exception as its cause: a test waiting for a reply
    that a bug keeps from coming fails with that bug, instead of waiting for good. A test of
    how failures are handled passes ``fail_on_agent_error=False``: failures are then only
    logged and counted, as the bridge does.

    ``async with running_bridge(bridge): ...`` is how tests talk to a running bridge; waiting for
    the connectors keeps a test from speaking before anyone listens. The name says what the block
    gets: a bridge whose connectors are running. An application uses ``cb.open_bridge`` instead
    (:func:`trio_chatbridge.open_bridge`), which never waits for the connectors: a slow or
    unreachable platform must not hold up its start-up.

    If cancelled (while waiting or in the block), the bridge stops at once, as a cancelled
    ``bridge.run`` does: journaled messages not yet answered are replayed at the next start.
    """
    failures: list[AgentFailed] = []
    with trio.CancelScope() as block:

        def failed(batch: Batch, error: str, exception: BaseException | None) -> None:
            if not failures:
                failure = AgentFailed(f"the agent failed on session {batch.session}: {error}")
                failure.__cause__ = exception
                failures.append(failure)
            block.cancel()

        remove = bridge.add_failure_listener(failed) if fail_on_agent_error else None
        try:
            async with running(bridge):
                limit = math.inf if start_timeout is None else start_timeout
                with trio.move_on_after(limit):
                    await bridge.wait_status(settled)
                statuses = bridge.status()  # (one that came up as the time ran out is up)
                if not settled(statuses):
                    raise ConnectorsNotUp(_not_up(statuses, limit))
                yield bridge
        finally:
            if remove is not None:
                remove()
    if failures:
        raise failures[0]


def _not_up(statuses: Statuses, waited: float) -> str:
    waiting = ", ".join(
        f"{name} ({s.state}, {s.restarts} restarts, last error: {s.last_error or 'none'})"
        for name, s in statuses.items()
        if not settled({name: s})
    )
    return (
        f"after {waited:g} s, not every connector has come up: {waiting}. A test that means "
        "to wait longer passes running_bridge(bridge, start_timeout=None)"
    )

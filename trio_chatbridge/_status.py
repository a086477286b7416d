"""Connector status as something to wait on: the latest state of each, and its changes.

The supervisors publish each connector's :class:`ConnectorStatus` here; an application, a
health check or a test reads the current states, waits until they satisfy a condition, or
iterates over the changes. Changes are coalesced, never queued: a reader that falls behind
sees the latest states at its next step, so a slow reader costs no memory and never slows a
connector down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Self, final

import trio

from ._connector import ConnectorStatus
from ._errors import ChatBridgeError

Statuses = Mapping[str, ConnectorStatus]
"""Each connector's status by ``platform:account``."""


class StatusBoard:
    """The latest status of each connector, with a wake-up for every change."""

    def __init__(self, names: Iterable[str]) -> None:
        self._statuses = {name: ConnectorStatus(name, "starting") for name in names}
        self._version = 0
        self._changed = trio.Event()
        self._closed = False

    def publish(self, status: ConnectorStatus) -> None:
        """Record ``status`` (keyed by its name) and wake every waiter if it changed."""
        if self._statuses.get(status.name) == status:
            return
        self._statuses[status.name] = status
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        """No change follows (the bridge has stopped): iterators end, waiters give up."""
        self._closed = True
        self._changed.set()

    def snapshot(self) -> Statuses:
        """A read-only copy of the current statuses."""
        return MappingProxyType(dict(self._statuses))

    async def wait_for(self, predicate: Callable[[Statuses], bool]) -> Statuses:
        """Wait until ``predicate(statuses)`` holds; returns the statuses that satisfied it.

        Raises :class:`ChatBridgeError` if the bridge stops first. If cancelled, nothing changes.
        Always a checkpoint, even when the statuses already satisfy ``predicate``.
        """
        await trio.lowlevel.checkpoint()
        while True:
            statuses = self.snapshot()
            if predicate(statuses):
                return statuses
            if self._closed:
                raise ChatBridgeError(
                    "the bridge stopped before its connectors reached the awaited state; "
                    f"last states: {_summary(statuses)}"
                )
            await self._changed.wait()

    def changes(self) -> StatusChanges:
        """An async iterator over the statuses: now, then after each change (see the class)."""
        return StatusChanges(self)


@final
class StatusChanges:
    """``async for statuses in bridge.status_changes()``: the current statuses at once, then
    the statuses after each change, until the bridge stops.

    Several changes that happen while the loop body runs come as one step, showing the latest
    states (coalesced, never queued). Cancelling the loop loses nothing.
    """

    def __init__(self, _board: StatusBoard) -> None:  # built by the bridge, not by users
        self._board = _board
        self._seen: int | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Statuses:
        board = self._board
        if self._seen is not None:
            while board._version == self._seen:
                if board._closed:
                    raise StopAsyncIteration
                await board._changed.wait()
        else:
            await trio.lowlevel.checkpoint()
        self._seen = board._version
        return board.snapshot()


def _summary(statuses: Statuses) -> str:
    return ", ".join(f"{name} {s.state}" for name, s in statuses.items()) or "no connectors"

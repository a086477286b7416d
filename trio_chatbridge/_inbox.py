"""The inbox: journal first, then a bounded channel towards the debouncer.

``put`` returns only once the new messages are durable and queued, so a connector that
acknowledges after it never loses one. The channel is bounded: a slow agent pushes back on
the connectors instead of growing memory. One channel item is the tuple of new messages of
one ``put``, so a connector that hands over a page of messages pays one channel hop for it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

import trio

from . import _stats
from ._messages import Message
from .stores import Store
from .stores._codec import encodes

log = logging.getLogger("trio_chatbridge.inbox")

ORPHANS: Final = 1000
"""Cancelled puts (each up to one connector batch) that may wait for :meth:`Inbox.run` to
forward them. Drivers cancel a put only when a connection is torn down, so a few wait at most;
past this bound (a connector cancelling its puts in a loop), they wait in the journal for the
next start instead of in memory."""


class Inbox:
    """Accepts messages from connectors; see the module docstring."""

    def __init__(
        self,
        store: Store,
        out: trio.MemorySendChannel[tuple[Message, ...]],
        counters: Counter[str],
        on_new: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        self._store = store
        self._on_new = on_new
        """Told of each put's new messages (arrival times, for latency metrics)."""
        self._out = out
        self._counters = counters
        # Messages whose put was cancelled after journaling: forwarded by run(), never lost.
        self._orphans_in, self._orphans_out = trio.open_memory_channel[tuple[Message, ...]](ORPHANS)
        self._closed = False

    async def put(self, messages: Sequence[Message]) -> list[Message]:
        """Journal ``messages``, drop duplicates, queue the new ones; returns the new ones.

        Each message counts once: received, a duplicate, or set aside by the store (one it
        cannot journal, counted in the store's ``undecodable``, never as a duplicate).

        Once the bridge is shutting down, new messages are only journaled: they are handled at
        the next start. If cancelled: either the store's write was cancelled before it began
        (nothing journaled, nothing queued: the connector, not having acknowledged, gets the
        messages again), or the messages are journaled and the new ones are still delivered
        (by :meth:`run`, or from the journal at the next start), whether Cancelled is raised
        or the write completed first. A store that cannot tell whether a cancelled write
        reached it (Redis) leaves such messages to the next replay.
        """
        set_aside = self._store.undecodable
        added = await self._store.journal_add(messages)
        if all(added) and len(added) == len(messages):  # the common case: none redelivered
            new = tuple(messages)
        else:
            new = tuple(m for m, is_new in zip(messages, added, strict=True) if is_new)
            dropped = len(messages) - len(new)
            if self._store.undecodable != set_aside:  # some set aside, counted there
                old = (m for m, is_new in zip(messages, added, strict=True) if not is_new)
                dropped -= sum(not encodes(m) for m in old)
            self._counters[_stats.DUPLICATES] += dropped
        self._counters[_stats.RECEIVED] += len(new)
        if new and self._on_new is not None:
            self._on_new(new)
        if new:
            await self._forward(new)
        return list(new)

    async def replay(self, messages: Sequence[Message]) -> None:
        """Queue messages the journal holds as unfinished (at start, without journaling again).

        If cancelled while waiting for room, they are still delivered, as :meth:`put`'s are.
        """
        if messages:
            self._counters[_stats.REPLAYED] += len(messages)
            log.info("replaying %d unfinished messages from the journal", len(messages))
            await self._forward(tuple(messages))

    async def _forward(self, new: tuple[Message, ...]) -> None:
        if self._closed:
            self._counters[_stats.DEFERRED] += len(new)
            log.info("shutting down: %d new messages journaled for the next start", len(new))
            return
        try:
            await self._out.send(new)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            # The bridge shut down while this put waited for room: journaled for next start.
            self._counters[_stats.DEFERRED] += len(new)
            log.info("shutting down: %d new messages journaled for the next start", len(new))
        except trio.Cancelled:
            # trio guarantees a cancelled send sent nothing: hand the messages to run(). If
            # run() has stopped too (shutdown, or the whole bridge cancelled), they stay in the
            # journal for the next start; either way the Cancelled goes on, never an error.
            try:
                self._orphans_in.send_nowait(new)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._counters[_stats.DEFERRED] += len(new)
            except trio.WouldBlock:
                self._counters[_stats.DEFERRED] += len(new)
                log.warning(
                    "over %d cancelled puts waiting: %d new messages journaled for the next start",
                    ORPHANS,
                    len(new),
                )
            raise

    async def run(self) -> None:
        """Forward orphaned messages; ends (closing the output) after :meth:`close`.

        If cancelled, it stops forwarding and closes the output; orphans not forwarded stay
        in the journal, replayed at the next start.
        """
        async with self._out, self._orphans_out:
            async for new in self._orphans_out:
                await self._out.send(new)

    def close(self) -> None:
        """Stop forwarding (later puts only journal); :meth:`run` then closes the output."""
        self._closed = True
        self._orphans_in.close()

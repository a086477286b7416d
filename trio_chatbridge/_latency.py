"""Latency of the pipeline, for metrics: from receiving a message to its run, and to a reply.

Only kept when someone listens (``Bridge.add_latency_listener``): the inbox notes when each new
message arrived, on Trio's clock; when a run starts, its batch's earliest arrival is taken out
(so the notes never outlive their messages' runs) and the wait reported as ``"agent_start"``;
the run's first reply reports ``"reply"``. Messages replayed from the journal at start carry no
note and are not measured; nor is a run interrupted and rerun (its notes were taken). The notes
are bounded (``MAX_NOTES``): a message whose run never comes (its put cancelled and deferred, a
session dropped) would otherwise keep its note forever; past the bound the older half of the notes
goes at once (:func:`~._fifo.trim`: one at a time cost 5-27 us a message past the bound), and
those messages' waits are not measured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final, Literal, TypeAlias

import trio

from ._fifo import trim
from ._messages import Batch, Message
from .stores import JournalKey, journal_key

log = logging.getLogger("trio_chatbridge.latency")

LatencyKind: TypeAlias = Literal["agent_start", "reply"]
LatencyListener: TypeAlias = Callable[[LatencyKind, float], None]
"""Called with what was measured and its seconds."""
AGENT_START: Final = "agent_start"
REPLY: Final = "reply"
MAX_NOTES: Final = 200_000
"""Arrival notes kept at most (one per message waiting for its run; about 100 bytes each)."""


class Latencies:
    """Arrival notes of messages waiting for their run; see the module docstring."""

    def __init__(self, listeners: Sequence[LatencyListener], *, limit: int = MAX_NOTES) -> None:
        self._listeners = tuple(listeners)
        self._limit = limit
        self._arrived: dict[JournalKey, float] = {}
        self._failed: set[int] = set()  # ids of the listeners that raised (logged once)

    def received(self, messages: Sequence[Message]) -> None:
        """Note the arrival of new messages (now)."""
        now = trio.current_time()
        arrived = self._arrived
        for message in messages:
            arrived[journal_key(message)] = now
        if len(arrived) > self._limit:  # (the call only then: received() is per page)
            trim(arrived, self._limit)

    def run_started(self, batch: Batch, on_sent: Callable[[], None]) -> Callable[[], None]:
        """Report the batch's wait for its run; returns ``on_sent`` that also reports the first
        reply of the run."""
        arrivals = [
            t for m in batch.messages if (t := self._arrived.pop(journal_key(m), None)) is not None
        ]
        if not arrivals:
            return on_sent
        origin = min(arrivals)
        self._emit("agent_start", trio.current_time() - origin)
        replied = False

        def sent() -> None:
            nonlocal replied
            on_sent()
            if not replied:
                replied = True
                self._emit("reply", trio.current_time() - origin)

        return sent

    def _emit(self, kind: LatencyKind, seconds: float) -> None:
        """Tell each listener. One that raises is logged (with its traceback the first time)
        and skipped: a metrics bug never fails a run nor stops the bridge (whose journaled
        messages would fail it again at every start)."""
        for listener in self._listeners:
            try:
                listener(kind, seconds)
            except Exception:
                first = id(listener) not in self._failed  # (held by _listeners: ids stay)
                self._failed.add(id(listener))
                log.log(
                    logging.ERROR if first else logging.DEBUG,
                    "latency listener %r failed%s",
                    listener,
                    "" if first else " again",
                    exc_info=first,
                )

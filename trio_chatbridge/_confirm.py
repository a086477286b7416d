"""A run's confirmations: replies whose last frame was written, their acknowledgement not yet in.

A connector whose platform acknowledges each reply (WeCom) may end a run once the run's final
frame is written, instead of holding the run (and its concurrency slot) through the round trip:
it takes a :class:`Confirmation` from the run's :class:`Outcome` (:func:`confirmation`), and
settles it later, when the acknowledgement comes (:meth:`Confirmation.confirmed`), when the
reply failed for good (:meth:`Confirmation.failed`), or when nobody can know any more
(:meth:`Confirmation.unknown`: the connection closed). The dispatcher records the run's messages
done only once the run has ended and every confirmation of it settled: failed if one failed,
and not at all (they stay pending in the journal, replayed at the next start) if one is unknown.

The dispatcher makes one :class:`Outcome` per run and sets it in :data:`RUN` in the run's own
context, so a reply sent from the run, or from a task the run started, finds it. Once the run
has ended no confirmation can be taken (:func:`confirmation` returns None): a kept ``Reply`` or
a task that outlives its run waits for its acknowledgement, as every reply did before.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Final, final

import attrs

from ._messages import Message


@final
@attrs.define(eq=False)
class Outcome:
    """What one run came to: its messages, its failure, the confirmations it still waits for.

    ``settled`` is called once, with the outcome, when the run has ended (:meth:`end` returned
    False) and its last confirmation settled: its :attr:`messages` are then to be journaled
    with :attr:`failure` (None: done), unless :attr:`unknown`. Never for a run whose outcome is
    :meth:`ignore`-d (interrupted, or cut off by the shutdown).
    """

    settled: Callable[[Outcome], None]
    pending: int = 0
    """Confirmations taken and not settled."""
    ended: bool = False
    ignored: bool = False
    unknown: bool = False
    """A confirmation is unknown: the messages stay pending."""
    failure: str | None = None
    messages: list[Message] = attrs.Factory(list)

    def end(self, messages: list[Message], failure: str | None) -> bool:
        """The run ended with ``failure`` (None: it answered). True when nothing is left to
        wait for: the caller records :attr:`messages` with :attr:`failure` now (the run's, or
        that of a confirmation that failed already) and ``settled`` is not called; else
        ``settled`` is called when the last confirmation settles."""
        self.ended = True
        self.messages = messages
        if failure is not None:
            self.failure = failure
        return not self.pending

    def ignore(self) -> None:
        """The run was interrupted or cut off: its confirmations settle into nothing."""
        self.ended = self.ignored = True

    def _settle(self, failure: str | None, *, unknown: bool = False) -> None:
        self.pending -= 1
        self.unknown = self.unknown or unknown
        if self.failure is None:
            self.failure = failure
        if self.ended and not self.pending and not self.ignored:
            self.settled(self)


@final
@attrs.define(eq=False)
class Confirmation:
    """One reply's acknowledgement, awaited by the run's :class:`Outcome`: settle it once (a
    second settling is ignored)."""

    outcome: Outcome
    settled: bool = False

    def confirmed(self) -> None:
        """The platform took the reply (or its fallback went out)."""
        self._settle(None)

    def failed(self, why: str) -> None:
        """The reply failed for good: the run's messages are journaled as failed with ``why``."""
        self._settle(why)

    def unknown(self) -> None:
        """Nobody can tell whether the reply arrived (its connection closed): the run's
        messages stay pending in the journal, replayed at the next start."""
        self._settle(None, unknown=True)

    def withdraw(self) -> None:
        """The reply was not sent unawaited after all: its sender awaits its answer, in the
        run (nothing more to wait for here)."""
        self._settle(None)

    def _settle(self, failure: str | None, *, unknown: bool = False) -> None:
        if not self.settled:
            self.settled = True
            self.outcome._settle(failure, unknown=unknown)


RUN: Final[ContextVar[Outcome | None]] = ContextVar("trio_chatbridge.run", default=None)
"""The outcome of the run the current task belongs to (set by the dispatcher in each run's
own context; None outside a run)."""


def confirmation() -> Confirmation | None:
    """A confirmation on the current run's outcome; None outside a run or once it has ended
    (the reply must then wait for its acknowledgement itself)."""
    outcome = RUN.get()
    if outcome is None or outcome.ended:
        return None
    outcome.pending += 1
    return Confirmation(outcome)

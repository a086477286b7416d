"""Counters the bridge keeps, and the frozen snapshot users read with ``bridge.stats()``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import final

import attrs

# Names of the counters every bridge keeps; connectors add their own under "<platform>.<what>".
RECEIVED = "received"
DUPLICATES = "duplicates"
REPLAYED = "replayed"
DEFERRED = "deferred"
BATCHES = "batches"
RUNS = "runs"
FAILURES = "failures"
TIMEOUTS = "timeouts"
INTERRUPTS = "interrupts"
ABANDONED = "abandoned"
REPLIES = "replies"
RECONNECTS = "reconnects"


@final
@attrs.frozen
class Stats:
    """A snapshot of the bridge's counters since it started."""

    received: int
    """New messages accepted by the inbox."""
    duplicates: int
    """Messages dropped because the journal had them already."""
    replayed: int
    """Unfinished messages replayed from the journal at start."""
    deferred: int
    """Messages that arrived during shutdown: journaled, handled at the next start."""
    batches: int
    """Batches the debouncer let out."""
    runs: int
    """Agent runs started."""
    failures: int
    """Agent runs that raised (timeouts included)."""
    timeouts: int
    """Agent runs cut off by the per-run timeout."""
    interrupts: int
    """Agent runs cancelled because a newer batch arrived (``on_busy="interrupt"``)."""
    abandoned: int
    """Agent runs cut off by the shutdown grace period (their messages replay on next start)."""
    replies: int
    """Replies sent (a stream counts once)."""
    reconnects: int
    """Connector restarts after a transient failure."""
    protocol_errors: int
    """Bad frames or responses from a platform, survived."""
    undecodable: int
    """Journal records the store found not to decode, set aside (marked failed, never
    replayed: their messages are lost unless restored by hand; the log names each); and
    messages it could not journal (text that is not Unicode), each set aside alone."""
    other: Mapping[str, int]
    """Every other counter, by name (connector-specific ones are ``"<platform>.<what>"``)."""

    @classmethod
    def from_counter(cls, counter: Counter[str]) -> Stats:
        """The bridge's counters as a Stats: the named ones, and the rest under ``other``."""
        names = [f.name for f in attrs.fields(cls) if f.name != "other"]
        return cls(
            **{name: counter[name] for name in names},
            other={k: v for k, v in counter.items() if k not in names},
        )

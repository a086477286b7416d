"""A run's concurrency slot, lent while the run waits for the platform's acknowledgement.

The dispatcher lets ``concurrency`` runs go at once. A run whose agent sent a frame and waits
for the platform to acknowledge it (a WebSocket request's answer: WeCom's ACK of a reply)
does nothing meanwhile, so the driver lends its slot for that wait: another session's run
starts. When the answer is in, the run reclaims a slot before its agent goes on: at once when
one is free, else ahead of every session waiting to start. So at most ``concurrency`` agents
execute at once, and runs do not take turns at a platform's round trip. The driver and the
dispatcher meet here, without importing each other: the dispatcher sets :data:`RUN_SLOT` in
each run's task.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Final, Protocol


class RunSlot(Protocol):
    """The slot of the run of the current task, as a driver lends it."""

    def lend(self) -> bool:
        """Give the slot back while the run waits; whether it was lent (not when the run holds
        none, or when too many runs wait so already)."""
        ...

    async def reclaim(self) -> None:
        """Take a slot again, after :meth:`lend` returned True. If cancelled, the run holds
        no slot (the dispatcher knows)."""
        ...


RUN_SLOT: Final = ContextVar[RunSlot | None]("run_slot", default=None)
"""The slot of the agent run the current task belongs to (None outside a run)."""

"""Helpers for connectors' receive loops: taking a burst in one piece, and a cheap watchdog.

Both exist for throughput: a burst of callbacks journaled in one put costs one journal write,
one channel hop and one debouncer turn instead of one each per message, and a watchdog that
is re-armed only when it has to be spares the run loop a deadline update per frame.
"""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")

QUIET_TURNS = 2
"""Turns without a new item that end a burst. Trio runs a turn's tasks in a random order,
so one quiet turn may only mean that the producer's step came after ours."""

WATCHDOG_SLACK = 1.0
"""Seconds a watchdog may fire late: it is re-armed about once a second, not per frame."""


async def receive_burst(channel: trio.MemoryReceiveChannel[T], limit: int) -> list[T]:
    """The next item, and up to ``limit`` in all of those that follow it at once.

    After the first item, yields to the scheduler until a turn brings nothing new, so a
    burst the socket already holds comes in one piece; a lone item costs one extra turn.
    Raises :class:`trio.EndOfChannel` once the channel has ended.
    """
    items = [await channel.receive()]
    quiet = 0
    while len(items) < limit and quiet < QUIET_TURNS:
        await trio.lowlevel.checkpoint()
        before = len(items)
        while len(items) < limit:
            try:
                items.append(channel.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        quiet = quiet + 1 if len(items) == before else 0
    return items


def rearm(watchdog: trio.CancelScope, silence: float) -> None:
    """Set ``watchdog`` to fire after ``silence`` seconds without a call (within the slack).

    The deadline moves only when it is off by more than :data:`WATCHDOG_SLACK` (a first
    call, a new ``silence``, or once a second of traffic): a silent peer is noticed at most
    that late, and a busy one costs a clock read per frame instead of a deadline update.
    """
    target = trio.current_time() + silence
    if not target <= watchdog.deadline <= target + WATCHDOG_SLACK:
        watchdog.deadline = target + WATCHDOG_SLACK

"""Helpers for connectors' receive loops: taking a burst in one piece, and a cheap watchdog.

Both exist for throughput: a burst of callbacks journaled in one put costs one journal write,
one channel hop and one debouncer turn instead of one each per message, and a watchdog that
is re-armed only when it has to be spares the run loop a deadline update per frame.
"""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")

BURST_LINGER = 0.001
"""Seconds a burst waits for company after its first item: far below any debounce window."""

WATCHDOG_SLACK = 1.0
"""Seconds a watchdog may fire late: it is re-armed about once a second, not per frame."""


async def receive_burst(
    channel: trio.MemoryReceiveChannel[T], limit: int, linger: float = BURST_LINGER
) -> list[T]:
    """The next item, and up to ``limit`` in all of those that arrive within ``linger`` after it.

    One short sleep per burst, as a producer's linger: under load a burst costs this task one
    turn, not one per item; a lone item waits ``linger`` seconds (on Trio's clock). Raises
    :class:`trio.EndOfChannel` once the channel has ended.
    """
    items = [await channel.receive()]
    with trio.CancelScope(shield=True):  # taken off the channel: a cancel must not drop it
        await trio.sleep(linger)
    while len(items) < limit:
        try:
            items.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
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

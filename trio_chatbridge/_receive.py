"""Helpers for connectors' receive loops: the burst linger, a cheap watchdog, bad input
skipped the same way everywhere, and server-given timings held to a range.

The first two exist for throughput: a burst of callbacks journaled in one put costs one
journal write, one channel hop and one debouncer turn instead of one each per message (the
WebSocket driver's backlog gathers bursts for :data:`BURST_LINGER`), and a watchdog that is
re-armed only when it has to be spares the run loop a deadline update per frame.
:func:`parse_or_skip` is what every connector does with one frame, event or message from the
network: a bad one is counted in ``protocol_errors``, logged, and skipped; the loop and
every good message around it carry on. The log lines of such per-message warnings are limited
per connector and kind (:func:`warn_limited`): a hostile peer sending bad input by the
thousand cannot flood the log, while the counters stay exact.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar, TypeVarTuple

import attrs
import trio

from ._errors import ProtocolError

if TYPE_CHECKING:
    from ._connector import ConnectorContext

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")

log = logging.getLogger("trio_chatbridge.receive")


class Skipped:
    """What :func:`parse_or_skip` returns for bad input (already counted and logged)."""

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED: Final = Skipped()


def parse_or_skip(
    ctx: ConnectorContext, what: str, parse: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T | Skipped:
    """``parse(*args, **kwargs)``, or :data:`SKIPPED` when the input is bad.

    Bad input is a :class:`ProtocolError`, and any other exception a parser raises on network
    data too (a parser's bug must not end a connection): each is counted in
    ``protocol_errors`` and logged once (with a traceback when it was not a ProtocolError),
    ``what`` naming the connection and the kind of input.
    """
    try:
        return parse(*args, **kwargs)
    except Exception as exc:
        skip_bad(ctx, what, exc)
        return SKIPPED


def skip_bad(ctx: ConnectorContext, what: str, exc: Exception) -> None:
    """Count and log one bad frame, event or message (see :func:`parse_or_skip`); the log
    line is limited by :func:`warn_limited`, the count never."""
    ctx.count("protocol_errors")
    warn_limited(
        ctx,
        f"bad {what} skipped",
        "%s:%s: bad %s skipped: %s",
        ctx.platform,
        ctx.account,
        what,
        exc,
        exc_info=None if isinstance(exc, ProtocolError) else exc,
    )


LOG_BURST: Final = 5
"""Lines of one kind one connector logs in :data:`LOG_WINDOW`; the rest are only counted."""
LOG_WINDOW: Final = 60.0
"""Seconds (on Trio's clock) in which one connector logs :data:`LOG_BURST` lines of a kind."""


@attrs.define
class _Window:
    """Lines of one kind logged and held back since ``start`` (Trio's time)."""

    start: float
    logged: int = 0
    held: int = 0


# Per Trio run: a window per (platform, account, kind); kinds are the library's own words.
_WINDOWS: Final = trio.lowlevel.RunVar[dict[tuple[str, str, str], _Window]]("log_windows")


def warn_limited(
    ctx: ConnectorContext, kind: str, msg: str, *args: object, exc_info: Exception | None = None
) -> None:
    """``log.warning(msg, *args)``, unless ``ctx``'s connector logged :data:`LOG_BURST`
    lines of ``kind`` in the last :data:`LOG_WINDOW` seconds.

    The first line held back in a window says so; the first line of ``kind`` after the
    window sums up how many were held back ("N more like '<kind>' in the last S s"). No task or
    timer: a summary waits for the next line of its kind (the counters are exact
    meanwhile). Outside a Trio run, every line is logged.
    """
    try:
        windows = _WINDOWS.get()
    except LookupError:
        windows = {}
        _WINDOWS.set(windows)
    except RuntimeError:  # no Trio run, no clock: nothing to limit by
        log.warning(msg, *args, exc_info=exc_info)
        return
    now = trio.current_time()
    key = (ctx.platform, ctx.account, kind)
    window = windows.get(key)
    if window is None or now - window.start >= LOG_WINDOW:
        if window is not None and window.held:
            log.warning(
                "%s:%s: %d more like '%s' in the last %.0f s (not logged; counted)",
                ctx.platform,
                ctx.account,
                window.held,
                kind,
                now - window.start,
            )
        window = windows[key] = _Window(now)
    if window.logged < LOG_BURST:
        window.logged += 1
        log.warning(msg, *args, exc_info=exc_info)
        return
    window.held += 1
    if window.held == 1:
        log.warning(
            "%s:%s: more than %d like '%s' in %.0f s: the rest are counted, not logged, for %.0f s",
            ctx.platform,
            ctx.account,
            LOG_BURST,
            kind,
            LOG_WINDOW,
            window.start + LOG_WINDOW - now,
        )


MAX_HANDLERS: Final = 100
"""Event handlers (a user's ``on_event``, welcomes) running at once on one connection."""


@attrs.define
class Handlers:
    """Tasks running handlers of events: at most ``limit`` at once, so a flood of events cannot
    grow tasks without bound. An event beyond that is not handled: counted in
    ``events_dropped`` and logged."""

    limit: int = MAX_HANDLERS
    running: int = 0

    def start(
        self,
        ctx: ConnectorContext,
        nursery: trio.Nursery,
        handler: Callable[[*Ts], Awaitable[object]],
        *args: *Ts,
    ) -> None:
        """Run ``handler(*args)`` in ``nursery`` if a slot is free."""
        if self.running >= self.limit:
            ctx.count("events_dropped")
            warn_limited(
                ctx,
                "event dropped",
                "%s:%s: %d event handlers busy; an event was dropped",
                ctx.platform,
                ctx.account,
                self.running,
            )
            return
        self.running += 1
        nursery.start_soon(self._run, handler, *args)

    async def _run(self, handler: Callable[[*Ts], Awaitable[object]], *args: *Ts) -> None:
        try:
            await handler(*args)
        finally:
            self.running -= 1


BURST_LINGER: Final = 0.001
"""Seconds a burst waits for company after its first item: far below any debounce window."""

WATCHDOG_SLACK = 1.0
"""Seconds a watchdog may fire late: it is re-armed about once a second, not per frame."""


def rearm(watchdog: trio.CancelScope, silence: float, now: float | None = None) -> None:
    """Set ``watchdog`` to fire after ``silence`` seconds without a call (within the slack).

    The deadline moves only when it is off by more than :data:`WATCHDOG_SLACK` (a first
    call, a new ``silence``, or once a second of traffic): a silent peer is noticed at most
    that late, and a busy one costs a clock read per frame instead of a deadline update.
    ``now`` is Trio's time if the caller has it already.
    """
    target = (trio.current_time() if now is None else now) + silence
    if not target <= watchdog.deadline <= target + WATCHDOG_SLACK:
        watchdog.deadline = target + WATCHDOG_SLACK

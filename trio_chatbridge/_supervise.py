"""Supervision: each connector runs in a task of its own and restarts with backoff.

A transient failure (any exception but :class:`FatalConnectorError`) restarts the connector
after an exponentially growing, jittered delay; a run that stayed up for ``healthy_after``
seconds resets the delay. A fatal failure stops that connector alone and shows in its status.
Stopping connectors is cancelling the scope of the nursery that holds their supervisors.

:class:`Backoff` is the one retry policy of the library: restarts here, and every retry loop of
a connector (a refused or rate-limited command) through a :class:`Retries`. What a platform
says about waiting (``Connector.restart_delay``, a :class:`ConnectorError`'s ``retry_after``)
is a hint to it: the wait is at least that long.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, final

import attrs
import trio

from . import _stats
from ._connector import Connector, ConnectorState, ConnectorStatus
from ._errors import (
    ConfigurationError,
    ConnectorError,
    FatalConnectorError,
    find_error,
    sole,
)
from ._logs import CONNECTOR
from ._ranges import clamp

log = logging.getLogger("trio_chatbridge.supervise")


MAX_HINT: Final = 3600.0
"""Seconds: the longest wait a platform's hint (a reconnect interval, ``Retry-After``) may ask."""


@final
@attrs.frozen
class Backoff:
    """The one retry policy: how long to wait after ``n`` consecutive failures.

    ``initial * multiplier**(n - 1)``, capped at ``maximum``, scaled by jitter. Every loop that
    retries uses it: the supervisor's connector restarts (hence reconnects), and a platform's
    retries of a refused or rate-limited command, each through a :class:`Retries` that counts
    that loop's failures. A platform's hint (a server-sent reconnect interval, a
    ``Retry-After``) is an input, not a second schedule: the wait is at least the hint.
    """

    initial: float = 1.0
    """Seconds before the first retry."""
    maximum: float = 60.0
    """The longest delay, in seconds (a platform's hint may ask for longer)."""
    multiplier: float = 2.0
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    healthy_after: float = 60.0
    """A run that was up this many seconds resets the delay to ``initial`` (restarts only)."""
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    """Source of jitter in ``[0, 1)``; tests pass a constant."""

    def __attrs_post_init__(self) -> None:
        if not (
            0 <= self.initial <= self.maximum and self.multiplier >= 1 and 0 <= self.jitter < 1
        ):
            raise ConfigurationError(
                "Backoff needs 0 <= initial <= maximum, multiplier >= 1 and 0 <= jitter < 1"
            )

    def delay(self, failures: int, hint: float | None = None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 for the first).

        ``hint`` is the platform's own word on it (seconds; None: it said nothing): the wait is
        never shorter, and a hint is held to ``[0, MAX_HINT]`` (a server's ``1e308`` or NaN
        must not stop the loop for good).
        """
        exponent = min(max(failures - 1, 0), 64)  # past this the cap holds anyway: no overflow
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        own = base * (1 + self.jitter * (2 * self.random() - 1))
        return own if hint is None else max(own, clamp(hint, 0.0, MAX_HINT, 0.0))

    def retries(self, limit: int | None = None) -> Retries:
        """A fresh count of one loop's failures under this policy; ``limit`` retries at most
        (None: no limit)."""
        return Retries(self, limit)


@final
@attrs.define
class Retries:
    """One loop's consecutive failures under a :class:`Backoff`: what the next retry waits.

    The shape of every retry loop::

        retries = policy.retries(limit=3)
        while True:
            answer = await attempt()
            if refused(answer) and await retries.wait():
                continue
            ...
    """

    backoff: Backoff
    limit: int | None = None
    """Retries allowed in a row (None: no limit)."""
    failures: int = 0
    """Consecutive failures so far."""

    @property
    def spent(self) -> bool:
        """Whether the retries allowed are used up."""
        return self.limit is not None and self.failures >= self.limit

    def fail(self, hint: float | None = None) -> float | None:
        """Count a failure; the seconds to wait before retrying, or None once :attr:`spent`
        (then the failure is not counted: the caller gives up)."""
        if self.spent:
            return None
        self.failures += 1
        return self.backoff.delay(self.failures, hint)

    async def wait(self, hint: float | None = None) -> bool:
        """Count a failure and sleep before the retry; False at once when the retries are
        spent. If cancelled, the failure is counted and no retry is due."""
        delay = self.fail(hint)
        if delay is None:
            return False
        await trio.sleep(delay)
        return True

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` again."""
        self.failures = 0


class _Started:
    """The ``task_status`` handed to ``Connector.run``: tells the supervisor it is up."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def started(self, value: Any = None) -> None:
        self._supervisor._on_started()


class Supervisor:
    """Runs one connector until it is stopped or fails fatally."""

    def __init__(
        self,
        connector: Connector,
        backoff: Backoff,
        counters: Counter[str],
        publish: Callable[[ConnectorStatus], None] = lambda status: None,
    ) -> None:
        self.connector = connector
        self.backoff = backoff
        self._counters = counters
        self._publish = publish
        self._status = ConnectorStatus(connector.name, "starting")
        self._up_since: float | None = None
        self._first_start: Callable[[], None] | None = None

    @property
    def status(self) -> ConnectorStatus:
        """The connector's current status; each change is published."""
        return self._status

    @status.setter
    def status(self, status: ConnectorStatus) -> None:
        self._status = status
        self._publish(status)

    def set_state(self, state: ConnectorState, detail: str | None = None) -> None:
        self.status = attrs.evolve(self.status, state=state, detail=detail)

    def _first_start_over(self) -> None:
        """Call ``run``'s ``first_start_over``, once."""
        over, self._first_start = self._first_start, None
        if over is not None:
            over()

    def _on_started(self) -> None:
        self._first_start_over()
        self._up_since = trio.current_time()
        self.status = attrs.evolve(
            self.status, state="running", detail=None, connects=self.status.connects + 1
        )

    async def run(self, first_start_over: Callable[[], None] | None = None) -> None:
        """Run the connector, restarting it after transient failures, until cancelled.

        ``first_start_over`` is called once the first start is over: the connector is up,
        or its first attempt failed (the lease keeper starts a few accounts at a time).
        Once it stops, ``connector.stopped()`` is called, also when it was waiting to restart.
        """
        self._first_start = first_start_over
        CONNECTOR.set((self.connector.platform, self.connector.account))  # named in log lines
        try:
            await self._restart_loop()
        finally:
            self.connector.stopped()  # (also when it stopped while waiting to restart)
            if self.status.state != "failed":
                self.set_state("stopped")

    async def _restart_loop(self) -> None:
        retries = self.backoff.retries()
        while True:
            self._up_since = None
            fatal: FatalConnectorError | None = None
            asked: float | None = None  # the platform's hint, carried by its error
            try:
                await self.connector.run(task_status=_Started(self))
                error = "run() returned"
            except* Exception as group:
                # Handled here even when it came with the Cancelled of a shutdown (a socket
                # that failed as the bridge was stopped): the Cancelled part goes on, alone.
                failure = sole(group)
                fatal = find_error(failure, FatalConnectorError)
                transient = find_error(failure, ConnectorError)
                asked = None if transient is None else transient.retry_after
                error = describe(failure)
                if fatal is None:
                    # One line a retry; the traceback only for whoever debugs.
                    log.warning("connector %s failed: %s", self.connector.name, error)
                    log.debug("connector %s failure", self.connector.name, exc_info=failure)
            if fatal is not None:
                self._fail(fatal)
                return
            up_since = self._up_since
            if (
                up_since is not None
                and trio.current_time() - up_since >= self.backoff.healthy_after
            ):
                retries.reset()
            try:
                hint = _longer(self.connector.restart_delay(retries.failures + 1), asked)
            except FatalConnectorError as exc:  # the platform's schedule says: give up
                self._fail(exc)
                return
            delay = retries.fail(hint)
            assert delay is not None  # no limit: restarts go on until cancelled or fatal
            self._first_start_over()
            self._counters[_stats.RECONNECTS] += 1
            self.status = attrs.evolve(
                self.status,
                state="backoff",
                detail=f"restarting in {delay:.1f} s",
                restarts=self.status.restarts + 1,
                last_error=error,
            )
            await trio.sleep(delay)
            self.set_state("starting")

    def _fail(self, exc: FatalConnectorError) -> None:
        self._first_start_over()
        log.error("connector %s stopped: %s", self.connector.name, exc)
        self.status = attrs.evolve(
            self.status, state="failed", detail=str(exc), last_error=f"{type(exc).__name__}: {exc}"
        )


def _longer(a: float | None, b: float | None) -> float | None:
    """The longer of two hints, either of which may be missing."""
    return a if b is None else b if a is None else max(a, b)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an error, or of each error inside an exception group, followed by
    its causes: a wrapper that says little (``HandshakeError: ``) still shows why."""
    if isinstance(exc, BaseExceptionGroup):
        text = "; ".join(describe(inner) for inner in exc.exceptions)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and not isinstance(exc, BaseExceptionGroup) and str(cause) not in text:
        text += f" (because {describe(cause)})"
    return text

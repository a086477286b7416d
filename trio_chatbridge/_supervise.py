"""Supervision: each connector runs in a task of its own and restarts with backoff.

A transient failure (any exception but :class:`FatalConnectorError`) restarts the connector
after an exponentially growing, jittered delay; a run that stayed up for ``healthy_after``
seconds resets the delay. A fatal failure stops that connector alone and shows in its status.
Stopping connectors is cancelling the scope of the nursery that holds their supervisors.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, final

import attrs
import trio

from . import _stats
from ._connector import Connector, ConnectorState, ConnectorStatus
from ._errors import ConfigurationError, FatalConnectorError, find_error, sole
from ._logs import CONNECTOR

log = logging.getLogger("trio_chatbridge.supervise")


@final
@attrs.frozen
class Backoff:
    """Delays between restarts of a failing connector: ``initial * multiplier**n``, capped."""

    initial: float = 1.0
    """Seconds before the first restart."""
    maximum: float = 60.0
    """The longest delay, in seconds."""
    multiplier: float = 2.0
    jitter: float = 0.2
    """Each delay is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    healthy_after: float = 60.0
    """A run that was up this many seconds resets the delay to ``initial``."""
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)
    """Source of jitter in ``[0, 1)``; tests pass a constant."""

    def __attrs_post_init__(self) -> None:
        if not (
            0 <= self.initial <= self.maximum and self.multiplier >= 1 and 0 <= self.jitter < 1
        ):
            raise ConfigurationError(
                "Backoff needs 0 <= initial <= maximum, multiplier >= 1 and 0 <= jitter < 1"
            )

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 for the first)."""
        exponent = min(max(failures - 1, 0), 64)  # past this the cap holds anyway: no overflow
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1 + self.jitter * (2 * self.random() - 1))


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

    def _on_started(self) -> None:
        self._up_since = trio.current_time()
        self.status = attrs.evolve(
            self.status, state="running", detail=None, connects=self.status.connects + 1
        )

    async def run(self) -> None:
        """Run the connector, restarting it after transient failures, until cancelled."""
        CONNECTOR.set((self.connector.platform, self.connector.account))  # named in log lines
        try:
            await self._restart_loop()
        finally:
            if self.status.state != "failed":
                self.set_state("stopped")

    async def _restart_loop(self) -> None:
        failures = 0
        while True:
            self._up_since = None
            fatal: FatalConnectorError | None = None
            try:
                await self.connector.run(task_status=_Started(self))
                error = "run() returned"
            except* Exception as group:
                # Handled here even when it came with the Cancelled of a shutdown (a socket
                # that failed as the bridge was stopped): the Cancelled part goes on, alone.
                failure = sole(group)
                fatal = find_error(failure, FatalConnectorError)
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
                failures = 0
            failures += 1
            try:
                own = self.connector.restart_delay(failures)
            except FatalConnectorError as exc:  # the platform's schedule says: give up
                self._fail(exc)
                return
            delay = self.backoff.delay(failures) if own is None else own
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
        log.error("connector %s stopped: %s", self.connector.name, exc)
        self.status = attrs.evolve(
            self.status, state="failed", detail=str(exc), last_error=f"{type(exc).__name__}: {exc}"
        )


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

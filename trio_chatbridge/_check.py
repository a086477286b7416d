"""``trio-chatbridge check``: does each configured connector reach its platform and get in?

Each connector runs once, on its own, under a context that never accepts a message (so
nothing is acknowledged and nothing is lost: a message the platform offers stays with it), and
is stopped as soon as the outcome is known: it came up (connected, or polled successfully),
it raised (bad credentials are fatal errors that say what to fix), the platform paused it or
it started backing off (the detail says why), or the time ran out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from ._connector import Connector, ConnectorContext, ConnectorState
from ._errors import sole
from ._messages import Message
from ._redact import redact
from ._supervise import describe
from .stores import Store

CHECK_TIMEOUT: Final = 15.0  # seconds a connector gets to come up


@attrs.frozen
class CheckResult:
    """The outcome of checking one connector."""

    name: str
    ok: bool
    detail: str


async def _never_accept(messages: Sequence[Message]) -> list[Message]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def check_connector(
    connector: Connector, store: Store, within: float = CHECK_TIMEOUT
) -> CheckResult:
    """Run ``connector`` until its outcome is known (see the module docstring), then stop it.
    If cancelled, the connector is stopped and nothing is concluded."""
    outcome: CheckResult | None = None

    def conclude(ok: bool, detail: str) -> None:
        nonlocal outcome
        if outcome is None:  # printed: a URL's credentials redacted, as in the log
            outcome = CheckResult(connector.name, ok, redact(detail))
        nursery.cancel_scope.cancel()

    class _Up:
        def started(self, value: Any = None) -> None:
            conclude(True, "connected")

    def set_state(state: ConnectorState, detail: str | None) -> None:
        if state in ("paused", "backoff", "failed"):
            conclude(False, f"{state}: {detail or 'no detail'}")

    connector.bind(
        ConnectorContext(
            connector.platform, connector.account, store, _never_accept, _ignore, set_state
        )
    )
    try:
        with trio.move_on_after(within):
            async with trio.open_nursery() as nursery:
                try:
                    await connector.run(task_status=_Up())
                    conclude(False, "run() returned without connecting")
                except* Exception as group:
                    conclude(False, describe(sole(group)))
    finally:
        with trio.CancelScope(shield=True):
            await connector.aclose()
    return outcome or CheckResult(connector.name, False, f"no answer within {within:g} s")


def _ignore(name: str, n: int) -> None:
    """Counters are not kept during a check."""


async def check_all(
    connectors: Sequence[Connector], store: Store, within: float = CHECK_TIMEOUT
) -> list[CheckResult]:
    """Check every connector at once; results in the connectors' order. If cancelled, every
    check stops and the store is closed."""
    results: list[CheckResult | None] = [None] * len(connectors)

    async def one(index: int, connector: Connector) -> None:
        results[index] = await check_connector(connector, store, within)

    async with store, trio.open_nursery() as nursery:
        for index, connector in enumerate(connectors):
            nursery.start_soon(one, index, connector)
    return [r for r in results if r is not None]

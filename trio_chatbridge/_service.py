"""``trio-chatbridge run``: a bridge as a service, with signals, exit codes and an endpoint.

SIGINT or SIGTERM starts a graceful shutdown (pending sessions flushed, running agents get
``shutdown_grace``, connectors stay up for their replies); a second one stops at once. Exit
codes: 0 after a graceful stop, 2 for a configuration with problems, 3 when every connector
failed for good (with ``exit_when_all_failed``), 128 + the signal's number after a second
signal, 1 for anything unexpected.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Mapping

import trio

from ._asgi import ASGIApp
from ._bridge import Bridge
from ._config import Config, HttpConfig, WeComWebhookConfig
from ._errors import ChatBridgeError
from ._health import ServiceApp, serve_http
from ._status import Statuses

log = logging.getLogger("trio_chatbridge.service")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ExitCode(enum.IntEnum):
    """What ``trio-chatbridge`` exits with."""

    OK = 0
    """Stopped gracefully (or, for ``check``, every connector answered)."""
    ERROR = 1
    """Something unexpected; or, for ``check``, a connector did not answer."""
    CONFIG = 2
    """The configuration has problems (each is printed with its key path)."""
    ALL_FAILED = 3
    """Every connector failed for good (bad credentials, replaced, expired)."""


def all_failed(statuses: Statuses) -> bool:
    """Every connector has failed for good (and there is at least one)."""
    return bool(statuses) and all(s.state == "failed" for s in statuses.values())


def mounts(config: Config, bridge: Bridge) -> dict[str, ASGIApp]:
    """The ASGI apps to mount on the endpoint: each WeCom webhook at its ``path``."""
    from .platforms.wecom import Webhook

    apps: dict[str, ASGIApp] = {}
    for settings, connector in zip(config.connectors, bridge.connectors, strict=True):
        if isinstance(settings, WeComWebhookConfig) and isinstance(connector, Webhook):
            apps[settings.path] = connector.asgi
    return apps


async def run_service(
    bridge: Bridge,
    *,
    http: HttpConfig | None = None,
    mounted: Mapping[str, ASGIApp] | None = None,
    exit_when_all_failed: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run ``bridge`` until a signal or until every connector failed; returns the exit code.

    ``nursery.start`` returns the endpoint's URLs (none without ``http``) once the bridge
    accepts work. Must run in the main thread (it handles SIGINT and SIGTERM).

    A signal while it starts (a store that waits for a lock) stops it at once, and it returns
    0 without calling ``task_status.started``: nothing was accepted yet. A start that is not
    cancellable (a SQLite file being opened in its thread) is waited for.

    Cancelled, the bridge stops at once, as after a second signal (connectors within
    ``close_timeout``), the endpoint closes, and Cancelled goes on.
    """
    app = ServiceApp(bridge, mounted or {}) if http is not None else None
    outcome: int = ExitCode.OK
    stopping = False

    def stop(why: str) -> None:
        nonlocal stopping
        log.log(logging.ERROR if outcome else logging.INFO, "%s", why)
        stopping = True
        if app is not None:
            app.accepting = False  # /readyz: not ready any more
        bridge.shutdown()

    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            started = False

            async def watch_signals() -> None:
                nonlocal outcome
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if not started:  # nothing accepted yet: nothing to finish either
                        log.info("%s while starting: stopping", name)
                        nursery.cancel_scope.cancel()
                    elif not stopping:
                        stop(f"{name}: stopping gracefully (send it again to stop at once)")
                    else:
                        log.warning("%s again: stopping at once", name)
                        outcome = 128 + signum
                        nursery.cancel_scope.cancel()

            async def bridge_life(*, task_status: trio.TaskStatus[None]) -> None:
                await bridge.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped: the endpoint and the watchers too

            async def watch_failures() -> None:
                nonlocal outcome
                try:
                    await bridge.wait_status(all_failed)
                except ChatBridgeError:
                    return  # the bridge stopped first
                outcome = ExitCode.ALL_FAILED
                stop(f"every connector failed for good: stopping (exit code {outcome})")

            nursery.start_soon(watch_signals)  # a start that waits (a locked store) can be stopped
            urls: list[str] = []
            if app is not None and http is not None:  # first: a taken port accepts nothing
                urls = await nursery.start(serve_http, app, http.listen)
                log.info("endpoint on %s (/healthz, /readyz, /metrics)", ", ".join(urls))
            await nursery.start(bridge_life)
            if app is not None:
                app.accepting = True
            started = True
            task_status.started(urls)
            if exit_when_all_failed:
                nursery.start_soon(watch_failures)
    if bridge.store.undecodable:
        log.warning(
            "%d journal records or messages set aside as undecodable (each logged above; "
            "never handled unless restored by hand: docs/stores.md)",
            bridge.store.undecodable,
        )
    return outcome

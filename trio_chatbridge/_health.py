"""The service's HTTP endpoint: health, readiness, metrics, and mounted ASGI apps.

- ``GET /healthz``: 200 while the process serves (its event loop answers).
- ``GET /readyz``: 200 when the bridge accepts work and every connector is ``running``, else
  503; the body is JSON either way, with each connector's status and the messages the store
  set aside (``undecodable``: they do not make it unready, but someone should look).
- ``GET /metrics``: the Prometheus text format (see ``_metrics``).
- Any other path under a mount (the WeCom webhook's, say) goes to that app.

Another method than GET or HEAD on the three is answered 405 (their body unread); a body sent
with GET is not read either. A request with both Content-Length and Transfer-Encoding is
refused (400) on every path, its connection closed.

It is an ASGI app served by hypercorn's Trio worker (:func:`serve_http`); an application with
its own Trio ASGI server can mount a :class:`ServiceApp` there instead.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from . import _redact
from ._asgi import ASGIApp, Receive, Scope, Send, answer_lifespan
from ._bridge import Bridge
from ._errors import ChatBridgeError, ConfigurationError
from ._metrics import bridge_registry

BODY_LENGTHS: Final = frozenset({b"content-length", b"transfer-encoding"})
BODY_WITHIN: Final = 10.0  # seconds a refused request's body may take to be read
CLOSE: Final = ((b"connection", b"close"),)  # the server closes the connection after the answer
ENDPOINTS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
BACKLOG: Final = 1024
"""Connections the kernel queues before the server accepts them (hypercorn's default, 100, is
overflowed by a burst of webhook callbacks, each a new connection: every client past it
retried its connect a second later). The kernel caps it at ``net.core.somaxconn``."""
IDLE_WITHIN: Final = 5.0  # seconds a connection may sit idle, or take to send its headers
JSON: Final = b"application/json"
MAX_HEAD: Final = 16 * 1024  # bytes of a request's line and headers (431 beyond)
MAX_QUEUED: Final = 10  # body chunks (64 kB each at most) buffered per request
# Seconds each read may wait (hypercorn's read_timeout): from a request's first byte to the end
# of its answer, so it also cuts a client waiting in silence for an answer that takes longer.
READ_WITHIN: Final = 30
SEND_WITHIN: Final = 10.0  # seconds an answer may wait for a client that stopped reading
# Our server's own child of hypercorn's error logger: its levels and handlers are hypercorn's,
# and the start-up line is dropped on it alone (a hypercorn the application runs keeps its own).
HYPERCORN_LOG: Final = logging.getLogger("hypercorn.error.trio_chatbridge")
TEXT: Final = b"text/plain; charset=utf-8"


@attrs.define(eq=False)
class ServiceApp:
    """The ASGI app; see the module docstring. ``accepting`` is set by whoever runs the bridge:
    True once it started, False again once it is shutting down (not ready any more)."""

    bridge: Bridge
    mounts: Mapping[str, ASGIApp] = attrs.field(factory=dict)
    accepting: bool = False
    _registry: CollectorRegistry = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._registry = bridge_registry(self.bridge)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the service is ready, and the JSON body ``/readyz`` answers with (a URL's
        credentials in a connector's detail or error redacted, as in the log)."""
        statuses = self.bridge.status()
        ready = self.accepting and all(s.state == "running" for s in statuses.values())
        body = {
            "ready": ready,
            "accepting": self.accepting,
            "undecodable": self.bridge.store.undecodable,
            "connectors": {
                name: {
                    "state": s.state,
                    "detail": _shown(s.detail),
                    "restarts": s.restarts,
                    "connects": s.connects,
                    "last_error": _shown(s.last_error),
                }
                for name, s in statuses.items()
            },
        }
        return ready, body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if {name for name, _ in scope["headers"]} >= BODY_LENGTHS:
            # Request smuggling's shape: a proxy in front trusting the other header would see
            # a second request in this one's body. Refused, and the connection closed after
            # (RFC 9112 section 6.3), so nothing pipelined behind it is read as a request. The
            # body is read first (bounded): hypercorn answering while it still parses the body
            # races its own connection close. Unread, the server closes the connection anyway.
            close: Sequence[tuple[bytes, bytes]] = ()
            with trio.move_on_after(BODY_WITHIN):
                await _drain(receive)
                close = CLOSE
            why = b"both Content-Length and Transfer-Encoding: send one\n"
            await _respond(send, 400, TEXT, why, close)
            return
        path: str = scope["path"]
        for prefix, app in self.mounts.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                await app(scope, receive, send)
                return
        if path in ENDPOINTS and scope["method"] not in ("GET", "HEAD"):
            # Nothing here takes a body or changes anything: refused before reading one.
            await _respond(
                send, 405, TEXT, b"method not allowed: GET\n", [(b"allow", b"GET, HEAD")]
            )
            return
        # Nothing here takes a body: one announced is not read (a client dripping it would
        # hold the answer); the server closes a connection whose request it did not finish.
        if path == "/metrics":
            metrics = generate_latest(self._registry)
            await _respond(send, 200, CONTENT_TYPE_LATEST.encode(), metrics)
        elif path == "/healthz":
            await _respond(send, 200, TEXT, b"ok\n")
        elif path == "/readyz":
            ready, body = self.readiness()
            await _respond(send, 200 if ready else 503, JSON, json.dumps(body).encode())
        else:
            await _respond(send, 404, TEXT, b"not found: try /healthz, /readyz or /metrics\n")


def _shown(text: str | None) -> str | None:
    """``text`` as /readyz shows it: a URL's credentials redacted, as in the log."""
    return None if text is None else _redact.redact(text)


async def _drain(receive: Receive) -> None:
    """Read the request's body to its end (or the client's leaving), discarding it."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _respond(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _startup_line(record: logging.LogRecord) -> bool:
    """Drop hypercorn's own "Running on ..." line: whoever serves logs the URLs once (the
    service's "endpoint on ..." line, with the paths served)."""
    return not record.getMessage().startswith("Running on ")


async def serve_http(
    app: ASGIApp, listen: str, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on ``listen`` (``host:port``) with hypercorn until cancelled;
    ``nursery.start`` returns the bound URLs (port 0 picks a free port). An address that cannot
    be bound (taken, or not this machine's) is a :class:`ChatBridgeError` naming it, raised
    from ``nursery.start``."""
    try:
        from hypercorn.config import Config, Sockets
        from hypercorn.trio import serve
    except ImportError as exc:  # pragma: no cover - hypercorn is a declared dependency
        raise ConfigurationError("the [http] endpoint needs hypercorn") from exc

    class BoundedSends(Config):
        def create_sockets(self) -> Sockets:
            sockets = super().create_sockets()
            for sock in sockets.insecure_sockets:
                _bound_sends(sock)
            return sockets

    config = BoundedSends()
    config.bind = [listen]
    config.backlog = BACKLOG
    # What one client can hold, explicit rather than hypercorn's defaults (docs/service.md).
    config.keep_alive_timeout = IDLE_WITHIN  # also bounds a request's headers dripping in
    config.read_timeout = READ_WITHIN
    config.h11_max_incomplete_size = MAX_HEAD
    config.h2_max_header_list_size = MAX_HEAD
    config.max_app_queue_size = MAX_QUEUED
    config.websocket_max_message_size = MAX_HEAD  # nothing here speaks WebSocket
    config.accesslog = None
    config.errorlog = _redact.guard(HYPERCORN_LOG)  # through the logging preset
    HYPERCORN_LOG.addFilter(_startup_line)  # the same function is never added twice
    _check_bind(listen)
    await serve(app, config, task_status=task_status)  # type: ignore[arg-type]


def _bound_sends(listener: socket.socket) -> None:
    """Have the kernel drop a connection (inherited from ``listener``) whose data has waited
    ``SEND_WITHIN`` to be taken: a client that stops reading. hypercorn's send waits shielded
    from cancellation, so such a client held the server's stop, and the service's, for good.
    Linux only (elsewhere the option does not exist, and that hold remains)."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        listener.setsockopt(socket.IPPROTO_TCP, option, int(SEND_WITHIN * 1000))


def _check_bind(listen: str) -> None:
    """Raise :class:`ChatBridgeError` naming ``listen`` if it cannot be bound (taken, or not
    this machine's address): hypercorn's own error says neither, and leaves its socket open."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, int(port)), family=family).close()
    except OSError as error:
        raise ChatBridgeError(
            f"http.listen: cannot listen on {listen}: {error}; stop what uses that address, "
            "or choose another (port 0 picks a free one)"
        ) from error

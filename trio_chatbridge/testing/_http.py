"""HTTP plumbing shared by the emulators: one handler, served in memory or on loopback.

An emulator is an async function ``httpx.Request -> httpx.Response``. In memory, an httpx
transport calls it directly (so a test under the mock clock stays deterministic, long polls
included). On loopback, a small h11 server on Trio calls the same function for each request,
so the demo, end-to-end tests and other programs can point a real client at it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, final

import h11
import httpx
import trio

log = logging.getLogger("trio_chatbridge.testing.http")

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
MAX_BODY: Final = 64 * 1024 * 1024  # bytes: the emulators never need more
READ_SIZE: Final = 65536


class DropConnection(Exception):
    """Raised by a handler to close the connection without answering (a network fault)."""


def json_response(body: Any, status: int = 200) -> httpx.Response:
    """A JSON response, compact as the platforms send it."""
    return httpx.Response(
        status,
        content=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        headers={"content-type": "application/json"},
    )


@final
class HandlerTransport(httpx.AsyncBaseTransport):
    """An httpx transport that hands every request to ``handler``, in memory."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The handler's answer to ``request`` (a handler's bug is a 500, as on loopback).

        Cancelled, the request goes unanswered; what the handler recorded of it stays."""
        await request.aread()
        try:
            response = await self._handler(request)
        except DropConnection as exc:
            raise httpx.RemoteProtocolError(
                "server closed the connection", request=request
            ) from exc
        except Exception:  # as the loopback server does: a bug in a handler is a 500
            log.exception("emulator handler failed on %s %s", request.method, request.url)
            response = httpx.Response(500, content=b"emulator error")
        await response.aread()
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )


async def serve_http(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` over HTTP/1.1 on ``host:port`` until cancelled.

    ``await nursery.start(serve_http, handler)`` returns the base URL (``http://host:port``).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    authority = f"{host}:{bound}"

    async def on_connection(stream: trio.SocketStream) -> None:
        await _serve_connection(handler, stream, authority)

    async with trio.open_nursery() as nursery:
        task_status.started(f"http://{authority}")
        await trio.serve_listeners(on_connection, listeners, handler_nursery=nursery)


async def _serve_connection(handler: Handler, stream: trio.abc.Stream, authority: str) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
    async with stream:
        try:
            while True:
                request = await _read_request(conn, stream, authority)
                if request is None:
                    return
                try:
                    response = await handler(request)
                except DropConnection:
                    return
                except Exception:
                    log.exception("emulator handler failed on %s %s", request.method, request.url)
                    response = httpx.Response(500, content=b"emulator error")
                await _write_response(conn, stream, response)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(READ_SIZE)))
            continue
        return event


async def _read_request(
    conn: h11.Connection, stream: trio.abc.Stream, authority: str
) -> httpx.Request | None:
    event = await _next_event(conn, stream)
    if not isinstance(event, h11.Request):
        return None
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("request body too large")
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            return None
    return httpx.Request(
        event.method.decode(),
        f"http://{authority}{event.target.decode()}",
        headers=[(k, v) for k, v in event.headers],
        content=bytes(body),
    )


async def _write_response(
    conn: h11.Connection, stream: trio.abc.Stream, response: httpx.Response
) -> None:
    body = await response.aread()
    skip = {b"content-length", b"transfer-encoding", b"connection"}
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in skip]
    headers.append((b"content-length", str(len(body)).encode()))
    for event in (
        h11.Response(status_code=response.status_code, headers=headers),
        h11.Data(data=body),
        h11.EndOfMessage(),
    ):
        data = conn.send(event)
        if data:
            await stream.send_all(data)

"""A WebSocket client with no task of its own: the default opener of the push platforms.

The driver (``trio_chatbridge._websocket``) already has one reader task per connection calling
:meth:`WebSocketClient.get_message` in a loop, and few senders. So this client reads the socket in
the caller of ``get_message`` and writes in the caller of ``send_message``, over wsproto's sans-I/O
connection (https://python-hyper.org/projects/wsproto/): no reader task, no channel between it
and ours, and a send whose lock is free costs no scheduler step before the socket's own.

- ``get_message`` reads at most :data:`RECEIVE_BYTES` a time, feeds wsproto, and keeps every
  complete message that read brought; the next calls return them without reading (and without a
  scheduler step: a cancellation is still seen). Fragmented messages are assembled; one larger
  than ``max_message_size`` (bytes, or characters of text) closes the connection with code 1009,
  so a hostile server cannot make us buffer more; each fragment of a fragmented message (each
  piece wsproto gives: a frame, or the part of one a read brought) also counts
  :data:`FRAGMENT_COST`, so a flood of tiny or empty fragments is bounded too.
- A ping is answered by the reader before it reads again (it takes the send lock); the pong,
  like the reply to the server's close, is owed until written and goes out before any later frame.
- Errors are trio-websocket's own types (``trio_websocket.ConnectionClosed``,
  ``ConnectionRejected``, ``HandshakeError`` and its ``ConnectionTimeout``), so the driver, the
  emulators' in-memory openers and a user's ``open_websocket_url`` opener all fail alike and are
  mapped in one place (:meth:`~trio_chatbridge._websocket.WebSocketDriver.run`).
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Final, final
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
)
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from ._ws_core import Data

RECEIVE_BYTES: Final = 64 * 1024
"""Bytes read from the socket at most per read: a burst of small frames comes in one read."""
CONNECT_TIMEOUT: Final = 60.0
"""Seconds the TCP connect, the TLS handshake and the WebSocket upgrade may take together."""
DISCONNECT_TIMEOUT: Final = 60.0
"""Seconds the close handshake may take (even when cancelled) before the socket is dropped."""
MAX_MESSAGE_SIZE: Final = 2**20
"""Bytes (characters of text) one message may have by default."""
FRAGMENT_COST: Final = 64
"""Bytes each fragment of a fragmented message counts against ``max_message_size`` besides its
data: about what keeping it costs (a ``str`` or ``bytes`` object's header and its list slot),
so that the limit bounds memory however small (or empty) the server makes the fragments."""
REJECTION_BODY_LIMIT: Final = 64 * 1024
"""Bytes of a refused upgrade's body read at most (the rest is not waited for)."""

_ABNORMAL: Final = 1006  # no close frame: the socket ended (RFC 6455 section 7.1.5)
_TOO_BIG: Final = 1009  # RFC 6455 section 7.4.1
_NORMAL: Final = 1000


@final
@attrs.define(eq=False)
class WebSocketClient:
    """An open client WebSocket (from :func:`open_websocket`): the driver's ``WebSocket``.

    ``get_message`` is for one task at a time (a second one gets :exc:`trio.BusyResourceError`);
    ``send_message`` may be called by many (they take turns).
    """

    _stream: trio.abc.Stream
    _ws: WSConnection
    _max_message_size: int
    _disconnect_timeout: float
    _shown: str
    """The URL's scheme, host, port and path (no credentials), for the repr."""
    _messages: deque[Data] = attrs.Factory(deque)
    """Complete messages received and not yet returned."""
    _parts: list[Data] = attrs.Factory(list)
    """The fragments of the message being received."""
    _size: int = 0
    """Its size so far."""
    _owed: bytearray = attrs.Factory(bytearray)
    """Control frames owed to the peer (a pong, the reply to its close), written before any
    frame built after them."""
    _send_lock: trio.Lock = attrs.Factory(trio.Lock)
    _receiving: bool = False
    _gone: bool = False
    """The socket ended or broke: nothing more is read or written."""
    _failed: bool = False
    """The peer's bytes did not parse, so we failed the connection (RFC 6455 section 7.1.7):
    our close is sent, but nothing more is read (wsproto could not parse the answer)."""
    _closed: CloseReason | None = None

    def __repr__(self) -> str:
        return f"WebSocketClient({self._shown!r})"

    @property
    def closed(self) -> CloseReason | None:
        """Why the connection closed, or None while it is open."""
        return self._closed

    async def get_message(self) -> Data:
        """The next message received, text or binary.

        Raises ``ConnectionClosed`` (with the close code and reason) once the connection closed
        and every message received before was returned. If cancelled, nothing was taken: bytes
        already read stay buffered for the next call; but if cancelled while writing a pong (or
        a close reply) it owed, the stream is left mid-frame, so the connection is lost then
        (code 1006), as for :meth:`send_message`.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this WebSocket")
        await trio.lowlevel.checkpoint_if_cancelled()
        self._receiving = True
        try:
            while not self._messages:
                if self._owed:  # a pong or a close reply: out before we wait for more
                    await self._send(None)
                if self._closed is not None:
                    raise ConnectionClosed(self._closed)
                await self._receive()
        finally:
            self._receiving = False
        return self._messages.popleft()

    async def send_message(self, message: Data) -> None:
        """Send one message (``str``: text, ``bytes``: binary).

        Raises ``ConnectionClosed`` when the connection is closed. If cancelled, it may or may
        not have been sent; a send cancelled while writing leaves the stream mid-frame, so the
        connection is closed then (code 1006), never left to send a corrupt frame.
        """
        if isinstance(message, str):
            await self._send(TextMessage(message))
        elif isinstance(message, (bytes, bytearray)):
            await self._send(BytesMessage(bytes(message)))
        else:
            raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")

    # -- reading -----------------------------------------------------------------------------

    async def _receive(self) -> None:
        """One read from the socket, its frames absorbed. If cancelled, nothing was read."""
        try:
            data = await self._stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._lose(f"connection lost: {exc.__cause__ or exc!r}")
            return
        # b"": the peer closed the socket (wsproto's None); bytes() of bytes is not a copy
        self._ws.receive_data(bytes(data) if data else None)
        self._absorb_events(self._ws.events())

    def _absorb_events(self, events: Iterator[Event]) -> None:
        """Messages into :attr:`_messages`, pings and closes answered (the answers owed)."""
        for event in events:
            if isinstance(event, Message):
                if self._closed is not None:
                    continue  # arriving while we close: nobody asks for it any more
                data = event.data
                if self._size or not event.message_finished:  # one fragment of several
                    self._size += FRAGMENT_COST
                self._size += len(data)
                if self._size > self._max_message_size:
                    self._close_locally(
                        _TOO_BIG, f"message over {self._max_message_size} bytes (max_message_size)"
                    )
                elif not event.message_finished:
                    if data:  # an empty fragment costs nothing kept (but is charged)
                        self._parts.append(data)
                elif self._parts:
                    self._parts.append(data)
                    parts, self._parts, self._size = self._parts, [], 0
                    self._messages.append(
                        "".join(parts)  # type: ignore[arg-type]
                        if isinstance(event, TextMessage)
                        else b"".join(parts)  # type: ignore[arg-type]
                    )
                else:  # one event, or every fragment before it was empty
                    self._size = 0
                    self._messages.append(data)
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    self._owed += self._ws.send(event.response())
            elif isinstance(event, CloseConnection):
                self._closed_by(event)

    def _closed_by(self, event: CloseConnection) -> None:
        """A close frame, a frame wsproto could not parse, or the end of the socket."""
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the peer closes: we answer
            self._owed += self._ws.send(event.response())
            self._set_closed(event.code, event.reason)
        elif state is ConnectionState.OPEN or state is ConnectionState.LOCAL_CLOSING:
            # bad input (wsproto's code: 1002, 1007...), before our close or while it waits
            self._close_locally(event.code, event.reason or "protocol error")
            self._failed = True
        else:  # the answer to our close, or the socket's end (1006)
            reason = event.reason
            if event.code == _ABNORMAL and not reason:
                reason = "the peer closed the socket" + (" mid-message" if self._parts else "")
            self._set_closed(event.code, reason)
        self._parts, self._size = [], 0

    def _close_locally(self, code: int, reason: str) -> None:
        """Start the close handshake ourselves (its frame owed) and stop taking messages."""
        if self._ws.state is ConnectionState.OPEN:
            self._owed += self._ws.send(CloseConnection(code=code, reason=reason))
        self._set_closed(code, reason)
        self._parts, self._size = [], 0

    def _set_closed(self, code: int, reason: str | None) -> None:
        if self._closed is None:  # the first reason stays (ours, when the peer only echoes it)
            self._closed = CloseReason(code, reason)

    def _lose(self, reason: str) -> None:
        """The socket is gone or unusable: closed without a handshake (1006)."""
        self._set_closed(_ABNORMAL, reason)
        self._gone = True
        self._parts, self._size = [], 0
        self._owed.clear()

    # -- writing -----------------------------------------------------------------------------

    async def _send(self, event: Event | None) -> None:
        """Write what is owed and then ``event``'s frame, built under the send lock so frames
        leave in the order wsproto made them. If cancelled before writing, nothing was sent
        and nothing built; cancelled while writing, the connection is lost (1006)."""
        lock = self._send_lock
        try:  # a free lock costs no scheduler step (the write has its own)
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._gone or (event is not None and self._closed is not None):
                raise ConnectionClosed(self._closed)
            data: bytes | bytearray = b"" if event is None else self._ws.send(event)
            if self._owed:
                data, self._owed = self._owed + data, bytearray()
            elif not data:
                return
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lose(f"connection lost: {exc.__cause__ or exc!r}")
                raise ConnectionClosed(self._closed) from exc
            except BaseException:  # cancelled mid-write: the next frame would be corrupt
                self._lose("a send was interrupted mid-frame")
                await trio.aclose_forcefully(self._stream)  # wakes a reader waiting on it
                raise
        finally:
            lock.release()

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close: the close handshake (code 1000), within the disconnect timeout even when
        cancelled, then the socket (dropped, if the peer took too long). Never raises for a
        peer already gone; a message that arrives meanwhile is dropped. After the peer's bytes
        failed to parse, our close (1002, 1007...) is sent but no answer awaited: the socket is
        dropped at once."""
        try:
            with trio.move_on_after(self._disconnect_timeout, shield=True):
                if self._closed is None:
                    await self._send(CloseConnection(code=_NORMAL))
                    self._set_closed(_NORMAL, None)
                elif self._owed:
                    await self._send(None)
                # The peer's close frame, unless another task is reading (it will see the end).
                while (
                    not self._receiving
                    and not self._gone
                    and not self._failed
                    and self._ws.state is ConnectionState.LOCAL_CLOSING
                ):
                    await self._receive()
                await self._stream.aclose()
        except ConnectionClosed:
            pass  # the peer is gone: nothing to say goodbye to
        finally:  # whatever happened above, the socket is not left open (a no-op once closed)
            await trio.aclose_forcefully(self._stream)


def _rejection(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> ConnectionRejected:
    return ConnectionRejected(status, tuple(headers), body)


_CONNECTING: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError)
"""What a failed connect or upgrade raises below us: each becomes a ``HandshakeError``."""


@attrs.frozen
class _Address:
    """A WebSocket URL, taken apart."""

    secure: bool
    host: str
    port: int
    authority: str
    """The ``Host`` header: the host, in brackets if IPv6, with the port if the URL names one."""
    target: str = attrs.field(repr=False)
    """The path and the query (which may carry credentials): sent, never shown."""
    shown: str
    """Scheme, host, port and path only (no user part, no query: either may carry
    credentials): what errors and reprs show."""

    @classmethod
    def parse(cls, url: str) -> _Address:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError("a WebSocket URL is ws://host[:port]/path or wss://...")
        host = parts.hostname
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            authority += f":{parts.port}"
        return cls(
            secure=parts.scheme == "wss",
            host=host,
            port=parts.port or (443 if parts.scheme == "wss" else 80),
            authority=authority,
            target=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
            shown=f"{parts.scheme}://{authority}{parts.path}",
        )


async def upgrade(
    stream: trio.abc.Stream,
    url: str,
    *,
    max_message_size: int = MAX_MESSAGE_SIZE,
    disconnect_timeout: float = DISCONNECT_TIMEOUT,
) -> WebSocketClient:
    """The WebSocket upgrade over an open stream (TCP, or TLS with its handshake done): the
    open client once the server accepted; close it with :meth:`WebSocketClient.aclose`.

    Raises ``ConnectionRejected`` (status, headers, at most :data:`REJECTION_BODY_LIMIT` bytes
    of body) when the server refuses, ``HandshakeError`` when its answer is not a WebSocket's
    or the stream fails. If it raises or is cancelled, the stream is the caller's to close.
    """
    address = _Address.parse(url)
    ws = WSConnection(ConnectionType.CLIENT)
    client = WebSocketClient(stream, ws, max_message_size, disconnect_timeout, address.shown)
    try:
        await stream.send_all(ws.send(Request(host=address.authority, target=address.target)))
        rejected: RejectConnection | None = None
        body = bytearray()
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            ws.receive_data(bytes(data) if data else None)
            events = ws.events()
            for event in events:
                if isinstance(event, AcceptConnection):
                    client._absorb_events(events)  # frames that came with the answer
                    return client
                if isinstance(event, RejectConnection):
                    rejected = event
                    if not event.has_body:
                        raise _rejection(event.status_code, event.headers, b"")
                elif isinstance(event, RejectData) and rejected is not None:
                    body += event.data
                    if event.body_finished or len(body) >= REJECTION_BODY_LIMIT:
                        body = body[:REJECTION_BODY_LIMIT]
                        raise _rejection(rejected.status_code, rejected.headers, bytes(body))
            if not data:
                if rejected is not None:  # a body that ends with the socket
                    raise _rejection(rejected.status_code, rejected.headers, bytes(body))
                raise HandshakeError(
                    f"{address.shown} closed the connection during the WebSocket handshake"
                )
    except _CONNECTING as exc:
        raise HandshakeError(f"no WebSocket handshake with {address.shown}: {exc}") from exc


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    disconnect_timeout: float = DISCONNECT_TIMEOUT,
    max_message_size: int = MAX_MESSAGE_SIZE,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocketClient]:
    """Connect to a ``ws://`` or ``wss://`` URL and yield the open :class:`WebSocketClient`.

    ``connect_timeout`` bounds the TCP connect, the TLS handshake (``wss``, with
    ``ssl_context`` or the system's default trust) and the upgrade together;
    ``disconnect_timeout`` bounds the close handshake on the way out, which is attempted even
    when the block is cancelled, then the socket is dropped. Raises ``ValueError`` for a URL
    that is not a WebSocket's, ``trio_websocket.ConnectionRejected`` (status, headers, at most
    64 KiB of body) when the server refuses the upgrade,
    ``ConnectionTimeout`` when it takes too long, and ``HandshakeError`` for any other failure
    to connect (its ``__cause__`` says why: refused, unreachable, a certificate...).
    """
    address = _Address.parse(url)
    if ssl_context is not None and not address.secure:
        raise ValueError("ssl_context is for wss:// URLs only")
    try:
        with trio.fail_after(connect_timeout):
            stream: trio.abc.Stream
            if address.secure:
                stream = await trio.open_ssl_over_tcp_stream(
                    address.host,
                    address.port,
                    ssl_context=ssl_context or ssl.create_default_context(),
                )
            else:
                stream = await trio.open_tcp_stream(address.host, address.port)
            try:
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()  # here, not in a read that may be cancelled
                client = await upgrade(
                    stream,
                    url,
                    max_message_size=max_message_size,
                    disconnect_timeout=disconnect_timeout,
                )
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    except trio.TooSlowError:
        raise ConnectionTimeout(
            f"no WebSocket handshake with {address.shown} within {connect_timeout:g} s"
        ) from None
    except _CONNECTING as exc:
        cause: BaseException = exc  # a failed TLS handshake: a BrokenResourceError from an SSLError
        if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
            cause = exc.__cause__
        raise HandshakeError(f"cannot connect to {address.shown}: {cause}") from cause
    try:
        yield client
    finally:
        await client.aclose()

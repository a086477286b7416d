"""A WebSocket client with no task of its own: the default opener of the push platforms.

The driver (``trio_chatbridge._websocket``) already has one reader task per connection calling
:meth:`WebSocketClient.get_message` in a loop, and few senders. So this client reads the socket in
the caller of ``get_message`` and writes in the caller of ``send_message``, over wsproto's sans-I/O
connection (https://python-hyper.org/projects/wsproto/): no reader task, no channel between it
and ours, and a send that finds no write in progress costs no scheduler step before the
socket's own.

- ``get_message`` reads at most :data:`RECEIVE_BYTES` a time, feeds wsproto, and keeps every
  complete message that read brought; the next calls return them without reading (and without a
  scheduler step: a cancellation is still seen). Fragmented messages are assembled; one larger
  than ``max_message_size`` (bytes, or characters of text) closes the connection with code 1009,
  so a hostile server cannot make us buffer more; each fragment of a fragmented message (each
  piece wsproto gives: a frame, or the part of one a read brought) also counts
  :data:`FRAGMENT_COST`, so a flood of tiny or empty fragments is bounded too.
- ``send_message`` writes in its caller when no other task writes. A sender that finds a write
  in progress leaves its frame, already built, in a line and waits: when the write ends, the
  first sender in line writes every frame waiting then in one ``send_all`` (write-combining: one
  socket write and one scheduler step for a burst of replies, not a lock hand-off and a write
  each); see :meth:`WebSocketClient.send_message` for what holds.
- A ping is answered by the reader before it reads again; the pong, like the reply to the
  server's close, is owed until written and goes out in its place among the frames built.
- Errors are trio-websocket's own types (``trio_websocket.ConnectionClosed``,
  ``ConnectionRejected``, ``HandshakeError`` and its ``ConnectionTimeout``), so the driver, the
  emulators' in-memory openers and a user's ``open_websocket_url`` opener all fail alike and are
  mapped in one place (:meth:`~trio_chatbridge._websocket.WebSocketDriver.run`).
"""

from __future__ import annotations

import math
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Final, final
from urllib.parse import urlsplit

import attrs
import outcome
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

from ._errors import find_error
from ._ws_core import Data

RECEIVE_BYTES: Final = 64 * 1024
"""Bytes read from the socket at most per read: a burst of small frames comes in one read."""
CONNECT_TIMEOUT: Final = 60.0
"""Seconds the TCP connect, the TLS handshake and the WebSocket upgrade may take together."""
DISCONNECT_TIMEOUT: Final = 60.0
"""Seconds the close handshake may take (even when cancelled) before the socket is dropped;
also how long a cancelled sender waits for the write that took its frame."""
MAX_MESSAGE_SIZE: Final = 2**20
"""Bytes (characters of text) one message may have by default."""
FRAGMENT_COST: Final = 64
"""Bytes each fragment of a fragmented message counts against ``max_message_size`` besides its
data: about what keeping it costs (a ``str`` or ``bytes`` object's header and its list slot),
so that the limit bounds memory however small (or empty) the server makes the fragments."""
REJECTION_BODY_LIMIT: Final = 64 * 1024
"""Bytes of a refused upgrade's body read at most (the rest is not waited for)."""


class SendFailed(ConnectionClosed):
    """What :meth:`WebSocketClient.send_message` raises when the connection is closed or lost:
    trio-websocket's ``ConnectionClosed`` (its ``reason``), which also says whether the frame
    may have reached the peer."""

    def __init__(self, reason: CloseReason | None, *, may_have_been_sent: bool) -> None:
        super().__init__(reason)
        self.may_have_been_sent = may_have_been_sent
        """True when the frame was in a write that failed: the peer may have it, whole or in
        part (a failed ``send_all`` does not say how much of it went). False: nothing of it
        was written."""


_ABNORMAL: Final = 1006  # no close frame: the socket ended (RFC 6455 section 7.1.5)
_TOO_BIG: Final = 1009  # RFC 6455 section 7.4.1
_NORMAL: Final = 1000


@attrs.define(eq=False)
class _Waiting:
    """A frame left to be written by another task, and its sender, waiting for that write."""

    task: trio.lowlevel.Task
    data: bytes
    """Control frames owed before it (the first ``owed`` bytes), then the frame (none for a
    task that only writes what is owed)."""
    owed: int
    """How many leading bytes of ``data`` are owed control frames (pongs, a close reply), not
    the sender's: a sender that withdraws leaves them to the next frame, or owed."""
    taken: bool = False
    """Whether a writer took it: it is in that write, whose end the sender waits for."""
    ended: trio.Event | None = None
    """Set when the sender was cancelled once its frame was taken: it no longer waits to be
    rescheduled but on this, at most the disconnect timeout; the writer sets it and leaves
    how the write went in :attr:`result`."""
    result: outcome.Outcome[None] | None = None


@final
@attrs.define(eq=False)
class WebSocketClient:
    """An open client WebSocket (from :func:`open_websocket`): the driver's ``WebSocket``.

    ``get_message`` is for one task at a time (a second one gets :exc:`trio.BusyResourceError`);
    ``send_message`` may be called by many (a burst of them shares one socket write).
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
    """Control frames owed to the peer (a pong, the reply to its close) and not yet in a frame
    of :attr:`_waiting`: built after every frame there, so written after them."""
    _writing: bool = attrs.field(default=False, init=False)
    """Whether a task writes, or was told to write next: a sender then waits in line."""
    _waiting: deque[_Waiting] = attrs.field(factory=deque, init=False)
    """Frames built and not yet taken by a writer, in the order they were built."""
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
        already read stay buffered for the next call, and a pong (or a close reply) it owed
        and had not written stays owed; but if cancelled while writing it, the stream is left
        mid-frame, so the connection is lost then (code 1006), as for :meth:`send_message`.
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
        """Send one message (``str``: text, ``bytes``: binary), as one frame.

        Returns once its frame was handed to the socket by a ``send_all`` that completed: its
        own, or, when another task was writing, that of the first sender in line after that
        write, which writes every frame waiting then, in the order they were built (built in
        the caller, so the order is the order of the calls). Raises :exc:`SendFailed` (a
        ``ConnectionClosed``) when the connection is closed, or was lost in the write that
        carried the frame; a frame built before the connection closed is still written
        (before our close, or our reply to the peer's), unless the socket is gone.
        ``may_have_been_sent`` says which: True when the frame was in a write that failed,
        alone or with others (a write fails with some of its bytes maybe delivered, and
        which is not known: a frame followed by others in it, or by an owed pong, may have
        reached the peer whole), so a caller must not assume it was not received; False when
        nothing of it was written. If cancelled:

        - before its frame was taken by a write (still in line, or told to write next), the
          frame is withdrawn: nothing of it is written, and ``Cancelled`` is raised. It is a
          whole message in one frame (this client never fragments a send, and negotiates no
          extension), so leaving it out leaves the stream of frames sound;
        - once its frame is in a write, it waits for that one write to end, as Trio's own
          operations do once they cannot be undone: it returns if the write completed (the
          frame was sent; the cancellation is seen at the caller's next checkpoint) and raises
          :exc:`SendFailed` (``may_have_been_sent``) if it failed. It waits the disconnect
          timeout at most (a peer that stopped reading must not hold a shutdown): past it, the
          connection is lost (code 1006) and the socket closed, which fails that write;
        - while writing itself, the stream may be left mid-frame, so the connection is lost
          (code 1006) rather than left to send a corrupt frame: ``Cancelled`` is raised, and
          every sender whose frame was in that write gets :exc:`SendFailed`
          (``may_have_been_sent``).
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
        """Build ``event``'s frame after what is owed (``None``: only what is owed) and write
        them: at once when no task writes, or left in line (see :meth:`send_message` for what
        holds, cancelled or not). Frames are built here, in line order, so they leave in the
        order wsproto made them. Building our close marks the connection closed, so nothing
        is built after it; a close not written whole (withdrawn at the disconnect timeout, or
        its write failed) loses the connection (1006): wsproto counts it as sent, so nothing
        more can be."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._gone or (event is not None and self._closed is not None):
            raise self._lost(None, sent=False)
        data = b"" if event is None else self._ws.send(event)
        if isinstance(event, CloseConnection):
            self._set_closed(event.code, event.reason)
        owed = len(self._owed)
        if owed:
            data, self._owed = bytes(self._owed) + data, bytearray()
        elif not data:
            return
        try:
            if not self._writing:  # no task writes: this one does, without a scheduler step
                self._writing = True
                await self._write(data, ())
                return
            waiting = _Waiting(trio.lowlevel.current_task(), data, owed)
            self._waiting.append(waiting)
            try:
                told = await trio.lowlevel.wait_task_rescheduled(partial(self._abort, waiting))
            except trio.Cancelled:
                if waiting.ended is None:  # withdrawn: nothing of it is written
                    raise
                await self._wait_for_write(waiting, grace=not isinstance(event, CloseConnection))
                return
            if told:
                await self._write_waiting()
        except BaseException:
            if isinstance(event, CloseConnection):  # ours did not go out whole: lost, not closed
                self._closed = None
                self._lose("our close frame could not be sent")
            raise

    async def _write_waiting(self) -> None:
        """Told to write next (first in line): every frame waiting, in one ``send_all``."""
        if self._gone or trio.current_effective_deadline() == -math.inf:
            self._withdraw(0)  # ours, not taken: nothing of it is written
            self._pass_on()
            await trio.lowlevel.checkpoint_if_cancelled()  # raises Cancelled if cancelled
            raise self._lost(None, sent=False)
        batch = list(self._waiting)
        self._waiting.clear()
        for waiting in batch:
            waiting.taken = True
        data = b"".join([waiting.data for waiting in batch])
        if self._owed:
            data, self._owed = data + self._owed, bytearray()
        await self._write(data, batch[1:])  # batch[0] is ours

    async def _write(self, data: bytes, carried: Sequence[_Waiting]) -> None:
        """As the writer: ``data`` to the stream; then each sender of ``carried`` (their frames
        are in ``data``) learns how it went, and the next in line writes. Raises
        :exc:`SendFailed` (``may_have_been_sent``) if the stream failed; cancelled mid-write,
        the connection is lost (1006) and the stream closed, which wakes a reader waiting on
        it."""
        try:
            await self._stream.send_all(data)
        except BaseException as exc:
            broken = isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, OSError))
            if broken:
                self._lose(f"connection lost: {exc.__cause__ or exc!r}")
            else:  # cancelled mid-write: the next frame would be corrupt
                self._lose("a send was interrupted mid-frame")
            for waiting in carried:
                self._tell(waiting, outcome.Error(self._lost(exc, sent=True)))
            self._pass_on()
            if not broken:
                await trio.aclose_forcefully(self._stream)
                raise
            raise self._lost(exc, sent=True) from exc
        for waiting in carried:
            self._tell(waiting, outcome.Value(None))
        self._pass_on()

    @staticmethod
    def _tell(waiting: _Waiting, result: outcome.Outcome[None]) -> None:
        """How the write that carried ``waiting``'s frame went, to its sender: rescheduled,
        or, cancelled meanwhile (:meth:`_wait_for_write`), woken."""
        if waiting.ended is None:
            trio.lowlevel.reschedule(waiting.task, result)
        else:
            waiting.result = result
            waiting.ended.set()

    async def _wait_for_write(self, waiting: _Waiting, *, grace: bool) -> None:
        """A sender cancelled once its frame was taken: it waits for that write to end, as
        Trio's operations that cannot be undone do, but at most the disconnect timeout (none
        when ``grace`` is False: our close, cancelled at that timeout already). Past it, the
        peer has stopped reading: the connection is lost (1006) and the socket closed, which
        ends the write (its senders get :exc:`SendFailed`, ``may_have_been_sent``), so a
        shutdown is not held by a peer that stopped reading."""
        assert waiting.ended is not None
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._disconnect_timeout if grace else 0):
                await waiting.ended.wait()
            if waiting.result is None:
                self._lose("a send to a peer that stopped reading was given up")
                await trio.aclose_forcefully(self._stream)
        if waiting.result is None:  # the write has not seen it yet: it fails
            raise self._lost(None, sent=True)
        waiting.result.unwrap()

    def _pass_on(self) -> None:
        """The write ended: the first sender in line writes next; none waiting, nobody writes.
        Once the socket is gone, every sender in line fails instead (nothing more is written)."""
        while self._gone and self._waiting:
            waiting = self._waiting.popleft()
            trio.lowlevel.reschedule(waiting.task, outcome.Error(self._lost(None, sent=False)))
        if self._waiting:
            trio.lowlevel.reschedule(self._waiting[0].task, outcome.Value(True))
        else:
            self._writing = False

    def _abort(
        self, waiting: _Waiting, raise_cancel: trio.lowlevel.RaiseCancelT
    ) -> trio.lowlevel.Abort:
        """A sender in line is cancelled: its frame is withdrawn unless a write took it (then
        the sender waits for that write to end, within a bound: :meth:`_wait_for_write`)."""
        if waiting.taken:
            waiting.ended = trio.Event()
        else:
            self._withdraw(self._waiting.index(waiting))
        return trio.lowlevel.Abort.SUCCEEDED

    def _withdraw(self, index: int) -> None:
        """Take a frame out of the line; the control frames owed before it stay in their place:
        before the next frame in line, or first of what is owed."""
        waiting = self._waiting[index]
        del self._waiting[index]
        if waiting.owed and not self._gone:  # gone, nothing is owed any more
            owed = waiting.data[: waiting.owed]
            if index < len(self._waiting):
                after = self._waiting[index]
                after.data, after.owed = owed + after.data, len(owed) + after.owed
            else:
                self._owed[:0] = owed

    def _lost(self, cause: BaseException | None, *, sent: bool) -> SendFailed:
        """What a sender whose frame will not be written (``sent`` False) or was in a write
        that failed (True) gets: its own error."""
        error = SendFailed(self._closed, may_have_been_sent=sent)
        error.__cause__ = cause
        return error

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self, *, await_answer: bool = True) -> None:
        """Close: the close handshake (code 1000), within the disconnect timeout even when
        cancelled, then the socket (dropped, if the peer took too long). Never raises for a
        peer already gone; a message that arrives meanwhile is dropped. After the peer's bytes
        failed to parse, or with ``await_answer`` False (an error ended the connection: a
        refusal, a peer gone silent), our close is sent but no answer awaited: the socket is
        dropped at once."""
        try:
            with trio.move_on_after(self._disconnect_timeout, shield=True):
                if self._closed is None:
                    await self._send(CloseConnection(code=_NORMAL))
                elif self._owed:
                    await self._send(None)
                # The peer's close frame, unless another task is reading (it will see the end).
                while (
                    await_answer
                    and not self._receiving
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
    except BaseException as exc:
        # An error ended the block (a refusal, a peer gone silent): our close goes out, its
        # answer is not awaited (a connector refused for good showed "failed" only after the
        # disconnect timeout, waiting on a server that had nothing more to say). Cancelled
        # (a shutdown): the handshake as usual.
        await client.aclose(await_answer=find_error(exc, trio.Cancelled) is not None)
        raise
    else:
        await client.aclose()

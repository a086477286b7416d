"""WeCom AI Bot's long connection, sans I/O: frames in, events out, commands built as text.

Every frame is one JSON object, ``{cmd?, headers: {req_id}, body?, errcode?, errmsg?}``
(docs/protocols/wecom.md#frames). Requests and pushes carry ``cmd``; acknowledgements carry none
and echo the request's ``req_id``. Parsing accepts anything JSON can say and raises only
:class:`ProtocolError`. :class:`WeComCore` is what the WebSocket driver
(``trio_chatbridge._websocket``) runs: the subscribe handshake, the ping heartbeat, acks turned
into answers keyed by ``req_id``, message callbacks into messages, event callbacks into
:class:`WeComEvent` notices (a ``disconnected_event`` closes the connection for good). It does no
I/O and reads no Trio clock (the driver passes the time in; a fresh ``req_id`` carries the
wall-clock millisecond, as the official SDK's do); a test checks that this module imports
neither trio, httpx nor trio_websocket.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, final

import attrs
import msgspec

from ..._errors import (
    ConnectorError,
    FatalConnectorError,
    PlatformError,
    ProtocolError,
    SendError,
)
from ..._json import json_object
from ..._ws_core import Answer, Close, Counted, Event, Inbound, Notice, Outgoing, Request
from ._convert import to_message

DEFAULT_URL: Final = "wss://openws.work.weixin.qq.com"
HEARTBEAT_INTERVAL: Final = 30.0  # seconds (docs/protocols/wecom.md#subscribe-and-heartbeat)
HEARTBEAT_GRACE: Final = 10.0  # seconds a ping ack may take before the link counts as dead
ACK_TIMEOUT: Final = 5.0  # seconds (docs/protocols/wecom.md#acks-and-ordering)
CONFLICT_RETRIES: Final = 3  # errcode 6000 (docs/protocols/wecom.md#error-codes)
# seconds to answer enter_chat (docs/protocols/wecom.md#event-callbacks)
WELCOME_DEADLINE: Final = 5.0
# seconds a callback's stream may be updated, from its arrival: the webhook's six minutes,
# assumed for the long connection too (docs/protocols/wecom.md#unconfirmed)
STREAM_WINDOW: Final = 360.0
# bytes of UTF-8 in a stream's content (docs/protocols/wecom.md#stream-replies)
STREAM_LIMIT: Final = 20480
MAX_FRAME_BYTES: Final = 512 * 1024  # a frame larger than this is refused, not parsed
WS_MESSAGE_LIMIT: Final = 4 * MAX_FRAME_BYTES  # beyond this the WebSocket layer drops the link

# errcodes (docs/protocols/wecom.md#error-codes)
# WeCom's global "busy, retry later" (https://developer.work.weixin.qq.com/document/path/90313)
SYSTEM_BUSY: Final = -1
COMMAND_CONFLICT: Final = 6000
INVALID_REQ_ID: Final = 846605
STREAM_EXPIRED: Final = 846608

# commands (docs/protocols/wecom.md#commands)
SUBSCRIBE: Final = "aibot_subscribe"
PING: Final = "ping"
MSG_CALLBACK: Final = "aibot_msg_callback"
EVENT_CALLBACK: Final = "aibot_event_callback"
# The event types counted by name (events.<type>); any other is counted as events.other, so
# no counter is named by the network (docs/protocols/wecom.md#event-callbacks)
COUNTED_EVENTS: Final = frozenset({"template_card_event", "feedback_event", "disconnected_event"})
RESPOND: Final = "aibot_respond_msg"
RESPOND_WELCOME: Final = "aibot_respond_welcome_msg"
SEND: Final = "aibot_send_msg"

_encoder: Final = msgspec.json.Encoder()


def new_req_id(cmd: str) -> str:
    """A fresh ``req_id`` in the official SDK's shape, ``{cmd}_{epoch_ms}_{8 hex}``."""
    return f"{cmd}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


@final
@attrs.frozen
class Frame:
    """One frame, either way."""

    req_id: str
    cmd: str | None = None
    body: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    errcode: int | None = None
    errmsg: str | None = None

    def encode(self) -> str:
        frame: dict[str, Any] = {"headers": {"req_id": self.req_id}}
        if self.cmd is not None:
            frame["cmd"] = self.cmd
        if self.body:
            frame["body"] = dict(self.body)
        if self.errcode is not None:
            frame["errcode"] = self.errcode
            frame["errmsg"] = self.errmsg or ""
        return _encoder.encode(frame).decode()

    @property
    def is_ack(self) -> bool:
        return self.cmd is None


class _Headers(msgspec.Struct, gc=False):
    req_id: str = ""


class _Wire(msgspec.Struct, gc=False):
    """A frame as it comes, its body left as bytes (a callback's is its converter's to read)."""

    headers: _Headers | None = None
    cmd: str | None = None
    body: msgspec.Raw = msgspec.Raw()
    errcode: int | None = None
    errmsg: str | None = None


_wire: Final = msgspec.json.Decoder(_Wire)
_NO_BODY: Final = (b"", b"null")


@final
@attrs.frozen
class Received:
    """One frame received: :class:`Frame`'s fields, its body as it came or already decoded."""

    req_id: str
    cmd: str | None
    body: bytes | Mapping[str, Any] = attrs.field(repr=False)
    """The body's JSON object as bytes (the usual case), or decoded (the frame needed the
    general reader); ``b""`` when there is none."""
    errcode: int | None = None
    errmsg: str | None = None

    def body_object(self) -> Mapping[str, Any]:
        """The body decoded (``{}`` when there is none)."""
        if not isinstance(self.body, bytes):
            return self.body
        if not self.body:
            return {}
        try:
            decoded: dict[str, Any] = msgspec.json.decode(self.body)
        except msgspec.ValidationError:  # a number past a float (1e999): Python's reader takes it
            decoded = json_object(self.body, "WeCom frame body")
        return decoded


def read_frame(data: str | bytes) -> Received:
    """Decode one frame, its body left undecoded; anything that is not a well-formed frame is a
    :class:`ProtocolError` (the errors of :func:`parse_frame`).

    The compiled decoder reads every frame the platform sends; a frame it refuses (a field of
    an unexpected type, ``NaN``, an integer over 64 bits, nesting past its depth) goes to the
    general JSON reader, which accepts what Python's decoder does and names what is wrong."""
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"WeCom frame of {len(data)} bytes is over the {MAX_FRAME_BYTES}-byte cap"
        )
    try:
        wire = _wire.decode(data)
    except (ValueError, RecursionError):  # msgspec's errors are ValueErrors
        return _read_general(data)
    req_id = wire.headers.req_id if wire.headers is not None else ""
    if not req_id:
        raise ProtocolError("frame has no headers.req_id")
    body = bytes(wire.body)
    if body in _NO_BODY:
        body = b""
    elif body[:1] != b"{":
        raise ProtocolError("frame's body is not an object")
    return Received(req_id, wire.cmd, body, wire.errcode, wire.errmsg)


def _read_general(data: str | bytes) -> Received:
    frame = json_object(data, "WeCom frame", max_bytes=MAX_FRAME_BYTES)
    headers = frame.get("headers")
    req_id = headers.get("req_id") if isinstance(headers, dict) else None
    if not isinstance(req_id, str) or not req_id:
        raise ProtocolError("frame has no headers.req_id")
    cmd = frame.get("cmd")
    if cmd is not None and not isinstance(cmd, str):
        raise ProtocolError("frame's cmd is not a string")
    body = frame.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("frame's body is not an object")
    errcode = frame.get("errcode")
    if errcode is not None and (not isinstance(errcode, int) or isinstance(errcode, bool)):
        raise ProtocolError("frame's errcode is not an integer")
    errmsg = frame.get("errmsg")
    return Received(req_id, cmd, body, errcode, errmsg if isinstance(errmsg, str) else None)


def parse_frame(data: str | bytes) -> Frame:
    """Decode one frame, body and all; anything that is not a well-formed frame is a
    :class:`ProtocolError`."""
    got = read_frame(data)
    return Frame(got.req_id, got.cmd, got.body_object(), got.errcode, got.errmsg)


class WeComError(PlatformError, SendError):
    """The server acknowledged a command with a non-zero errcode (it refused it)."""

    platform = "wecom"

    def __init__(self, cmd: str, errcode: int, errmsg: str | None) -> None:
        self.cmd = cmd
        self.errcode = errcode
        self.errmsg = errmsg
        super().__init__(f"WeCom {cmd} failed: errcode={errcode} errmsg={errmsg!r}", code=errcode)


@final
@attrs.frozen
class WeComEvent:
    """An ``aibot_event_callback`` other than a disconnect, for the user's ``on_event``."""

    eventtype: str
    req_id: str
    """Answer a card click with ``aibot_respond_update_msg`` on this req_id within 5 s."""
    user_id: str | None
    chat_id: str | None
    body: Mapping[str, Any] = attrs.field(repr=False)


def _refusal(cmd: str) -> Callable[[Answer], Exception]:
    def refused(answer: Answer) -> Exception:
        return WeComError(cmd, answer.code, answer.text)

    return refused


def _subscribe_refused(bot_id: str, secret: str) -> Callable[[Answer], Exception]:
    def refused(answer: Answer) -> Exception:
        # the server's words, but never the secret they may quote back from our frame
        said = None if answer.text is None else answer.text.replace(secret, "***")
        if answer.busy or answer.code == SYSTEM_BUSY:  # the server's state, not the credentials
            return ConnectorError(
                f"wecom bot {bot_id}: subscribe refused for now (errcode {answer.code}, "
                f"{said!r}); reconnecting"
            )
        return FatalConnectorError(
            f"wecom bot {bot_id}: subscribe refused (errcode {answer.code}, {said!r}): "
            "check the bot id and secret on the bot's API page"
        )

    return refused


def _ping_refused(answer: Answer) -> Exception:
    return ConnectorError(f"ping refused (errcode {answer.code}, {answer.text!r})")


FALLBACKS_KEPT: Final = 1000
"""Frames sent again after an ACK timeout whose late ACK is still watched for (per connection
core; the oldest forgotten first)."""


@attrs.define
class WeComCore:
    """One bot's long connection as a protocol core (``WebSocketCore[WeComEvent]``).

    ``life`` names this process's clock in reply handles: a callback's ``answer_by`` (its window,
    :data:`STREAM_WINDOW` from its arrival) means something only to the process that received it.
    """

    bot_id: str
    secret: str = attrs.field(repr=False)
    life: str
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_grace: float = HEARTBEAT_GRACE
    bot_name: str | None = None
    _fallen_back: dict[str, None] = attrs.field(factory=dict, init=False, repr=False)
    """The req_ids of frames sent again another way after their ACK timed out, oldest first
    (at most :data:`FALLBACKS_KEPT`)."""

    def fell_back(self, req_id: str) -> None:
        """The frame on ``req_id`` timed out and went again another way: an ACK that still
        comes for it is counted in ``late_acks_after_fallback`` (the reply then shows twice)."""
        self._fallen_back[req_id] = None
        if len(self._fallen_back) > FALLBACKS_KEPT:
            del self._fallen_back[next(iter(self._fallen_back))]

    @property
    def silence(self) -> float:
        """A healthy link brings a ping ack every interval; silence is allowed one grace more
        than a ping's ack is, so a missing ack is reported as such, and silence as silence."""
        return self.heartbeat_interval + 2 * self.heartbeat_grace

    def open(self) -> Sequence[Outgoing]:
        """The subscribe handshake (docs/protocols/wecom.md#subscribe-and-heartbeat): its
        refusal is fatal (wrong credentials), unless it says the server is busy (-1, 6000):
        then the connection ends and the supervisor reconnects, under its backoff."""
        req_id = new_req_id(SUBSCRIBE)
        frame = Frame(req_id, SUBSCRIBE, {"bot_id": self.bot_id, "secret": self.secret})
        refused = _subscribe_refused(self.bot_id, self.secret)
        return [Request(req_id, frame.encode(), refused, name=SUBSCRIBE)]

    def heartbeat(self) -> Outgoing:
        """A ping, acknowledged within ``heartbeat_grace`` or the link is dead."""
        req_id = new_req_id(PING)
        data = Frame(req_id, PING).encode()
        return Request(req_id, data, _ping_refused, within=self.heartbeat_grace, name=PING)

    def command(self, cmd: str, req_id: str, body: Mapping[str, Any]) -> Request:
        """Our command ``cmd`` on ``req_id`` (a callback's, to answer it; or a fresh one):
        refused with a :class:`WeComError`, errcode 6000 retried
        (docs/protocols/wecom.md#error-codes)."""
        data = Frame(req_id, cmd, body).encode()
        return Request(req_id, data, _refusal(cmd), busy_retries=CONFLICT_RETRIES, name=cmd)

    def receive(self, data: str | bytes, now: float) -> Sequence[Event[WeComEvent]]:
        """The events of one frame: an ack's answer, a callback's message (answerable until
        ``now + STREAM_WINDOW``), an event's notice, or the close a disconnect means."""
        frame = read_frame(data)
        if frame.cmd is None:  # an ack
            code = frame.errcode or 0
            busy = code == COMMAND_CONFLICT
            answer = Answer(frame.req_id, code, frame.errmsg, frame.body_object(), busy=busy)
            if self._fallen_back and frame.req_id in self._fallen_back:
                del self._fallen_back[frame.req_id]
                return [Counted("late_acks_after_fallback"), answer]
            return [answer]
        if frame.cmd == MSG_CALLBACK:
            window = {"answer_by": now + STREAM_WINDOW, "life": self.life}
            message = to_message(
                self.bot_id, frame.req_id, frame.body, bot_name=self.bot_name, handle=window
            )
            return [Inbound(message)]
        if frame.cmd == EVENT_CALLBACK:
            return [self._event(frame)]
        return []  # a command we do not know: nothing to do (docs/protocols/wecom.md#commands)

    def _event(self, frame: Received) -> Close | Notice[WeComEvent]:
        body = frame.body_object()
        event = body.get("event")
        eventtype = str(event.get("eventtype") if isinstance(event, dict) else None)
        if eventtype == "disconnected_event":
            return Close(
                "replaced by a newer connection for the same bot (disconnected_event); not "
                "reconnecting, which would only kick that one out. Run one connection per bot.",
                fatal=True,
            )
        sender = body.get("from")
        chat = body.get("chatid")
        return Notice(
            WeComEvent(
                eventtype,
                frame.req_id,
                sender.get("userid") if isinstance(sender, dict) else None,
                chat if isinstance(chat, str) else None,
                body,
            )
        )

    def rejected(self, status: int | None, headers: Mapping[str, str], body: bytes) -> Exception:
        """A refused upgrade: retried (WeCom refuses credentials in the handshake's answer)."""
        reason = f": {body[:200]!r}" if body else ""
        return ConnectorError(
            f"wecom bot {self.bot_id}: connection refused (HTTP {status}){reason}"
        )

"""Lark's event long connection without I/O: bytes in, typed events out, our frames out as bytes
(docs/protocols/lark.md).

The state machine of one app's connection, in the way of h11 and wsproto: no trio, httpx or
trio_websocket here (``tests/test_lark_protocol.py`` checks the imports), so its tests feed raw
bytes and compare events, with no clock and no socket. :meth:`LarkProtocol.receive` turns one
WebSocket message into :data:`Event` records: a chat message, a card action or another event,
each with the :class:`Ack` to send once it is handled (a message: once it is durable); a ping to
answer, a pong with the server's new :class:`ClientConfig` (held to :data:`CONFIG_RANGES`);
and what was only counted (:class:`Dropped`) or was bad (:class:`Malformed`). Fragments are
reassembled here, and what waits for them is bounded (:class:`Reassembly`). The errors a
refused connection means come from plain data: :func:`handshake_error` for a rejected upgrade,
:func:`read_endpoint` for endpoint discovery.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias, final
from urllib.parse import parse_qs, urlsplit

import attrs

from ..._errors import ChatBridgeError, ConnectorError, FatalConnectorError, ProtocolError, quoted
from ..._json import json_object
from ..._messages import Message
from ..._ranges import clamp
from ..._ws_core import Bad, Counted, Data, Inbound, Notice, Outgoing, Retimed, Send
from ..._ws_core import Event as DriverEvent
from . import _frames as fr
from ._convert import MESSAGE_EVENT, Envelope, envelope_of, message_of

# seconds a partial message waits for its other fragments
# (docs/protocols/lark.md#events-fragments-and-acks)
FRAGMENT_TTL: Final = 5.0
MAX_EVENT_BYTES: Final = fr.MAX_FRAME_BYTES  # one event, once its fragments are joined
MAX_FRAGMENTS: Final = 1000  # fragments one event may come in
MAX_PARTIALS: Final = 64  # events waiting for fragments at once; the oldest goes first
MAX_PARTIAL_BYTES: Final = 4 * MAX_EVENT_BYTES  # bytes those hold in all; the oldest goes first
SEEN_EVENTS: Final = 10_000  # event ids remembered against re-pushes of non-message events
ACK_OK: Final = b'{"code":200}'  # every event is ACKed 200: a retry would bring the same bytes
CARD_ACTION: Final = "card.action.trigger"  # the event a card's callback button brings
# a rejected upgrade (docs/protocols/lark.md#connecting)
EXCEED_CONN_LIMIT: Final = 1000040350
AUTH_FAILED: Final = 514
FORBIDDEN: Final = 403
# endpoint discovery codes (docs/protocols/lark.md#endpoint-discovery)
SYSTEM_BUSY: Final = 1
INTERNAL_ERROR: Final = 1000040343


@final
@attrs.frozen
class ClientConfig:
    """Connection settings the server sends (seconds).

    See ``docs/protocols/lark.md#endpoint-discovery`` and ``docs/protocols/lark.md#ping-and-pong``.
    """

    ping_interval: float = 120.0
    reconnect_count: int = -1
    reconnect_interval: float = 120.0
    reconnect_nonce: float = 30.0

    @classmethod
    def merge(cls, base: ClientConfig, data: Any) -> ClientConfig:
        """``base`` with whatever numbers ``data`` (PascalCase keys) carries, each held to
        its range (``PingInterval`` 5-600 s, ``ReconnectInterval`` 1-600 s,
        ``ReconnectNonce`` 0-600 s, ``ReconnectCount`` -1 for no limit to 1,000; see
        docs/lark.md): a server's ``PingInterval=0.001`` or ``1e308`` must neither flood the
        link with pings nor switch the watchdog off."""
        if not isinstance(data, Mapping):
            return base
        changes: dict[str, Any] = {}
        for key, (name, low, high) in CONFIG_RANGES.items():
            value = clamp(data.get(key), low, high, math.nan)
            if not math.isnan(value):
                changes[name] = int(value) if name == "reconnect_count" else value
        return attrs.evolve(base, **changes)


CONFIG_RANGES: Final = {
    "PingInterval": ("ping_interval", 5.0, 600.0),
    "ReconnectInterval": ("reconnect_interval", 1.0, 600.0),
    "ReconnectNonce": ("reconnect_nonce", 0.0, 600.0),
    "ReconnectCount": ("reconnect_count", -1, 1000),
}
"""The range (seconds; a count for ``ReconnectCount``, -1 for no limit) each value of the
server's client config is held to: documented in docs/lark.md."""


# -- events ------------------------------------------------------------------------------------


@final
@attrs.frozen
class Ack:
    """The answer a data frame is owed (docs/protocols/lark.md#events-fragments-and-acks)."""

    frame: bytes = attrs.field(repr=lambda frame: f"<{len(frame)} bytes>")
    """The data frame answered (the last of its fragments), as it came: its ids and headers
    go back. Bytes, not a decoded frame: what waits for its ACK is nothing the garbage
    collector walks. Not in the repr: its payload is the event (the user's text and the
    app's verification token)."""

    def encode(self, handled_in: float, payload: bytes = ACK_OK) -> bytes:
        """The ACK's bytes: ``payload`` (a card's answer, or plain 200), and ``handled_in``
        seconds as the ``biz_rt`` header (whole milliseconds)."""
        return fr.ack(self.frame, payload, biz_rt=str(int(handled_in * 1000)))


@final
@attrs.frozen
class MessageReceived:
    """A chat message the bot is to handle: put it, then send :attr:`ack` once it is durable."""

    message: Message
    """The message, converted by ``to_message``."""
    ack: Ack
    """What to send once the message is durable (within the platform's 3 s)."""


@final
@attrs.frozen
class CardActionReceived:
    """A card action (``card.action.trigger``): its answer rides on :attr:`ack`.

    Its event id is remembered as seen; a card action left un-ACKed (every handler busy) is
    given back with :meth:`LarkProtocol.forget`, so that the platform's re-push is handled."""

    envelope: Mapping[str, Any]
    """The event's JSON (schema 2.0)."""
    event_id: str
    """The event's id (``""`` when it has none)."""
    ack: Ack
    """What to send with the answer (or plain 200)."""


@final
@attrs.frozen
class EventReceived:
    """An event other than a message or a card action (for ``on_event``)."""

    envelope: Mapping[str, Any]
    """The event's JSON."""
    ack: Ack
    """What to send; the event needs nothing else from the platform."""


@final
@attrs.frozen
class Dropped:
    """Input that is only counted: a duplicate or filtered event (with its :attr:`ack`), a
    text frame, fragments that expired or were pushed out."""

    counter: str
    """The connector's counter to add :attr:`count` to."""
    count: int = 1
    """How many."""
    ack: Ack | None = None
    """What to send back, if a frame is owed an answer."""


@final
@attrs.frozen
class Malformed:
    """A bad event, fragment or pong: to count in ``protocol_errors`` and log."""

    what: str
    """Which kind of input (``"event"``, ``"fragment"``, ``"pong"``)."""
    error: Exception
    """Why: a :class:`ProtocolError`, or what a parser raised on this input."""
    ack: Ack | None = None
    """What to send back for a whole bad event: a retry would bring the same bytes."""


@final
@attrs.frozen
class PingReceived:
    """The server pinged (both SDKs ignore it; we answer)."""

    pong: bytes
    """The pong to send."""


@final
@attrs.frozen
class PongReceived:
    """The server's pong: liveness, and maybe a new configuration, already applied."""

    config: ClientConfig | None
    """The configuration now in force, if the pong carried one (else None)."""


Event: TypeAlias = (
    MessageReceived
    | CardActionReceived
    | EventReceived
    | Dropped
    | Malformed
    | PingReceived
    | PongReceived
)
"""What :meth:`LarkProtocol.receive` gives: exactly one of these records."""


# -- fragments ---------------------------------------------------------------------------------


@attrs.define
class _Partial:
    # not in a repr: the parts are an event's (the user's text, the app's verification token)
    parts: list[bytes | None] = attrs.field(repr=lambda parts: f"<{len(parts)} parts>")
    missing: int  # parts not yet in
    expires: float
    size: int = 0  # bytes held


def _position(frame: fr.Frame) -> tuple[int, int]:
    """(``sum``, ``seq``): how many fragments, and which one this is."""
    total, index = frame.header("sum") or "1", frame.header("seq") or "0"
    if not (total.isascii() and total.isdigit() and index.isascii() and index.isdigit()):
        raise ProtocolError(f"fragment headers sum={total[:20]!r} seq={index[:20]!r}")
    if len(total) > 6 or len(index) > 6:
        raise ProtocolError(f"fragment {index[:20]} of {total[:20]}: over {MAX_FRAGMENTS}")
    return int(total), int(index)


@attrs.define
class Reassembly:
    """Payloads that came in fragments, joined (docs/protocols/lark.md#events-fragments-and-acks).

    What waits is bounded: :data:`MAX_PARTIALS` events and :data:`MAX_PARTIAL_BYTES` in all
    (:meth:`evict` drops the oldest first), one event at most :data:`MAX_EVENT_BYTES` (else it
    is a :class:`ProtocolError`), each for :data:`FRAGMENT_TTL` after its latest fragment
    (:meth:`sweep`).
    """

    _waiting: dict[str, _Partial] = attrs.Factory(dict)
    _bytes: int = 0  # held in _waiting
    _too_big: dict[str, float] = attrs.Factory(dict)
    """Events dropped as over :data:`MAX_EVENT_BYTES` (ACKed once): their id, and when their
    fragments still to come are forgotten (:data:`FRAGMENT_TTL` after the latest); at most
    :data:`MAX_PARTIALS`, the oldest first out."""

    def add(self, frame: fr.Frame, now: float) -> bytes | None:
        """The whole payload once every fragment is in; None while some are missing.

        Raises :class:`ProtocolError` for fragment headers out of range or disagreeing with
        the rest of their set, and :class:`EventTooBig` for the fragment that takes an event
        over :data:`MAX_EVENT_BYTES` (its set dropped; the event's later fragments are
        swallowed: None).
        """
        total, index = _position(frame)
        payload = frame.payload or b""
        if total <= 1:
            return payload
        if not 0 <= index < total or total > MAX_FRAGMENTS:
            raise ProtocolError(f"fragment {index} of {total}")
        key = frame.header("message_id") or ""
        if key in self._too_big:  # the rest of an event dropped (and ACKed) as too big
            self._too_big[key] = now + FRAGMENT_TTL
            return None
        partial = self._waiting.get(key)
        if partial is None:
            partial = self._waiting[key] = _Partial([None] * total, total, now)
        elif len(partial.parts) != total:
            raise ProtocolError(f"fragment of {total} for a set of {len(partial.parts)}")
        self._store(partial, index, payload)
        partial.expires = now + FRAGMENT_TTL
        if partial.size > MAX_EVENT_BYTES:
            self._drop(key)
            self._too_big[key] = now + FRAGMENT_TTL
            if len(self._too_big) > MAX_PARTIALS:
                del self._too_big[next(iter(self._too_big))]
            raise EventTooBig(
                f"an event over {MAX_EVENT_BYTES} bytes in fragments, over what we handle: "
                "ACKed and dropped; report it to Lark with this log"
            )
        if partial.missing:
            return None
        self._drop(key)
        return b"".join([part for part in partial.parts if part is not None])

    def _store(self, partial: _Partial, index: int, payload: bytes) -> None:
        """Put one fragment in its place; a duplicate replaces the one before."""
        old = partial.parts[index]
        if old is None:
            partial.missing -= 1
        grown = len(payload) - len(old or b"")
        partial.size += grown
        self._bytes += grown
        partial.parts[index] = payload

    def sweep(self, now: float) -> int:
        """Drop the sets whose time is up; how many."""
        stale = [key for key, partial in self._waiting.items() if partial.expires <= now]
        for key in stale:
            self._drop(key)
        for key in [key for key, expires in self._too_big.items() if expires <= now]:
            del self._too_big[key]
        return len(stale)

    def evict(self) -> int:
        """Drop the oldest sets while over either bound; how many. A plain dict's front is
        cheap here: it never holds more than ``MAX_PARTIALS`` + 1 keys (docs/performance.md,
        "Lark fragments waiting")."""
        dropped = 0
        while len(self._waiting) > MAX_PARTIALS or self._bytes > MAX_PARTIAL_BYTES:
            self._drop(next(iter(self._waiting)))
            dropped += 1
        return dropped

    def clear(self) -> None:
        """Forget every set (a new connection: the server pushes them again whole)."""
        self._waiting.clear()
        self._bytes = 0
        self._too_big.clear()

    def _drop(self, key: str) -> None:
        self._bytes -= self._waiting.pop(key).size


# -- the connection ----------------------------------------------------------------------------


@final
@attrs.define
class LarkProtocol:
    """One app's long connection, without I/O: :meth:`receive` what the socket brought, send
    what :meth:`ping` and the events' ACKs return. Kept across reconnects (the event ids seen
    outlive a connection); :meth:`connect` starts each connection.

    Group messages are taken only when they @-mention the bot (``bot_open_id``), unless
    ``group_messages="all"``; the bot's own messages never are.
    """

    account: str
    """The app id: the messages' account."""
    bot_open_id: str | None = None
    """The bot's own open id (``ou_...``), for mentions and its own messages."""
    group_messages: Literal["mentioned", "all"] = "mentioned"
    """Which group messages are the bot's."""
    config: ClientConfig = ClientConfig()
    """The configuration in force: discovery's, then each pong's."""
    service: int = 0
    """The URL's ``service_id``, which every frame we send carries."""
    _fragments: Reassembly = attrs.Factory(Reassembly)
    _seen: OrderedDict[str, None] = attrs.Factory(OrderedDict)

    def connect(self, url: str, config: ClientConfig) -> None:
        """Start a connection to ``url`` (discovery's answer) with its ``config``."""
        self.service = service_id(url)
        self.config = config
        self._fragments.clear()

    def ping(self) -> bytes:
        """Our ping, due every :attr:`ClientConfig.ping_interval` seconds."""
        ping = fr.Frame(service=self.service, method=fr.CONTROL, headers=(("type", "ping"),))
        return fr.encode(ping)

    def receive(self, data: bytes | str, now: float) -> list[Event]:
        """The events one WebSocket message brings, ``now`` seconds into the caller's clock
        (fragments expire on it). Raises :class:`ProtocolError`, and nothing else, for bytes
        that are no frame at all; everything after that is an event (:class:`Malformed` for
        bad input in a good frame), and a frame owed an ACK always comes with it."""
        if isinstance(data, str):
            return [Dropped("text_frames_ignored")]
        frame = fr.decode(data)
        events: list[Event] = []
        expired = self._fragments.sweep(now)
        if expired:
            events.append(Dropped("fragments_expired", expired))
        if frame.method == fr.CONTROL:
            events.append(self._control(frame))
            return events
        if len(data) > fr.MAX_FRAME_BYTES:
            events.extend(_too_big(data))
            return events
        try:
            payload = self._fragments.add(frame, now)
        except EventTooBig as exc:
            events.extend(_too_big(data, exc))
            return events
        except ProtocolError as exc:
            events.append(Malformed("fragment", exc))
            return events
        dropped = self._fragments.evict()
        if dropped:
            events.append(Dropped("fragments_dropped", dropped))
        if payload is not None:
            events.append(self._data(frame, data, payload))
        return events

    def forget(self, event: CardActionReceived) -> None:
        """Un-see a card action left un-ACKed, so that its re-push is handled."""
        self._seen.pop(event.event_id, None)

    def _control(self, frame: fr.Frame) -> Event:
        kind = frame.header("type")
        if kind == "ping":
            pong = frame.replace(headers=(("type", "pong"),), payload=None)
            return PingReceived(fr.encode(pong))
        if kind != "pong" or not frame.payload:
            return PongReceived(None) if kind == "pong" else Dropped("control_frames_ignored")
        try:
            data = json_object(frame.payload, "Lark pong")
        except ProtocolError as exc:
            return Malformed("pong", exc)
        self.config = ClientConfig.merge(self.config, data)
        return PongReceived(self.config)

    def _data(self, frame: fr.Frame, data: bytes, payload: bytes) -> Event:
        """The event one whole data frame (``data`` as it came) brings; every one comes with
        its ACK, a bad one too (a retry would bring the same bytes)."""
        ack = Ack(data)
        if frame.header("type") != "event":
            return Dropped("data_frames_ignored", ack=ack)
        try:
            wire = envelope_of(payload)
            if wire.event_type != MESSAGE_EVENT:
                return self._other(payload, wire, ack)
            return self._message(payload, wire, ack)
        except Exception as exc:  # a converter's bug on network input must not end the link
            return Malformed("event", exc, ack)

    def _message(self, payload: bytes, wire: Envelope, ack: Ack) -> Event:
        """A message event, read from its typed envelope; its bytes are the message's ``raw``
        (no dict tree is built)."""
        message = message_of(self.account, wire, payload, self.bot_open_id)
        if message is None or not self._wanted(message):
            return Dropped("filtered", ack=ack)
        return MessageReceived(message, ack)

    def _wanted(self, message: Message) -> bool:
        if message.sender.is_bot:
            return False
        if message.chat.kind == "group" and self.group_messages == "mentioned":
            return bool(message.reply_handle.get("addressed"))
        return True

    def _other(self, payload: bytes, wire: Envelope, ack: Ack) -> Event:
        """A non-message event, handed over as its JSON. Messages are deduplicated by the
        journal (IM message id); other events by their event id here, so that a re-push does
        not reach a handler twice. An id is remembered only once its event was read whole: the
        envelope skips fields that the full read may still refuse (invalid UTF-8, say), and a
        failed event must not make its good re-push a duplicate."""
        event_id = wire.event_id
        if event_id and event_id in self._seen:
            return Dropped("duplicate_events", ack=ack)
        envelope = json_object(payload, "Lark event", max_bytes=MAX_EVENT_BYTES)
        if event_id:
            self._seen[event_id] = None
            while len(self._seen) > SEEN_EVENTS:
                self._seen.popitem(last=False)
        if wire.event_type == CARD_ACTION:
            return CardActionReceived(envelope, event_id, ack)
        return EventReceived(envelope, ack)


class EventTooBig(ProtocolError):
    """An event over :data:`MAX_EVENT_BYTES` once its fragments are joined."""


def _too_big(data: bytes, error: EventTooBig | None = None) -> list[Event]:
    """A data frame over :data:`~._frames.MAX_FRAME_BYTES`, or the fragment (``data``) that
    took its event over :data:`MAX_EVENT_BYTES` (``error``): counted, dropped unread but
    ACKed. Left un-ACKed (or the link closed on it) the platform would push it again and
    again."""
    what = "frame" if error is None else "fragment"
    if error is None:
        error = EventTooBig(
            f"a data frame of {len(data)} bytes, over the {fr.MAX_FRAME_BYTES} we handle: "
            "ACKed and dropped; report it to Lark with this log"
        )
    return [Dropped("frames_too_big"), Malformed(what, error, Ack(data))]


INT32: Final = range(-(2**31), 2**31)  # a frame's service field (docs/protocols/lark.md#frames)


def service_id(url: str) -> int:
    """The ``service_id`` of a long-connection URL: 0 when it has none, or none a frame can
    carry (no number, or beyond int32)."""
    values = parse_qs(urlsplit(url).query).get("service_id", ["0"])
    try:
        value = int(values[-1])
    except ValueError:
        return 0
    return value if value in INT32 else 0


# -- the WebSocket driver's core ---------------------------------------------------------------

LarkNotice: TypeAlias = CardActionReceived | EventReceived
"""What the connector's handlers take: a card action to answer, an event for ``on_event``."""


@final
@attrs.define
class LarkCore:
    """:class:`LarkProtocol` as the core of the WebSocket driver (``connectors.WebSocketCore``).

    A message goes to the inbox, ACKed once it is durable; a card action, when they are
    answered, to a handler that ACKs it with the answer (with every handler slot busy it is
    given back, un-ACKed, so that the platform's re-push is answered); other events to a
    handler when ``on_event`` is given, and ACKed in turn. Our ping goes first on each
    connection, then every ``PingInterval``; a pong's new interval re-arms it.
    """

    protocol: LarkProtocol
    """The connection's state machine."""
    ping_grace: float
    """Seconds beyond the ping interval before a silent link is dead."""
    events_wanted: bool = False
    """Whether events other than messages go to a handler (``on_event`` is given)."""
    cards_answered: bool = False
    """Whether card actions go to their own handler (``on_card_action`` is given)."""

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between our pings: the server's ``PingInterval``."""
        return self.protocol.config.ping_interval

    @property
    def silence(self) -> float:
        """Seconds without a frame after which the link is dead."""
        return self.protocol.config.ping_interval + self.ping_grace

    def open(self) -> Sequence[Outgoing]:
        """A ping at once (docs/protocols/lark.md#ping-and-pong); Lark has no handshake."""
        return [Send(self.protocol.ping())]

    def heartbeat(self) -> Outgoing:
        """Our ping."""
        return Send(self.protocol.ping())

    def rejected(self, status: int | None, headers: Mapping[str, str], body: bytes) -> Exception:
        """See :func:`handshake_error`."""
        return handshake_error(self.protocol.account, status or 0, headers, body)

    def receive(self, data: Data, now: float) -> list[DriverEvent[LarkNotice]]:
        """The driver's events for one frame (see :meth:`LarkProtocol.receive`)."""
        return [out for event in self.protocol.receive(data, now) for out in self._driven(event)]

    def _driven(self, event: Event) -> list[DriverEvent[LarkNotice]]:
        if isinstance(event, MessageReceived):
            return [Inbound(event.message, event.ack.encode)]
        if isinstance(event, (Dropped, Malformed)):
            noted: Counted | Bad = (
                Counted(event.counter, event.count)
                if isinstance(event, Dropped)
                else Bad(f"Lark {event.what}", event.error)
            )
            return [noted] if event.ack is None else [noted, Inbound(None, event.ack.encode)]
        if isinstance(event, PingReceived):
            return [Send(event.pong)]
        if isinstance(event, PongReceived):
            return [] if event.config is None else [Retimed()]
        return self._other(event)

    def _other(self, event: LarkNotice) -> list[DriverEvent[LarkNotice]]:
        counted = Counted("other_events")
        if isinstance(event, CardActionReceived) and self.cards_answered:
            return [counted, Notice(event, busy=functools.partial(self._defer, event))]
        acked = Inbound(None, event.ack.encode)
        return [counted, Notice(event), acked] if self.events_wanted else [counted, acked]

    def _defer(self, event: CardActionReceived) -> Counted:
        """Every handler slot is busy: leave the card action un-ACKed and unseen, so that the
        platform pushes it again (after its 3 s) and it is answered then."""
        self.protocol.forget(event)
        return Counted("card_actions_deferred")


# -- refusals ----------------------------------------------------------------------------------


def handshake_error(
    account: str, status: int, headers: Mapping[str, str], body: bytes | None = None
) -> ChatBridgeError:
    """The error a rejected upgrade means: fatal for the connection limit and a ban.

    ``status``, ``headers`` (names lower-cased) and ``body`` are the rejecting HTTP
    response's. See ``docs/protocols/lark.md#connecting``.
    """
    code = headers.get("handshake-status") or str(status)
    auth = headers.get("handshake-autherrcode", "")
    msg = headers.get("handshake-msg") or (body or b"")[:200].decode(errors="replace")
    if code == str(AUTH_FAILED) and auth == str(EXCEED_CONN_LIMIT):
        return FatalConnectorError(
            f"Lark app {account}: the connection was refused: the app has its maximum of "
            f"connections (autherrcode {EXCEED_CONN_LIMIT}); stop other instances of this bot"
        )
    if code == str(FORBIDDEN):
        return FatalConnectorError(
            f"Lark app {account}: the connection was refused: app forbidden (403 {quoted(msg)}); "
            "check the app's status in the developer console"
        )
    return ConnectorError(
        f"Lark app {account}: the connection was refused: status {code}, {auth} {quoted(msg)}"
    )


def read_endpoint(
    account: str, status: int, data: Mapping[str, Any], *, secure: bool = False
) -> tuple[str, ClientConfig]:
    """The WebSocket URL and client config in endpoint discovery's answer (HTTP ``status``,
    JSON ``data``), asked of an ``https`` API when ``secure`` (the URL must then be ``wss``:
    its query carries the connection's ticket). See ``docs/protocols/lark.md#endpoint-discovery``.

    Retryable failures raise :class:`ConnectorError` (a URL that is no WebSocket's among
    them, shown without its query); a refusal that retrying cannot fix (bad credentials)
    raises :class:`FatalConnectorError`.
    """
    if status != 200:
        raise ConnectorError(f"Lark app {account}: endpoint discovery: HTTP {status}")
    code = data.get("code")
    if type(code) is not int:  # not the platform's answer (a proxy's?): no refusal either
        raise ConnectorError(
            f"Lark app {account}: endpoint discovery answered with no code "
            f"(code={str(code)[:20]!r}); retried with backoff"
        )
    if code in (SYSTEM_BUSY, INTERNAL_ERROR):
        raise ConnectorError(f"Lark app {account}: endpoint discovery: server busy (code {code})")
    if code != 0:
        raise FatalConnectorError(
            f"Lark app {account}: endpoint discovery refused (code={code}, "
            f"msg={quoted(str(data.get('msg')))}): check the app id and secret, and that the "
            "app uses the long connection for events"
        )
    payload = data.get("data")
    if not isinstance(payload, dict):
        payload = {}
    url = payload.get("URL")
    if not isinstance(url, str) or not url:
        raise ConnectorError(f"Lark app {account}: endpoint discovery gave no URL")
    _check_websocket_url(account, url, secure)
    return url, ClientConfig.merge(ClientConfig(), payload.get("ClientConfig"))


def _check_websocket_url(account: str, url: str, secure: bool) -> None:
    """A :class:`ConnectorError` unless ``url`` is a ``wss://`` (or, unless ``secure``,
    ``ws://``) URL with a host and a valid port; the error shows it without its user part and
    query, which may carry credentials."""
    schemes = ("wss",) if secure else ("ws", "wss")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in schemes and bool(parts.hostname) and parts.port != 0
        port = "" if parts.port is None else f":{parts.port}"
        shown = f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
    except ValueError:  # "Invalid IPv6 URL", "Port out of range 0-65535"...
        valid, shown = False, "an unreadable URL"
    if not valid:
        raise ConnectorError(
            f"Lark app {account}: endpoint discovery gave {shown}, which is not a WebSocket "
            f"URL we connect to ({' or '.join(f'{scheme}://host/...' for scheme in schemes)}); "
            "retried with backoff"
        )

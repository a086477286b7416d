"""Lark/Feishu bots over the event long connection, replies through the open API
(docs/protocols/lark.md).

Better than the official SDKs (docs/protocols/lark.md#known-faults): a read watchdog (no frame for a
ping interval plus a grace ends the connection), timeouts on endpoint discovery, pong-carried config
applied live, handshake errors classified (the connection limit and a banned app are fatal), and the
ACK of an event sent only once the inbox has it, well inside the platform's 3 s, never after the
agent.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qs, urlsplit

import attrs
import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ... import _connector as base
from ..._content import Attachment, Content, Sent, kind_of
from ..._errors import (
    ConnectorError,
    FatalConnectorError,
    ProtocolError,
    SendError,
    find_error,
)
from ..._json import json_object
from ..._messages import Message
from ..._receive import Handlers, Skipped, parse_or_skip, rearm, receive_burst
from . import _frames as fr
from . import _outbound as out
from ._answer import CARD_ACTION, CardAnswer
from ._api import FEISHU, ClientConfig, LarkError, OpenAPI
from ._convert import MESSAGE_EVENT, PLATFORM, to_message

log = logging.getLogger("trio_chatbridge.lark")

PING_GRACE: Final = 30.0  # seconds beyond the ping interval before a silent link is dead
# seconds a partial message waits for its other fragments
# (docs/protocols/lark.md#events-fragments-and-acks)
FRAGMENT_TTL: Final = 5.0
MAX_EVENT_BYTES: Final = fr.MAX_FRAME_BYTES  # one event, once its fragments are joined
MAX_FRAGMENTS: Final = 1000  # fragments one event may come in
MAX_PARTIALS: Final = 64  # events waiting for fragments at once; the oldest goes first
MAX_PARTIAL_BYTES: Final = 4 * MAX_EVENT_BYTES  # bytes those hold in all; the oldest goes first
SEEN_EVENTS: Final = 10_000  # event ids remembered against re-pushes of non-message events
PUT_BATCH: Final = 100  # events journaled together at most (each ACKed once its put returned)
ACK_OK: Final = b'{"code":200}'  # every event is ACKed 200: a retry would bring the same bytes
# seconds on_card_action may take: its answer rides on the ACK, due within 3 s
# (docs/protocols/lark.md#card-actions); the rest is left for the journal and the network
CARD_ANSWER_WITHIN: Final = 2.0
STREAM_INTERVAL: Final = 1.0  # seconds between edits of a streamed reply
EXCEED_CONN_LIMIT: Final = 1000040350
AUTH_FAILED: Final = 514
FORBIDDEN: Final = 403
# reply is impossible for these: send to the chat instead (docs/protocols/lark.md#open-api)
REPLY_FALLBACK: Final = frozenset({230011, 230019, 230050, 230071, 230072, 230111})

OpenWebSocket: TypeAlias = Callable[[str], AbstractAsyncContextManager[WebSocketConnection]]
EventHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[None]]
CardHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[CardAnswer | None]]


def _open_websocket(url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
    return open_websocket_url(
        url, connect_timeout=15, disconnect_timeout=5, max_message_size=fr.MAX_FRAME_BYTES
    )


@attrs.define
class _Partial:
    parts: list[bytes | None]
    expires: float
    size: int = 0  # bytes held


@attrs.frozen
class _CardAction:
    """A card action whose ACK waits for ``on_card_action``'s answer."""

    envelope: Mapping[str, Any]


_DEFERRED: Final = object()  # an event left un-ACKed, so that the platform pushes it again


def classify_handshake(exc: ConnectionRejected) -> Exception:
    """The error a rejected upgrade means: fatal for the connection limit and a ban.

    See ``docs/protocols/lark.md#connecting``.
    """
    headers = {k.decode().lower(): v.decode(errors="replace") for k, v in exc.headers}
    status = headers.get("handshake-status") or str(exc.status_code)
    auth = headers.get("handshake-autherrcode", "")
    msg = headers.get("handshake-msg", "")
    if status == str(AUTH_FAILED) and auth == str(EXCEED_CONN_LIMIT):
        return FatalConnectorError(
            "Lark refused the connection: the app has its maximum of connections "
            f"(autherrcode {EXCEED_CONN_LIMIT}); stop other instances of this bot"
        )
    if status == str(FORBIDDEN):
        return FatalConnectorError(f"Lark refused the connection: app forbidden (403 {msg!r})")
    return ConnectorError(f"Lark refused the connection: status {status}, {auth} {msg!r}")


class LongConnection(base.Connector):
    """A Lark/Feishu app's bot: events over the long connection, replies over the open API.

    Group messages are handled only when they @-mention the bot, unless
    ``group_messages="all"``; the bot's own messages are ignored. Other event types go to
    ``on_event(envelope)``, except card actions (``card.action.trigger``) when
    ``on_card_action(envelope)`` is given: what it returns, a :class:`CardAnswer` (a toast
    and/or a replacement card) or None, is sent in that event's ACK. It has
    ``card_answer_within`` seconds (default 2, the platform allows 3); when it takes longer it
    is cancelled, and when it fails the ACK goes plain. ``edit_budget`` says how streamed
    replies spend Lark's edits (by default one edit a second, at most 20: the platform's limit
    per message).
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        app_id: str,
        app_secret: str,
        domain: str = FEISHU,
        bot_open_id: str | None = None,
        group_messages: Literal["mentioned", "all"] = "mentioned",
        on_event: EventHandler | None = None,
        on_card_action: CardHandler | None = None,
        card_answer_within: float = CARD_ANSWER_WITHIN,
        ping_grace: float = PING_GRACE,
        stream_interval: float = STREAM_INTERVAL,
        edit_budget: out.EditBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        open_websocket: OpenWebSocket = _open_websocket,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.account = app_id
        self._random = random
        self.api: OpenAPI = OpenAPI(app_id, app_secret, domain=domain, transport=transport)
        self.bot_open_id = bot_open_id
        self.group_messages = group_messages
        self.on_event = on_event
        self.on_card_action = on_card_action
        self.card_answer_within = card_answer_within
        self.ping_grace = ping_grace
        self.stream_interval = stream_interval
        self.edit_budget: out.EditBudget = edit_budget or out.EditBudget(stream_interval)
        self.config: ClientConfig = ClientConfig()
        self._open_websocket = open_websocket
        self._fragments: dict[str, _Partial] = {}
        self._partial_bytes = 0  # held in _fragments
        self._write_lock = trio.Lock()
        self._config_changed = trio.Event()
        self._seen_events: OrderedDict[str, None] = OrderedDict()
        self._handlers = Handlers()  # on_event tasks, bounded

    def __repr__(self) -> str:
        return f"lark.LongConnection(app_id={self.account!r})"

    def restart_delay(self, failures: int) -> float | None:
        """Lark's own schedule (docs/protocols/lark.md#reconnecting): a random wait up to
        ``ReconnectNonce`` before the first reconnect, then ``ReconnectInterval`` between attempts;
        after ``ReconnectCount`` attempts (when not negative) the connector gives up."""
        count = self.config.reconnect_count
        if 0 <= count < failures:
            raise FatalConnectorError(
                f"Lark app {self.account}: gave up after {count} reconnect attempts "
                "(ReconnectCount from the server's client config)"
            )
        if failures == 1:
            return self._random() * self.config.reconnect_nonce
        return self.config.reconnect_interval

    async def aclose(self) -> None:
        await self.api.aclose()

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        url, self.config = await self.api.endpoint()
        if self.bot_open_id is None and self.group_messages == "mentioned":
            info = await self._bot_info()
            self.bot_open_id = info
        service = _service_id(url)
        try:
            async with self._open_websocket(url) as ws:
                events_in, events_out = trio.open_memory_channel[fr.Frame](math.inf)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._events, ws, events_out, nursery)
                    nursery.start_soon(self._ping, ws, service)
                    task_status.started()
                    await self._read(ws, events_in)
        except (HandshakeError, OSError, BaseExceptionGroup) as exc:
            rejected = find_error(exc, ConnectionRejected)
            if rejected is not None:
                raise classify_handshake(rejected) from exc
            if isinstance(exc, BaseExceptionGroup) and find_error(exc, HandshakeError) is None:
                raise
            raise ConnectorError(f"Lark app {self.account}: cannot connect: {exc!r}") from exc

    async def _bot_info(self) -> str | None:
        try:
            data = await self.api.call("GET", "/open-apis/bot/v3/info", whole=True)
        except LarkError as exc:
            log.warning(
                "Lark app %s: bot info unavailable (%s): groups need bot_open_id", self.account, exc
            )
            return None
        bot = (
            data.get("bot")
            if isinstance(data, dict) and isinstance(data.get("bot"), dict)
            else data
        )
        open_id = bot.get("open_id") if isinstance(bot, dict) else None
        return open_id if isinstance(open_id, str) else None

    async def _send(self, ws: WebSocketConnection, *frames: fr.Frame) -> None:
        """Send ``frames`` back to back (one lock for a burst of ACKs)."""
        async with self._write_lock:
            for frame in frames:
                await ws.send_message(fr.encode(frame))

    async def _ping(self, ws: WebSocketConnection, service: int) -> None:
        """Ping at once, then every ``PingInterval``; a pong that changes it re-arms the wait."""
        ping = fr.Frame(service=service, method=fr.CONTROL, headers=(("type", "ping"),))
        while True:
            try:
                await self._send(ws, ping)
            except ConnectionClosed:
                return  # the reader reports the closed socket
            sent_at = trio.current_time()
            while True:
                self._config_changed = trio.Event()
                with trio.move_on_at(sent_at + self.config.ping_interval) as wait:
                    await self._config_changed.wait()
                if wait.cancelled_caught:
                    break

    async def _read(
        self, ws: WebSocketConnection, events: trio.MemorySendChannel[fr.Frame]
    ) -> None:
        """The receive loop: control frames answered here, data frames handed to a worker."""
        with trio.CancelScope() as watchdog:  # one scope, kept ahead of every frame
            while True:
                silence = self.config.ping_interval + self.ping_grace
                rearm(watchdog, silence)
                try:
                    data = await ws.get_message()
                except ConnectionClosed as exc:
                    raise ConnectorError(
                        f"Lark app {self.account}: socket closed ({exc.reason})"
                    ) from exc
                await self._frame(ws, data, events)
        raise ConnectorError(f"Lark app {self.account}: no frame for {silence:.0f} s")

    async def _frame(
        self, ws: WebSocketConnection, data: str | bytes, events: trio.MemorySendChannel[fr.Frame]
    ) -> None:
        if isinstance(data, str):
            self.ctx.count("text_frames_ignored")
            return
        try:
            frame = fr.decode(data)
        except ProtocolError as exc:
            self.ctx.count("protocol_errors")
            log.warning("Lark app %s: bad frame skipped: %s", self.account, exc)
            return
        kind = frame.header("type")
        if frame.method == fr.CONTROL:
            if kind == "pong" and frame.payload:
                config = parse_or_skip(self.ctx, "pong", json_object, frame.payload, "Lark pong")
                if not isinstance(config, Skipped):
                    self.config = ClientConfig.merge(self.config, config)
                    self._config_changed.set()
            elif kind == "ping":
                await self._send(ws, frame.replace(headers=(("type", "pong"),), payload=None))
            return
        complete = self._reassemble(frame)
        if complete is not None:
            events.send_nowait(complete)

    def _reassemble(self, frame: fr.Frame) -> fr.Frame | None:
        """The whole frame once every fragment is in; None while some are missing.

        See ``docs/protocols/lark.md#events-fragments-and-acks``. What waits is bounded:
        :data:`MAX_PARTIALS` events and :data:`MAX_PARTIAL_BYTES` in all (the oldest is dropped
        first, counted in ``fragments_dropped``), one event at most :data:`MAX_EVENT_BYTES`
        (else it is a protocol error), each for :data:`FRAGMENT_TTL`.
        """
        try:
            total = int(frame.header("sum") or "1")
            index = int(frame.header("seq") or "0")
        except ValueError:
            self.ctx.count("protocol_errors")
            return None
        now = trio.current_time()
        for stale in [k for k, p in self._fragments.items() if p.expires <= now]:
            self._drop_partial(stale, "fragments_expired")  # swept as frames come
        if total <= 1:
            return frame
        key = frame.header("message_id") or ""
        if not 0 <= index < total or total > MAX_FRAGMENTS:
            self.ctx.count("protocol_errors")
            return None
        partial = self._fragments.get(key)
        if partial is None:
            partial = self._fragments[key] = _Partial([None] * total, now)
        if len(partial.parts) != total:
            self.ctx.count("protocol_errors")
            return None
        payload = frame.payload or b""
        partial.size += len(payload) - len(partial.parts[index] or b"")
        self._partial_bytes += len(payload) - len(partial.parts[index] or b"")
        partial.parts[index] = payload
        partial.expires = now + FRAGMENT_TTL
        if partial.size > MAX_EVENT_BYTES:
            self._drop_partial(key, "protocol_errors")
            log.warning(
                "Lark app %s: an event over %d bytes dropped", self.account, MAX_EVENT_BYTES
            )
            return None
        while len(self._fragments) > MAX_PARTIALS or self._partial_bytes > MAX_PARTIAL_BYTES:
            self._drop_partial(next(iter(self._fragments)), "fragments_dropped")
        if key not in self._fragments or any(part is None for part in partial.parts):
            return None
        self._drop_partial(key, None)
        return frame.replace(payload=b"".join(p or b"" for p in partial.parts))

    def _drop_partial(self, key: str, counter: str | None) -> None:
        self._partial_bytes -= self._fragments.pop(key).size
        if counter is not None:
            self.ctx.count(counter)

    async def _events(
        self,
        ws: WebSocketConnection,
        frames: trio.MemoryReceiveChannel[fr.Frame],
        nursery: trio.Nursery,
    ) -> None:
        """Off the receive loop: events into the inbox, then their ACKs.

        The events waiting together go in one put (one journal write), and each is ACKed
        once that put returned: never before its message is durable, never after an agent.
        A card action answered by ``on_card_action`` is ACKed on its own, by :meth:`_answer`.
        """
        while True:
            try:
                batch = await receive_burst(frames, PUT_BATCH)
            except trio.EndOfChannel:
                return
            started = time.perf_counter()
            messages: list[Message] = []
            acks: list[fr.Frame] = []
            for frame in batch:
                if frame.header("type") == "event":
                    message = parse_or_skip(
                        self.ctx, "event", self._event, frame.payload or b"", nursery
                    )
                    if isinstance(message, Message):
                        messages.append(message)
                    elif isinstance(message, _CardAction):
                        self._handlers.start(
                            self.ctx, nursery, self._answer, ws, frame, message.envelope
                        )
                        continue
                    elif message is _DEFERRED:
                        continue  # not ACKed: the platform pushes it again after its 3 s
                acks.append(frame)
            if messages:
                await self.ctx.put(messages)
            biz_rt = str(int((time.perf_counter() - started) * 1000))
            await self._send(ws, *(frame.ack(ACK_OK, biz_rt=biz_rt) for frame in acks))

    async def _answer(
        self, ws: WebSocketConnection, frame: fr.Frame, envelope: Mapping[str, Any]
    ) -> None:
        """ACK a card action with ``on_card_action``'s answer, or plain once
        ``card_answer_within`` is over (the handler is then cancelled) or if it failed."""
        assert self.on_card_action is not None
        started = time.perf_counter()
        payload = ACK_OK
        with trio.move_on_after(self.card_answer_within) as bound:
            try:
                answer = await self.on_card_action(envelope)
                if answer is not None:
                    payload = answer.ack()
            except Exception:
                self.ctx.count("card_answer_failures")
                log.exception("Lark app %s: on_card_action failed", self.account)
        if bound.cancelled_caught:
            self.ctx.count("card_answers_late")
            log.warning(
                "Lark app %s: no card answer within %.1f s: ACKed without one",
                self.account,
                self.card_answer_within,
            )
        biz_rt = str(int((time.perf_counter() - started) * 1000))
        try:
            await self._send(ws, frame.ack(payload, biz_rt=biz_rt))
        except ConnectionClosed:
            return  # the reader reports the closed socket; the platform pushes the event again

    def _event(self, payload: bytes, nursery: trio.Nursery) -> Message | _CardAction | object:
        """The message to put for one event, if it brings one; the card action to answer in
        its ACK, if ``on_card_action`` takes it; :data:`_DEFERRED` for a card action that
        finds every handler slot busy; anything else is handled here (``None``).

        Every other event is ACKed 200, a bad one too (the caller counts and logs it): a retry
        would bring the same bytes. A deferred card action is neither ACKed nor recorded as
        seen, so it is never lost: the platform pushes it again once its ACK deadline (3 s) is
        over, and the reader moves on at once instead of waiting for a slot.
        """
        envelope = json_object(payload, "Lark event", max_bytes=MAX_EVENT_BYTES)
        header = envelope.get("header")
        if not isinstance(header, dict) or header.get("event_type") != MESSAGE_EVENT:
            # Messages are deduplicated by the journal (IM message id); other events by their
            # event id here, so that a re-push does not reach on_event twice.
            event_id = str(header.get("event_id", "")) if isinstance(header, dict) else ""
            if event_id and event_id in self._seen_events:
                self.ctx.count("duplicate_events")
                return None
            card_action = self.on_card_action is not None and _event_type(header) == CARD_ACTION
            if card_action and self._handlers.running >= self._handlers.limit:
                self.ctx.count("card_actions_deferred")  # every slot busy: pushed again later
                return _DEFERRED
            if event_id:
                self._seen_events[event_id] = None
                while len(self._seen_events) > SEEN_EVENTS:
                    self._seen_events.popitem(last=False)
            self.ctx.count("other_events")
            if card_action:
                return _CardAction(envelope)  # answered in a handler slot, ACKed there
            if self.on_event is not None:
                self._handlers.start(self.ctx, nursery, self._user_event, envelope)
            return None
        message = to_message(self.account, envelope, self.bot_open_id)
        if message is None or not self._wanted(message):
            self.ctx.count("filtered")
            return None
        return message

    def _wanted(self, message: Message) -> bool:
        if message.sender.is_bot:
            return False
        if message.chat.kind == "group" and self.group_messages == "mentioned":
            return bool(message.reply_handle.get("addressed"))
        return True

    async def _user_event(self, envelope: Mapping[str, Any]) -> None:
        assert self.on_event is not None
        try:
            await self.on_event(envelope)
        except Exception:
            self.ctx.count("event_failures")
            log.exception("Lark app %s: on_event failed", self.account)

    # -- replying ----------------------------------------------------------------------------

    async def send(self, target: Message, text: str) -> None:
        """Reply to ``target`` (or, where a reply is impossible, send to its chat)."""
        await self._post(target, text)

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Reply with text, Markdown (a post), a :class:`Post`, a :class:`Card` (interactive)
        or an :class:`Attachment` (uploaded, then sent); where a reply is impossible, to the
        chat. The returned :class:`Sent` has the message id that :meth:`edit` takes. If
        cancelled, it may or may not have been sent (never during an upload)."""
        message_id = await self._post(target, content)
        return Sent(PLATFORM, target.reply_handle["chat_id"], kind_of(content), message_id)

    async def send_first(self, chat_id: str, content: Content) -> Sent:
        """Send to a chat (``oc_...``) or a user (``ou_...`` open id, ``on_...`` union id)
        unprompted; the same content as :meth:`send_content`, and the same on cancellation."""
        msg_type, body = await self._body(content)
        try:
            message_id = await out.create(self.api, chat_id, msg_type, body)
        except (LarkError, ConnectorError, ProtocolError) as exc:
            raise SendError(f"Lark app {self.account}: send to {chat_id} failed: {exc}") from exc
        return Sent(PLATFORM, chat_id, kind_of(content), message_id)

    async def edit(self, sent: Sent, content: Content) -> None:
        """Edit a sent message in place: text, Markdown and posts by ``PUT`` (20 times at
        most), a card by ``PATCH`` (cards sent with ``update_multi`` show it to everyone). If
        cancelled, the message shows the old content or the new one."""
        if sent.message_id is None or isinstance(content, Attachment):
            raise SendError(
                f"Lark app {self.account}: only a sent text, post or card can be edited"
            )
        await self._edit(sent.message_id, content)

    async def _edit(self, message_id: str, content: Content) -> None:
        """The one edit path (:meth:`edit` and a streamed reply): ``PUT`` or ``PATCH``."""
        msg_type, body = out.body(self.account, content)
        try:
            await out.update(self.api, message_id, msg_type, body)
        except (LarkError, ConnectorError, ProtocolError) as exc:
            raise SendError(f"Lark app {self.account}: edit failed: {exc}") from exc

    async def _body(self, content: Content) -> tuple[str, str]:
        key = None
        if isinstance(content, Attachment):
            try:
                key = await out.upload(self.api, content)
            except (LarkError, ConnectorError, ProtocolError) as exc:
                raise SendError(f"Lark app {self.account}: upload failed: {exc}") from exc
        return out.body(self.account, content, key)

    async def _post(self, target: Message, content: Content) -> str:
        msg_type, body = await self._body(content)
        try:
            try:
                return await out.reply(self.api, target.reply_handle["message_id"], msg_type, body)
            except LarkError as exc:
                if exc.code not in REPLY_FALLBACK:
                    raise
                return await out.create(self.api, target.reply_handle["chat_id"], msg_type, body)
        except (LarkError, ConnectorError, ProtocolError) as exc:
            raise SendError(f"Lark app {self.account}: reply failed: {exc}") from exc

    def stream(self, target: Message) -> AbstractAsyncContextManager[base.ReplyStream]:
        """Send one message at the first write, edit it as the text grows (within
        ``edit_budget``), and a final edit at the end."""
        return self._stream(target)

    def _stream(self, target: Message) -> AbstractAsyncContextManager[base.ReplyStream]:
        return base.streaming(_EditedStream(self, target), final_within=30)


class _EditedStream(base.CoalescingStream):
    """One message, sent at the first update and edited as the text grows."""

    def __init__(self, connector: LongConnection, target: Message) -> None:
        self._budget = connector.edit_budget
        super().__init__(self._budget.interval)
        self._connector = connector
        self._target = target
        self._shown = ""
        self.message_id: str | None = None
        self.edits = 0

    async def update(self, text: str) -> None:
        # max_edits=0: one message at the end. Else the last edit is kept for the final text.
        if self._budget.max_edits == 0:
            return
        if self.message_id is not None and self.edits >= self._budget.max_edits - 1:
            return
        await self._show(text)

    async def _show(self, text: str) -> None:
        if not text or text == self._shown:
            return
        if self.message_id is None:
            self.message_id = await self._connector._post(self._target, text)
        else:
            await self._connector._edit(self.message_id, text)
            self.edits += 1
        self._shown = text

    async def final(self, text: str) -> None:
        await self._show(text)  # nothing written: nothing sent


def _event_type(header: object) -> object:
    return header.get("event_type") if isinstance(header, dict) else None


def _service_id(url: str) -> int:
    values = parse_qs(urlsplit(url).query).get("service_id", ["0"])
    try:
        return int(values[-1])
    except ValueError:
        return 0

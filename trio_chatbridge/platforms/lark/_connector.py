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
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Literal, TypeAlias

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
from ..._messages import Message
from ..._receive import Handlers, rearm, receive_burst, skip_bad
from . import _frames as fr
from . import _outbound as out
from ._answer import CardAnswer
from ._api import FEISHU, LarkError, OpenAPI
from ._convert import PLATFORM
from ._protocol import (
    ACK_OK,
    Ack,
    CardActionReceived,
    ClientConfig,
    Dropped,
    Event,
    EventReceived,
    LarkProtocol,
    Malformed,
    MessageReceived,
    PingReceived,
    PongReceived,
    handshake_error,
)

log = logging.getLogger("trio_chatbridge.lark")

PING_GRACE: Final = 30.0  # seconds beyond the ping interval before a silent link is dead
PUT_BATCH: Final = 100  # events journaled together at most (each ACKed once its put returned)
# seconds on_card_action may take: its answer rides on the ACK, due within 3 s
# (docs/protocols/lark.md#card-actions); the rest is left for the journal and the network
CARD_ANSWER_WITHIN: Final = 2.0
STREAM_INTERVAL: Final = 1.0  # seconds between edits of a streamed reply
# reply is impossible for these: send to the chat instead (docs/protocols/lark.md#open-api)
REPLY_FALLBACK: Final = frozenset({230011, 230019, 230050, 230071, 230072, 230111})

OpenWebSocket: TypeAlias = Callable[[str], AbstractAsyncContextManager[WebSocketConnection]]
EventHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[None]]
CardHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[CardAnswer | None]]
# what the receive loop hands to the worker: events owed an ACK
DataEvent: TypeAlias = MessageReceived | CardActionReceived | EventReceived | Dropped | Malformed


def _open_websocket(url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
    return open_websocket_url(
        url, connect_timeout=15, disconnect_timeout=5, max_message_size=fr.MAX_FRAME_BYTES
    )


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
        self.on_event = on_event
        self.on_card_action = on_card_action
        self.card_answer_within = card_answer_within
        self.ping_grace = ping_grace
        self.stream_interval = stream_interval
        self.edit_budget: out.EditBudget = edit_budget or out.EditBudget(stream_interval)
        self._protocol = LarkProtocol(app_id, bot_open_id, group_messages)
        self._open_websocket = open_websocket
        self._write_lock = trio.Lock()
        self._config_changed = trio.Event()
        self._handlers = Handlers()  # on_event tasks, bounded

    def __repr__(self) -> str:
        return f"lark.LongConnection(app_id={self.account!r})"

    @property
    def config(self) -> ClientConfig:
        """The server's settings in force: endpoint discovery's, then each pong's."""
        return self._protocol.config

    @config.setter
    def config(self, config: ClientConfig) -> None:
        self._protocol.config = config

    @property
    def bot_open_id(self) -> str | None:
        """The bot's open id (``ou_...``): given, or asked of the open API at connect."""
        return self._protocol.bot_open_id

    @property
    def group_messages(self) -> Literal["mentioned", "all"]:
        """Which group messages the bot handles."""
        return self._protocol.group_messages

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
        """Close the open API's HTTP client. If cancelled, the client is closed for use but its
        pooled connections may be left to the garbage collector."""
        await self.api.aclose()

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Discover the endpoint, connect, and receive until the link fails (an error says
        whether to retry). If cancelled, the socket is closed; an event not yet ACKed (its put
        had not returned) is pushed again by Lark, so nothing accepted is lost."""
        url, config = await self.api.endpoint()
        self._protocol.connect(url, config)
        if self.bot_open_id is None and self.group_messages == "mentioned":
            self._protocol.bot_open_id = await self._bot_info()
        try:
            async with self._open_websocket(url) as ws:
                events_in, events_out = trio.open_memory_channel[DataEvent](math.inf)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._events, ws, events_out, nursery)
                    nursery.start_soon(self._ping, ws)
                    task_status.started()
                    await self._read(ws, events_in)
        except (HandshakeError, OSError, BaseExceptionGroup) as exc:
            rejected = find_error(exc, ConnectionRejected)
            if rejected is not None:
                headers = {
                    k.decode("latin-1").lower(): v.decode(errors="replace")
                    for k, v in rejected.headers or ()
                }
                error = handshake_error(self.account, rejected.status_code, headers, rejected.body)
                raise error from exc
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

    async def _send(self, ws: WebSocketConnection, *frames: bytes) -> None:
        """Send ``frames`` back to back (one lock for a burst of ACKs)."""
        async with self._write_lock:
            for frame in frames:
                await ws.send_message(frame)

    async def _ping(self, ws: WebSocketConnection) -> None:
        """Ping at once, then every ``PingInterval``; a pong that changes it re-arms the wait."""
        ping = self._protocol.ping()
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
        self, ws: WebSocketConnection, events: trio.MemorySendChannel[DataEvent]
    ) -> None:
        """The receive loop: control frames answered here, data events handed to a worker."""
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
                try:
                    received = self._protocol.receive(data, trio.current_time())
                except ProtocolError as exc:
                    skip_bad(self.ctx, "Lark frame", exc)
                    continue
                for event in received:
                    await self._route(ws, event, events)
        raise ConnectorError(f"Lark app {self.account}: no frame for {silence:.0f} s")

    async def _route(
        self, ws: WebSocketConnection, event: Event, events: trio.MemorySendChannel[DataEvent]
    ) -> None:
        """Answer a ping, apply a pong's config, count what needs no ACK; the rest (each owed
        an ACK) goes to the worker, in order."""
        if isinstance(event, PingReceived):
            await self._send(ws, event.pong)
        elif isinstance(event, PongReceived):
            if event.config is not None:
                self._config_changed.set()
        elif isinstance(event, (Dropped, Malformed)) and event.ack is None:
            self._note(event)
        else:
            events.send_nowait(event)

    def _note(self, event: Dropped | Malformed) -> None:
        if isinstance(event, Dropped):
            self.ctx.count(event.counter, event.count)
        else:
            skip_bad(self.ctx, f"Lark {event.what}", event.error)

    async def _events(
        self,
        ws: WebSocketConnection,
        events: trio.MemoryReceiveChannel[DataEvent],
        nursery: trio.Nursery,
    ) -> None:
        """Off the receive loop: messages into the inbox, then the ACKs.

        The events waiting together go in one put (one journal write), and each is ACKed
        once that put returned: never before its message is durable, never after an agent.
        A card action answered by ``on_card_action`` is ACKed on its own, by :meth:`_answer`.
        """
        while True:
            try:
                batch = await receive_burst(events, PUT_BATCH)
            except trio.EndOfChannel:
                return
            started = time.perf_counter()
            messages: list[Message] = []
            acks: list[Ack] = []
            for event in batch:
                if isinstance(event, MessageReceived):
                    messages.append(event.message)
                    acks.append(event.ack)
                elif (ack := self._handle(ws, event, nursery)) is not None:
                    acks.append(ack)
            if messages:
                await self.ctx.put(messages)
            elapsed = time.perf_counter() - started
            await self._send(ws, *(ack.encode(elapsed) for ack in acks))

    def _handle(
        self,
        ws: WebSocketConnection,
        event: CardActionReceived | EventReceived | Dropped | Malformed,
        nursery: trio.Nursery,
    ) -> Ack | None:
        """Handle an event other than a message; the ACK to send plain now, if any.

        A card action taken by ``on_card_action`` is ACKed by its handler, with the answer. One
        that finds every handler slot busy is deferred: neither ACKed nor recorded as seen, so
        it is never lost: the platform pushes it again once its ACK deadline (3 s) is over.
        Every other event is ACKed 200, a bad one too: a retry would bring the same bytes.
        """
        if isinstance(event, (Dropped, Malformed)):
            self._note(event)
            return event.ack
        if isinstance(event, CardActionReceived) and self.on_card_action is not None:
            if self._handlers.running >= self._handlers.limit:
                self._protocol.forget(event)
                self.ctx.count("card_actions_deferred")
            else:
                self.ctx.count("other_events")
                self._handlers.start(self.ctx, nursery, self._answer, ws, event)
            return None
        self.ctx.count("other_events")
        if self.on_event is not None:
            self._handlers.start(self.ctx, nursery, self._user_event, event.envelope)
        return event.ack

    async def _answer(self, ws: WebSocketConnection, event: CardActionReceived) -> None:
        """ACK a card action with ``on_card_action``'s answer, or plain once
        ``card_answer_within`` is over (the handler is then cancelled) or if it failed."""
        assert self.on_card_action is not None
        started = time.perf_counter()
        payload = ACK_OK
        with trio.move_on_after(self.card_answer_within) as bound:
            try:
                answer = await self.on_card_action(event.envelope)
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
        try:
            await self._send(ws, event.ack.encode(time.perf_counter() - started, payload))
        except ConnectionClosed:
            return  # the reader reports the closed socket; the platform pushes the event again

    async def _user_event(self, envelope: Mapping[str, Any]) -> None:
        assert self.on_event is not None
        try:
            await self.on_event(envelope)
        except Exception:
            self.ctx.count("event_failures")
            log.exception("Lark app %s: on_event failed", self.account)

    # -- replying ----------------------------------------------------------------------------

    async def send(self, target: Message, text: str) -> None:
        """Reply to ``target`` (or, where a reply is impossible, send to its chat). If
        cancelled, it may or may not have been sent."""
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
        msg_type, body = out.body(self.account, content)
        try:
            await out.update(self.api, sent.message_id, msg_type, body)
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
    """One message, sent at the first update and edited as the text grows, through the
    connector's public :meth:`~LongConnection.send_content` and :meth:`~LongConnection.edit`."""

    def __init__(self, connector: LongConnection, target: Message) -> None:
        self._budget = connector.edit_budget
        super().__init__(self._budget.interval)
        self._connector = connector
        self._target = target
        self._shown = ""
        self.sent: Sent | None = None
        self.edits = 0

    async def update(self, text: str) -> None:
        # max_edits=0: one message at the end. Else the last edit is kept for the final text.
        if self._budget.max_edits == 0:
            return
        if self.sent is not None and self.edits >= self._budget.max_edits - 1:
            return
        await self._show(text)

    async def _show(self, text: str) -> None:
        if not text or text == self._shown:
            return
        if self.sent is None:
            self.sent = await self._connector.send_content(self._target, text)
        else:
            await self._connector.edit(self.sent, text)
            self.edits += 1
        self._shown = text

    async def final(self, text: str) -> None:
        await self._show(text)  # nothing written: nothing sent

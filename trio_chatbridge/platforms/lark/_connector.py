"""Lark/Feishu bots over the event long connection, replies through the open API
(docs/protocols/lark.md).

The connector is Lark's sans-I/O protocol core (``_protocol.LarkCore``) run by the core's
WebSocket driver (``trio_chatbridge._websocket``), plus the open API for replies. Better than the
official SDKs (docs/protocols/lark.md#known-faults): a read watchdog (no frame for a ping
interval plus a grace ends the connection), timeouts on endpoint discovery, pong-carried config
applied live, handshake errors classified (the connection limit and a banned app are fatal), and
the ACK of an event sent only once the inbox has it, well inside the platform's 3 s, never after
the agent.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Literal, TypeAlias, final

import httpx
import trio
from trio_websocket import CloseReason, ConnectionClosed

from ... import _connector as base
from ..._content import Attachment, Content, Sent, kind_of
from ..._errors import (
    ConfigurationError,
    ConnectorError,
    FatalConnectorError,
    SendError,
    find_error,
)
from ..._fifo import trim
from ..._messages import Message
from ..._websocket import OpenWebSocket, WebSocketDriver
from ..._ws_client import WebSocketClient, open_websocket
from . import _frames as fr
from . import _outbound as out
from . import _send_policy as policy
from ._answer import CardAnswer
from ._api import FEISHU, LarkError, OpenAPI
from ._convert import PLATFORM
from ._protocol import ACK_OK, CardActionReceived, ClientConfig, LarkCore, LarkNotice, LarkProtocol

log = logging.getLogger("trio_chatbridge.lark")

PING_GRACE: Final = 30.0  # seconds beyond the ping interval before a silent link is dead
# seconds on_card_action may take: its answer rides on the ACK, due within 3 s
# (docs/protocols/lark.md#card-actions); the rest is left for the journal and the network
CARD_ANSWER_WITHIN: Final = 2.0
STREAM_INTERVAL: Final = 1.0  # seconds between edits of a streamed reply
SENDS_COUNTED: Final = 10_000  # targets whose plain sends are counted, for their uuids
TOO_BIG: Final = 1009  # the WebSocket close code of a message over a side's limit (RFC 6455 7.4.1)

EventHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[None]]
CardHandler: TypeAlias = Callable[[Mapping[str, Any]], Awaitable[CardAnswer | None]]


def _open_websocket(url: str) -> AbstractAsyncContextManager[WebSocketClient]:
    return open_websocket(
        url, connect_timeout=15, disconnect_timeout=5, max_message_size=fr.MAX_MESSAGE_BYTES
    )


@final
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
        edit_budget: policy.EditBudget | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        open_websocket: OpenWebSocket = _open_websocket,
        random: Callable[[], float] = random.random,
    ) -> None:
        if not 0 <= card_answer_within < math.inf or not ping_grace >= 0:  # NaN fails both
            raise ConfigurationError(
                f"Lark app {app_id}: card_answer_within must be 0 to a few seconds (Lark waits "
                f"3 s) and ping_grace 0 or more; got {card_answer_within}, {ping_grace}"
            )
        self.account = app_id
        self._random = random
        self._sends: dict[str, int] = {}
        """A target message's id: the plain sends made in reply to it (:meth:`_send_uuid`)."""
        self.api: OpenAPI = OpenAPI(app_id, app_secret, domain=domain, transport=transport)
        self._on_event = on_event
        self._on_card_action = on_card_action
        self.card_answer_within = card_answer_within
        self.stream_interval = stream_interval
        self.edit_budget: policy.EditBudget = edit_budget or policy.EditBudget(stream_interval)
        self._protocol = LarkProtocol(app_id, bot_open_id, group_messages)
        self._core = LarkCore(
            self._protocol,
            ping_grace,
            events_wanted=on_event is not None,
            cards_answered=on_card_action is not None,
        )
        self._driver: WebSocketDriver[LarkNotice] = WebSocketDriver(
            self._core,
            name=f"Lark app {app_id}",
            open_websocket=open_websocket,
            on_notice=self._notice,
        )

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

    @property
    def on_event(self) -> EventHandler | None:
        """The handler of events other than messages (and card actions, if those have none)."""
        return self._on_event

    @property
    def on_card_action(self) -> CardHandler | None:
        """The handler whose answer to a card action rides on its ACK."""
        return self._on_card_action

    @property
    def ping_grace(self) -> float:
        """Seconds beyond the ping interval before a silent link is dead."""
        return self._core.ping_grace

    def restart_delay(self, failures: int) -> float | None:
        """Lark's own schedule (docs/protocols/lark.md#reconnecting), a hint to the bridge's one
        retry policy (the wait is at least this): a random wait up to ``ReconnectNonce``
        before the first reconnect, then ``ReconnectInterval`` between attempts; after
        ``ReconnectCount`` attempts (when not negative) the connector gives up."""
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
        """Discover the endpoint, connect, and receive until the link fails (it raises: the
        supervisor reconnects). If cancelled, the socket is closed; events already read are
        still journaled (for a few seconds) but not ACKed, so Lark pushes them again and the
        journal drops the copies: nothing accepted is lost."""
        url, config = await self.api.endpoint()
        self._protocol.connect(url, config)
        if self.bot_open_id is None and self.group_messages == "mentioned":
            self._protocol.bot_open_id = await self._bot_info()
        try:
            await self._driver.run(self.ctx, url, task_status=task_status)
        except BaseException as exc:
            self._closed_too_big(exc)
            raise

    def _closed_too_big(self, exc: BaseException) -> None:
        """Count and log a connection closed with 1009 (a message too big, by either side) as
        the protocol error it is: a reconnect alone would hide a server that keeps pushing a
        frame over our limit, or keeps refusing one of ours."""
        reason = _close_reason(exc)
        if reason is None or reason.code != TOO_BIG:
            return
        self.ctx.count("protocol_errors")
        self.ctx.count("frames_too_big")
        log.warning(
            "Lark app %s: the connection closed with 1009, a message too big (%s). If the server "
            "sent a frame over %d bytes, it pushes that event again and the link closes each "
            "time: report it to Lark with this log. If the server refused a frame of ours, a "
            "card answer (on_card_action) may be too big: keep a card under 30 KB",
            self.account,
            reason.reason,
            fr.MAX_MESSAGE_BYTES,
        )

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

    async def _notice(self, event: LarkNotice) -> None:
        """A handler slot's work: answer a card action, or run ``on_event``."""
        if isinstance(event, CardActionReceived) and self.on_card_action is not None:
            await self._answer(event)
        elif self.on_event is not None:
            try:
                await self.on_event(event.envelope)
            except Exception:
                self.ctx.count("event_failures")
                log.exception("Lark app %s: on_event failed", self.account)

    async def _answer(self, event: CardActionReceived) -> None:
        """ACK a card action with ``on_card_action``'s answer, or plain once
        ``card_answer_within`` is over (the handler is then cancelled) or if it failed.

        If the ACK does not go out (the connection dropped, or this task was cancelled with
        it), the action is un-seen, so that the platform's re-push is answered, not dropped
        as a duplicate."""
        acked = False
        try:
            payload, started = await self._card_answer(event)
            ack = event.ack.encode(time.perf_counter() - started, payload)
            await self._driver.send(ack, until=trio.current_time())
            acked = True
        except ConnectorError as exc:
            log.info("Lark app %s: a card action's ACK not sent: %s", self.account, exc)
        finally:
            if not acked:
                self._protocol.forget(event)

    async def _card_answer(self, event: CardActionReceived) -> tuple[bytes, float]:
        """``on_card_action``'s answer as an ACK payload (plain if none in time), and when
        the handler started (``time.perf_counter``)."""
        assert self.on_card_action is not None
        started = time.perf_counter()
        answer: CardAnswer | None = None
        with trio.move_on_after(self.card_answer_within) as bound:
            try:
                answer = await self.on_card_action(event.envelope)
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
        return self._ack_payload(answer), started

    def _ack_payload(self, answer: CardAnswer | None) -> bytes:
        """``answer`` as an ACK payload; plain when there is none, when its card is over the
        platform's limit (counted, logged with the limit), or when it is not a
        :class:`CardAnswer` or does not encode (a card holding a ``datetime``): counted as a
        failed answer and logged, so that the bot's mistake never reaches the connection."""
        if answer is None:
            return ACK_OK
        try:
            if not isinstance(answer, CardAnswer):
                raise TypeError(
                    f"on_card_action returned a {type(answer).__name__}, not a CardAnswer or None: "
                    "return lark.CardAnswer(...) or None"
                )
            return answer.ack()
        except SendError as exc:
            self.ctx.count("card_answers_too_big")
            log.warning("Lark app %s: %s; ACKed without it", self.account, exc)
        except Exception:
            self.ctx.count("card_answer_failures")
            log.exception(
                "Lark app %s: on_card_action's card answer cannot be sent; ACKed without it",
                self.account,
            )
        return ACK_OK

    # -- replying ----------------------------------------------------------------------------

    async def send(self, target: Message, text: str) -> None:
        """Reply to ``target`` (or, where a reply is impossible, send to its chat). If
        cancelled, it may or may not have been sent."""
        await self._post(target, text, self._send_uuid(target))

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Reply with text, Markdown (a post), a :class:`Post`, a :class:`Card` (interactive)
        or an :class:`Attachment` (uploaded, then sent); where a reply is impossible, to the
        chat. The returned :class:`Sent` has the message id that :meth:`edit` takes. If
        cancelled, it may or may not have been sent (never during an upload)."""
        return await self._send_content(target, content, self._send_uuid(target))

    def _send_uuid(self, target: Message) -> str:
        """The ``uuid`` of the next plain send in reply to ``target``: derived from the app, the
        message and the number of sends this connector made in reply to it before. Lark sends
        one message per ``uuid`` an hour, so a run replayed after a restart (its reply sent,
        the run not marked done: a crash, a kill) sends its first reply with the ``uuid`` the
        first life used and is answered with that message, not a second one; sends within one
        life differ by their number. Counted for the last :data:`SENDS_COUNTED` targets."""
        number = self._sends.get(target.id, 0)
        self._sends[target.id] = number + 1
        trim(self._sends, SENDS_COUNTED)
        key = f"{self.account}\0{target.id}\0{number}".encode()
        return hashlib.blake2b(key, digest_size=16).hexdigest()  # 32 characters of Lark's 50

    async def _send_content(
        self, target: Message, content: Content, uuid: str | None = None
    ) -> Sent:
        """:meth:`send_content`; calls with the same ``uuid`` send one message an hour."""
        posted = await self._post(target, content, uuid)
        return self._sent(target, content, posted)

    @staticmethod
    def _sent(target: Message, content: Content, posted: out.Posted) -> Sent:
        """The :class:`Sent` of a reply to ``target`` with ``content``."""
        return Sent(PLATFORM, target.reply_handle["chat_id"], kind_of(content), posted.message_id)

    async def _send_first(self, chat_id: str, content: Content) -> Sent:
        """Send to a chat (``oc_...``) or a user (``ou_...`` open id, ``on_...`` union id)
        unprompted; the same content as :meth:`send_content`, and the same on cancellation."""
        msg_type, body = await self._body(content)
        with base.send_errors(f"Lark app {self.account}: send to {chat_id}"):
            posted = await out.create(self.api, chat_id, msg_type, body)
        return Sent(PLATFORM, chat_id, kind_of(content), posted.message_id)

    async def _edit(self, sent: Sent, content: Content) -> None:
        """Edit a sent message in place (for :meth:`edit`, which checked ``content``): text,
        Markdown and posts by ``PUT`` (20 times at most), a card by ``PATCH`` (cards sent with
        ``update_multi`` show it to everyone). If cancelled, the message shows the old content
        or the new one."""
        if sent.message_id is None or isinstance(content, Attachment):
            raise SendError(
                f"Lark app {self.account}: only a sent text, post or card can be edited"
            )
        msg_type, body = policy.body(self.account, content)
        with base.send_errors(f"Lark app {self.account}: edit"):
            await out.update(self.api, sent.message_id, msg_type, body)

    async def _body(self, content: Content) -> tuple[str, str]:
        key = None
        if isinstance(content, Attachment):
            with base.send_errors(f"Lark app {self.account}: upload"):
                key = await out.upload(self.api, content)
        return policy.body(self.account, content, key)

    async def _post(self, target: Message, content: Content, uuid: str | None = None) -> out.Posted:
        msg_type, body = await self._body(content)
        handle = target.reply_handle
        with base.send_errors(f"Lark app {self.account}: reply"):
            try:
                return await out.reply(self.api, handle["message_id"], msg_type, body, uuid)
            except LarkError as exc:
                if not policy.falls_back(exc.code):
                    raise
                return await out.create(self.api, handle["chat_id"], msg_type, body, uuid)

    def stream(self, target: Message) -> AbstractAsyncContextManager[base.ReplyStream]:
        """Send one message at the first write, edit it as the text grows (within
        ``edit_budget``), and a final edit at the end."""
        return self._stream(target)

    def _stream(self, target: Message) -> AbstractAsyncContextManager[base.ReplyStream]:
        return base.streaming(_EditedStream(self, target), final_within=30)


def _close_reason(exc: BaseException) -> CloseReason | None:
    """The WebSocket close behind the driver's :class:`ConnectorError` ``exc`` (or one in it),
    if a close ended the connection."""
    error = find_error(exc, ConnectorError)
    cause = None if error is None else error.__cause__
    return cause.reason if isinstance(cause, ConnectionClosed) else None


class _EditedStream(base.CoalescingStream):
    """One message, sent at the first update and edited as the text grows, through the
    connector's :meth:`~LongConnection.send_content` and :meth:`~LongConnection.edit`.

    Every try at sending it carries the stream's one ``uuid``: a send that failed without
    an answer (a timeout, a gateway's 5xx) may have been done, and the next try must not make
    a second message (the platform makes one per ``uuid`` an hour; docs/lark.md). The
    ``uuid`` is the one a plain send in its place would carry (:meth:`LongConnection.
    _send_uuid`: the app's, the target's and its number among the sends in reply to it), so
    a run replayed after a restart (its stream begun, the run not marked done: a crash, a
    kill) streams into the message its first life began, not a second one. A try answered
    with a message holding other words than it carried (an earlier try's, the first life's)
    edits it to its text. For the same reason every edit tried counts against the budget,
    done or not: the final edit, kept in reserve, must not be the platform's 21st."""

    def __init__(self, connector: LongConnection, target: Message) -> None:
        self._budget = connector.edit_budget
        super().__init__(self._budget.interval)
        self._connector = connector
        self._target = target
        self._uuid = connector._send_uuid(target)  # taken in the order the agent asked
        self._shown: str | None = ""  # None: not known (the message held other words)
        self.sent: Sent | None = None
        self.edits = 0

    async def update(self, text: str) -> None:
        await self._show(text, final=False)

    async def final(self, text: str) -> None:
        await self._show(text, final=True)  # nothing written: nothing sent

    async def _show(self, text: str, *, final: bool) -> None:
        """Show ``text``: sent at the first write, then edited while the budget allows (the
        final text always is)."""
        if not text or text == self._shown:
            return
        sent = self.sent
        if sent is None:
            if not (final or self._budget.shows_now(False, self.edits)):
                return
            sent = self.sent = await self._send(text)
            if self._shown == text:
                return
        if final or self._budget.shows_now(True, self.edits):
            try:
                await self._connector.edit(sent, text)
            finally:  # a failed edit may have been done: Lark counts it against the 20
                self.edits += 1
            self._shown = text

    async def _send(self, text: str) -> Sent:
        """Send the message; it shows ``text`` if the answer says it holds it, else what it
        shows is not known (another try's or another life's words)."""
        posted = await self._connector._post(self._target, text, self._uuid)
        self._shown = text if posted.holds_sent else None
        return self._connector._sent(self._target, text, posted)

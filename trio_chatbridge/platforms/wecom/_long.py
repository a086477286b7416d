"""WeCom AI Bot over its WebSocket long connection (docs/protocols/wecom.md#long-connection).

Better than other clients (docs/protocols/wecom.md#known-faults): callbacks are handled off the
receive loop (so an ack is never stuck behind a handler), heartbeats whose ack is missing, or a
socket that goes silent, end the connection (the supervisor reconnects with backoff), acks are
matched by ``req_id`` with nothing left behind, and ``disconnected_event`` stops the connector for
good instead of reconnecting and kicking the newer connection.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, TypeAlias, final

import attrs
import httpx
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from ... import _connector as base
from ..._content import Attachment, Card, Content, Sent, kind_of
from ..._errors import (
    ConfigurationError,
    ConnectorError,
    FatalConnectorError,
    MediaError,
    ProtocolError,
    SendError,
)
from ..._media import MediaPolicy, fetch
from ..._messages import Batch, Media, Message
from ..._receive import Handlers, Skipped, parse_or_skip, rearm, receive_burst
from . import _crypto
from . import _frames as f
from . import _outbound as out
from ._convert import PLATFORM, to_message
from ._link import Link, LinkClosed, WeComError

log = logging.getLogger("trio_chatbridge.wecom")

DEFAULT_MEDIA_HOSTS: Final = (".weixin.qq.com", ".qq.com", ".qpic.cn")
PUT_BATCH: Final = 100  # callbacks journaled together at most
PUT_GRACE: Final = 10.0  # seconds a put may go on after its connection was cancelled
STREAM_INTERVAL: Final = 0.5  # seconds between intermediate stream frames (AstrBot's pace)
RECONNECT_WAIT: Final = 60.0  # seconds a reply waits for the connection to come back
FINISH_MARGIN: Final = 20.0  # seconds before a callback's window closes that its stream ends
DEFAULT_WELCOME: Final = "Hello! Send me a message and I will answer."

OpenWebSocket: TypeAlias = Callable[[str], AbstractAsyncContextManager[WebSocketConnection]]


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


Welcome: TypeAlias = str | Card | Callable[[WeComEvent], Awaitable[str | Card | None]] | None
EventHandler: TypeAlias = Callable[[WeComEvent], Awaitable[None]]


def _open_websocket(url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
    return open_websocket_url(
        url, connect_timeout=15, disconnect_timeout=5, max_message_size=f.WS_MESSAGE_LIMIT
    )


def utf8_prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 fits in ``limit`` bytes (whole characters)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[:limit].decode(errors="ignore")


class LongConnection(base.Connector):
    """A WeCom AI Bot on the WebSocket long connection (bot id + secret, no public URL).

    ``welcome`` answers ``enter_chat`` (a text or a :class:`Card`, a coroutine function
    returning one, or None);
    ``on_event`` receives other events (card clicks, feedback). ``bot_name`` lets group
    messages lose exactly the bot's @-mention; without it, a leading @-mention is removed.
    ``earlier_reply`` is what closes the earlier callbacks of a batch (see the docs).
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        bot_id: str,
        secret: str,
        url: str = f.DEFAULT_URL,
        heartbeat: float = f.HEARTBEAT_INTERVAL,
        heartbeat_grace: float = f.HEARTBEAT_GRACE,
        ack_timeout: float = f.ACK_TIMEOUT,
        welcome: Welcome = DEFAULT_WELCOME,
        on_event: EventHandler | None = None,
        bot_name: str | None = None,
        earlier_reply: str = "",
        stream_interval: float = STREAM_INTERVAL,
        reconnect_wait: float = RECONNECT_WAIT,
        media: MediaPolicy | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        open_websocket: OpenWebSocket = _open_websocket,
    ) -> None:
        if not bot_id or not secret:
            raise ConfigurationError("wecom.LongConnection needs bot_id and secret")
        self.account = bot_id
        self._secret = secret
        self.url = url
        self.heartbeat = heartbeat
        self.heartbeat_grace = heartbeat_grace
        self.ack_timeout = ack_timeout
        self.welcome = welcome
        self.on_event = on_event
        self.bot_name = bot_name
        self.earlier_reply = earlier_reply
        self.stream_interval = stream_interval
        self.reconnect_wait = reconnect_wait
        self.media_policy: MediaPolicy = media or MediaPolicy(DEFAULT_MEDIA_HOSTS)
        self._http = http
        self._transport = transport
        self._own_http: httpx.AsyncClient | None = None
        self._open_websocket = open_websocket
        self._link: Link | None = None
        self._handlers = Handlers()  # welcome and on_event tasks, bounded
        self._link_up = trio.Event()  # set while there is a link; a new one once it is lost
        # the windows in reply handles are on this process's Trio clock: this says whose
        self._life = secrets.token_hex(8)

    def __repr__(self) -> str:  # never the secret
        return f"wecom.LongConnection(bot_id={self.account!r})"

    @property
    def link(self) -> Link:
        """The current connection's command link; :class:`SendError` when disconnected."""
        if self._link is None:
            raise SendError(f"wecom bot {self.account} is not connected right now; retry later")
        return self._link

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with self._open_websocket(self.url) as ws:
                link = Link(
                    ws, ack_timeout=self.ack_timeout, count=self.ctx.count, on_close=self._lost
                )
                try:
                    await self._session(ws, link, task_status)
                finally:
                    link.close("connection ended")
        except ConnectionClosed as exc:
            raise ConnectorError(f"wecom bot {self.account}: socket closed ({exc.reason})") from exc
        except (OSError, HandshakeError) as exc:
            cause = exc.__cause__ or exc
            raise ConnectorError(
                f"wecom bot {self.account}: cannot connect to {self.url}: {cause}"
            ) from exc

    async def _session(
        self, ws: WebSocketConnection, link: Link, task_status: trio.TaskStatus[None]
    ) -> None:
        # Unbounded on purpose: the reader must never wait, or an ack that an agent's reply is
        # waiting for could sit behind a full queue (a deadlock). The platform bounds it
        # anyway: a user has at most three messages in flight with the bot
        # (docs/protocols/wecom.md#message-callbacks).
        callbacks_in, callbacks_out = trio.open_memory_channel[f.Frame](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, ws, link, callbacks_in, nursery)
            try:
                await link.command(
                    f.SUBSCRIBE,
                    f.new_req_id(f.SUBSCRIBE),
                    {"bot_id": self.account, "secret": self._secret},
                    conflict_retries=0,
                )
            except WeComError as exc:
                raise FatalConnectorError(
                    f"wecom bot {self.account}: subscribe refused (errcode {exc.errcode}, "
                    f"{exc.errmsg!r}): check the bot id and secret on the bot's API page"
                ) from exc
            self._link = link
            self._link_up.set()
            task_status.started()
            nursery.start_soon(self._heartbeat, link)
            nursery.start_soon(self._put_messages, callbacks_out)

    async def _read(
        self,
        ws: WebSocketConnection,
        link: Link,
        callbacks: trio.MemorySendChannel[f.Frame],
        nursery: trio.Nursery,
    ) -> None:
        """The receive loop: acks to their waiters, callbacks to their handlers, never blocked.

        A healthy link brings a ping ack every interval; the watchdog allows one grace more
        than the heartbeat does, so a missing ack is reported as such, and silence as silence.
        """
        silence = self.heartbeat + 2 * self.heartbeat_grace
        async with callbacks:
            with trio.CancelScope() as watchdog:  # one scope, kept ahead of every frame
                while True:
                    rearm(watchdog, silence)
                    try:
                        data = await ws.get_message()
                    except ConnectionClosed as exc:
                        link.close(str(exc.reason))
                        raise ConnectorError(
                            f"wecom bot {self.account}: socket closed ({exc.reason})"
                        ) from exc
                    self._dispatch(data, link, callbacks, nursery)
            link.close("silent")
            raise ConnectorError(f"wecom bot {self.account}: no frame for {silence:.0f} s")

    def _dispatch(
        self,
        data: str | bytes,
        link: Link,
        callbacks: trio.MemorySendChannel[f.Frame],
        nursery: trio.Nursery,
    ) -> None:
        frame = parse_or_skip(self.ctx, "frame", f.parse_frame, data)
        if isinstance(frame, Skipped):
            return
        if frame.is_ack:
            link.deliver_ack(frame)
        elif frame.cmd == f.MSG_CALLBACK:
            callbacks.send_nowait(frame)
        elif frame.cmd == f.EVENT_CALLBACK:
            event = frame.body.get("event")
            eventtype = event.get("eventtype") if isinstance(event, dict) else None
            if eventtype == "disconnected_event":
                link.close("replaced")
                raise FatalConnectorError(
                    f"wecom bot {self.account}: replaced by a newer connection for the same bot "
                    "(disconnected_event); not reconnecting, which would only kick that one out. "
                    "Run one connection per bot."
                )
            self._handlers.start(self.ctx, nursery, self._event, frame, str(eventtype))
        else:
            self.ctx.count("unknown_commands")
            log.info("wecom bot %s: ignored frame with cmd %r", self.account, frame.cmd)

    async def _put_messages(self, callbacks: trio.MemoryReceiveChannel[f.Frame]) -> None:
        """Hand callbacks to the inbox, all that are waiting in one put (one journal write)."""
        async with callbacks:
            while True:
                try:
                    frames = await receive_burst(callbacks, PUT_BATCH)
                except trio.EndOfChannel:
                    return
                messages = []
                # a callback is answerable for STREAM_WINDOW from now, on this process's clock
                window = {"answer_by": trio.current_time() + f.STREAM_WINDOW, "life": self._life}
                for frame in frames:
                    message = parse_or_skip(
                        self.ctx,
                        "message callback",
                        to_message,
                        self.account,
                        frame.req_id,
                        frame.body,
                        bot_name=self.bot_name,
                        handle=window,
                    )
                    if not isinstance(message, Skipped):
                        messages.append(message)
                if messages:
                    # Off the socket already, and WeCom does not deliver a callback again:
                    # journal them even while the connection goes down (a bounded wait).
                    with trio.CancelScope(shield=True, deadline=trio.current_time() + PUT_GRACE):
                        await self.ctx.put(messages)

    async def _heartbeat(self, link: Link) -> None:
        while True:
            await trio.sleep(self.heartbeat)
            try:
                await link.command(
                    f.PING,
                    f.new_req_id(f.PING),
                    ack_within=self.heartbeat_grace,
                    conflict_retries=0,
                )
            except WeComError as exc:
                raise ConnectorError(f"wecom bot {self.account}: ping refused: {exc}") from exc

    async def _event(self, frame: f.Frame, eventtype: str) -> None:
        body = frame.body
        sender = body.get("from")
        event = WeComEvent(
            eventtype,
            frame.req_id,
            sender.get("userid") if isinstance(sender, dict) else None,
            body.get("chatid") if isinstance(body.get("chatid"), str) else None,
            body,
        )
        try:
            if eventtype == "enter_chat":
                await self._welcome(event)
            elif self.on_event is not None:
                await self.on_event(event)
        except Exception:  # user code or a refused welcome: never the connection's problem
            self.ctx.count("event_failures")
            log.exception("wecom bot %s: handling %s failed", self.account, eventtype)

    async def _welcome(self, event: WeComEvent) -> None:
        with trio.move_on_after(f.WELCOME_DEADLINE) as deadline:
            welcome = self.welcome
            answer = welcome if isinstance(welcome, str | Card | None) else await welcome(event)
            if answer:
                body = (
                    out.message_body(self.account, answer)
                    if isinstance(answer, Card)
                    else {"msgtype": "text", "text": {"content": answer}}
                )
                await self.link.command(f.RESPOND_WELCOME, event.req_id, body)
        if deadline.cancelled_caught:
            self.ctx.count("late_welcomes")
            log.warning("wecom bot %s: no welcome within %.0f s", self.account, f.WELCOME_DEADLINE)

    # -- replying ----------------------------------------------------------------------------

    def running(self, batch: Batch) -> AbstractAsyncContextManager[None]:
        return self._close_earlier(batch)

    @asynccontextmanager
    async def _close_earlier(self, batch: Batch) -> AsyncIterator[None]:
        """Finish the streams of a batch's earlier callbacks before the agent runs.

        Only the latest message's callback carries the answer; the others would stay open and
        hold the user's few in-flight messages, so each gets a finished stream of
        ``earlier_reply`` (empty by default). They have distinct req_ids, so they are closed
        concurrently: one ack round trip before the agent starts, not one per message. A
        refused close is logged; it never keeps the agent from running.
        """
        async with trio.open_nursery() as nursery:
            for message in batch.messages[:-1]:
                req_id = message.reply_handle.get("req_id")
                if req_id:
                    nursery.start_soon(self._close_callback, req_id)
        yield

    async def _close_callback(self, req_id: str) -> None:
        try:
            await self._respond_stream(req_id, self.earlier_reply, _new_stream_id(), True)
        except (WeComError, ConnectorError, SendError) as exc:
            log.info("wecom bot %s: closing callback %s: %s", self.account, req_id, exc)

    async def send(self, target: Message, text: str) -> None:
        """Answer ``target`` with one finished stream frame (overflow as proactive messages)."""
        await _Stream(self, target).final(text)

    def stream(self, target: Message) -> AbstractAsyncContextManager[base.ReplyStream]:
        """Stream onto ``aibot_respond_msg``: the whole text so far in each frame, coalesced."""
        return self._stream(target)

    def stream_with_card(
        self, target: Message, card: Card
    ) -> AbstractAsyncContextManager[base.ReplyStream]:
        """A stream whose first frame also carries ``card`` (``stream_with_template_card``)."""
        return self._stream(target, card)

    def _stream(
        self, target: Message, card: Card | None = None
    ) -> AbstractAsyncContextManager[base.ReplyStream]:
        # The final frame is always sent, even after an error or a cancellation: an open
        # stream would hold one of the user's few in-flight messages.
        return base.streaming(
            _Stream(self, target, card), final_within=2 * self.ack_timeout + self.reconnect_wait
        )

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Answer ``target``: text and Markdown as a finished stream, a :class:`Card` as a
        template card, an :class:`Attachment` uploaded then sent as media. Where the callback
        can take no more (answered already, or an old connection's), it goes proactively.
        If cancelled, it may or may not have been sent (never during an upload)."""
        chat = target.reply_handle["chatid"]
        if out.is_text(content):
            await self.send(target, out.text_of(content))
            return Sent(PLATFORM, chat, kind_of(content))
        body = out.message_body(self.account, content, await self._media_id(content))
        req_id = target.reply_handle.get("req_id")
        try:
            if not req_id:
                raise WeComError(f.RESPOND, f.INVALID_REQ_ID, "message has no req_id")
            await self._command(f.RESPOND, req_id, body)
        except WeComError as exc:
            if exc.errcode not in (f.INVALID_REQ_ID, f.STREAM_EXPIRED):
                raise
            if not self._answered_before(target, exc):
                await self._command(f.SEND, f.new_req_id(f.SEND), {"chatid": chat, **body})
        return Sent(PLATFORM, chat, kind_of(content))

    async def send_first(self, chat_id: str, content: Content) -> Sent:
        """Send to a user (their userid) or a group (its chatid) unprompted (``aibot_send_msg``):
        text and Markdown as ``markdown`` (cut into 20480-byte pieces), cards, media. If
        cancelled, some pieces of a long text may have gone out, in order."""
        if out.is_text(content):
            await self.send_proactive(chat_id, out.text_of(content))
        else:
            body = out.message_body(self.account, content, await self._media_id(content))
            await self._command(f.SEND, f.new_req_id(f.SEND), {"chatid": chat_id, **body})
        return Sent(PLATFORM, chat_id, kind_of(content))

    async def update_card(
        self, event: WeComEvent, card: Card, *, userids: list[str] | None = None
    ) -> None:
        """Replace the card a user clicked (``template_card_event``) within its 5 s
        (``aibot_respond_update_msg``); ``userids`` limits the change to those users. If
        cancelled, the card may or may not have changed."""
        body: dict[str, Any] = {
            "response_type": "update_template_card",
            "template_card": card.as_dict(),
        }
        if userids is not None:
            body["userids"] = list(userids)
        await self._command(out.RESPOND_UPDATE, event.req_id, body)

    async def upload(self, attachment: Attachment) -> str:
        """Upload media in chunks over the connection; returns its ``media_id`` (3 days).

        If cancelled, the upload is left unfinished (no ``media_id``; nothing is sent)."""
        try:
            return await out.upload(self._ack, self.account, attachment)
        except ProtocolError as exc:
            raise SendError(f"wecom bot {self.account}: upload failed: {exc}") from exc

    async def _media_id(self, content: Content) -> str | None:
        return await self.upload(content) if isinstance(content, Attachment) else None

    async def send_proactive(self, chat_id: str, text: str) -> None:
        """Push markdown to a user or group with no callback to answer (``aibot_send_msg``)."""
        remaining = text
        while remaining:
            piece = utf8_prefix(remaining, f.STREAM_LIMIT)
            remaining = remaining[len(piece) :]
            await self._command(
                f.SEND,
                f.new_req_id(f.SEND),
                {"chatid": chat_id, "msgtype": "markdown", "markdown": {"content": piece}},
            )

    async def _respond_stream(
        self,
        req_id: str,
        content: str,
        stream_id: str,
        finish: bool,
        card: Card | None = None,
        until: float | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "msgtype": "stream",
            "stream": {"id": stream_id, "finish": finish, "content": content},
        }
        if card is not None:
            body.update(msgtype="stream_with_template_card", template_card=card.as_dict())
        await self._command(f.RESPOND, req_id, body, until)

    async def _command(
        self, cmd: str, req_id: str, body: Mapping[str, Any], until: float | None = None
    ) -> None:
        await self._ack(cmd, req_id, body, until)

    async def _ack(
        self, cmd: str, req_id: str, body: Mapping[str, Any], until: float | None = None
    ) -> f.Frame:
        """Send a command and return its ack, across a reconnect if need be.

        While the connection is re-established the command waits for the new one, at most
        ``reconnect_wait`` seconds and never past ``until``; one lost with its socket goes again
        on the next (a reply frame always: it replaces or repeats the last; anything else only
        if it never left). Raises :class:`SendError` (a :class:`WeComError` for a refusal).
        """
        for attempt in range(2):
            link = await self._next_link(until)
            try:
                return await link.command(cmd, req_id, body)
            except LinkClosed as exc:
                if attempt or (exc.sent and cmd != f.RESPOND):
                    raise SendError(f"wecom bot {self.account}: {cmd} failed: {exc}") from exc
                self.ctx.count("replies_across_reconnects")
            except ConnectorError as exc:
                raise SendError(f"wecom bot {self.account}: {cmd} failed: {exc}") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _answered_before(self, target: Message, exc: WeComError) -> bool:
        """Whether ``exc`` says ``target`` was answered by an earlier process: 846608 for a
        callback of one (its run killed after answering, the message replayed). Counted in
        ``already_answered``; nothing more is to be sent, and the run counts as done."""
        if exc.errcode != f.STREAM_EXPIRED or target.reply_handle.get("life") == self._life:
            return False
        self.ctx.count("already_answered")
        log.info("wecom bot %s: %s was answered already (%s)", self.account, target.id, exc)
        return True

    def _lost(self, link: Link) -> None:
        """``link`` closed: if it was the current one, replies wait for the next from now on."""
        if self._link is link:
            self._link, self._link_up = None, trio.Event()

    async def _next_link(self, until: float | None) -> Link:
        """The connection's link, waiting while it is re-established (see :meth:`_command`)."""
        deadline = trio.current_time() + self.reconnect_wait
        if until is not None:
            deadline = min(deadline, until)
        while self._link is None:
            with trio.move_on_at(deadline):
                await self._link_up.wait()
            if self._link is None and trio.current_time() >= deadline:
                raise SendError(
                    f"wecom bot {self.account} is not connected; no connection came back in "
                    f"{self.reconnect_wait:.0f} s (reconnect_wait) or before the reply's deadline"
                )
        return self._link

    async def download(self, media: Media) -> bytes:
        """Download and decrypt an inbound image, file or video (its per-URL ``aeskey``)."""
        url, aeskey = media.ref.get("url"), media.ref.get("aeskey")
        if not url:
            raise MediaError(f"this {media.kind} has no URL")
        data = await fetch(self._client(), url, self.media_policy)
        if not aeskey:
            raise MediaError(f"this {media.kind} has no aeskey (long-connection media carries one)")
        try:
            return _crypto.decrypt_media(aeskey, data)
        except ProtocolError as exc:
            raise MediaError(f"cannot decrypt the {media.kind}: {exc}") from exc

    def _client(self) -> httpx.AsyncClient:
        if self._http is not None:
            return self._http
        if self._own_http is None:
            self._own_http = httpx.AsyncClient(transport=self._transport)
        return self._own_http

    async def aclose(self) -> None:
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None


def _new_stream_id() -> str:
    return f"stream_{secrets.token_hex(8)}"


class _Stream(base.CoalescingStream):
    """A reply streamed on one callback's req_id.

    Every frame carries the whole text so far (the platform replaces, not appends); what does
    not fit in the platform's 20480 bytes goes out as proactive messages at the end. A callback
    is answerable for six minutes: a stream still open :data:`FINISH_MARGIN` before that is
    finished with what it has, and the rest goes proactively at the end.
    """

    def __init__(
        self, connector: LongConnection, target: Message, card: Card | None = None
    ) -> None:
        super().__init__(connector.stream_interval)
        self._connector = connector
        self._target = target
        self._card = card
        self._sent_text = ""
        self._finished = False
        self.stream_id = _new_stream_id()
        self.frames = 0
        handle = target.reply_handle
        answer_by = handle.get("answer_by") if handle.get("life") == connector._life else None
        # None: a callback of an earlier process (replayed), its window unknown here
        self._finish_by = answer_by - FINISH_MARGIN if isinstance(answer_by, float) else None

    async def pump(self) -> None:
        """The base pump until the window is about to close; then the stream is finished."""
        with trio.move_on_at(math.inf if self._finish_by is None else self._finish_by):
            await super().pump()
        self._idle = trio.Event()
        try:
            await self._finish_now()
        finally:
            self._idle.set()
        await trio.sleep_forever()

    async def _finish_now(self) -> None:
        self._finished = True
        try:
            await self._frame(utf8_prefix(self.text, f.STREAM_LIMIT), finish=True)
        except SendError as exc:
            log.info("wecom bot %s: finishing a stream early: %s", self._connector.account, exc)

    async def update(self, text: str) -> None:
        content = utf8_prefix(text, f.STREAM_LIMIT)
        if content != self._sent_text:
            await self._frame(content, finish=False)

    async def final(self, text: str) -> None:
        """Finish the stream with ``text``; what the callback cannot carry goes proactively.

        846608 on a stream that showed nothing yet, for a callback of an earlier process, means
        it was answered before (by a run killed after it finished its stream, now replayed):
        nothing more is sent, and the run counts as done.
        """
        chat = self._target.reply_handle["chatid"]
        shown = len(self._sent_text)
        try:
            if not self._target.reply_handle.get("req_id"):
                raise WeComError(f.RESPOND, f.INVALID_REQ_ID, "message has no req_id")
            if self._finished or self._too_late():
                raise WeComError(f.RESPOND, f.STREAM_EXPIRED, "answer window closing")
            content = utf8_prefix(text, f.STREAM_LIMIT)
            await self._frame(content, finish=True)
            shown = len(content)
        except WeComError as exc:
            if exc.errcode not in (f.INVALID_REQ_ID, f.STREAM_EXPIRED):
                raise
            if not self.frames and self._connector._answered_before(self._target, exc):
                return
            # The callback is gone (an old connection's after a restart), answered already in
            # this run (by a card or media), or its window closed: what did not show goes
            # proactively, once (all of it, card first, if nothing of this stream showed).
            if not self.frames or exc.errcode == f.INVALID_REQ_ID:
                if self._card is not None:
                    await self._connector.send_first(chat, self._card)
                shown = 0
        if shown < len(text):
            await self._connector.send_proactive(chat, text[shown:])

    def _too_late(self) -> bool:
        return self._finished or (
            self._finish_by is not None and trio.current_time() >= self._finish_by
        )

    async def _frame(self, content: str, *, finish: bool) -> None:
        card = self._card if self.frames == 0 else None  # a card goes once per message
        await self._connector._respond_stream(
            self._target.reply_handle["req_id"],
            content,
            self.stream_id,
            finish,
            card,
            None if self._finish_by is None else self._finish_by + FINISH_MARGIN / 2,
        )
        self._sent_text = content
        self.frames += 1

"""WeCom AI Bot over its WebSocket long connection (docs/protocols/wecom.md#long-connection).

Better than other clients (docs/protocols/wecom.md#known-faults): callbacks are handled off the
receive loop (so an ack is never stuck behind a handler), heartbeats whose ack is missing, or a
socket that goes silent, end the connection (the supervisor reconnects with backoff), acks are
matched by ``req_id`` with nothing left behind, and ``disconnected_event`` stops the connector for
good instead of reconnecting and kicking the newer connection.

The connector is WeCom's protocol core (:class:`~._protocol.WeComCore`, no I/O) run by the
library's WebSocket driver (``trio_chatbridge._websocket``), plus what WeCom's replies need:
streams on a callback's ``req_id``, proactive messages, cards, uploads, media downloads.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeAlias, final

import attrs
import httpx
import trio

from ... import _confirm
from ... import _connector as base
from ..._content import Attachment, Card, Content, Sent, kind_of
from ..._errors import (
    ConfigurationError,
    ConnectorError,
    MediaError,
    ProtocolError,
    SendError,
    sole,
)
from ..._fifo import trim
from ..._http import new_client
from ..._media import MediaPolicy, fetch
from ..._messages import Batch, Media, Message
from ..._websocket import (
    BUSY_BACKOFF,
    PROGRESS,
    AckTimeout,
    Disconnected,
    OpenWebSocket,
    Progress,
    WebSocketDriver,
)
from ..._ws_client import WebSocketClient, open_websocket
from ..._ws_core import Answer, Request
from . import _crypto
from . import _outbound as out
from . import _protocol as f
from ._convert import PLATFORM
from ._protocol import WeComCore, WeComError, WeComEvent
from ._replies import (
    StreamState,
    Then,
    after_refusal,
    markdown_bodies,
    new_stream_id,
    stream_body,
)

log = logging.getLogger("trio_chatbridge.wecom")

DEFAULT_MEDIA_HOSTS: Final = (".weixin.qq.com", ".qq.com", ".qpic.cn")
STREAM_INTERVAL: Final = 0.5  # seconds between intermediate stream frames (AstrBot's pace)
RECONNECT_WAIT: Final = 60.0  # seconds a reply waits for the connection to come back
FINISH_MARGIN: Final = 20.0  # seconds before a callback's window closes that its stream ends
DEFAULT_WELCOME: Final = "Hello! Send me a message and I will answer."
FIRST_DELIVERIES_KEPT: Final = 10_000  # req_ids of new callbacks remembered at most (_journaled)
FINISHED_KEPT: Final = 10_000  # req_ids of callbacks sent their final answer, remembered at most

Welcome: TypeAlias = str | Card | Callable[[WeComEvent], Awaitable[str | Card | None]] | None
EventHandler: TypeAlias = Callable[[WeComEvent], Awaitable[None]]


def _open_websocket(url: str) -> AbstractAsyncContextManager[WebSocketClient]:
    return open_websocket(
        url, connect_timeout=15, disconnect_timeout=5, max_message_size=f.WS_MESSAGE_LIMIT
    )


@final
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
        self.url = url
        self.ack_timeout = ack_timeout
        self.welcome = welcome
        self.on_event = on_event
        self.earlier_reply = earlier_reply
        self.stream_interval = stream_interval
        self.media_policy: MediaPolicy = media or MediaPolicy(DEFAULT_MEDIA_HOSTS)
        self._http = http
        self._transport = transport
        self._own_http: httpx.AsyncClient | None = None
        self._recoveries: trio.Nursery | None = None  # while :meth:`run` runs
        self._cut: list[tuple[_Confirming, Answer | ConnectorError]] = []
        """Recoveries cut by their run's end before anything of them left (each with what it
        recovers from): started again by the next run, settled unknown if the connector stops
        first (:class:`_Confirming`)."""
        self._unanswered: set[str] = set()
        """The req_ids of running batches' latest callbacks that no answer was sent on yet."""
        self._finished: dict[str, None] = {}
        """The req_ids of callbacks a final answer was sent on (a finished stream, a card,
        media), the last :data:`FINISHED_KEPT`: a rerun after an interrupt does not close
        them again as its batch's earlier callbacks (WeCom would refuse it, 846608)."""
        self._first_deliveries: dict[str, None] = {}
        """The req_ids of the latest callbacks journaled as new, oldest first (at most
        :data:`FIRST_DELIVERIES_KEPT`, the older half forgotten past that): a redelivery on
        one of them is never closed."""
        # the windows in reply handles are on this process's Trio clock: ``life`` says whose
        self._core = WeComCore(
            bot_id,
            secret,
            secrets.token_hex(8),
            heartbeat_interval=heartbeat,
            heartbeat_grace=heartbeat_grace,
            bot_name=bot_name,
        )
        self._driver: WebSocketDriver[WeComEvent] = WebSocketDriver(
            self._core,
            name=f"wecom bot {bot_id}",
            open_websocket=open_websocket,
            on_notice=self._event,
            answer_within=ack_timeout,
            reconnect_wait=reconnect_wait,
            on_journaled=self._journaled,
        )

    def __repr__(self) -> str:  # never the secret
        return f"wecom.LongConnection(bot_id={self.account!r})"

    @property
    def heartbeat(self) -> float:
        """Seconds between pings."""
        return self._core.heartbeat_interval

    @property
    def bot_name(self) -> str | None:
        """The bot's name, whose @-mention group messages lose."""
        return self._core.bot_name

    @property
    def reconnect_wait(self) -> float:
        """Seconds a reply waits for the connection to come back."""
        return self._driver.reconnect_wait

    @property
    def connected(self) -> bool:
        """Whether the connection is up (subscribed)."""
        return self._driver.connected

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, subscribe, and receive until the connection fails (it raises; the
        supervisor reconnects). If cancelled, the connection closes; callbacks already read
        are still journaled (for at most 10 s), since WeCom never pushes them again.

        A refused or unanswered final frame is sent again in a task of this run, outside the
        notice handlers' limit (:class:`_Confirming`: at most one per frame posted), so a
        known refusal is never left unknown for want of a slot; those tasks end with it.
        """
        try:
            async with trio.open_nursery() as recoveries:
                self._recoveries = recoveries
                cut, self._cut = self._cut, []
                for confirming, result in cut:
                    recoveries.start_soon(confirming.recover, result)
                try:
                    await self._driver.run(self.ctx, self.url, task_status=task_status)
                finally:
                    self._recoveries = None
                    recoveries.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the driver's error, as it raised it
            failure = sole(group)
            if failure is group:
                raise
            raise failure from failure.__cause__

    def stopped(self) -> None:
        """The connector stopped, maybe while waiting to reconnect: final frames carried over
        to the next connection will not go; their batches stay pending (counted in
        ``replies_unconfirmed``), and so do those whose fallback was cut before it left."""
        self._driver.stopped()
        cut, self._cut = self._cut, []
        for confirming, _ in cut:
            confirming.unconfirmed("the connector stopped before it was sent again")

    def _journaled(self, messages: Sequence[Message], new: Sequence[Message]) -> None:
        """After a put: close each callback the journal had already (a msgid delivered
        before, on another req_id) with an empty finished stream, counted in
        ``duplicate_callbacks_closed``: its answer goes to the first delivery, and left open it
        would hold one of the user's few messages in flight until WeCom's window ends. A
        callback on a req_id journaled as new here is never closed (the same frame twice:
        that req_id carries the answer)."""
        first = self._first_deliveries
        for message in new:
            first[message.reply_handle["req_id"]] = None
        trim(first, FIRST_DELIVERIES_KEPT)
        if len(new) == len(messages) or self._recoveries is None:
            return  # all new (the common case), or the run is over: nothing can close them
        fresh = {id(message) for message in new}
        for message in messages:
            req_id = message.reply_handle["req_id"]
            if id(message) not in fresh and req_id not in first:
                first[req_id] = None  # closed once, however often it comes
                self.ctx.count("duplicate_callbacks_closed")
                self._recoveries.start_soon(self._close_callback, req_id, "")

    async def _event(self, event: WeComEvent) -> None:
        try:
            if event.eventtype == "enter_chat":
                await self._welcome(event)
            elif self.on_event is not None:
                await self.on_event(event)
        except Exception:  # user code or a refused welcome: never the connection's problem
            self.ctx.count("event_failures")
            log.exception("wecom bot %s: handling %s failed", self.account, event.eventtype)

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
                await self.command(f.RESPOND_WELCOME, event.req_id, body)
        if deadline.cancelled_caught:
            self.ctx.count("late_welcomes")
            log.warning("wecom bot %s: no welcome within %.0f s", self.account, f.WELCOME_DEADLINE)

    # -- replying ----------------------------------------------------------------------------

    def running(self, batch: Batch) -> AbstractAsyncContextManager[None]:
        """Held while the agent runs on ``batch``: no callback of it is left open (each holds
        one of the user's few messages in flight). Before the agent runs, the batch's earlier
        callbacks are finished with ``earlier_reply`` (:meth:`_close_earlier`); if the agent
        raised (or its run timed out: the dispatcher raises then) before any answer went on
        the latest one, it is finished empty. An agent that returns without answering leaves
        it open (a ``Reply`` kept after the run may still answer), and so does a cancelled run
        (interrupted: the next run closes it as an earlier message; shut down: replayed at the
        next start)."""
        return _Running(self, batch)

    async def _close_earlier(self, batch: Batch) -> None:
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
                if req_id and req_id not in self._finished:
                    nursery.start_soon(self._close_callback, req_id)

    async def _close_callback(self, req_id: str, content: str | None = None) -> None:
        """Finish the stream of the callback on ``req_id`` with ``content`` (None:
        ``earlier_reply``); a refusal (846608: it was finished already) is only logged."""
        text = self.earlier_reply if content is None else content
        try:
            await self.respond_stream(req_id, text, finish=True)
        except SendError as exc:
            log.info("wecom bot %s: closing callback %s: %s", self.account, req_id, exc)

    async def send(self, target: Message, text: str) -> None:
        """Answer ``target`` with one finished stream frame (overflow as proactive messages).
        If cancelled, the answer may or may not have been shown."""
        await _finish(self, _stream_state(self, target, None), target, text)

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
            await self.command(f.RESPOND, req_id, body)
        except WeComError as exc:
            if after_refusal(exc.errcode, replayed=False) is Then.RAISE:
                raise
            if not self.answered_before(target, exc):
                await self.command(f.SEND, f.new_req_id(f.SEND), {"chatid": chat, **body})
        return Sent(PLATFORM, chat, kind_of(content))

    async def _send_first(self, chat_id: str, content: Content) -> Sent:
        """Send to a user (their userid) or a group (its chatid) unprompted (``aibot_send_msg``):
        text and Markdown as ``markdown`` (cut into 20480-byte pieces), cards, media. If
        cancelled, some pieces of a long text may have gone out, in order."""
        if out.is_text(content):
            await self.send_proactive(chat_id, out.text_of(content))
        else:
            body = out.message_body(self.account, content, await self._media_id(content))
            await self.command(f.SEND, f.new_req_id(f.SEND), {"chatid": chat_id, **body})
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
        await self.command(out.RESPOND_UPDATE, event.req_id, body)

    async def upload(self, attachment: Attachment) -> str:
        """Upload media in chunks over the connection; returns its ``media_id`` (3 days).

        If cancelled, the upload is left unfinished (no ``media_id``; nothing is sent)."""
        with base.send_errors(f"wecom bot {self.account}: upload"):
            return await out.upload(self.command, self.account, attachment)

    async def _media_id(self, content: Content) -> str | None:
        return await self.upload(content) if isinstance(content, Attachment) else None

    async def send_proactive(self, chat_id: str, text: str) -> None:
        """Push markdown to a user or group with no callback to answer (``aibot_send_msg``).
        If cancelled, some pieces of a long text may have gone out, in order."""
        for body in markdown_bodies(chat_id, text):
            await self.command(f.SEND, f.new_req_id(f.SEND), body)

    async def respond_stream(
        self,
        req_id: str,
        content: str,
        *,
        stream_id: str | None = None,
        finish: bool,
        card: Card | None = None,
        until: float | None = None,
    ) -> None:
        """One stream frame on a callback's ``req_id`` (``aibot_respond_msg``): ``content`` is
        the whole text so far; ``finish`` ends the stream; ``card`` rides along (once per
        message); ``until`` bounds the wait for a connection (Trio's clock). A fresh stream id
        when none is given. If cancelled, the frame may or may not have been shown."""
        body = stream_body(stream_id or new_stream_id(), content, finish=finish, card=card)
        await self.command(f.RESPOND, req_id, body, until=until)

    async def command(
        self, cmd: str, req_id: str, body: Mapping[str, Any], *, until: float | None = None
    ) -> Answer:
        """Send a command and return its answer, across a reconnect if need be.

        While the connection is re-established the command waits for the new one, at most
        ``reconnect_wait`` seconds and never past ``until``; one lost with its socket goes again
        on the next (a reply frame always: it replaces or repeats the last; anything else only
        if it never left). Errcode 6000 is retried. Raises :class:`SendError` (a
        :class:`WeComError` for a refusal). If cancelled, it may or may not have been sent.
        """
        if cmd == f.RESPOND:
            self._unanswered.discard(req_id)
        request = self._core.command(cmd, req_id, body)
        with base.send_errors(f"wecom bot {self.account}: {cmd}"):
            answer = await self._driver.request(request, until=until, again=cmd == f.RESPOND)
        if cmd == f.RESPOND and _final(body):
            self._took_final(req_id)
        return answer

    def _took_final(self, req_id: str) -> None:
        """The callback on ``req_id`` was sent its final answer (see ``_finished``)."""
        self._finished[req_id] = None
        trim(self._finished, FINISHED_KEPT)

    def answer_by(self, target: Message) -> float | None:
        """When ``target``'s callback can take no more answers, on Trio's clock; None for a
        callback this process did not receive (replayed from the journal: unknown here)."""
        handle = target.reply_handle
        answer_by = handle.get("answer_by") if handle.get("life") == self._core.life else None
        return answer_by if isinstance(answer_by, float) else None

    def answered_before(self, target: Message, exc: WeComError) -> bool:
        """Whether ``exc`` says ``target`` was answered by an earlier process: 846608 for a
        callback of one (its run killed after answering, the message replayed). Counted in
        ``already_answered``; nothing more is to be sent, and the run counts as done."""
        replayed = target.reply_handle.get("life") != self._core.life
        if after_refusal(exc.errcode, replayed=replayed) is not Then.DONE:
            return False
        self.ctx.count("already_answered")
        log.info("wecom bot %s: %s was answered already (%s)", self.account, target.id, exc)
        return True

    async def download(self, media: Media) -> bytes:
        """Download and decrypt an inbound image, file or video (its per-URL ``aeskey``); a
        :class:`MediaError` is counted in ``downloads_failed``. If cancelled, nothing was
        downloaded (nothing is kept)."""
        with self.counting("downloads_failed", MediaError):
            url, aeskey = media.ref.get("url"), media.ref.get("aeskey")
            if not url:
                raise MediaError(f"this {media.kind} has no URL")
            data = await fetch(self._client(), url, self.media_policy)
            if not aeskey:
                raise MediaError(
                    f"this {media.kind} has no aeskey (long-connection media carries one)"
                )
            try:
                return _crypto.decrypt_media(aeskey, data)
            except ProtocolError as exc:
                raise MediaError(f"cannot decrypt the {media.kind}: {exc}") from exc

    def _client(self) -> httpx.AsyncClient:
        if self._http is not None:
            return self._http
        if self._own_http is None:
            self._own_http = new_client(self._transport)
        return self._own_http

    async def aclose(self) -> None:
        """Close the HTTP client made for downloads. If cancelled, it may be left open."""
        if self._own_http is not None:
            await self._own_http.aclose()
            self._own_http = None


@final
@attrs.frozen
class _Running:
    """What :meth:`LongConnection.running` holds while the agent runs on ``batch`` (a class,
    not a generator: it is entered on every run)."""

    connector: LongConnection
    batch: Batch

    async def __aenter__(self) -> None:
        if len(self.batch.messages) > 1:
            await self.connector._close_earlier(self.batch)
        req_id = self.batch.latest.reply_handle.get("req_id")
        if req_id:  # last: if the above raises, __aexit__ is not called to take it out
            self.connector._unanswered.add(req_id)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        req_id = self.batch.latest.reply_handle.get("req_id")
        if not req_id or req_id not in self.connector._unanswered:
            return  # an answer went (or went wrong: its own fallbacks follow)
        self.connector._unanswered.discard(req_id)
        if kind is not None and issubclass(kind, Exception):  # not cancelled: see running()
            await self.connector._close_callback(req_id, "")


def _final(body: Mapping[str, Any]) -> bool:
    """Whether a reply frame ends its callback: a stream's finishing frame, or a whole
    answer (a template card, media, Markdown)."""
    stream = body.get("stream")
    return not isinstance(stream, Mapping) or stream.get("finish") is True


def _stream_state(connector: LongConnection, target: Message, card: Card | None) -> StreamState:
    """A stream on ``target``'s callback, finished :data:`FINISH_MARGIN` before its window
    closes (a callback of an earlier process, replayed: its window is unknown here)."""
    answer_by = connector.answer_by(target)
    finish_by = None if answer_by is None else answer_by - FINISH_MARGIN
    return StreamState(target.reply_handle.get("req_id"), finish_by, card)


async def _show(connector: LongConnection, state: StreamState, body: dict[str, Any]) -> None:
    """Send the stream frame ``body``; once it is answered, the callback took it."""
    assert state.req_id is not None  # StreamState builds frames only for one with a req_id
    until = None if state.finish_by is None else state.finish_by + FINISH_MARGIN / 2
    await connector.command(f.RESPOND, state.req_id, body, until=until)
    state.took(body)


async def _finish(
    connector: LongConnection, state: StreamState, target: Message, text: str
) -> None:
    """Finish the stream with ``text``; what the callback cannot carry goes proactively.

    The callback gone (an old connection's after a restart), answered already in this run
    (by a card or media), or its window closed: what did not show goes proactively, once
    (all of it, card first, if nothing of this stream showed). 846608 on a stream that
    showed nothing yet, for a callback of an earlier process, means it was answered before
    (by a run killed after it finished its stream, now replayed): nothing more is sent, and
    the run counts as done.

    Sent from a run that has not ended, a final frame that carries all of ``text`` is only
    written: its ACK confirms the run later (:class:`_Confirming`), and this returns once the
    frame is written.
    """
    step = state.finish(text, trio.current_time())
    try:
        if isinstance(step, int):
            raise WeComError(f.RESPOND, step, "the callback can take no more answers")
        if await _Confirming.post(connector, state, target, text, step):
            return
        await _show(connector, state, step)
        then: Then | None = Then.REST_PROACTIVELY
    except WeComError as exc:
        then = _after_refusal(connector, state, target, exc)
        if then is Then.RAISE:
            raise
    await _rest(connector, state, target, text, then)


def _after_refusal(
    connector: LongConnection, state: StreamState, target: Message, exc: WeComError
) -> Then | None:
    """What follows the refusal ``exc`` of a stream's frame (None: it was answered before)."""
    if not state.frames and connector.answered_before(target, exc):
        return None
    return after_refusal(exc.errcode, replayed=False, frames_shown=state.frames)


async def _rest(
    connector: LongConnection, state: StreamState, target: Message, text: str, then: Then | None
) -> None:
    """Send proactively what of ``text`` the stream did not show (``then`` says what)."""
    if then is None:
        return
    chat = target.reply_handle["chatid"]
    if then is Then.ALL_PROACTIVELY and state.card is not None:
        await connector.send_first(chat, state.card)
    rest = state.unshown(text, then)
    if rest:
        await connector.send_proactive(chat, rest)


@attrs.define(eq=False)
class _Confirming:
    """A run's final frame, written and not awaited: its ACK, read by the connection's reader,
    confirms the run (docs/wecom.md, "Replies confirmed after the run").

    Refused, or unanswered within ``ack_timeout``: the reply is sent again another way, in a
    task of the connector's run (:meth:`recover`: the frame again for a busy server, else
    proactively what the stream did not show), and the run is journaled as failed if that
    fails too (for any reason), counted in ``replies_failed`` and logged. Unanswered but
    only late, the reply is shown twice: its late ACK is counted in
    ``late_acks_after_fallback``.

    The connection closed first: the driver carries the frame over (:attr:`carried`) and writes
    it again, same ``req_id`` and whole text, first on the next connection (a final frame is
    idempotent in content). There 846608 ("finished or expired") while our clock says the stream
    cannot have expired yet (before ``finish_by``) means the first write arrived and finished
    it: confirmed, counted in ``carried_confirmed_by_846608`` (wrong if that write was refused,
    or the window is shorter: docs/wecom.md). Any other refusal, or no ACK, goes to the recovery
    above, which shows the reply twice if the first write did arrive: counted in
    ``carried_fallbacks``. The connector stopped before a next connection (or past the driver's
    bound of carried frames): the run's messages stay pending (replayed at the next start, where
    WeCom answers 846608 for a callback answered before), counted in ``replies_unconfirmed``.
    """

    connector: LongConnection
    confirmation: _confirm.Confirmation
    state: StreamState
    target: Message
    text: str
    body: dict[str, Any]
    request: Request
    carried: bool = False
    """The driver keeps the frame to write it again on the next connection (:meth:`carry`)."""
    tries: int = 0
    """Times :meth:`recover` began (again after a run's end cut it before anything left)."""

    @classmethod
    async def post(
        cls,
        connector: LongConnection,
        state: StreamState,
        target: Message,
        text: str,
        body: dict[str, Any],
    ) -> bool:
        """Write ``body``, the final frame of ``text``, and leave its ACK to confirm the run:
        only for a callback this process received, a frame that carries all of the text (else
        the rest follows it proactively, after its ACK), from a run that has not ended, on
        the connection up now. False when not: nothing was sent, the caller awaits as before.
        """
        # (no finish_by: a callback of an earlier process, its window unknown here)
        if state.finish_by is None or body["stream"]["content"] != text:
            return False
        confirmation = _confirm.confirmation()
        if confirmation is None:
            return False
        assert state.req_id is not None  # StreamState builds frames only for one with a req_id
        connector._unanswered.discard(state.req_id)
        request = connector._core.command(f.RESPOND, state.req_id, body)
        confirming = cls(connector, confirmation, state, target, text, body, request)
        posted = False
        try:
            with base.send_errors(f"wecom bot {connector.account}: {f.RESPOND}"):
                posted = await connector._driver.post(
                    request, confirming.settle, carried=confirming.carry
                )
        finally:
            if not posted:  # (cancelled too: the run then ignores its confirmations)
                confirmation.withdraw()
        if posted:  # (refused later: closing it again would be refused too)
            connector._took_final(state.req_id)
        return posted

    def carry(self) -> None:
        """Its connection closed before its ACK: the driver writes it again on the next."""
        self.carried = True
        log.debug(
            "wecom bot %s: the connection closed before the reply to %s was acknowledged; "
            "it goes again on the next connection",
            self.connector.account,
            self.target.id,
        )

    def _taken(self, errcode: int) -> bool:
        """Whether an answer with ``errcode`` says the callback took the frame (if so, the
        stream's state records it): 0, or 846608 to the frame written again on a new
        connection while the stream cannot have expired (our clock before ``finish_by``,
        itself :data:`FINISH_MARGIN` ahead of the callback's window): then only its first
        write can have finished it. That rule assumes the first write was taken, not refused
        (its answer lost with the socket), and that the window is as long as we count it
        (docs/wecom.md): confirmations by it are counted in ``carried_confirmed_by_846608``."""
        finish_by = self.state.finish_by
        by_846608 = (
            self.carried
            and errcode == f.STREAM_EXPIRED
            and finish_by is not None
            and trio.current_time() < finish_by
        )
        took = not errcode or by_846608
        if by_846608:
            self.connector.ctx.count("carried_confirmed_by_846608")
        if took:
            self.state.took(self.body)
        return took

    def settle(self, result: Answer | ConnectorError) -> None:
        """The frame's fate, from the connection (its reader, timer or close) or from the
        driver when the connector stopped with it carried."""
        connector = self.connector
        if isinstance(result, Answer) and self._taken(result.code):
            self.confirmation.confirmed()
        elif isinstance(result, Disconnected):
            self.unconfirmed(f"the connection closed ({result.reason})")
        elif connector._recoveries is None:  # (the reader, timer and close run in run())
            self.unconfirmed("the connection closed")
        else:
            connector._recoveries.start_soon(self.recover, result)

    def unconfirmed(self, why: str) -> None:
        """Settle the run as unknown (``why``: what cut it): counted in ``replies_unconfirmed``,
        logged, and its messages stay pending for the next start. The one place a frame's fate
        is given up on: by its own handlers and by :meth:`LongConnection.stopped` for frames
        whose recovery was cut."""
        self.connector.ctx.count("replies_unconfirmed")
        log.warning(
            "wecom bot %s: the reply to %s may not have arrived: %s; its messages stay "
            "pending and are handled again at the next start",
            self.connector.account,
            self.target.id,
            why,
        )
        self.confirmation.unknown()

    def _noted(self, result: Answer | ConnectorError, busy: bool, error: Exception) -> None:
        """Count and log that the frame was not taken (``result``), once per frame."""
        connector = self.connector
        if isinstance(result, AckTimeout):  # only late, its ACK is counted when it comes
            connector._core.fell_back(self.request.key)
        if busy:  # a retry, as for a reply awaited (and as many more as it has)
            connector.ctx.count("busy_retries")
        else:
            connector.ctx.count("replies_refused")
            log.warning(
                "wecom bot %s: the reply to %s was not taken (%s); sending it again",
                connector.account,
                self.target.id,
                error,
            )

    def _fall_back(self, then: Then | None) -> Then | None:
        """The frame was not taken: ``then`` follows. Counted in ``carried_fallbacks`` for
        one carried over a reconnect (its first write may have arrived: shown twice)."""
        if self.carried and then is not None and self.tries == 1:
            self.connector.ctx.count("carried_fallbacks")
        return then

    async def recover(self, result: Answer | ConnectorError) -> None:
        """Send the reply again another way after ``result`` (a refusal or a timeout); the run
        fails if that fails too. Cancelled (the connection closed) before anything of it left
        (its first request waiting for a connection, never written): started again by the
        connector's next run, so the reply goes on the next connection without a restart,
        counted once. Cancelled later: the run's messages stay pending (it may have shown).
        """
        connector, state = self.connector, self.state
        progress = Progress()
        PROGRESS.set(progress)  # (this task's own context)
        self.tries += 1
        busy = isinstance(result, Answer) and result.busy
        error = self.request.refused(result) if isinstance(result, Answer) else result
        if self.tries == 1:  # (a try started again was counted and logged by the first)
            self._noted(result, busy, error)
        try:
            try:
                if not busy:
                    raise error
                await BUSY_BACKOFF.retries().wait()
                await _show(connector, state, self.body)
                then: Then | None = Then.REST_PROACTIVELY
            except WeComError as exc:
                if self._taken(exc.errcode):  # (a busy retry of a frame carried over)
                    then = None
                else:
                    then = self._fall_back(_after_refusal(connector, state, self.target, exc))
            except AckTimeout:
                then = self._fall_back(Then.RAISE)
            if then is Then.RAISE:  # not a refusal of the callback: the rest goes all the same
                then = Then.REST_PROACTIVELY if state.frames else Then.ALL_PROACTIVELY
            await _rest(connector, state, self.target, self.text, then)
        except SendError as exc:
            connector.ctx.count("replies_failed")
            log.error(
                "wecom bot %s: the reply to %s was not delivered (%s); its messages are "
                "journaled as failed",
                connector.account,
                self.target.id,
                exc,
            )
            self.confirmation.failed(f"reply not delivered: {exc}")
        except Exception as exc:  # a bug or an answer we cannot read: never the connection's
            connector.ctx.count("replies_failed")
            log.exception(
                "wecom bot %s: sending the reply to %s again failed; its messages are "
                "journaled as failed",
                connector.account,
                self.target.id,
            )
            self.confirmation.failed(f"reply not delivered: {type(exc).__name__}: {exc}")
        else:
            self.confirmation.confirmed()
        finally:
            if not self.confirmation.settled:  # cancelled with the connection
                if progress.unsent and progress.requests == 1:  # nothing of it left: again
                    connector._cut.append((self, result))
                else:  # maybe shown
                    self.unconfirmed("the connection closed while it was sent again")


class _Stream(base.CoalescingStream):
    """A reply streamed on one callback's req_id; what it showed and what to send next are
    its :class:`StreamState`'s.

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
        self.state = _stream_state(connector, target, card)

    async def pump(self) -> None:
        """The base pump until the window is about to close; then the stream is finished."""
        finish_by = self.state.finish_by
        with trio.move_on_at(math.inf if finish_by is None else finish_by):
            await super().pump()
        self._idle = trio.Event()
        try:
            body = self.state.finish_now(self.text)
            if body is not None:
                await _show(self._connector, self.state, body)
        except SendError as exc:
            log.info("wecom bot %s: finishing a stream early: %s", self._connector.account, exc)
        finally:
            self._idle.set()
        await trio.sleep_forever()

    async def update(self, text: str) -> None:
        body = self.state.update(text)
        if body is not None:
            await _show(self._connector, self.state, body)

    async def final(self, text: str) -> None:
        await _finish(self._connector, self.state, self._target, text)

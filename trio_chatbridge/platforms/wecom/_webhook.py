"""WeCom AI Bot in webhook mode (docs/protocols/wecom.md#webhook-mode): an ASGI app that WeCom calls
with encrypted JSON.

Each request's signature is checked in constant time, its timestamp must be fresh and its nonce
unused within the freshness window (a replayed request is refused); a request that fails any of
these, or does not decrypt, gets a 4xx and nothing is processed. No input, however malformed, gets
a 500. A message is answered at once with the start of a stream; WeCom then polls with "stream
refresh" callbacks, each answered with the whole text so far, until ``finish``
(docs/protocols/wecom.md#streaming-by-polling). Mount :meth:`Webhook.asgi` in any Trio ASGI server,
or use :func:`serve` (hypercorn).

A message whose stream is gone (its six minutes over, or the process restarted and the message
came back from the journal) is answered once through the ``response_url`` its callback carried
(docs/protocols/wecom.md#answering-through-response_url).
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, final
from urllib.parse import parse_qs

import attrs
import httpx
import msgspec
import trio

from ... import _connector as base
from ..._asgi import Receive, Scope, Send, answer_lifespan
from ..._content import Card, Content, Sent, kind_of, unsupported
from ..._errors import ConfigurationError, MediaError, ProtocolError, SendError
from ..._fifo import trim
from ..._health import serve_http
from ..._http import new_client
from ..._http import send as http_send
from ..._json import json_object
from ..._media import MediaPolicy, fetch, guarded_request
from ..._messages import Batch, Handle, Media, Message
from ..._receive import skip_bad
from . import _crypto
from . import _outbound as out
from . import _protocol as f
from ._convert import PLATFORM, to_message
from ._long import DEFAULT_MEDIA_HOSTS, DEFAULT_WELCOME, FINISH_MARGIN, Welcome
from ._protocol import WeComEvent
from ._replies import utf8_prefix

log = logging.getLogger("trio_chatbridge.wecom.webhook")

FRESHNESS: Final = 300.0  # seconds a request's timestamp may be off (replay window)
STREAM_TTL: Final = 360.0  # seconds WeCom polls a stream for [2.6, D2: 6 min]
MAX_STREAMS: Final = 10_000  # stream states kept at most (oldest dropped first)
MAX_BODY: Final = 1024 * 1024  # bytes of request body accepted
BODY_WITHIN: Final = 10.0  # seconds a request's body may take to arrive (WeCom's is instant)
MAX_NONCES: Final = 50_000  # (timestamp, nonce) pairs remembered to refuse replays
MAX_QUERY_FIELDS: Final = 16  # query parameters accepted (WeCom sends at most four)
MAX_TIMESTAMP_DIGITS: Final = 12  # a decimal count of seconds; anything longer is absurd
RESPONSE_URL_WITHIN: Final = 15.0  # seconds an answer through a response_url may take
EARLIER_AT_ONCE: Final = 4  # earlier messages of a batch answered through their URLs at once


@attrs.define
class _StreamState:
    id: str
    created: float
    message_id: str = ""
    """The msgid of the callback that opened it (empty if it carried none)."""
    content: str = ""
    finished: bool = False
    shown: int = 0
    """Characters of ``content`` the latest refresh poll was answered with."""

    def final(self) -> str:
        """What a poll that finishes this stream shows when it was dropped (MAX_STREAMS
        over): its answer once set, else what the polls showed of it (no later write: its
        writer sends the rest through the ``response_url``)."""
        return self.content if self.finished else self.content[: self.shown]

    def lapsed(self) -> bool:
        """Whether WeCom may no longer poll this stream: past :data:`STREAM_TTL` less the
        long connection's :data:`~._long.FINISH_MARGIN` (an answer set later may never be
        polled; it goes through the ``response_url`` instead)."""
        return trio.current_time() >= self.created + STREAM_TTL - FINISH_MARGIN


@final
class Webhook(base.Connector):
    """A WeCom AI Bot answering on a callback URL (Token + EncodingAESKey from its API page)."""

    platform = PLATFORM

    def __init__(
        self,
        *,
        bot_id: str,
        token: str,
        encoding_aes_key: str,
        receive_id: str = "",
        welcome: Welcome = DEFAULT_WELCOME,
        bot_name: str | None = None,
        earlier_reply: str = "",
        freshness: float = FRESHNESS,
        media: MediaPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not bot_id:
            raise ConfigurationError("wecom.Webhook needs the bot_id")
        self.account = bot_id
        self.crypto: _crypto.WebhookCrypto = _crypto.WebhookCrypto(
            token, encoding_aes_key, receive_id
        )
        self.welcome = welcome
        self.bot_name = bot_name
        self.earlier_reply = earlier_reply
        self.freshness = freshness
        self.media_policy: MediaPolicy = media or MediaPolicy(DEFAULT_MEDIA_HOSTS)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._wall_clock = wall_clock
        self._streams: OrderedDict[str, _StreamState] = OrderedDict()
        self._stream_of_msgid: dict[str, str] = {}
        self._dropped: OrderedDict[str, _StreamState] = OrderedDict()
        """Streams dropped by MAX_STREAMS that WeCom may still poll (see :meth:`_drop`), oldest
        first; forgotten with their window (:meth:`_expire`)."""
        self._putting: dict[str, trio.Event] = {}
        """The msgids whose first delivery's put is under way: a retry waits for it."""
        self._nonces = _NonceCache(MAX_NONCES)
        self._answered_by_url: OrderedDict[str, None] = OrderedDict()
        """Messages answered through their response_url (WeCom takes one answer there)."""
        self._answered_gone: OrderedDict[str, None] = OrderedDict()
        """Messages answered on a stream since forgotten (past its window, or dropped by
        MAX_STREAMS beyond :attr:`_dropped`): a rerun's ``earlier_reply`` or a later send
        through their ``response_url`` would be a second answer (:meth:`_forget`)."""
        self._running = False
        self._background: trio.Nursery | None = None
        """While :meth:`run` runs: its nursery, where earlier messages' answers through their
        ``response_url`` go on after their run ended (:meth:`_earlier_by_url`)."""

    def __repr__(self) -> str:  # never the token or key
        return f"wecom.Webhook(bot_id={self.account!r})"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to connect: requests come through :meth:`asgi`. Ready at once. If
        cancelled, it stops: callbacks that come after are answered 503 ("bridge not running"),
        and earlier messages' answers still under way are cancelled (each may or may not have
        been sent; counted in ``earlier_replies_failed``)."""
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                self._background = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._background = None
            self._running = False

    # -- HTTP ---------------------------------------------------------------------------------

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application: GET verifies the URL, POST delivers callbacks. If cancelled
        (the server shutting down), no answer is sent (WeCom may deliver the callback again); a
        message whose put was under way may or may not have been journaled."""
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        with trio.move_on_after(BODY_WITHIN) as reading:
            body = await _read_body(receive)
        query = _query(scope.get("query_string", b""))
        if reading.cancelled_caught:
            status, content_type, payload = self._refuse(
                408, f"request body not received within {BODY_WITHIN:.0f} s"
            )
        elif body is None:
            status, content_type, payload = self._refuse(413, "request body too large")
        elif query is None:
            status, content_type, payload = self._refuse(400, "malformed query string")
        elif scope["method"] == "GET":
            status, content_type, payload = self._verify_url(query)
        elif scope["method"] == "POST":
            status, content_type, payload = await self._callback(query, body)
        else:
            status, content_type, payload = self._refuse(405, "GET or POST")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type.encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _refuse(self, status: int, why: str) -> tuple[int, str, bytes]:
        if self._ctx is not None:
            self.ctx.count("refused_requests")
        log.warning("wecom bot %s: refused a webhook request: %s", self.account, why)
        return status, "text/plain", why.encode()

    def _verify_url(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        needed = ("msg_signature", "timestamp", "nonce", "echostr")
        if not all(k in query for k in needed):
            return self._refuse(400, "missing msg_signature, timestamp, nonce or echostr")
        if not self.crypto.verify(
            query["msg_signature"], query["timestamp"], query["nonce"], query["echostr"]
        ):
            return self._refuse(403, "bad signature")
        try:
            return 200, "text/plain", self.crypto.decrypt(query["echostr"]).encode()
        except ProtocolError as exc:
            return self._refuse(400, f"echostr does not decrypt: {exc}")

    async def _callback(self, query: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if not all(k in query for k in ("msg_signature", "timestamp", "nonce")):
            return self._refuse(400, "missing msg_signature, timestamp or nonce")
        try:
            encrypt = json_object(body, "webhook body").get("encrypt")
        except ProtocolError:
            encrypt = None
        if not isinstance(encrypt, str) or not encrypt.isascii():  # base64 is ASCII
            return self._refuse(400, 'body is not {"encrypt": "<base64>"}')
        timestamp, nonce = query["timestamp"], query["nonce"]
        if not self.crypto.verify(query["msg_signature"], timestamp, nonce, encrypt):
            return self._refuse(403, "bad signature")
        # Signed by WeCom: only now may it take a place in the nonce cache.
        now = self._wall_clock()
        sent_at = _seconds(timestamp)
        if sent_at is None or abs(now - sent_at) > self.freshness:
            return self._refuse(
                403, f"timestamp {timestamp[:20]!r} outside the {self.freshness:.0f} s window"
            )
        if not self._nonces.first_use(timestamp, nonce, sent_at, now - self.freshness):
            return self._refuse(403, "replayed request (nonce already used)")
        try:
            callback = json_object(self.crypto.decrypt(encrypt), "webhook callback")
        except ProtocolError as exc:
            return self._refuse(400, f"callback does not decrypt: {exc}")
        if not self._running:
            return self._refuse(503, "bridge not running")
        answer = await self._handle(callback)
        if answer is None:
            return 200, "text/plain", b"success"
        return 200, "application/json", self._encrypted(answer, timestamp, nonce)

    def _encrypted(self, answer: dict[str, Any], timestamp: str, nonce: str) -> bytes:
        encrypt = self.crypto.encrypt(json.dumps(answer, ensure_ascii=False))
        reply = {
            "encrypt": encrypt,
            "msgsignature": self.crypto.signature(timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        return json.dumps(reply).encode()

    async def _handle(self, callback: dict[str, Any]) -> dict[str, Any] | None:
        msgtype = callback.get("msgtype")
        if msgtype == "stream":
            stream = callback.get("stream")
            stream_id = stream.get("id") if isinstance(stream, dict) else None
            return self._stream_frame(str(stream_id))
        if msgtype == "event":
            return await self._event(callback)
        return await self._message(callback)

    def _stream_frame(self, stream_id: str) -> dict[str, Any]:
        self._expire()
        state = self._streams.get(stream_id)
        if state is None:  # unknown, dropped or long finished: tell WeCom to stop polling
            dropped = self._dropped.get(stream_id)
            content = "" if dropped is None else dropped.final()
            return {
                "msgtype": "stream",
                "stream": {"id": stream_id, "finish": True, "content": content},
            }
        state.shown = len(state.content)
        return {
            "msgtype": "stream",
            "stream": {"id": state.id, "finish": state.finished, "content": state.content},
        }

    async def _message(self, callback: dict[str, Any]) -> dict[str, Any]:
        msgid = str(callback.get("msgid") or "")
        while (first := self._putting.get(msgid)) is not None:
            await first.wait()  # a retry while the first delivery's put is under way
        known = self._stream_of_msgid.get(msgid)
        if known is not None:  # a retried delivery: same stream as the first time
            return self._stream_frame(known)
        stream_id = f"stream_{secrets.token_hex(8)}"
        try:
            message = to_message(self.account, stream_id, callback, bot_name=self.bot_name)
        except ProtocolError as exc:
            skip_bad(self.ctx, "message callback", exc)
            return {"msgtype": "stream", "stream": {"id": stream_id, "finish": True, "content": ""}}
        handle = dict(message.reply_handle, stream_id=stream_id)
        if isinstance(callback.get("response_url"), str):
            handle["response_url"] = callback["response_url"]
        message = msgspec.structs.replace(message, reply_handle=Handle.of(handle))
        self._streams[stream_id] = _StreamState(stream_id, trio.current_time(), message.id)
        putting = trio.Event()
        if msgid:
            self._putting[msgid] = putting
        try:
            new = await self.ctx.put([message])
        except BaseException:
            # Not journaled (the store failed, or the request was cancelled): the platform's
            # retry of this callback (waiting meanwhile, or to come) is put again instead of
            # answered with a stream that no run will ever fill.
            self._streams.pop(stream_id, None)
            raise
        else:
            if msgid:
                self._stream_of_msgid[msgid] = stream_id
        finally:
            if msgid:
                del self._putting[msgid]
            putting.set()
        if not new:  # journaled before (a delivery this process no longer remembers): its
            # answer goes to the first delivery; this stream is finished at once, empty, or
            # WeCom would poll it for six minutes and the user's slot stay taken
            self._finish(message, "")
            self.ctx.count("duplicate_callbacks_closed")
        return self._stream_frame(stream_id)

    async def _event(self, callback: dict[str, Any]) -> dict[str, Any] | None:
        event = callback.get("event")
        eventtype = str(event.get("eventtype")) if isinstance(event, dict) else ""
        sender = callback.get("from")
        details = WeComEvent(
            eventtype,
            str(callback.get("msgid", "")),
            sender.get("userid") if isinstance(sender, dict) else None,
            callback.get("chatid") if isinstance(callback.get("chatid"), str) else None,
            callback,
        )
        if eventtype in f.COUNTED_EVENTS:
            self.ctx.count(f"events.{eventtype}")
            return None
        if eventtype != "enter_chat":
            self.ctx.count("events.other")
            log.info("wecom bot %s: an event of type %.80r ignored", self.account, eventtype)
            return None
        answer = await self._welcome(details)
        if isinstance(answer, Card):
            return {"msgtype": "template_card", "template_card": answer.as_dict()}
        return {"msgtype": "text", "text": {"content": answer}} if answer else None

    async def _welcome(self, event: WeComEvent) -> str | Card | None:
        """The welcome for ``event``: a welcome function that raises or takes longer than
        WeCom waits (:data:`~._protocol.WELCOME_DEADLINE`) costs only its welcome, counted
        (``event_failures``, ``late_welcomes``) as on the long connection; the request is
        still answered. If cancelled, the welcome function is cancelled with it."""
        welcome = self.welcome
        if isinstance(welcome, str | Card | None):
            return welcome
        with trio.move_on_after(f.WELCOME_DEADLINE):
            try:
                return await welcome(event)
            except Exception:  # user code: never the webhook's problem
                self.ctx.count("event_failures")
                log.exception("wecom bot %s: the welcome function failed", self.account)
                return None
        self.ctx.count("late_welcomes")
        log.warning("wecom bot %s: no welcome within %.0f s", self.account, f.WELCOME_DEADLINE)
        return None

    def _expire(self) -> None:
        cutoff = trio.current_time() - STREAM_TTL
        while self._streams:
            oldest = next(iter(self._streams.values()))
            if oldest.created >= cutoff and len(self._streams) <= MAX_STREAMS:
                break
            del self._streams[oldest.id]
            if oldest.created >= cutoff:  # dropped within its window: MAX_STREAMS over
                self._drop(oldest)
            else:
                self._forget(oldest)
        while self._dropped and next(iter(self._dropped.values())).created < cutoff:
            self._forget(self._dropped.popitem(last=False)[1])  # WeCom polls it no more
        if len(self._stream_of_msgid) > 2 * MAX_STREAMS:
            self._stream_of_msgid = {
                m: s for m, s in self._stream_of_msgid.items() if s in self._streams
            }

    def _drop(self, state: _StreamState) -> None:
        """Keep ``state``, dropped while WeCom may still poll it, so that its next poll
        finishes it with :meth:`_StreamState.final` (an empty finish would blank what the
        user saw, or lose an answer counted as sent), and a second answer to it (or an
        ``earlier_reply`` through its URL) is refused, polled whole or not."""
        self._dropped[state.id] = state
        while len(self._dropped) > MAX_STREAMS:
            self._forget(self._dropped.popitem(last=False)[1])

    def _forget(self, state: _StreamState) -> None:
        """``state`` leaves memory: if it was answered, its message is remembered as such
        (bounded by MAX_STREAMS, oldest first out), so that it is answered once whatever the
        timing: a run over six minutes, interrupted and rerun with all its messages, finds
        it answered."""
        if state.finished and state.message_id:
            self._answered_gone[state.message_id] = None
            trim(self._answered_gone, MAX_STREAMS)

    # -- replying -----------------------------------------------------------------------------

    def _live(self, target: Message) -> _StreamState | None:
        """``target``'s stream, None if it is gone (expired, or lost with a restart) or about
        to go (see :meth:`_StreamState.lapsed`) while its ``response_url`` can answer instead;
        raises :class:`SendError` if it was finished already."""
        self._expire()  # past its window WeCom no longer polls it, whether or not it asked
        stream_id = str(target.reply_handle.get("stream_id"))
        state = self._streams.get(stream_id)
        known = state if state is not None else self._dropped.get(stream_id)
        if known is not None and known.finished:
            raise SendError(f"wecom bot {self.account}: message {target.id} was answered already")
        if state is None or (state.lapsed() and _response_url(target) is not None):
            return None
        return state  # in its last seconds without a URL: the stream is still the best chance

    async def send(self, target: Message, text: str) -> None:
        """Answer ``target``: the next refresh poll gets ``text`` and ``finish``; with its
        stream gone, one markdown message through its ``response_url`` instead (see the
        module's docstring). If cancelled, a stream's answer is set all the same (it is
        set before the one checkpoint); one through the URL may or may not have been sent."""
        state = self._live(target)
        if state is None:
            await self._answer_by_url(target, text)
            return
        state.content = utf8_prefix(text, f.STREAM_LIMIT)
        state.finished = True
        self._cut(target, text, state.content)
        await trio.lowlevel.checkpoint()

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Answer ``target``: text and Markdown as :meth:`send`; a :class:`Card` through the
        message's ``response_url`` as a template card (a stream, once opened, carries only
        text), its stream then ended with what it showed; media and posts, which neither a
        stream nor a response_url carries, raise :class:`SendError` naming why, counted in
        ``replies_unsupported``. If cancelled, text is as :meth:`send` leaves it; a card may
        or may not have been sent."""
        if out.is_text(content):
            await self.send(target, out.text_of(content))
        elif isinstance(content, Card):
            await self._send_card(target, content)
        else:
            self.ctx.count("replies_unsupported")
            raise unsupported(
                PLATFORM,
                self.account,
                content,
                "in webhook mode a stream or a response_url cannot carry media: send text, "
                "Markdown or a card (with a link to the file)",
            )
        return Sent(PLATFORM, target.chat.id, kind_of(content))

    async def _send_card(self, target: Message, card: Card) -> None:
        """Answer ``target`` with ``card`` through its ``response_url`` (which takes a
        ``template_card``, docs/protocols/wecom.md#answering-through-response_url); a live
        stream is ended with what its polls showed once the card is accepted."""
        state = self._live(target)  # raises if it was answered already
        if _response_url(target) is None:
            raise SendError(
                f"wecom bot {self.account}: message {target.id} has no response_url, and a "
                "webhook stream carries only text: send text or Markdown instead"
            )
        await self._post_by_url(target, out.message_body(self.account, card))
        if state is not None:
            state.content, state.finished = state.content[: state.shown], True

    async def _answer_by_url(self, target: Message, text: str) -> None:
        """Answer ``target``, whose stream is gone, with one markdown message through its
        ``response_url`` (:meth:`_post_by_url`), cut to the stream's 20,480 bytes."""
        content = utf8_prefix(text, f.STREAM_LIMIT)
        await self._post_by_url(target, {"msgtype": "markdown", "markdown": {"content": content}})
        self._cut(target, text, content)

    async def _post_by_url(self, target: Message, body: dict[str, Any]) -> None:
        """Answer ``target`` with one POST of ``body`` to the ``response_url`` its callback
        carried: checked against :attr:`media_policy` as media
        URLs are, no redirect followed, within :data:`RESPONSE_URL_WITHIN` seconds, and never
        logged (it is a capability), counted in ``replies_via_response_url``. Raises
        :class:`SendError` naming why when there is no URL, it was used already, the policy
        refuses its host, or WeCom refuses the answer (``wecom.WeComError``, with its code
        and HTTP status). The message is reserved before the POST (a concurrent send is
        refused as a second answer) and released if it fails. If cancelled, the answer may
        or may not have been sent (released: a later send may try again)."""
        gone = (
            f"wecom bot {self.account}: the stream for message {target.id} is gone (WeCom "
            f"polls for {STREAM_TTL / 60:.0f} min, and a restart loses it)"
        )
        if target.id in self._answered_gone:
            raise SendError(f"{gone}; it was answered on that stream already")
        url = _response_url(target)
        if url is None:
            raise SendError(f"{gone} and the message has no response_url: nothing can answer it")
        if target.id in self._answered_by_url:
            raise SendError(
                f"{gone} and its response_url was used already (WeCom takes one answer there)"
            )
        what = f"wecom bot {self.account}: the answer to {target.id} through its response_url"
        if self._http is None:
            self._http = new_client(self._transport)
        self._answered_by_url[target.id] = None  # reserved: a concurrent send is refused
        try:
            await self._post_answer(self._http, url, what, body)
        except BaseException:
            self._answered_by_url.pop(target.id, None)  # not answered: a later send may try again
            raise
        while len(self._answered_by_url) > MAX_STREAMS:
            self._answered_by_url.popitem(last=False)
        self.ctx.count("replies_via_response_url")

    async def _post_answer(
        self, http: httpx.AsyncClient, url: str, what: str, body: dict[str, Any]
    ) -> None:
        """POST ``body`` to the response_url ``url``, the host's lookup included, within
        :data:`RESPONSE_URL_WITHIN` seconds; delivered only on a 2xx whose body says
        ``errcode`` 0. Raises :class:`SendError` (``wecom.WeComError`` for a refusal, naming
        the HTTP status, never the URL) otherwise."""
        deadline = trio.current_time() + RESPONSE_URL_WITHIN
        with trio.move_on_at(deadline):
            try:
                request = await guarded_request(
                    http,
                    "POST",
                    url,
                    self.media_policy,
                    verb="answer through a response_url at",
                    json=body,
                )
            except MediaError as exc:
                raise SendError(f"{what} not sent: {exc}") from exc
            with base.send_errors(what):
                answer = await http_send(
                    http,
                    request,
                    what=what,
                    platform=PLATFORM,
                    time_limit=max(0.0, deadline - trio.current_time()),
                )
                said = answer.json()
            errcode, errmsg = said.get("errcode"), said.get("errmsg")
            if not answer.ok or type(errcode) is not int or errcode != 0:
                # a missing errcode (a proxy's answer, an empty {}) or one that is no number
                # is no delivery either (-1: unreadable)
                code = errcode if type(errcode) is int and errcode != 0 else -1
                raise f.WeComError(
                    f"response_url (HTTP {answer.status})",
                    code,
                    errmsg if isinstance(errmsg, str) else None,
                )
            return
        raise SendError(
            f"{what} got no answer within {RESPONSE_URL_WITHIN:.0f} s (its host's lookup "
            "included): it may or may not have been sent"
        )

    def stream(self, target: Message) -> AbstractAsyncContextManager[base.ReplyStream]:
        """Each refresh poll gets the whole text so far; the stream finishes on exit. With
        the stream gone, the text is collected and sent once at the end through the
        ``response_url`` (nothing if the block raises); a stream that lapses while written
        ends with what the polls showed, and the rest goes through the URL at the end."""
        return self._stream(target)

    @asynccontextmanager
    async def _stream(self, target: Message) -> AsyncIterator[base.ReplyStream]:
        state = self._live(target)
        if state is None:  # the stream is gone: collect, then one answer through the URL
            async with self._buffered_stream(target) as collected:
                yield collected
            return
        out = _PolledStream(state)
        try:
            yield out
        finally:
            # Lapsed (or dropped, MAX_STREAMS over) while streaming: WeCom may never poll it
            # again; it ends with what a poll showed, the rest goes through the URL below.
            # Without a URL, a lapsing stream keeps the whole text (a late poll may yet get it).
            dropped = self._streams.get(state.id) is not state
            lapsed = dropped or (state.lapsed() and _response_url(target) is not None)
            if lapsed:
                state.content = state.content[: state.shown]
            state.finished = True  # always: WeCom stops polling, the user's slot frees
            if not lapsed:
                self._cut(target, out.text, state.content)
        if lapsed and len(out.text) > state.shown:
            await self._answer_by_url(target, out.text[state.shown :])

    def _cut(self, target: Message, text: str, shown: str) -> None:
        """Count and log an answer cut to the stream's 20,480 bytes (``shown`` of ``text``):
        in this mode nothing can carry the rest (a response_url takes one message)."""
        if len(shown) < len(text):
            self.ctx.count("replies_cut")
            log.warning(
                "wecom bot %s: the answer to %s was cut to the stream's %d bytes (%d of %d "
                "characters shown): a webhook stream can carry no more",
                self.account,
                target.id,
                f.STREAM_LIMIT,
                len(shown),
                len(text),
            )

    def running(self, batch: Batch) -> AbstractAsyncContextManager[None]:
        return self._close_earlier(batch)

    @asynccontextmanager
    async def _close_earlier(self, batch: Batch) -> AsyncIterator[None]:
        """Finish the streams of a batch's earlier messages with ``earlier_reply``, or, where
        a message's stream is gone (a batch replayed after a restart), send ``earlier_reply``
        through its ``response_url`` (not when ``earlier_reply`` is empty: there is nothing to
        say and no stream holds the user's slot) in the connector's own nursery
        (:meth:`_earlier_by_url`): they neither take the agent's ``run_timeout`` nor hold the
        run open after the agent returns, and the agent's error or an interrupt does not
        cut them (a rerun skips those reserved or sent). And, if the agent raises (or its run
        times out: the dispatcher raises then), the latest one's unless it was answered
        (empty: WeCom would poll a stream nobody fills for six minutes). An agent that returns
        without answering leaves it open (a ``Reply`` kept after the run may still answer),
        and so does a cancelled run (interrupted: the next run closes it as an earlier
        message)."""
        self._expire()
        by_url = [m for m in batch.messages[:-1] if self._close_earlier_stream(m)]
        if by_url and self.earlier_reply:
            if self._background is None:  # (stopping: run() has ended)
                for message in by_url:
                    self._earlier_failed(message, "the connector is not running")
            else:
                self._background.start_soon(self._earlier_by_url, by_url)
        try:
            yield
        except Exception:
            self._finish(batch.latest, "")
            raise

    def _close_earlier_stream(self, message: Message) -> bool:
        """Finish the stream of ``message``, an earlier message of a batch, with
        ``earlier_reply``; True if its stream is gone (or lapsing, with a URL to answer
        through instead), so that only its ``response_url`` can answer it. False for one
        answered already, on its stream (dropped or not) or through its URL: a second answer
        would show the user two."""
        if message.id in self._answered_by_url or message.id in self._answered_gone:
            return False  # (an interrupt's rerun, a replay's again)
        stream_id = str(message.reply_handle.get("stream_id"))
        state = self._streams.get(stream_id)
        if state is None:
            dropped = self._dropped.get(stream_id)  # (MAX_STREAMS over)
            answered = dropped is not None and dropped.finished
            return not answered and _response_url(message) is not None
        if state.finished:
            return False
        if state.lapsed() and _response_url(message) is not None:
            state.content, state.finished = state.content[: state.shown], True
            return True
        state.content, state.finished = self.earlier_reply, True
        return False

    async def _earlier_by_url(self, messages: list[Message]) -> None:
        """Answer ``messages`` (the earlier messages of a replayed batch) with
        ``earlier_reply`` through their ``response_url`` each, :data:`EARLIER_AT_ONCE` at a
        time, all within one :data:`RESPONSE_URL_WITHIN` (a silent host costs 15 s, not 15 s
        per four messages). One refused, or not answered in time, costs only its answer:
        counted (``earlier_replies_failed``) and logged. If cancelled (the connector
        stopping), those not answered are counted so too; those under way may or may not
        have been sent (their run is over: nothing tries them again)."""
        limiter = trio.CapacityLimiter(EARLIER_AT_ONCE)
        left = {message.id: message for message in messages}

        async def answer(message: Message) -> None:
            async with limiter:
                try:
                    await self._answer_by_url(message, self.earlier_reply)
                except SendError as exc:
                    self._earlier_failed(message, str(exc))
                left.pop(message.id, None)

        why = "the connector stopped first (if it was under way, it may or may not have been sent)"
        try:
            with trio.move_on_after(RESPONSE_URL_WITHIN):
                async with trio.open_nursery() as nursery:
                    for message in messages:
                        nursery.start_soon(answer, message)
            why = (
                f"not answered within {RESPONSE_URL_WITHIN:.0f} s (if it was under way, it may "
                "or may not have been sent)"
            )
        finally:
            for message in left.values():
                self._earlier_failed(message, why)

    def _earlier_failed(self, message: Message, why: str) -> None:
        self.ctx.count("earlier_replies_failed")
        log.warning(
            "wecom bot %s: earlier message %s not answered: %s", self.account, message.id, why
        )

    def _finish(self, message: Message, content: str) -> None:
        """Finish ``message``'s stream with ``content``, unless it was finished already."""
        state = self._streams.get(str(message.reply_handle.get("stream_id")))
        if state is not None and not state.finished:
            state.content, state.finished = content, True

    async def download(self, media: Media) -> bytes:
        """Download and decrypt inbound media (with the bot's EncodingAESKey in this mode); a
        :class:`MediaError` is counted in ``downloads_failed``. If cancelled, nothing is
        kept."""
        with self.counting("downloads_failed", MediaError):
            url = media.ref.get("url")
            if not url:
                raise MediaError(f"this {media.kind} has no URL")
            if self._http is None:
                self._http = new_client(self._transport)
            data = await fetch(self._http, url, self.media_policy)
            try:
                if media.ref.get("aeskey"):
                    return _crypto.decrypt_media(media.ref["aeskey"], data)
                return _crypto.decrypt_media_with_key(self.crypto.key, data)
            except ProtocolError as exc:
                raise MediaError(f"cannot decrypt the {media.kind}: {exc}") from exc

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _response_url(target: Message) -> str | None:
    """The ``response_url`` ``target``'s callback carried to answer through, if any."""
    url = target.reply_handle.get("response_url")
    return url if isinstance(url, str) and url else None


class _PolledStream(base.ReplyStream):
    def __init__(self, state: _StreamState) -> None:
        self._state = state
        self._pieces: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    async def write(self, text: str) -> None:
        self._pieces.append(text)
        self._state.content = utf8_prefix(self.text, f.STREAM_LIMIT)
        await trio.lowlevel.checkpoint()


def _query(raw: bytes) -> dict[str, str] | None:
    """The query's parameters (the last of each name), or None if it is not one."""
    try:
        fields = parse_qs(
            raw.decode("ascii", errors="replace"),
            errors="replace",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except ValueError:  # too many fields
        return None
    return {k: v[-1] for k, v in fields.items()}


def _seconds(timestamp: str) -> float | None:
    """A request's timestamp as seconds, or None unless it is a plain decimal count of them
    (no sign, no ``nan``, ``inf`` or exponent, at most :data:`MAX_TIMESTAMP_DIGITS` digits)."""
    if timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS:
        return float(timestamp)
    return None


@attrs.define
class _NonceCache:
    """The (timestamp, nonce) pairs of accepted requests, so a replay is refused.

    A pair is forgotten once its timestamp is too old to pass the freshness check. When the
    cache is full, the pair with the oldest timestamp is forgotten early and that timestamp
    becomes a floor: a request as old or older is refused as a possible replay, so a forgotten
    pair can never be accepted again (under a flood the window only narrows).
    """

    size: int
    _seen: set[tuple[str, str]] = attrs.field(factory=set)
    _by_age: list[tuple[float, str, str]] = attrs.field(factory=list)
    _floor: float = -math.inf

    def first_use(self, timestamp: str, nonce: str, sent_at: float, oldest_fresh: float) -> bool:
        """Record the pair; False if it was seen (or may have been) within the window."""
        by_age = self._by_age
        while by_age and (by_age[0][0] < oldest_fresh or len(by_age) >= self.size):
            old, old_timestamp, old_nonce = heapq.heappop(by_age)
            self._seen.discard((old_timestamp, old_nonce))
            if old >= oldest_fresh:  # forgotten while still fresh
                self._floor = max(self._floor, old)
        if sent_at <= self._floor or (timestamp, nonce) in self._seen:
            return False
        self._seen.add((timestamp, nonce))
        heapq.heappush(by_age, (sent_at, timestamp, nonce))
        return True


async def _read_body(receive: Receive) -> bytes | None:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return None
        if not message.get("more_body", False):
            return bytes(body)


async def serve(
    webhook: Webhook,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``webhook.asgi`` with hypercorn's Trio worker (extra: ``trio_chatbridge[webhook]``),
    with the service endpoint's limits on what one client can hold (docs/service.md).

    ``await nursery.start(serve, webhook)`` returns the bound addresses; an address that
    cannot be bound is a :class:`ChatBridgeError` naming it. If cancelled, the server closes
    its sockets and stops; requests under way are cancelled with it (see :meth:`Webhook.asgi`).
    """
    try:
        import hypercorn.trio  # noqa: F401  (only to say how to install it)
    except ImportError as exc:
        raise ConfigurationError(
            "wecom.serve needs hypercorn: install the webhook extra from your checkout "
            "(python -m pip install -e '.[webhook]'), or mount webhook.asgi in the Trio ASGI "
            "server you already run"
        ) from exc
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    await serve_http(webhook.asgi, listen, task_status=task_status)

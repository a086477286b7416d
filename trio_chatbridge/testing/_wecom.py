"""An emulator of the WeCom AI Bot server: the long connection, media, and the webhook mode.

It follows ``docs/protocols/wecom.md``. Choices where the real server is unknown
(``docs/protocols/wecom.md#emulator``), made as a strict server would:

- a wrong secret is acked with errcode 40001 and the socket is closed;
- a second subscribe for the same bot sends ``disconnected_event`` to the first and closes it;
- callbacks pushed while no client is connected wait for the next one; a callback's
  ``req_id`` may be answered on a later connection than the one it came on;
- a user has at most 3 messages in flight (a callback is in flight until its stream finishes,
  a template card or media answers it, or a reply to it is refused: a refused callback is
  over, as the bot cannot know whether to try again);
- content over 20480 bytes, a changed stream id, ``msg_item`` before ``finish``, a second
  card on one message, a card without ``card_type`` or an unknown ``msgtype`` get 40058;
- a ``media_id`` no upload produced gets 40007; upload chunks are numbered from 0 and must
  all be there, in their sizes, for ``finish``;
- a command on a ``req_id`` it does not fit (a stream to ``enter_chat``, an unknown one, a
  welcome or card update after 5 s) gets 846605, an update after ``finish`` 846608 (the
  finishing frame written again too, as a bot does after a reconnect), and so
  does an answer six minutes after the callback came (``STREAM_WINDOW``: the webhook's
  window, assumed here too);
- in webhook mode each message carries a ``response_url`` of its own, good for one markdown
  (or text) answer within an hour (``RESPONSE_URL_TTL``); a second use or a later one gets
  846608, an unknown one 404.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, ClassVar, Final, Literal, final

import attrs
import httpx
import trio
import trio.testing
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from .._json import get_object, get_str
from .._media import MediaPolicy
from ..platforms.wecom import _crypto
from ..platforms.wecom import _outbound as out
from ..platforms.wecom import _protocol as f
from ..platforms.wecom._long import DEFAULT_MEDIA_HOSTS, LongConnection
from ..platforms.wecom._protocol import Frame as WeComFrame
from ..platforms.wecom._webhook import Webhook
from ._admin import Refused, UserVerbs, handle_admin
from ._http import HandlerTransport, serve_http
from ._record import Activity, MediaRecord, Record
from ._ws import GONE, Abort, Connection, memory_websocket

IN_MEMORY_HOST: Final = "wecom-emulator.invalid"  # never resolves: nothing leaves
AUTH_FAILED: Final = 40001
BAD_CONTENT: Final = 40058
BAD_MEDIA_ID: Final = 40007
MEDIA_KINDS: Final = ("image", "file", "voice", "video")
CARD_TYPES: Final = frozenset(
    {"text_notice", "news_notice", "button_interaction", "vote_interaction", "multiple_interaction"}
)
IN_FLIGHT_LIMIT: Final = 3
# seconds WeCom polls a webhook stream (docs/protocols/wecom.md#streaming-by-polling)
STREAM_POLL_LIMIT: Final = 360.0
DEFAULT_AES_KEY: Final = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters
# seconds a message's response_url answers (docs/protocols/wecom.md#answering-through-response_url)
RESPONSE_URL_TTL: Final = 3600.0
RESPONSE_PATH: Final = "cgi-bin/aibot/response"  # as WeCom's: the code in the query
URL_SPENT: Final = 846608  # errcode for a response_url used already or expired (assumed)


class InFlightLimit(Refused, RuntimeError):
    """The emulated user already has 3 messages the bot has not finished answering."""


@final
@attrs.frozen
class WeComSent:
    """Something the bot said: a finished stream, a welcome, or a proactive message."""

    kind: Literal["stream", "welcome", "proactive", "reply", "response_url"]
    to: str
    """The user (or group chat) it reached."""
    text: str
    req_id: str
    frames: int = 1
    """How many frames the stream took (intermediate ones included)."""
    card: Mapping[str, Any] | None = None
    """The template card it carried, as the bot sent it."""
    media_id: str | None = None
    """The uploaded media it sent."""


@attrs.define
class _Upload:
    kind: str
    filename: str
    total_size: int
    md5: str | None
    chunks: list[bytes | None]


@attrs.define
class _Callback:
    kind: Literal["message", "enter_chat", "card_event"]
    user: str
    chat: str
    at: float
    stream_id: str | None = None
    content: str = ""
    frames: int = 0
    finished: bool = False
    card: Mapping[str, Any] | None = None


@attrs.define
class _ResponseUrl:
    to: str
    msgid: str
    expires: float
    used: bool = False


@final
class WeComEmulator(UserVerbs):
    """A fake WeCom server for one bot. Start it with ``await nursery.start(emu.run)`` (in
    memory) or ``await nursery.start(emu.serve)`` (loopback); ``connector()`` builds a
    :class:`~trio_chatbridge.platforms.wecom.LongConnection` wired to it. It is an
    :class:`~trio_chatbridge.testing.Emulator`: the shared verbs, in Python and over HTTP.
    """

    platform = "wecom"
    SETTINGS: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "ignore_pings": (bool,),
        "in_flight_limit": (int,),
    }

    def __init__(
        self,
        *,
        bot_id: str = "emulator-bot",
        secret: str = "emulator-secret",
        token: str = "emulator-token",
        encoding_aes_key: str = DEFAULT_AES_KEY,
        in_flight_limit: int = IN_FLIGHT_LIMIT,
    ) -> None:
        self.bot_id = bot_id
        self.secret = secret
        self.token = token
        self.encoding_aes_key = encoding_aes_key
        self.crypto: _crypto.WebhookCrypto = _crypto.WebhookCrypto(token, encoding_aes_key)
        self.in_flight_limit = in_flight_limit
        self.ws_url = f"ws://{IN_MEMORY_HOST}/"
        self.http_base: str = f"http://{IN_MEMORY_HOST}/"
        self.frames: list[f.Frame] = []
        """Every frame the bot sent, in order."""
        self.sent: Record[WeComSent] = Record()
        self.activity: Record[Activity] = Record()
        """Everything the bot did, as ``GET {admin_url}/sent`` lists it."""
        self.media: dict[str, tuple[MediaRecord, bytes]] = {}
        """Uploaded media by ``media_id``: what was recorded, and the bytes."""
        self.subscribes: int = 0
        self.ignore_pings = False
        """True: pings are not acknowledged (a dead server)."""
        self.ack_delay: float = 0.0
        """Seconds before a reply command is acked (a distant server; benchmarks set it)."""
        self._faults: dict[str, deque[int]] = {}
        self._callbacks: dict[str, _Callback] = {}
        self._in_flight: Counter[str] = Counter()
        self._active: Connection | None = None
        self._queued: deque[str] = deque()
        self._blobs: dict[str, bytes] = {}
        self._uploads: dict[str, _Upload] = {}
        self._nursery: trio.Nursery | None = None
        self._connected = trio.Event()
        self._ids = itertools.count(1)
        self._response_urls: dict[str, _ResponseUrl] = {}

    # -- running ----------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[WeComEmulator] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the emulator's tasks (in-memory connections) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[WeComEmulator] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the WebSocket and the HTTP side (media, webhook driver, admin) on loopback.

        Runs until cancelled; cancelled, it closes its listeners and every connection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            server = await nursery.start(serve_websocket, self._accept_loopback, host, port, None)
            self.ws_url = f"ws://{host}:{server.port}/"
            self.http_base = await nursery.start(serve_http, self.handle_http, host, 0) + "/"
            task_status.started(self)

    def describe(self) -> dict[str, Any]:
        """What a client needs (the JSON line ``emulate wecom`` prints)."""
        return {
            "platform": "wecom",
            "ws_url": self.ws_url,
            "bot_id": self.bot_id,
            "secret": self.secret,
            "token": self.token,
            "encoding_aes_key": self.encoding_aes_key,
            "admin_url": self.http_base + "admin",
        }

    def webhook(self, **options: Any) -> Webhook:
        """A :class:`~trio_chatbridge.platforms.wecom.Webhook` of this bot whose downloads and
        ``response_url`` answers reach this emulator (``options``: the webhook's own)."""
        options.setdefault("transport", HandlerTransport(self.handle_http))
        options.setdefault("media", _media_policy(self.http_base))
        return Webhook(
            bot_id=self.bot_id,
            token=self.token,
            encoding_aes_key=self.encoding_aes_key,
            **options,
        )

    def connector(self, **options: Any) -> LongConnection:
        """A long-connection connector for this emulator (in memory unless serving)."""
        in_memory = self.ws_url.startswith(f"ws://{IN_MEMORY_HOST}")
        if in_memory:
            options.setdefault("open_websocket", self.open_websocket)
            options.setdefault("transport", HandlerTransport(self.handle_http))
        options.setdefault("media", _media_policy(self.http_base))
        options.setdefault("secret", self.secret)
        return LongConnection(bot_id=self.bot_id, url=self.ws_url, **options)

    def open_websocket(self, url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
        """A WebSocket to this emulator over in-memory streams (the connector's hook)."""
        if self._nursery is None:
            raise RuntimeError("start the emulator first: await nursery.start(emulator.run)")
        return memory_websocket(self._nursery, self._serve, IN_MEMORY_HOST, "/", f.WS_MESSAGE_LIMIT)

    async def _accept_loopback(self, request: WebSocketRequest) -> None:
        with suppress(*GONE):  # a client that leaves during the handshake
            ws = await request.accept()
            await self._serve_ws(ws, ws.aclose)

    async def _serve(self, request: WebSocketRequest, abort: Abort) -> None:
        await self._serve_ws(await request.accept(), abort)

    # -- the server ----------------------------------------------------------------------------

    async def _serve_ws(self, ws: WebSocketConnection, abort: Abort) -> None:
        conn = Connection(ws, abort)
        try:
            first = f.parse_frame(await ws.get_message())
            if first.cmd != f.SUBSCRIBE:
                return
            self.frames.append(first)
            ok = first.body.get("bot_id") == self.bot_id and first.body.get("secret") == self.secret
            if not ok:
                await ws.send_message(_ack(first.req_id, AUTH_FAILED, "invalid bot_id or secret"))
                return
            self.subscribes += 1
            old, self._active = self._active, conn
            if old is not None:
                old.push(self._event_frame("disconnected_event", "", "")[1])
                old.close_after_pushed()
            await ws.send_message(_ack(first.req_id))
            while self._queued:
                conn.push(self._queued.popleft())
            self._connected.set()
            self._connected = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write)
                try:
                    while True:
                        await self._on_frame(conn, await ws.get_message())
                except GONE:  # caught here: out of the nursery it would come as a group
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        except GONE:
            pass
        finally:
            if self._active is conn:
                self._active = None
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    async def _on_frame(self, conn: Connection, data: str | bytes) -> None:
        try:
            frame = _parse_client_frame(data)
        except Exception:
            return  # a real server would likely close; we ignore bad client frames
        self.frames.append(frame)
        faults = self._faults.get(frame.cmd or "")
        if faults:
            errcode = faults.popleft()
            if errcode >= 0:
                await conn.ws.send_message(_ack(frame.req_id, errcode, "injected"))
            return
        if frame.cmd == f.PING:
            if not self.ignore_pings:
                await conn.ws.send_message(_ack(frame.req_id))
            return
        errcode, errmsg, body = self._check(frame)
        ack = _ack(frame.req_id, errcode, errmsg, body)
        if self.ack_delay > 0 and self._nursery is not None:  # acks in flight together
            self._nursery.start_soon(self._ack_later, conn, ack)
            return
        await conn.ws.send_message(ack)

    async def _ack_later(self, conn: Connection, ack: str) -> None:
        await trio.sleep(self.ack_delay)
        conn.push(ack)

    def _check(self, frame: f.Frame) -> tuple[int, str, Mapping[str, Any]]:
        """Validate and record one command; returns the ack's errcode, errmsg and body."""
        handler = {
            f.SEND: self._send,
            f.RESPOND_WELCOME: self._welcome,
            out.RESPOND_UPDATE: self._update_card,
            f.RESPOND: self._respond,
            out.UPLOAD_INIT: self._upload_init,
            out.UPLOAD_CHUNK: self._upload_chunk,
            out.UPLOAD_FINISH: self._upload_finish,
        }.get(frame.cmd or "")
        if handler is None:
            return f.INVALID_REQ_ID, f"unsupported command {frame.cmd}", {}
        try:
            return (0, "ok", handler(frame) or {})
        except _Refused as refused:
            callback = self._callbacks.get(frame.req_id)
            if frame.cmd == f.RESPOND and callback is not None and callback.kind == "message":
                self._finish(callback)  # a refused answer is over: no slot stays taken
            self._record(
                "refused",
                str(frame.cmd),
                callback.chat if callback else get_str(frame.body, "chatid"),
                req_id=frame.req_id,
                detail={"errcode": refused.errcode, "errmsg": refused.errmsg},
            )
            return refused.errcode, refused.errmsg, {}

    def _record(self, kind: str, via: str, to: str | None, *, req_id: str, **fields: Any) -> None:
        self.activity.append(Activity("wecom", kind, via, to, id=req_id, **fields))

    def _finish(self, callback: _Callback) -> None:
        if not callback.finished:
            callback.finished = True
            self._in_flight[callback.user] -= 1

    def _single(self, body: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None, str | None]:
        """A single message body's kind, card and media id, checked as WeCom would."""
        msgtype = get_str(body, "msgtype") or ""
        if msgtype == "template_card":
            return "card", self._card(body), None
        if msgtype in MEDIA_KINDS:
            media_id = get_str(get_object(body, msgtype), "media_id")
            if media_id not in self.media or self.media[media_id][0].kind != msgtype:
                raise _Refused(BAD_MEDIA_ID, f"invalid media_id for {msgtype}")
            return msgtype, None, media_id
        raise _Refused(BAD_CONTENT, f"msgtype {msgtype!r} not allowed here")

    def _card(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        card = body.get("template_card")
        if not isinstance(card, dict) or card.get("card_type") not in CARD_TYPES:
            raise _Refused(BAD_CONTENT, "template_card needs a known card_type")
        return card

    def _media(self, media_id: str | None) -> MediaRecord | None:
        return self.media[media_id][0] if media_id else None

    def _send(self, frame: f.Frame) -> None:
        chat = get_str(frame.body, "chatid")
        if not chat:
            raise _Refused(BAD_CONTENT, "chatid required")
        if frame.body.get("msgtype") == "markdown":
            text = get_str(get_object(frame.body, "markdown"), "content") or ""
            if len(text.encode()) > f.STREAM_LIMIT:
                raise _Refused(BAD_CONTENT, "content over 20480 bytes")
            self.sent.append(WeComSent("proactive", chat, text, frame.req_id))
            self._record("markdown", "proactive", chat, req_id=frame.req_id, text=text)
            return
        kind, card, media_id = self._single(frame.body)
        self.sent.append(WeComSent("proactive", chat, "", frame.req_id, 1, card, media_id))
        self._record(
            kind, "proactive", chat, req_id=frame.req_id, card=card, media=self._media(media_id)
        )

    def _welcome(self, frame: f.Frame) -> None:
        callback = self._answerable(frame, "enter_chat")
        if frame.body.get("msgtype") == "template_card":
            card, text = self._card(frame.body), ""
        elif frame.body.get("msgtype") == "text":
            card, text = None, get_str(get_object(frame.body, "text"), "content") or ""
        else:
            raise _Refused(BAD_CONTENT, "a welcome is text or template_card")
        callback.finished = True
        self.sent.append(WeComSent("welcome", callback.user, text, frame.req_id, 1, card))
        kind = "card" if card else "text"
        self._record(kind, "welcome", callback.user, req_id=frame.req_id, text=text, card=card)

    def _update_card(self, frame: f.Frame) -> None:
        callback = self._answerable(frame, "card_event")
        if frame.body.get("response_type") != "update_template_card":
            raise _Refused(BAD_CONTENT, "response_type must be update_template_card")
        card = self._card(frame.body)
        callback.finished = True
        userids = frame.body.get("userids")
        self._record(
            "card_update",
            "update",
            callback.user,
            req_id=frame.req_id,
            card=card,
            detail={"userids": userids} if userids is not None else {},
        )

    def _answerable(self, frame: f.Frame, kind: str) -> _Callback:
        """The event callback ``frame`` answers, if it may still (5 s, once)."""
        callback = self._callbacks.get(frame.req_id)
        late = callback is not None and trio.current_time() - callback.at > f.WELCOME_DEADLINE
        if callback is None or callback.kind != kind or late or callback.finished:
            raise _Refused(f.INVALID_REQ_ID, "invalid req_id")
        return callback

    def _respond(self, frame: f.Frame) -> None:
        callback = self._callbacks.get(frame.req_id)
        if callback is None or callback.kind != "message":
            raise _Refused(f.INVALID_REQ_ID, "invalid req_id")
        if trio.current_time() - callback.at > f.STREAM_WINDOW:
            self._finish(callback)  # six minutes on: the callback can be answered no more
        if callback.finished:
            raise _Refused(f.STREAM_EXPIRED, "stream message update expired")
        msgtype = frame.body.get("msgtype")
        if msgtype in ("stream", "stream_with_template_card"):
            self._stream_frame(callback, frame)
            return
        kind, card, media_id = self._single(frame.body)
        self._finish(callback)
        self.sent.append(WeComSent("reply", callback.chat, "", frame.req_id, 1, card, media_id))
        self._record(
            kind,
            "reply",
            callback.chat,
            req_id=frame.req_id,
            card=card,
            media=self._media(media_id),
        )

    def _stream_frame(self, callback: _Callback, frame: f.Frame) -> None:
        stream = get_object(frame.body, "stream")
        content = stream.get("content", "")
        finish = stream.get("finish") is True
        if not isinstance(content, str) or len(content.encode()) > f.STREAM_LIMIT:
            raise _Refused(BAD_CONTENT, "content over 20480 bytes")
        if callback.stream_id not in (None, stream.get("id")):
            raise _Refused(BAD_CONTENT, "stream id changed")
        if stream.get("msg_item") and not finish:
            raise _Refused(BAD_CONTENT, "msg_item only with finish")
        if frame.body.get("msgtype") == "stream_with_template_card":
            if callback.card is not None:
                raise _Refused(BAD_CONTENT, "a card goes once per message")
            callback.card = self._card(frame.body)
        callback.stream_id = stream.get("id")
        callback.content = content
        callback.frames += 1
        if finish:
            self._finish(callback)
            self.sent.append(
                WeComSent(
                    "stream", callback.chat, content, frame.req_id, callback.frames, callback.card
                )
            )
            self._record(
                "stream",
                "reply",
                callback.chat,
                req_id=frame.req_id,
                text=content,
                card=callback.card,
                detail={"frames": callback.frames},
            )

    def _upload_init(self, frame: f.Frame) -> Mapping[str, Any]:
        body = frame.body
        kind, total, chunks = body.get("type"), body.get("total_size"), body.get("total_chunks")
        if kind not in MEDIA_KINDS or not isinstance(total, int) or not isinstance(chunks, int):
            raise _Refused(BAD_CONTENT, "type, total_size and total_chunks required")
        if not 0 < chunks <= out.MAX_CHUNKS or not 0 <= total <= chunks * out.CHUNK_BYTES:
            raise _Refused(BAD_CONTENT, "at most 100 chunks of 512 KiB")
        upload_id = f"upload-{next(self._ids)}-{secrets.token_hex(4)}"
        self._uploads[upload_id] = _Upload(
            str(kind),
            get_str(body, "filename") or "",
            total,
            get_str(body, "md5"),
            [None] * chunks,
        )
        return {"upload_id": upload_id}

    def _upload_chunk(self, frame: f.Frame) -> None:
        upload = self._uploads.get(get_str(frame.body, "upload_id") or "")
        index = frame.body.get("chunk_index")
        if upload is None:
            raise _Refused(BAD_CONTENT, "unknown upload_id")
        if not isinstance(index, int) or not 0 <= index < len(upload.chunks):
            raise _Refused(BAD_CONTENT, "chunk_index out of range (from 0)")
        try:
            data = base64.b64decode(get_str(frame.body, "base64_data") or "", validate=True)
        except ValueError:
            raise _Refused(BAD_CONTENT, "base64_data is not base64") from None
        if len(data) > out.CHUNK_BYTES:
            raise _Refused(BAD_CONTENT, "chunk over 512 KiB")
        upload.chunks[index] = data

    def _upload_finish(self, frame: f.Frame) -> Mapping[str, Any]:
        upload_id = get_str(frame.body, "upload_id") or ""
        upload = self._uploads.pop(upload_id, None)
        if upload is None:
            raise _Refused(BAD_CONTENT, "unknown upload_id")
        if any(chunk is None for chunk in upload.chunks):
            raise _Refused(BAD_CONTENT, "chunks missing")
        data = b"".join(chunk or b"" for chunk in upload.chunks)
        if len(data) != upload.total_size:
            raise _Refused(BAD_CONTENT, "total_size does not match the chunks")
        if upload.md5 and hashlib.md5(data).hexdigest() != upload.md5:
            raise _Refused(BAD_CONTENT, "md5 does not match")
        media_id = f"media-{next(self._ids)}-{secrets.token_hex(6)}"
        record = MediaRecord(
            media_id, upload.kind, len(data), hashlib.sha256(data).hexdigest(), upload.filename
        )
        self.media[media_id] = (record, data)
        self._record("upload", "upload", None, req_id=frame.req_id, media=record)
        return {"type": upload.kind, "media_id": media_id, "created_at": int(time.time())}

    # -- the users' side -------------------------------------------------------------------------

    def _push(self, text: str) -> None:
        if self._active is not None:
            self._active.push(text)
        else:
            self._queued.append(text)

    def _callback_frame(self, user: str, chat: str | None, body: dict[str, Any]) -> tuple[str, str]:
        n = next(self._ids)
        req_id = base64.urlsafe_b64encode(secrets.token_bytes(12)).decode()
        body = {
            "msgid": body.pop("msgid", None) or f"msg-{n}-{secrets.token_hex(4)}",
            "aibotid": self.bot_id,
            "chattype": "group" if chat else "single",
            "from": {"userid": user},
            "create_time": int(time.time()),
            **({"chatid": chat} if chat else {}),
            **body,
        }
        return req_id, json.dumps(
            {"cmd": f.MSG_CALLBACK, "headers": {"req_id": req_id}, "body": body}
        )

    def _event_frame(
        self, eventtype: str, user: str, chat: str, given: Mapping[str, Any] | None = None
    ) -> tuple[str, str]:
        req_id = base64.urlsafe_b64encode(secrets.token_bytes(12)).decode()
        body = {
            "msgid": f"event-{next(self._ids)}",
            "aibotid": self.bot_id,
            "chattype": "group" if chat else "single",
            "from": {"userid": user},
            "msgtype": "event",
            "event": {"eventtype": eventtype},
            **{k: v for k, v in (given or {}).items() if v is not None},
        }
        if chat:
            body["chatid"] = chat
        return req_id, json.dumps(
            {"cmd": f.EVENT_CALLBACK, "headers": {"req_id": req_id}, "body": body}
        )

    def in_flight(self, user: str) -> int:
        """How many of ``user``'s messages the bot has not finished answering."""
        return self._in_flight[user]

    def send_callback(self, user: str, body: Mapping[str, Any], *, chat: str | None = None) -> str:
        """Push a message callback with any body fields (``msgtype`` and its payload...)."""
        if self.in_flight(user) >= self.in_flight_limit:
            raise InFlightLimit(f"{user} already has {self.in_flight_limit} messages in flight")
        req_id, frame = self._callback_frame(user, chat, dict(body))
        self._callbacks[req_id] = _Callback("message", user, chat or user, trio.current_time())
        self._in_flight[user] += 1
        self._push(frame)
        return req_id

    def user_says(
        self,
        user: str,
        text: str,
        *,
        chat: str | None = None,
        msgid: str | None = None,
        quote: str | None = None,
    ) -> str:
        """``user`` sends ``text`` (in group ``chat``, @-mentioning the bot; quoting the text
        ``quote``); returns the req_id."""
        content = f"@{self.bot_id} {text}" if chat else text
        body: dict[str, Any] = {"msgtype": "text", "text": {"content": content}}
        if msgid:
            body["msgid"] = msgid
        if quote is not None:
            body["quote"] = {"msgtype": "text", "text": {"content": quote}}
        return self.send_callback(user, body, chat=chat)

    def say_media(
        self, user: str, data: bytes, *, kind: str = "image", filename: str = "file.bin"
    ) -> str:
        """The shared verb: :meth:`user_sends_media` (WeCom sends no file name)."""
        return self.user_sends_media(user, data, kind=kind)

    def enter(self, user: str) -> str:
        """The shared verb: :meth:`user_enters`."""
        return self.user_enters(user)

    def user_sends_media(self, user: str, data: bytes, *, kind: str = "image") -> str:
        """``user`` sends an image, file or video, encrypted with a fresh per-URL key."""
        if kind not in ("image", "file", "video"):
            raise ValueError(f"a WeCom user sends an image, file or video, not {kind!r}")
        key = secrets.token_bytes(32)
        name = f"blob-{next(self._ids)}"
        self._blobs[name] = _crypto.encrypt_media_with_key(key, data)
        payload = {
            "url": self.http_base + "media/" + name,
            "aeskey": base64.b64encode(key).decode(),
        }
        return self.send_callback(user, {"msgtype": kind, kind: payload})

    def user_enters(self, user: str) -> str:
        """``user`` opens the chat with the bot (``enter_chat``); returns the event's req_id."""
        return self.push_event({"from": {"userid": user}, "event": {"eventtype": "enter_chat"}})

    def user_clicks_card(
        self, user: str, *, event_key: str, task_id: str, chat: str | None = None
    ) -> str:
        """``user`` clicks a card's button (``template_card_event``, answerable within 5 s
        by ``aibot_respond_update_msg``); returns the event's req_id. The event's layout
        (``event.template_card_event.{event_key, task_id}``) is unconfirmed."""
        click = {"event_key": event_key, "task_id": task_id}
        event = {"eventtype": "template_card_event", "template_card_event": click}
        return self.push_event({"from": {"userid": user}, "chatid": chat, "event": event})

    def push_event(self, event: Mapping[str, Any]) -> str:
        """Push any ``aibot_event_callback`` body (at least ``from.userid`` and
        ``event.eventtype``; ``msgid``, ``aibotid``, ``chattype`` are filled in); returns its
        req_id. ``enter_chat`` and ``template_card_event`` can be answered (5 s) as on the
        platform."""
        user = get_str(get_object(event, "from"), "userid")
        eventtype = get_str(get_object(event, "event"), "eventtype")
        if not user or not eventtype:
            raise ValueError("an event needs from.userid and event.eventtype")
        chat = get_str(event, "chatid")
        req_id, frame = self._event_frame(eventtype, user, chat or "", event)
        kinds: dict[str, Literal["enter_chat", "card_event"]] = {
            "enter_chat": "enter_chat",
            "template_card_event": "card_event",
        }
        if eventtype in kinds:
            self._callbacks[req_id] = _Callback(
                kinds[eventtype], user, chat or user, trio.current_time()
            )
        self._push(frame)
        return req_id

    def push_raw(self, text: str) -> None:
        """Send the bot any text frame as is (malformed JSON, an oversized frame...)."""
        self._push(text)

    # -- observation and faults -------------------------------------------------------------------

    async def next_sent(self) -> WeComSent:
        """The next thing the bot said that this method has not returned yet (waits).

        Cancelled, nothing is consumed: the next call returns it."""
        return await self.sent.next()

    async def wait_connected(self) -> None:
        """Wait for the next successful subscribe (cancelled: nothing changes)."""
        await self._connected.wait()

    def commands(self, cmd: str) -> list[WeComFrame]:
        """The bot's frames of one command, in order."""
        return [frame for frame in self.frames if frame.cmd == cmd]

    def fail_next(self, what: str, code: int, times: int = 1) -> None:
        """Ack the next ``times`` commands ``what`` (``aibot_respond_msg``, ``ping``...) with
        errcode ``code`` (-1: no ack at all)."""
        self._faults.setdefault(what, deque()).extend([code] * times)

    async def drop_connection(self) -> None:
        """Cut the current socket without a closing handshake (a network fault).

        Cancelled, the socket is no longer the current one, and may or may not be cut."""
        if self._active is not None:
            conn, self._active = self._active, None
            await conn.abort()

    # -- webhook mode: the emulator calls the bot --------------------------------------------------

    def _webhook_client(self, target: str | Any) -> httpx.AsyncClient:
        if isinstance(target, str):
            return httpx.AsyncClient(base_url=target)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=target), base_url="http://bot")

    async def webhook_post(
        self, target: str | Any, callback: Mapping[str, Any], *, timestamp: str | None = None
    ) -> httpx.Response:
        """POST one encrypted, signed callback to a bot's webhook (a URL or an ASGI app).

        Cancelled, the callback may or may not have reached the bot (as a request in flight)."""
        encrypt = self.crypto.encrypt(json.dumps(callback, ensure_ascii=False))
        timestamp = timestamp or str(int(time.time()))
        nonce = secrets.token_hex(5)
        params = {
            "msg_signature": self.crypto.signature(timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
        }
        async with self._webhook_client(target) as http:
            return await http.post("", params=params, json={"encrypt": encrypt})

    def webhook_open(self, response: httpx.Response) -> dict[str, Any]:
        """Check and decrypt a bot's encrypted answer, as WeCom would."""
        envelope = response.json()
        signature = self.crypto.signature(
            envelope["timestamp"], envelope["nonce"], envelope["encrypt"]
        )
        if signature != envelope["msgsignature"]:
            raise AssertionError("the bot's answer has a bad msgsignature")
        answer: dict[str, Any] = json.loads(self.crypto.decrypt(envelope["encrypt"]))
        return answer

    async def webhook_user_says(
        self,
        target: str | Any,
        user: str,
        text: str,
        *,
        chat: str | None = None,
        refresh: float = 1.0,
        msgid: str | None = None,
    ) -> WeComSent:
        """A user message by webhook; polls the stream as WeCom does until it finishes (6 min).

        Cancelled, the polling stops (as WeCom's would after a timeout); the message may or
        may not have reached the bot."""
        msgid = msgid or f"msg-{next(self._ids)}"
        body = {
            "msgid": msgid,
            "aibotid": self.bot_id,
            "chattype": "group" if chat else "single",
            "from": {"userid": user},
            "msgtype": "text",
            "text": {"content": f"@{self.bot_id} {text}" if chat else text},
            "response_url": self.response_url(chat or user, msgid),
            **({"chatid": chat} if chat else {}),
        }
        answer = self.webhook_open(await self.webhook_post(target, body))
        stream, polls = answer["stream"], 0
        with trio.move_on_after(STREAM_POLL_LIMIT):
            while not stream.get("finish"):
                await trio.sleep(refresh)
                poll = {"msgtype": "stream", "stream": {"id": stream["id"]}}
                stream = self.webhook_open(await self.webhook_post(target, poll))["stream"]
                polls += 1
        sent = WeComSent("stream", chat or user, stream.get("content", ""), stream["id"], polls)
        self.sent.append(sent)
        return sent

    def response_url(self, to: str, msgid: str) -> str:
        """A new ``response_url`` for message ``msgid`` from ``to`` (a user or group chat):
        one answer, within an hour (a callback built by hand gets one here)."""
        token = secrets.token_urlsafe(16)
        self._response_urls[token] = _ResponseUrl(to, msgid, trio.current_time() + RESPONSE_URL_TTL)
        return f"{self.http_base}{RESPONSE_PATH}?response_code={token}"

    def _answer_by_url(self, token: str, request: httpx.Request) -> httpx.Response:
        """A bot's POST to a message's ``response_url``: one markdown, text or template card
        answer, recorded as the user's answer (``via="response_url"``, kind ``"card"`` for a
        card), or refused as WeCom would."""
        url = self._response_urls.get(token)
        if url is None:
            return httpx.Response(404)
        kind, card = "", None
        try:
            body = json.loads(request.content)
            kind = get_str(body, "msgtype") or ""
            if kind == "template_card":
                card = self._card(body)
                content: str | None = ""
            else:
                content = get_str(get_object(body, kind), "content")
        except (ValueError, TypeError, AttributeError, _Refused):
            content = None
        if url.used or trio.current_time() > url.expires:
            errcode, errmsg = URL_SPENT, "response_url used already or expired"
        elif kind not in ("markdown", "text", "template_card") or content is None:
            errcode, errmsg = BAD_CONTENT, "a markdown, text or template_card message, please"
        elif len(content.encode()) > f.STREAM_LIMIT:
            errcode, errmsg = BAD_CONTENT, "content too long"
        else:
            url.used = True
            if card is None:
                self._record(kind, "response_url", url.to, req_id=url.msgid, text=content)
            else:
                self._record("card", "response_url", url.to, req_id=url.msgid, card=card)
            self.sent.append(WeComSent("response_url", url.to, content, url.msgid, card=card))
            return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})
        detail = {"errcode": errcode, "errmsg": errmsg}
        self._record("refused", "response_url", url.to, req_id=url.msgid, detail=detail)
        return httpx.Response(200, json=detail)

    async def webhook_user_enters(self, target: str | Any, user: str) -> str | None:
        """``enter_chat`` by webhook; returns the welcome text the bot answered, if any.

        Cancelled, the event may or may not have reached the bot."""
        msgid = f"event-{next(self._ids)}"
        body = {
            "msgid": msgid,
            "aibotid": self.bot_id,
            "from": {"userid": user},
            "msgtype": "event",
            "event": {"eventtype": "enter_chat"},
        }
        response = await self.webhook_post(target, body)
        if response.headers.get("content-type", "").startswith("application/json"):
            content: str = self.webhook_open(response)["text"]["content"]
            self.sent.append(WeComSent("welcome", user, content, msgid))
            return content
        return None

    async def webhook_verify(self, target: str | Any, echo: str = "hello") -> httpx.Response:
        """The URL check WeCom makes when the callback URL is saved (GET with ``echostr``).

        Cancelled, nothing changes (a check)."""
        encrypt = self.crypto.encrypt(echo)
        timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
        params = {
            "msg_signature": self.crypto.signature(timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": encrypt,
        }
        async with self._webhook_client(target) as http:
            return await http.get("", params=params)

    # -- HTTP: media, admin ------------------------------------------------------------------------

    async def handle_http(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request: media downloads, the webhook driver, or the admin API.

        Cancelled, the request goes unanswered; what it recorded stays."""
        path = request.url.path
        if path.startswith("/media/"):
            blob = self._blobs.get(path.removeprefix("/media/"))
            return httpx.Response(200, content=blob) if blob is not None else httpx.Response(404)
        if path == "/" + RESPONSE_PATH and request.method == "POST":
            return self._answer_by_url(request.url.params.get("response_code", ""), request)
        if path.startswith("/admin"):
            return await handle_admin(self, request)
        return httpx.Response(404)


class _Refused(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode = errcode
        self.errmsg = errmsg


def _ack(
    req_id: str, errcode: int = 0, errmsg: str = "ok", body: Mapping[str, Any] | None = None
) -> str:
    return f.Frame(req_id, body=body or {}, errcode=errcode, errmsg=errmsg).encode()


def _parse_client_frame(data: str | bytes) -> f.Frame:
    """A client frame; upload chunks (up to 512 KiB as base64) may pass the client's own
    cap on what it reads, up to what the WebSocket carries."""
    if len(data) <= f.MAX_FRAME_BYTES:
        return f.parse_frame(data)
    raw = json.loads(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("body"), dict):
        raise ValueError("not a frame")
    req_id = get_str(get_object(raw, "headers"), "req_id") or ""
    return f.Frame(req_id, get_str(raw, "cmd"), raw["body"])


def _media_policy(http_base: str) -> MediaPolicy:
    """WeCom's hosts, plus the emulator's own media host."""
    return MediaPolicy((*DEFAULT_MEDIA_HOSTS, httpx.URL(http_base).host))

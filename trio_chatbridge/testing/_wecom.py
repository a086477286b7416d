"""An emulator of the WeCom AI Bot server: the long connection, media, and the webhook mode.

It follows ``docs/protocols/wecom.md``. Choices where the real server is unknown
(``docs/protocols/wecom.md#emulator``), made as a strict server would:

- a wrong secret is acked with errcode 40001 and the socket is closed;
- a second subscribe for the same bot sends ``disconnected_event`` to the first and closes it;
- callbacks pushed while no client is connected wait for the next one;
- a user has at most 3 messages in flight (a callback is in flight until its stream finishes);
- content over 20480 bytes, a changed stream id or ``msg_item`` before ``finish`` get 40058;
- a command on a ``req_id`` it does not fit (a stream to ``enter_chat``, an unknown one, a
  welcome after 5 s) gets 846605, an update after ``finish`` 846608.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import time
from collections import Counter, deque
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any, Final, Literal, final

import attrs
import httpx
import trio
import trio.testing
from trio_websocket import (
    WebSocketConnection,
    WebSocketRequest,
    serve_websocket,
)

from .._media import MediaPolicy
from ..platforms.wecom import _crypto
from ..platforms.wecom import _frames as f
from ..platforms.wecom._long import DEFAULT_MEDIA_HOSTS, LongConnection
from ._http import HandlerTransport, json_response, serve_http
from ._record import Record
from ._ws import GONE, Abort, Connection, memory_websocket

IN_MEMORY_HOST: Final = "wecom-emulator.invalid"  # never resolves: nothing leaves
AUTH_FAILED: Final = 40001
BAD_CONTENT: Final = 40058
IN_FLIGHT_LIMIT: Final = 3
# seconds WeCom polls a webhook stream (docs/protocols/wecom.md#streaming-by-polling)
STREAM_POLL_LIMIT: Final = 360.0
DEFAULT_AES_KEY: Final = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters


class InFlightLimit(RuntimeError):
    """The emulated user already has 3 messages the bot has not finished answering."""


@final
@attrs.frozen
class WeComSent:
    """Something the bot said: a finished stream, a welcome, or a proactive message."""

    kind: Literal["stream", "welcome", "proactive"]
    to: str
    """The user (or group chat) it reached."""
    text: str
    req_id: str
    frames: int = 1
    """How many frames the stream took (intermediate ones included)."""


@attrs.define
class _Callback:
    kind: Literal["message", "enter_chat", "event"]
    user: str
    chat: str
    at: float
    stream_id: str | None = None
    content: str = ""
    frames: int = 0
    finished: bool = False


class WeComEmulator:
    """A fake WeCom server for one bot. Start it with ``await nursery.start(emu.run)`` (in
    memory) or ``await nursery.start(emu.serve)`` (loopback); ``connector()`` builds a
    :class:`~trio_chatbridge.platforms.wecom.LongConnection` wired to it.
    """

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
        self.subscribes: int = 0
        self.ignore_pings = False
        """True: pings are not acknowledged (a dead server)."""
        self._faults: dict[str, deque[int]] = {}
        self._callbacks: dict[str, _Callback] = {}
        self._in_flight: Counter[str] = Counter()
        self._active: Connection | None = None
        self._queued: deque[str] = deque()
        self._blobs: dict[str, bytes] = {}
        self._nursery: trio.Nursery | None = None
        self._connected = trio.Event()
        self._ids = itertools.count(1)

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
        """Serve the WebSocket and the HTTP side (media, webhook driver, admin) on loopback."""
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
            frame = f.parse_frame(data)
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
        errcode, errmsg = self._check(frame)
        await conn.ws.send_message(_ack(frame.req_id, errcode, errmsg))

    def _check(self, frame: f.Frame) -> tuple[int, str]:
        """Validate and record one reply command; returns the ack's errcode and errmsg."""
        callback = self._callbacks.get(frame.req_id)
        if frame.cmd == f.SEND:
            markdown = frame.body.get("markdown")
            text = markdown.get("content", "") if isinstance(markdown, dict) else ""
            self.sent.append(
                WeComSent("proactive", str(frame.body.get("chatid")), text, frame.req_id)
            )
            return 0, "ok"
        if frame.cmd == f.RESPOND_WELCOME:
            late = callback is not None and trio.current_time() - callback.at > f.WELCOME_DEADLINE
            if callback is None or callback.kind != "enter_chat" or late or callback.finished:
                return f.INVALID_REQ_ID, "invalid req_id"
            callback.finished = True
            text = frame.body.get("text")
            content = text.get("content", "") if isinstance(text, dict) else ""
            self.sent.append(WeComSent("welcome", callback.user, content, frame.req_id))
            return 0, "ok"
        if frame.cmd != f.RESPOND:
            return f.INVALID_REQ_ID, f"unsupported command {frame.cmd}"
        if callback is None or callback.kind != "message":
            return f.INVALID_REQ_ID, "invalid req_id"
        if callback.finished:
            return f.STREAM_EXPIRED, "stream message update expired"
        stream = frame.body.get("stream")
        if frame.body.get("msgtype") != "stream" or not isinstance(stream, dict):
            return BAD_CONTENT, "only stream replies are emulated"
        content = stream.get("content", "")
        finish = stream.get("finish") is True
        if not isinstance(content, str) or len(content.encode()) > f.STREAM_LIMIT:
            return BAD_CONTENT, "content over 20480 bytes"
        if callback.stream_id not in (None, stream.get("id")):
            return BAD_CONTENT, "stream id changed"
        if stream.get("msg_item") and not finish:
            return BAD_CONTENT, "msg_item only with finish"
        callback.stream_id = stream.get("id")
        callback.content = content
        callback.frames += 1
        if finish:
            callback.finished = True
            self._in_flight[callback.user] -= 1
            self.sent.append(
                WeComSent("stream", callback.chat, content, frame.req_id, callback.frames)
            )
        return 0, "ok"

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

    def _event_frame(self, eventtype: str, user: str, chat: str) -> tuple[str, str]:
        req_id = base64.urlsafe_b64encode(secrets.token_bytes(12)).decode()
        body = {
            "msgid": f"event-{next(self._ids)}",
            "aibotid": self.bot_id,
            "chattype": "single",
            "from": {"userid": user},
            "msgtype": "event",
            "event": {"eventtype": eventtype},
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
        self, user: str, text: str, *, chat: str | None = None, msgid: str | None = None
    ) -> str:
        """``user`` sends ``text`` (in group ``chat``, @-mentioning the bot); returns the req_id."""
        content = f"@{self.bot_id} {text}" if chat else text
        body: dict[str, Any] = {"msgtype": "text", "text": {"content": content}}
        if msgid:
            body["msgid"] = msgid
        return self.send_callback(user, body, chat=chat)

    def user_sends_media(self, user: str, data: bytes, *, kind: str = "image") -> str:
        """``user`` sends an image, file or video, encrypted with a fresh per-URL key."""
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
        req_id, frame = self._event_frame("enter_chat", user, "")
        self._callbacks[req_id] = _Callback("enter_chat", user, user, trio.current_time())
        self._push(frame)
        return req_id

    def push_raw(self, text: str) -> None:
        """Send the bot any text frame as is (malformed JSON, an oversized frame...)."""
        self._push(text)

    # -- observation and faults -------------------------------------------------------------------

    async def next_sent(self) -> WeComSent:
        """The next thing the bot said that this method has not returned yet (waits)."""
        return await self.sent.next()

    async def wait_connected(self) -> None:
        """Wait for the next successful subscribe."""
        await self._connected.wait()

    def commands(self, cmd: str) -> list[f.Frame]:
        """The bot's frames of one command, in order."""
        return [frame for frame in self.frames if frame.cmd == cmd]

    def fail_next(self, cmd: str, errcode: int, times: int = 1) -> None:
        """Ack the next ``times`` ``cmd`` commands with ``errcode`` (-1: no ack at all)."""
        self._faults.setdefault(cmd, deque()).extend([errcode] * times)

    async def drop_connection(self) -> None:
        """Cut the current socket without a closing handshake (a network fault)."""
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
        """POST one encrypted, signed callback to a bot's webhook (a URL or an ASGI app)."""
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
        """A user message by webhook; polls the stream as WeCom does until it finishes (6 min)."""
        body = {
            "msgid": msgid or f"msg-{next(self._ids)}",
            "aibotid": self.bot_id,
            "chattype": "group" if chat else "single",
            "from": {"userid": user},
            "msgtype": "text",
            "text": {"content": f"@{self.bot_id} {text}" if chat else text},
            "response_url": self.http_base + "response",
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

    async def webhook_user_enters(self, target: str | Any, user: str) -> str | None:
        """``enter_chat`` by webhook; returns the welcome text the bot answered, if any."""
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
        """The URL check WeCom makes when the callback URL is saved (GET with ``echostr``)."""
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
        """Answer one HTTP request: media downloads, the webhook driver, or the admin API."""
        path = request.url.path
        if path.startswith("/media/"):
            blob = self._blobs.get(path.removeprefix("/media/"))
            return httpx.Response(200, content=blob) if blob is not None else httpx.Response(404)
        if path == "/admin/messages" and request.method == "POST":
            try:
                data = json.loads(request.content)
                said = data if isinstance(data, list) else [data]
                ids = [
                    self.user_says(str(d["user"]), str(d["text"]), chat=d.get("chat")) for d in said
                ]
            except (ValueError, KeyError, TypeError):
                return json_response({"error": 'expected {"user": ..., "text": ...}'}, 400)
            except InFlightLimit as exc:
                return json_response({"error": str(exc)}, 429)
            return json_response({"ok": True, "req_id": ids[0] if len(ids) == 1 else ids})
        if path == "/admin/sent" and request.method == "GET":
            return json_response([attrs.asdict(s) for s in self.sent])
        return httpx.Response(404, content=b"admin: POST /admin/messages or GET /admin/sent")


def _ack(req_id: str, errcode: int = 0, errmsg: str = "ok") -> str:
    return f.Frame(req_id, errcode=errcode, errmsg=errmsg).encode()


def _media_policy(http_base: str) -> MediaPolicy:
    """WeCom's hosts, plus the emulator's own media host."""
    return MediaPolicy((*DEFAULT_MEDIA_HOSTS, httpx.URL(http_base).host))

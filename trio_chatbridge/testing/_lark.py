"""An emulator of Lark/Feishu: endpoint discovery, the long connection, the open API.

It follows ``docs/protocols/lark.md``. Choices where the real server is unknown
(``docs/protocols/lark.md#emulator``): an event is re-pushed after 3 s without a 200 ACK (or at once
after a non-200 one), at most 3 times; each event goes to one live connection, taking turns.
Messages: ``text``, ``post``, ``interactive``, ``image``, ``file``, ``media`` and ``audio``
are taken, their content checked as the platform documents it (an image or file key must come
from an upload here); ``PUT`` edits a text or post (20 times at most: then code 230075, a code
we chose), ``PATCH`` updates a card (30 KB at most); anything else is 230001 "invalid content".
The ACK of an event may carry the bot's answer (base64 JSON in ``data``, as lark-oapi sends a
card action's toast or card): it is recorded as a ``card_answer``. A reply or send with the ``uuid``
of one made within the hour makes no new message: it answers with that one (the platform
documents the one message, not its answer).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import secrets
import time
from collections import deque
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
from ..platforms.lark import _frames as fr
from ..platforms.lark._connector import LongConnection
from ..platforms.lark._send_policy import MAX_EDITS
from ._admin import UserVerbs, handle_admin
from ._http import HandlerTransport, json_response, serve_http
from ._record import Activity, MediaRecord, Record
from ._ws import GONE, Abort, Connection, memory_websocket

IN_MEMORY_HOST: Final = "lark-emulator.invalid"  # never resolves: nothing leaves
SERVICE_ID: Final = 7
ACK_DEADLINE: Final = 3.0  # seconds (docs/protocols/lark.md#events-fragments-and-acks)
MAX_PUSHES: Final = 4  # the first push and three re-pushes
INVALID_CONTENT: Final = 230001
NOT_FOUND: Final = 230002
EDIT_LIMIT: Final = 230075  # our choice: the platform's code for a 21st edit is unconfirmed
UUID_WINDOW: Final = 3600.0  # seconds a send's uuid sends no second message (docs/lark.md)
CARD_BYTES: Final = 30 * 1024  # a card or post body (the platform's PATCH page, docs/lark.md)
TEXT_BYTES: Final = 150 * 1024
MEDIA_TYPES: Final = {
    "image": "image_key",
    "file": "file_key",
    "media": "file_key",
    "audio": "file_key",
}


class _Invalid(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


@final
@attrs.frozen
class LarkSent:
    """A message the bot sent (a reply or a send); ``text`` as first sent."""

    kind: Literal["reply", "send"]
    chat: str
    text: str
    """For a text message its text; for a post or card, empty (see ``content``)."""
    message_id: str
    reply_to: str | None
    msg_type: str = "text"
    content: Mapping[str, Any] = attrs.field(factory=dict)
    """The message's content as first sent (a card's JSON, an image key...)."""


@attrs.define
class _Stored:
    """A message as the emulated server keeps it (the bot's and the users')."""

    message_id: str
    msg_type: str
    content: dict[str, Any]
    chat: str
    sender: str
    sender_type: str
    created: int
    updated: int
    edits: int = 0
    parent: str | None = None


@attrs.define
class _Pending:
    event_id: str
    message_id: str
    payload: bytes
    pushes: int = 0
    due: float = 0.0


@final
class LarkEmulator(UserVerbs):
    """A fake Lark for one app; start with ``await nursery.start(emu.run)`` (in memory) or
    ``emu.serve`` (loopback); ``connector()`` builds a wired :class:`LongConnection`. It is an
    :class:`~trio_chatbridge.testing.Emulator`: the shared verbs, in Python and over HTTP."""

    platform = "lark"
    SETTINGS: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "ping_interval": (int,),
        "pong_config": (dict, type(None)),
        "silent": (bool,),
        "fragment_size": (int,),
        "connection_limit": (int,),
    }

    def __init__(
        self,
        *,
        app_id: str = "cli_emulator",
        app_secret: str = "emulator-secret",
        bot_open_id: str = "ou_bot",
        connection_limit: int = 50,
        ping_interval: int = 120,
        fragment_size: int = 0,
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.bot_open_id = bot_open_id
        self.connection_limit = connection_limit
        self.ping_interval = ping_interval
        self.fragment_size = fragment_size
        """Split event payloads into fragments of this many bytes (0: never)."""
        self.pong_config: dict[str, int] | None = None
        """A ClientConfig to send in pongs (applied live by the client)."""
        self._silent = False
        self.ack_delay: float = 0.0
        """Seconds before the message API answers (a distant server; benchmarks set it)."""
        self.http_base: str = f"http://{IN_MEMORY_HOST}"
        self.ws_base = f"ws://{IN_MEMORY_HOST}"
        self.sent: Record[LarkSent] = Record()
        self.texts: dict[str, str] = {}
        """Current text of every message the bot sent (edits applied)."""
        self.edits: dict[str, int] = {}
        self.activity: Record[Activity] = Record()
        """Everything the bot did, as ``GET {admin_url}/sent`` lists it."""
        self.messages: dict[str, _Stored] = {}
        """Every message by id, the users' and the bot's (``GET`` message answers from it)."""
        self.media: dict[str, tuple[MediaRecord, bytes]] = {}
        """Uploaded images and files by key: what was recorded, and the bytes."""
        self.acks: list[int] = []
        """The ``code`` of every ACK, in order."""
        self.pings: int = 0
        self.token_fetches: int = 0
        self.connections: int = 0
        self._live: list[Connection] = []
        self._turn = itertools.count()
        self._pending: dict[str, _Pending] = {}
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._ids = itertools.count(1)
        self._faults: dict[str, deque[httpx.Response]] = {}
        self._refusals: deque[tuple[int, bytes]] = deque()
        self._token = f"t-{secrets.token_hex(6)}"
        self._uuids: dict[str, tuple[float, str]] = {}  # a send's uuid: when, and its message

    @property
    def silent(self) -> bool:
        """True: no pongs and no pushes (a half-open connection)."""
        return self._silent

    @silent.setter
    def silent(self, value: bool) -> None:
        self._silent = value
        self._wake.set()

    # -- running ------------------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[LarkEmulator] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the emulator's tasks (in-memory connections, re-pushes) until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._redeliver)
            task_status.started(self)
            await trio.sleep_forever()

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[LarkEmulator] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the WebSocket and the HTTP side (discovery, open API, admin) on loopback.

        Runs until cancelled; cancelled, it closes its listeners and every connection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._redeliver)
            server = await nursery.start(serve_websocket, self._accept_loopback, host, port, None)
            self.ws_base = f"ws://{host}:{server.port}"
            self.http_base = await nursery.start(serve_http, self.handle_http, host, 0)
            task_status.started(self)

    def describe(self) -> dict[str, Any]:
        """What a client needs (the JSON line ``emulate lark`` prints)."""
        return {
            "platform": "lark",
            "domain": self.http_base,
            "app_id": self.app_id,
            "app_secret": self.app_secret,
            "bot_open_id": self.bot_open_id,
            "admin_url": self.http_base + "/admin",
        }

    def connector(self, **options: Any) -> LongConnection:
        """A long-connection connector for this emulator (in memory unless serving)."""
        if self.http_base.startswith(f"http://{IN_MEMORY_HOST}"):
            options.setdefault("transport", HandlerTransport(self.handle_http))
            options.setdefault("open_websocket", self.open_websocket)
        options.setdefault("app_secret", self.app_secret)
        return LongConnection(app_id=self.app_id, domain=self.http_base, **options)

    def open_websocket(self, url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
        """A WebSocket to this emulator over in-memory streams (the connector's hook)."""
        if self._nursery is None:
            raise RuntimeError("start the emulator first: await nursery.start(emulator.run)")
        resource = httpx.URL(url).raw_path.decode()
        return memory_websocket(
            self._nursery, self._accept, IN_MEMORY_HOST, resource, fr.MAX_MESSAGE_BYTES
        )

    async def _accept_loopback(self, request: WebSocketRequest) -> None:
        with suppress(*GONE):  # a client that leaves during the handshake
            await self._accept(request, None)

    async def _accept(self, request: WebSocketRequest, abort: Abort | None) -> None:
        if self._refusals:
            status, body = self._refusals.popleft()
            await request.reject(status, body=body)
            return
        if len(self._live) >= self.connection_limit:
            await request.reject(
                514,
                extra_headers=[
                    (b"Handshake-Status", b"514"),
                    (b"Handshake-Msg", b"exceed conn limit"),
                    (b"Handshake-Autherrcode", b"1000040350"),
                ],
            )
            return
        ws = await request.accept()
        conn = Connection(ws, abort or ws.aclose)
        self._live.append(conn)
        self.connections += 1
        self._wake.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.write)
                try:
                    while True:
                        self._on_frame(conn, await ws.get_message())
                except GONE:
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._live.remove(conn)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    def _on_frame(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, str):
            return
        try:
            frame = fr.decode(data)
        except Exception:
            return
        if frame.method == fr.CONTROL and frame.header("type") == "ping":
            self.pings += 1
            if not self.silent:
                payload = json.dumps(self.pong_config).encode() if self.pong_config else None
                pong = fr.Frame(service=SERVICE_ID, headers=(("type", "pong"),), payload=payload)
                conn.push(fr.encode(pong))
            return
        if frame.method == fr.DATA:
            try:
                ack = json.loads(frame.payload or b"{}")
                code = int(ack.get("code", 0))
            except (ValueError, AttributeError, TypeError):
                ack, code = {}, 0
            self.acks.append(code)
            self._card_answer(frame, ack)
            pending = self._pending.get(frame.header("message_id") or "")
            if pending is not None:
                if code == 200:
                    del self._pending[pending.message_id]
                else:
                    pending.due = trio.current_time()  # a failed ACK: re-push now
                    self._wake.set()

    def _card_answer(self, frame: fr.Frame, ack: Any) -> None:
        """Record what an ACK answers an event with (a card action's toast or new card)."""
        data = ack.get("data") if isinstance(ack, dict) else None
        if not isinstance(data, str) or not data:
            return
        try:
            answer = json.loads(base64.b64decode(data))
        except ValueError:
            answer = {"undecodable": data}
        card = answer.get("card") if isinstance(answer, dict) else None
        self.activity.append(
            Activity(
                "lark",
                "card_answer",
                "ack",
                id=frame.header("message_id"),
                card=card if isinstance(card, dict) else None,
                detail=answer if isinstance(answer, dict) else {"answer": answer},
            )
        )

    # -- delivering events --------------------------------------------------------------------

    async def _redeliver(self) -> None:
        """Push what is due: new events, and events whose ACK did not come in time."""
        while True:
            deadline = math.inf
            if self._live and not self._silent:
                now = trio.current_time()
                for pending in list(self._pending.values()):
                    if pending.due <= now and pending.pushes < MAX_PUSHES:
                        self._push(pending)
                due = [p.due for p in self._pending.values() if p.pushes < MAX_PUSHES]
                deadline = min(due, default=math.inf)
            self._wake = trio.Event()
            with trio.move_on_at(deadline):
                await self._wake.wait()

    def _push(self, pending: _Pending) -> None:
        conn = self._live[next(self._turn) % len(self._live)]
        pending.pushes += 1
        pending.due = trio.current_time() + ACK_DEADLINE
        data = pending.payload
        size = self.fragment_size or len(data) or 1
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for index, chunk in enumerate(chunks):
            frame = fr.Frame(
                seq_id=next(self._ids),
                log_id=next(self._ids),
                service=SERVICE_ID,
                method=fr.DATA,
                headers=(
                    ("type", "event"),
                    ("message_id", pending.message_id),
                    ("sum", str(len(chunks))),
                    ("seq", str(index)),
                    ("trace_id", secrets.token_hex(4)),
                    ("timestamp", str(int(time.time() * 1000))),
                ),
                payload=chunk,
            )
            conn.push(fr.encode(frame))

    def push_event(self, event: Mapping[str, Any]) -> str:
        """Deliver any event envelope (``{"schema": "2.0", "header": {...}, "event": {...}}``,
        re-pushed until ACKed with 200; a card action is ``card.action.trigger``); returns the
        id of the frame that carries it (its ACK's ``message_id`` header)."""
        frame_id = f"frame-{next(self._ids)}"
        header = get_object(event, "header")
        self._keep_message(event)
        self._pending[frame_id] = _Pending(
            str(header.get("event_id", "")), frame_id, json.dumps(event).encode()
        )
        self._wake.set()
        return frame_id

    def _keep_message(self, envelope: Mapping[str, Any]) -> None:
        """Keep a pushed user message, so that replies to it and ``GET`` find it."""
        message = get_object(get_object(envelope, "event"), "message")
        message_id = get_str(message, "message_id")
        if not message_id or message_id in self.messages:
            return
        try:
            content = json.loads(get_str(message, "content") or "{}")
        except ValueError:
            content = {}
        sender = get_object(get_object(get_object(envelope, "event"), "sender"), "sender_id")
        now = int(time.time() * 1000)
        self.messages[message_id] = _Stored(
            message_id,
            get_str(message, "message_type") or "text",
            content if isinstance(content, dict) else {},
            get_str(message, "chat_id") or "",
            get_str(sender, "open_id") or "",
            "user",
            now,
            now,
        )

    def push_raw(self, data: bytes | str) -> None:
        """Send every live connection these bytes (a binary frame) or text (a text frame)."""
        for conn in self._live:
            conn.push(data)

    def user_says(
        self,
        user: str,
        text: str,
        *,
        chat: str | None = None,
        mention_bot: bool = True,
        quote: str | None = None,
    ) -> str:
        """``user`` sends ``text`` (in group ``chat``, @-mentioning the bot unless told not to;
        replying to an earlier message of the bot's that reads ``quote``); returns the IM
        message id."""
        mentions: list[dict[str, Any]] = []
        if chat and mention_bot:
            text = "@_user_1 " + text
            mentions.append({"key": "@_user_1", "id": {"open_id": self.bot_open_id}, "name": "Bot"})
        extra: dict[str, Any] = {"mentions": mentions}
        if quote is not None:
            parent = f"om_bot_{next(self._ids)}"
            now = int(time.time() * 1000)
            self.messages[parent] = _Stored(
                parent,
                "text",
                {"text": quote},
                chat or f"oc_p2p_{user}",
                self.app_id,
                "app",
                now,
                now,
            )
            extra.update(parent_id=parent, root_id=parent)
        return self._user_message(user, chat, "text", {"text": text}, extra)

    def user_sends_media(
        self, user: str, data: bytes, *, kind: str = "image", filename: str = "file.bin"
    ) -> str:
        """``user`` sends an image or a file (kept here under a fresh key, as an upload of
        the user's); returns the IM message id."""
        if kind not in ("image", "file"):
            raise ValueError(f"this emulator's users send an image or a file, not {kind!r}")
        key = f"{'img' if kind == 'image' else 'file'}_v3_user_{next(self._ids):04d}"
        digest = hashlib.sha256(data).hexdigest()
        self.media[key] = (MediaRecord(key, kind, len(data), digest, filename), data)
        content = (
            {"image_key": key} if kind == "image" else {"file_key": key, "file_name": filename}
        )
        return self._user_message(user, None, kind, content, {})

    def _user_message(
        self,
        user: str,
        chat: str | None,
        message_type: str,
        content: Mapping[str, Any],
        extra: Mapping[str, Any],
    ) -> str:
        n = next(self._ids)
        message_id = f"om_{n:08d}"
        envelope = {
            "schema": "2.0",
            "header": {
                "event_id": f"ev_{n}",
                "event_type": "im.message.receive_v1",
                "create_time": str(int(time.time() * 1000)),
                "app_id": self.app_id,
                "tenant_key": "tenant",
            },
            "event": {
                "sender": {"sender_id": {"open_id": user}, "sender_type": "user"},
                "message": {
                    "message_id": message_id,
                    "chat_id": chat or f"oc_p2p_{user}",
                    "chat_type": "group" if chat else "p2p",
                    "message_type": message_type,
                    "content": json.dumps(content),
                    "create_time": str(int(time.time() * 1000)),
                    **extra,
                },
            },
        }
        self.push_event(envelope)
        return message_id

    def say_media(
        self, user: str, data: bytes, *, kind: str = "image", filename: str = "file.bin"
    ) -> str:
        """The shared verb: :meth:`user_sends_media`."""
        return self.user_sends_media(user, data, kind=kind, filename=filename)

    def enter(self, user: str) -> str:
        """``user`` opens a direct chat with the bot
        (``im.chat.access_event.bot_p2p_chat_entered_v1``, delivered to ``on_event``)."""
        n = next(self._ids)
        return self.push_event(
            {
                "schema": "2.0",
                "header": {
                    "event_id": f"ev_{n}",
                    "event_type": "im.chat.access_event.bot_p2p_chat_entered_v1",
                    "create_time": str(int(time.time() * 1000)),
                    "app_id": self.app_id,
                    "tenant_key": "tenant",
                },
                "event": {"chat_id": f"oc_p2p_{user}", "operator_id": {"open_id": user}},
            }
        )

    async def drop_connection(self) -> None:
        """The shared verb: :meth:`drop_connections` (cancelled: as that says)."""
        await self.drop_connections()

    def fail_next(self, what: str, code: int, times: int = 1) -> None:
        """The next ``times`` calls whose path contains ``what`` answer error ``code``: 429
        is HTTP 429 with code 99991400 (the rate limit), another HTTP status is that status,
        anything else HTTP 400 with that code."""
        if code == 429:
            self.fail(
                what, 429, {"code": 99991400, "msg": "request trigger frequency limit"}, times
            )
        else:
            status = code if 400 <= code < 600 else 400
            self.fail(what, status, {"code": code, "msg": "injected"}, times)

    async def next_sent(self) -> LarkSent:
        """The next reply or send the bot made that this method has not returned yet (waits).

        Cancelled, nothing is consumed: the next call returns it."""
        return await self.sent.next()

    async def drop_connections(self) -> None:
        """Cut every live socket without a closing handshake (a network fault).

        Cancelled, the sockets not cut yet stay up."""
        for conn in list(self._live):
            with trio.move_on_after(1):
                await conn.abort()

    def fail(
        self,
        path_part: str,
        status: int,
        body: dict[str, Any] | bytes,
        times: int = 1,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` HTTP calls whose path contains ``path_part`` with this:
        ``body`` as JSON, or as it is when bytes (garbage, a proxy's page), with ``headers``
        (``Retry-After``, say)."""
        for _ in range(times):
            if isinstance(body, bytes):
                answer = httpx.Response(status, content=body)
            else:
                answer = json_response(body, status)
            answer.headers.update(headers or {})
            self._faults.setdefault(path_part, deque()).append(answer)

    def refuse_connections(self, status: int, body: bytes = b"", times: int = 1) -> None:
        """Refuse the next ``times`` WebSocket upgrades with ``status`` and ``body`` (a
        gateway's refusal: no handshake headers, the reason in the body)."""
        self._refusals.extend([(status, body)] * times)

    def expire_token(self) -> None:
        """The current tenant token stops working (the client must fetch a new one)."""
        self._token = f"t-{secrets.token_hex(6)}"

    # -- HTTP -------------------------------------------------------------------------------

    async def handle_http(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request: discovery, the open API, or the admin API.

        Cancelled, the request goes unanswered; what it recorded stays."""
        path = request.url.path
        for part, queue in self._faults.items():
            if part in path and queue:
                return queue.popleft()
        if path in ("/open-apis/im/v1/images", "/open-apis/im/v1/files"):
            if request.headers.get("authorization") != f"Bearer {self._token}":
                return json_response({"code": 99991663, "msg": "token expired"}, 400)
            return self._upload(request, path)
        try:
            body: Any = json.loads(request.content) if request.content else {}
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
            body = None  # the open API refuses it; the rest reads it as empty
        fields = body if isinstance(body, dict) else {}
        if path == "/callback/ws/endpoint":
            if fields.get("AppID") != self.app_id or fields.get("AppSecret") != self.app_secret:
                return json_response({"code": 10003, "msg": "invalid app_id or app_secret"})
            url = f"{self.ws_base}/ws?device_id={secrets.token_hex(4)}&service_id={SERVICE_ID}"
            config = {
                "PingInterval": self.ping_interval,
                "ReconnectCount": -1,
                "ReconnectInterval": 120,
                "ReconnectNonce": 30,
            }
            return json_response(
                {"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": config}}
            )
        if path == "/open-apis/auth/v3/tenant_access_token/internal":
            if fields.get("app_id") != self.app_id or fields.get("app_secret") != self.app_secret:
                return json_response({"code": 10014, "msg": "app secret invalid"})
            self.token_fetches += 1
            return json_response(
                {"code": 0, "msg": "ok", "tenant_access_token": self._token, "expire": 7200}
            )
        if path.startswith("/admin"):
            return await handle_admin(self, request)
        if request.headers.get("authorization") != f"Bearer {self._token}":
            return json_response({"code": 99991663, "msg": "token expired"}, 400)
        if path == "/open-apis/bot/v3/info":
            return json_response({"code": 0, "msg": "ok", "bot": {"open_id": self.bot_open_id}})
        if path.startswith("/open-apis/im/v1/messages"):
            if self.ack_delay > 0:
                await trio.sleep(self.ack_delay)
            return self._messages(request, path, body)
        return json_response({"code": 404, "msg": "not emulated"}, 404)

    def _messages(self, request: httpx.Request, path: str, body: Any) -> httpx.Response:
        parts = path.removeprefix("/open-apis/im/v1/messages").strip("/").split("/")
        try:
            if request.method == "GET" and len(parts) == 1 and parts[0]:
                return self._get_message(parts[0])
            if not isinstance(body, dict):
                raise _Invalid(INVALID_CONTENT, "body is not a JSON object")
            if request.method in ("PUT", "PATCH") and len(parts) == 1 and parts[0]:
                return self._edit(request.method, parts[0], body)
            if request.method == "POST" and len(parts) == 2 and parts[1] == "reply":
                parent = self.messages.get(parts[0])
                if parent is None:
                    raise _Invalid(NOT_FOUND, "message not found")
                return self._new_message("reply", parent.chat, body, parts[0])
            if request.method == "POST" and parts == [""]:
                if not request.url.params.get("receive_id_type"):
                    raise _Invalid(99992402, "field validation failed: receive_id_type")
                return self._new_message("send", str(body.get("receive_id", "")), body, None)
        except _Invalid as exc:
            return json_response({"code": exc.code, "msg": exc.msg}, exc.status)
        return json_response({"code": NOT_FOUND, "msg": "not emulated"}, 400)

    def _content(self, msg_type: Any, raw: Any) -> dict[str, Any]:
        """The content of a message, checked for its type as the platform does."""
        try:
            content = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            content = None
        if not isinstance(content, dict) or not isinstance(msg_type, str):
            raise _Invalid(INVALID_CONTENT, "invalid content: not a JSON object string")
        limit = TEXT_BYTES if msg_type == "text" else CARD_BYTES
        if len(raw.encode()) > limit:
            raise _Invalid(INVALID_CONTENT, f"content over {limit} bytes")
        if msg_type == "text" and isinstance(content.get("text"), str):
            return content
        if (
            msg_type == "post"
            and content
            and all(
                isinstance(v, dict) and isinstance(v.get("content"), list) for v in content.values()
            )
        ):
            return content
        if msg_type == "interactive" and (
            isinstance(content.get("elements"), list)
            or isinstance(content.get("body"), dict)
            or content.get("type") == "template"
        ):
            return content
        key_name = MEDIA_TYPES.get(msg_type)
        if key_name is not None:
            if content.get(key_name) not in self.media:
                raise _Invalid(INVALID_CONTENT, f"invalid {key_name}")
            return content
        raise _Invalid(INVALID_CONTENT, f"invalid content for msg_type {msg_type!r}")

    def _new_message(
        self, kind: Literal["reply", "send"], chat: str, body: Mapping[str, Any], parent: str | None
    ) -> httpx.Response:
        """A new message, or, for a ``uuid`` sent within the hour before, the message it sent
        (the platform sends one message per ``uuid`` an hour)."""
        uuid = body.get("uuid")
        if isinstance(uuid, str) and uuid:
            sent_at, sent_id = self._uuids.get(uuid, (-math.inf, ""))
            if trio.current_time() - sent_at < UUID_WINDOW:
                answer = {"code": 0, "msg": "ok", "data": self._item(self.messages[sent_id])}
                return json_response(answer)
        msg_type = str(body.get("msg_type"))
        content = self._content(msg_type, body.get("content"))
        new_id = f"om_bot_{next(self._ids)}"
        if isinstance(uuid, str) and uuid:
            self._uuids[uuid] = (trio.current_time(), new_id)
        now = int(time.time() * 1000)
        self.messages[new_id] = _Stored(
            new_id, msg_type, content, chat, self.app_id, "app", now, now, parent=parent
        )
        text = str(content.get("text", "")) if msg_type == "text" else ""
        self.texts[new_id] = text
        self.sent.append(LarkSent(kind, chat, text, new_id, parent, msg_type, content))
        self.activity.append(
            Activity(
                "lark",
                self._kind(msg_type, content),
                kind,
                chat,
                text=text if msg_type == "text" else _post_text(content, msg_type),
                card=content if msg_type == "interactive" else None,
                media=self._media_of(content, msg_type),
                id=new_id,
                detail={"reply_to": parent} if parent else {},
            )
        )
        return json_response({"code": 0, "msg": "ok", "data": self._item(self.messages[new_id])})

    def _edit(self, method: str, message_id: str, body: Mapping[str, Any]) -> httpx.Response:
        stored = self.messages.get(message_id)
        if stored is None or stored.sender_type != "app":
            raise _Invalid(NOT_FOUND, "message not found or not the bot's")
        if method == "PATCH":
            if stored.msg_type != "interactive":
                raise _Invalid(INVALID_CONTENT, "only a card (interactive) is updated by PATCH")
            content = self._content("interactive", body.get("content"))
        else:
            msg_type = body.get("msg_type")
            if stored.msg_type not in ("text", "post") or msg_type != stored.msg_type:
                raise _Invalid(INVALID_CONTENT, "only a text or post is edited, as the same type")
            if stored.edits >= MAX_EDITS:
                raise _Invalid(EDIT_LIMIT, f"a message can be edited {MAX_EDITS} times")
            content = self._content(msg_type, body.get("content"))
        stored.content = content
        stored.edits += 1
        stored.updated = int(time.time() * 1000)
        if stored.msg_type == "text":
            self.texts[message_id] = str(content.get("text", ""))
        self.edits[message_id] = self.edits.get(message_id, 0) + 1
        self.activity.append(
            Activity(
                "lark",
                self._kind(stored.msg_type, content),
                "patch" if method == "PATCH" else "edit",
                stored.chat,
                text=_post_text(content, stored.msg_type),
                card=content if stored.msg_type == "interactive" else None,
                id=message_id,
                detail={"edits": stored.edits},
            )
        )
        return json_response({"code": 0, "msg": "ok", "data": {}})

    def _get_message(self, message_id: str) -> httpx.Response:
        stored = self.messages.get(message_id)
        if stored is None:
            raise _Invalid(NOT_FOUND, "message not found")
        return json_response({"code": 0, "msg": "ok", "data": {"items": [self._item(stored)]}})

    @staticmethod
    def _item(stored: _Stored) -> dict[str, Any]:
        """A message as the open API shows one."""
        item: dict[str, Any] = {
            "message_id": stored.message_id,
            "msg_type": stored.msg_type,
            "create_time": str(stored.created),
            "update_time": str(stored.updated),
            "updated": stored.edits > 0,
            "deleted": False,
            "chat_id": stored.chat,
            "sender": {
                "id": stored.sender,
                "id_type": "app_id" if stored.sender_type == "app" else "open_id",
                "sender_type": stored.sender_type,
            },
            "body": {"content": json.dumps(stored.content, ensure_ascii=False)},
        }
        if stored.parent:
            item["parent_id"] = item["root_id"] = stored.parent
        return item

    @staticmethod
    def _kind(msg_type: str, content: Mapping[str, Any]) -> str:
        kinds = {"interactive": "card", "media": "video", "audio": "voice"}
        return kinds.get(msg_type, msg_type)

    def _media_of(self, content: Mapping[str, Any], msg_type: str) -> MediaRecord | None:
        key_name = MEDIA_TYPES.get(msg_type)
        key = content.get(key_name) if key_name else None
        return self.media[key][0] if isinstance(key, str) and key in self.media else None

    def _upload(self, request: httpx.Request, path: str) -> httpx.Response:
        """``POST /open-apis/im/v1/images`` and ``/files`` (multipart), as the platform."""
        fields = _multipart(request)
        image = path.endswith("/images")
        field = "image" if image else "file"
        if field not in fields or (
            image and fields.get("image_type", (None, b""))[1] != b"message"
        ):
            return json_response({"code": 234001, "msg": "invalid request"}, 400)
        filename, data = fields[field]
        if not image:
            file_type = fields.get("file_type", (None, b""))[1].decode()
            if file_type not in ("opus", "mp4", "pdf", "doc", "xls", "ppt", "stream"):
                return json_response({"code": 234001, "msg": "invalid file_type"}, 400)
            filename = fields.get("file_name", (None, filename.encode()))[1].decode()
            kind = {"mp4": "video", "opus": "voice"}.get(file_type, "file")
        else:
            kind = "image"
        key = f"{'img' if image else 'file'}_v3_{next(self._ids):04d}_{secrets.token_hex(6)}"
        record = MediaRecord(key, kind, len(data), hashlib.sha256(data).hexdigest(), filename)
        self.media[key] = (record, data)
        self.activity.append(Activity("lark", "upload", "upload", media=record, id=key))
        answer_key = "image_key" if image else "file_key"
        return json_response({"code": 0, "msg": "ok", "data": {answer_key: key}})


def _post_text(content: Mapping[str, Any], msg_type: str) -> str | None:
    """The words of a text or post (the ``text`` of its elements, joined), else None."""
    if msg_type == "text":
        return get_str(content, "text")
    if msg_type != "post":
        return None
    words: list[str] = []
    for locale in content.values():
        for line in get_object({"v": locale}, "v").get("content", []):
            if isinstance(line, list):
                words.extend(e["text"] for e in line if isinstance(e, dict) and "text" in e)
    return " ".join(str(w) for w in words)


def _multipart(request: httpx.Request) -> dict[str, tuple[str, bytes]]:
    """The fields of a multipart/form-data body: name -> (filename or "", bytes)."""
    header = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        header + request.content
    )
    fields: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename() or "", payload)
    return fields

"""An emulator of Lark/Feishu: endpoint discovery, the long connection, the open API.

It follows ``docs/protocols/lark.md``. Choices where the real server is unknown
(``docs/protocols/lark.md#emulator``): an event is re-pushed after 3 s without a 200 ACK (or at once
after a non-200 one), at most 3 times; each event goes to one live connection, taking turns; the
editing endpoint is ``PUT /open-apis/im/v1/messages/{id}`` with a text body.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import time
from collections import deque
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

from ..platforms.lark import _frames as fr
from ..platforms.lark._connector import LongConnection
from ._http import HandlerTransport, json_response, serve_http
from ._record import Record
from ._ws import GONE, Abort, Connection, memory_websocket

IN_MEMORY_HOST: Final = "lark-emulator.invalid"  # never resolves: nothing leaves
SERVICE_ID: Final = 7
ACK_DEADLINE: Final = 3.0  # seconds (docs/protocols/lark.md#events-fragments-and-acks)
MAX_PUSHES: Final = 4  # the first push and three re-pushes


@final
@attrs.frozen
class LarkSent:
    """A message the bot sent (a reply or a send); ``text`` as first sent."""

    kind: Literal["reply", "send"]
    chat: str
    text: str
    message_id: str
    reply_to: str | None


@attrs.define
class _Pending:
    event_id: str
    message_id: str
    payload: bytes
    pushes: int = 0
    due: float = 0.0


class LarkEmulator:
    """A fake Lark for one app; start with ``await nursery.start(emu.run)`` (in memory) or
    ``emu.serve`` (loopback); ``connector()`` builds a wired :class:`LongConnection`."""

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
        self.http_base: str = f"http://{IN_MEMORY_HOST}"
        self.ws_base = f"ws://{IN_MEMORY_HOST}"
        self.sent: Record[LarkSent] = Record()
        self.texts: dict[str, str] = {}
        """Current text of every message the bot sent (edits applied)."""
        self.edits: dict[str, int] = {}
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
        self._faults: dict[str, deque[tuple[int, dict[str, Any]]]] = {}
        self._token = f"t-{secrets.token_hex(6)}"

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
        """Serve the WebSocket and the HTTP side (discovery, open API, admin) on loopback."""
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
            self._nursery, self._accept, IN_MEMORY_HOST, resource, fr.MAX_FRAME_BYTES
        )

    async def _accept_loopback(self, request: WebSocketRequest) -> None:
        with suppress(*GONE):  # a client that leaves during the handshake
            await self._accept(request, None)

    async def _accept(self, request: WebSocketRequest, abort: Abort | None) -> None:
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
                code = int(json.loads(frame.payload or b"{}").get("code", 0))
            except (ValueError, AttributeError):
                code = 0
            self.acks.append(code)
            pending = self._pending.get(frame.header("message_id") or "")
            if pending is not None:
                if code == 200:
                    del self._pending[pending.message_id]
                else:
                    pending.due = trio.current_time()  # a failed ACK: re-push now
                    self._wake.set()

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

    def push_event(self, envelope: dict[str, Any]) -> str:
        """Deliver any event envelope (re-pushed until ACKed with 200); returns its frame id."""
        frame_id = f"frame-{next(self._ids)}"
        header = envelope.get("header", {})
        self._pending[frame_id] = _Pending(
            str(header.get("event_id", "")), frame_id, json.dumps(envelope).encode()
        )
        self._wake.set()
        return frame_id

    def push_raw(self, data: bytes | str) -> None:
        """Send every live connection these bytes (a binary frame) or text (a text frame)."""
        for conn in self._live:
            conn.push(data)

    def user_says(
        self, user: str, text: str, *, chat: str | None = None, mention_bot: bool = True
    ) -> str:
        """``user`` sends ``text`` (in group ``chat``, @-mentioning the bot unless told not to);
        returns the IM message id."""
        n = next(self._ids)
        message_id = f"om_{n:08d}"
        mentions: list[dict[str, Any]] = []
        if chat and mention_bot:
            text = "@_user_1 " + text
            mentions.append({"key": "@_user_1", "id": {"open_id": self.bot_open_id}, "name": "Bot"})
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
                    "message_type": "text",
                    "content": json.dumps({"text": text}),
                    "create_time": str(int(time.time() * 1000)),
                    "mentions": mentions,
                },
            },
        }
        self.push_event(envelope)
        return message_id

    async def next_sent(self) -> LarkSent:
        """The next reply or send the bot made that this method has not returned yet (waits)."""
        return await self.sent.next()

    async def drop_connections(self) -> None:
        """Cut every live socket without a closing handshake (a network fault)."""
        for conn in list(self._live):
            with trio.move_on_after(1):
                await conn.abort()

    def fail(self, path_part: str, status: int, body: dict[str, Any], times: int = 1) -> None:
        """Answer the next ``times`` HTTP calls whose path contains ``path_part`` with this."""
        self._faults.setdefault(path_part, deque()).extend([(status, body)] * times)

    def expire_token(self) -> None:
        """The current tenant token stops working (the client must fetch a new one)."""
        self._token = f"t-{secrets.token_hex(6)}"

    # -- HTTP -------------------------------------------------------------------------------

    async def handle_http(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request: discovery, the open API, or the admin API."""
        path = request.url.path
        for part, queue in self._faults.items():
            if part in path and queue:
                status, body = queue.popleft()
                return json_response(body, status)
        body = json.loads(request.content) if request.content else {}
        if path == "/callback/ws/endpoint":
            if body.get("AppID") != self.app_id or body.get("AppSecret") != self.app_secret:
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
            if body.get("app_id") != self.app_id or body.get("app_secret") != self.app_secret:
                return json_response({"code": 10014, "msg": "app secret invalid"})
            self.token_fetches += 1
            return json_response(
                {"code": 0, "msg": "ok", "tenant_access_token": self._token, "expire": 7200}
            )
        if path.startswith("/admin"):
            return self._admin(request, body)
        if request.headers.get("authorization") != f"Bearer {self._token}":
            return json_response({"code": 99991663, "msg": "token expired"}, 400)
        if path == "/open-apis/bot/v3/info":
            return json_response({"code": 0, "msg": "ok", "bot": {"open_id": self.bot_open_id}})
        if path.startswith("/open-apis/im/v1/messages"):
            return self._messages(request, path, body)
        return json_response({"code": 404, "msg": "not emulated"}, 404)

    def _messages(self, request: httpx.Request, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            text = str(json.loads(body["content"])["text"])
        except (KeyError, ValueError, TypeError):
            return json_response({"code": 230001, "msg": "invalid content"}, 400)
        parts = path.removeprefix("/open-apis/im/v1/messages").strip("/").split("/")
        if request.method == "PUT" and len(parts) == 1 and parts[0] in self.texts:
            self.texts[parts[0]] = text
            self.edits[parts[0]] = self.edits.get(parts[0], 0) + 1
            return json_response({"code": 0, "msg": "ok", "data": {}})
        new_id = f"om_bot_{next(self._ids)}"
        if request.method == "POST" and len(parts) == 2 and parts[1] == "reply":
            sent = LarkSent("reply", "", text, new_id, parts[0])
        elif request.method == "POST" and parts == [""]:
            sent = LarkSent("send", str(body.get("receive_id")), text, new_id, None)
        else:
            return json_response({"code": 230002, "msg": "not emulated"}, 400)
        self.texts[new_id] = text
        self.sent.append(sent)
        return json_response({"code": 0, "msg": "ok", "data": {"message_id": new_id}})

    def _admin(self, request: httpx.Request, body: Any) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/admin/messages":
            said = body if isinstance(body, list) else [body]
            try:
                ids = [
                    self.user_says(str(d["user"]), str(d["text"]), chat=d.get("chat")) for d in said
                ]
            except (KeyError, TypeError):
                return json_response({"error": 'expected {"user": ..., "text": ...}'}, 400)
            return json_response({"ok": True, "message_id": ids[0] if len(ids) == 1 else ids})
        if request.method == "GET" and request.url.path == "/admin/sent":
            return json_response(
                [
                    dict(attrs.asdict(s), text=self.texts.get(s.message_id, s.text))
                    for s in self.sent
                ]
            )
        return httpx.Response(404, content=b"admin: POST /admin/messages or GET /admin/sent")

"""An emulator of the WeChat iLink bot HTTP API and its CDN, in memory or on loopback.

It follows ``docs/protocols/weixin.md``. Choices where the real server is not known
(``docs/protocols/weixin.md#emulator``):

- An empty cursor starts at the first message no poll has acknowledged yet (a new client
  gets what is waiting, not the whole history, and nothing undelivered is lost).
- A cursor is acknowledged when a client presents it on the next poll.
- A request that breaks the sendmessage envelope gets ``ret -2`` with an ``errmsg`` saying why;
  so does an item naming media no upload here produced.
- A stale token gets ``errcode -14``; on ``sendmessage`` the answer also carries ``ret -14``
  (only ``getupdates`` is known to leave ``ret`` out, issue #69 of the reference client): a
  client reading ``ret`` alone, the field sendmessage reports success in, must not take a
  refused send for a delivered one.
- ``sendtyping`` takes only a ``typing_ticket`` that ``getconfig`` gave for that user;
  anything else gets ``ret -2`` "invalid typing_ticket".
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, final
from urllib.parse import parse_qs, urlsplit

import attrs
import httpx
import trio

from .._json import get_object, get_str
from ..platforms.weixin import _crypto
from ..platforms.weixin import _protocol as p
from ..platforms.weixin._connector import LongPoll
from ..platforms.weixin._sending import RateLimit
from ._admin import Unsupported, apply_settings, handle_admin
from ._http import DropConnection, HandlerTransport, json_response, serve_http
from ._record import Activity, MediaRecord, Record

IN_MEMORY_BASE: Final = "http://weixin-emulator.invalid/"  # never resolves: nothing leaves
ITEM_KINDS: Final = {1: "text", 2: "image", 3: "voice", 4: "file", 5: "video"}
MEDIA_ITEM_KINDS: Final = frozenset({"image", "voice", "file", "video"})
UPLOAD_KINDS: Final = {1: "image", 2: "video", 3: "file", 4: "voice"}


@final
@attrs.frozen
class WeixinFault:
    """What an endpoint answers instead of the real thing, once per injection."""

    status: int = 200
    """HTTP status (500, 524...)."""
    body: Any = None
    """A JSON object to answer, or bytes (an HTML error page, broken JSON)."""
    delay: float = 0.0
    """Seconds before answering (a slow server)."""
    drop: bool = False
    """Close the connection without answering."""
    headers: Mapping[str, str] = attrs.field(factory=dict)
    """Headers of an answer whose body is bytes (a 429's ``Retry-After``, say)."""

    @classmethod
    def http(cls, status: int) -> WeixinFault:
        """An HTTP error page with this status (e.g. 502, or Cloudflare's 524)."""
        return cls(status=status, body=f"<html>{status}</html>".encode())

    @classmethod
    def session_expired(cls) -> WeixinFault:
        """errcode -14: the bot's session expired (the connector pauses for an hour)."""
        return cls(body={"errcode": p.SESSION_EXPIRED, "errmsg": "session expired"})

    @classmethod
    def declined(cls, errmsg: str = "prepare failed") -> WeixinFault:
        """ret -2 with the platform's reason (what bursts and stale contexts get)."""
        return cls(body={"ret": -2, "errmsg": errmsg})

    @classmethod
    def malformed(cls) -> WeixinFault:
        """A body cut off in the middle of the JSON."""
        return cls(body=b'{"ret": 0, "msgs": [')

    @classmethod
    def slow(cls, seconds: float) -> WeixinFault:
        """An answer that takes ``seconds`` (on Trio's clock) to come."""
        return cls(delay=seconds)


@final
@attrs.frozen
class WeixinSentMessage:
    """A message the bot sent through ``sendmessage``."""

    to_user: str
    text: str | None
    """The text, for a text item."""
    item: Mapping[str, Any]
    context_token: str | None
    client_id: str | None
    media: MediaRecord | None = None
    """For an image, file, video or voice: the upload it refers to."""


@final
@attrs.frozen
class RecordedRequest:
    """One request the emulator received (for assertions on headers and bodies)."""

    endpoint: str
    headers: Mapping[str, str] = attrs.field(repr=lambda h: repr(_without_credentials(h)))
    """As received; the repr hides the ``authorization`` header's value (the bot token)."""
    body: Any = attrs.field(repr=lambda b: repr(_body_shown(b)))
    """As received; the repr hides a QR login's earlier bot tokens (``local_token_list``)."""
    at: float
    """Trio's clock when it arrived."""
    query: Mapping[str, str] = attrs.field(factory=dict)
    """The query string's parameters."""


def _without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: "***" if k.lower() == "authorization" else v for k, v in headers.items()}


def _body_shown(body: Any) -> Any:
    if isinstance(body, dict) and body.get("local_token_list"):
        return {**body, "local_token_list": ["***"]}
    return body


@attrs.define
class _Upload:
    key: bytes
    filesize: int
    rawsize: int
    md5: str
    media_type: int = 0


@final
class WeixinEmulator:
    """A fake iLink server: users speak through it, the bot's calls are recorded.

    ``connector()`` builds a :class:`~trio_chatbridge.platforms.weixin.LongPoll` wired to it
    (in memory by default; after ``await nursery.start(emu.serve)``, over loopback HTTP). It is
    an :class:`~trio_chatbridge.testing.Emulator`: the shared verbs, in Python and over HTTP.
    """

    platform = "weixin"
    SETTINGS: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "hold": (int, float),
        "page_size": (int,),
        "session_valid": (bool,),
        "reply_quota": (int,),
        "send_answer": (str,),
    }

    def __init__(
        self,
        *,
        token: str = "emulator-bot-token",
        bot_id: str = "emubot@im.bot",
        hold: float = 35.0,
        page_size: int = 100,
        reply_quota: int = p.MAX_REPLIES_PER_MESSAGE,
        send_answer: str = "message_id",
        qr_script: tuple[str, ...] = ("wait", "scaned", "confirmed"),
        wall_clock: Callable[[], float] = time.time,
        record_requests: bool = True,
    ) -> None:
        self.token = token
        self.record_requests = record_requests
        """Keep every request in :attr:`requests` (off for long benchmarks)."""
        self.bot_id = bot_id
        self.hold = hold
        self.page_size = page_size
        self.reply_quota = reply_quota
        self.send_answer = send_answer
        """``"message_id"`` (live behaviour), ``"ret"`` (documented), or ``"empty"``."""
        self.qr_script = qr_script
        self.base_url: str = IN_MEMORY_BASE
        self.session_valid = True
        """False answers every authenticated call with errcode -14 (a stale token)."""
        self.sent: Record[WeixinSentMessage] = Record()
        self.typing: list[tuple[str, int]] = []
        self.notifications: list[str] = []
        self.requests: list[RecordedRequest] = []
        self.uploads: dict[str, bytes] = {}
        """Plaintext of each upload, by its download parameter."""
        self.activity: Record[Activity] = Record()
        """Everything the bot did, as ``GET {admin_url}/sent`` lists it."""
        self.media: dict[str, MediaRecord] = {}
        """Each upload, by its download parameter."""
        self._tickets: dict[str, str] = {}
        self._clock = wall_clock
        self._queue: list[Any] = []
        self._acked = 0
        self._ack_event = trio.Event()
        self._arrived = trio.Event()
        self._faults: dict[str, deque[WeixinFault]] = {}
        self._ids = itertools.count(1)
        self._replies: Counter[str] = Counter()
        self._pending_uploads: dict[str, _Upload] = {}
        self._blobs: dict[str, bytes] = {}
        self._qr_polls = 0
        self._repeat_next_page = False
        self._omit_cursor_next = False
        self._drop_polls = False

    # -- wiring ------------------------------------------------------------------------------

    @property
    def cdn_base_url(self) -> str:
        return self.base_url + "c2c"

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that reaches this emulator in memory."""
        return HandlerTransport(self.handle)

    def connector(self, account: str = "bot", **options: Any) -> LongPoll:
        """A connector for this emulator (in memory unless :meth:`serve` was started)."""
        if self.base_url == IN_MEMORY_BASE:
            options.setdefault("transport", self.transport())
        options.setdefault("rate_limit", RateLimit(burst=1000, per_second=1000.0))
        options.setdefault("token", self.token)
        return LongPoll(
            account=account, base_url=self.base_url, cdn_base_url=self.cdn_base_url, **options
        )

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve over HTTP on loopback until cancelled; ``nursery.start`` returns the base URL."""
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_http, self.handle, host, port)
            self.base_url = url + "/"
            task_status.started(self.base_url)

    def describe(self) -> dict[str, Any]:
        """What a client needs to connect (the JSON line ``emulate weixin`` prints)."""
        return {
            "platform": "weixin",
            "base_url": self.base_url,
            "cdn_base_url": self.cdn_base_url,
            "token": self.token,
            "bot_id": self.bot_id,
            "admin_url": self.base_url + "admin",
        }

    # -- the users' side ---------------------------------------------------------------------

    def push(self, message: Any) -> None:
        """Queue any JSON value for delivery in ``msgs``, exactly as given (malformed ones too)."""
        self._queue.append(message)
        self._arrived.set()
        self._arrived = trio.Event()

    def user_message(
        self, user: str, items: list[dict[str, Any]], *, group: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Build (without queueing) a user's message as getupdates delivers it."""
        n = next(self._ids)
        message: dict[str, Any] = {
            "seq": n,
            "message_id": 7_448_678_501_208_393_000 + n,
            "from_user_id": user,
            "to_user_id": self.bot_id,
            "create_time_ms": int(self._clock() * 1000),
            "session_id": f"session-{user}",
            "message_type": p.MessageType.USER,
            "message_state": p.MessageState.FINISH,
            "item_list": items,
            "context_token": f"ctx-{n}-{hashlib.sha256(user.encode()).hexdigest()[:8]}",
        }
        if group:
            message["group_id"] = group
        message.update(fields)
        return message

    def user_says(
        self, user: str, text: str, *, group: str | None = None, quote: str | None = None
    ) -> dict[str, Any]:
        """``user`` sends ``text`` (in ``group`` if given; quoting the text ``quote``);
        returns the message as delivered."""
        item: dict[str, Any] = {"type": 1, "text_item": {"text": text}}
        if quote is not None:
            quoted = {"type": 1, "text_item": {"text": quote}}
            item["ref_msg"] = {"title": "", "message_item": quoted}
        message = self.user_message(user, [item], group=group)
        self.push(message)
        return message

    def say(
        self, user: str, text: str, *, chat: str | None = None, quote: str | None = None
    ) -> str:
        """The shared verb: :meth:`user_says` (``chat`` is the group); returns the message id."""
        return str(self.user_says(user, text, group=chat, quote=quote)["message_id"])

    def say_media(
        self, user: str, data: bytes, *, kind: str = "image", filename: str = "file.bin"
    ) -> str:
        """The shared verb: :meth:`user_sends_media`; returns the message id."""
        if kind not in ("image", "voice", "file", "video"):
            raise ValueError(f"media kind {kind!r}: image, voice, file or video")
        return str(self.user_sends_media(user, data, kind=kind, file_name=filename)["message_id"])

    def enter(self, user: str) -> str:
        """WeChat has no such event: :class:`Unsupported`."""
        raise Unsupported("WeChat iLink has no event for a user opening the chat")

    def push_event(self, event: Mapping[str, Any]) -> str:
        """The shared verb: :meth:`push` (any message object, as ``getupdates`` delivers it);
        returns its ``message_id`` if it has one."""
        self.push(dict(event))
        return str(event.get("message_id", ""))

    async def drop_connection(self) -> None:
        """End the long poll in progress (or the next one) without an answer, as a dropped
        connection does. It never waits, so a cancellation cannot interrupt it."""
        self._drop_polls = True
        self._arrived.set()
        self._arrived = trio.Event()
        await trio.lowlevel.checkpoint()

    def fail_next(self, what: str, code: int, times: int = 1) -> None:
        """The next ``times`` calls of endpoint ``what`` answer ``code``: -14 as a stale
        session, an HTTP status (>= 100) as an error page, anything else as ``ret``."""
        if code == p.SESSION_EXPIRED:
            fault = WeixinFault.session_expired()
        elif code >= 100:
            fault = WeixinFault.http(code)
        else:
            fault = WeixinFault(body={"ret": code, "errmsg": "injected"})
        self.fail(what, fault, times)

    def configure(self, **settings: Any) -> dict[str, Any]:
        """``hold`` (seconds a poll is held), ``page_size``, ``session_valid``,
        ``reply_quota``, ``send_answer``; returns them all."""
        return apply_settings(self, self.SETTINGS, settings)

    def user_sends_media(
        self,
        user: str,
        data: bytes,
        *,
        kind: str = "image",
        key_encoding: str = "raw",
        file_name: str = "file.bin",
        full_url: str | None = None,
    ) -> dict[str, Any]:
        """``user`` sends media, encrypted on the CDN with a fresh key.

        ``key_encoding``: ``"raw"`` (base64 of the 16 bytes), ``"hex"`` (base64 of the hex
        digits), or ``"image_aeskey"`` (hex in ``image_item.aeskey``, images only).
        """
        key = hashlib.sha256(data + str(next(self._ids)).encode()).digest()[:16]
        param = f"dl-{len(self._blobs) + 1}"
        self._blobs[param] = _crypto.encrypt(key, data)
        media: dict[str, Any] = {"encrypt_query_param": param, "encrypt_type": 1}
        if full_url:
            media["full_url"] = full_url
        if key_encoding == "raw":
            media["aes_key"] = base64.b64encode(key).decode()
        elif key_encoding == "hex":
            media["aes_key"] = base64.b64encode(key.hex().encode()).decode()
        kinds = {"image": 2, "voice": 3, "file": 4, "video": 5}
        body: dict[str, Any] = {"media": media}
        if kind == "image" and key_encoding == "image_aeskey":
            body["aeskey"] = key.hex()
        if kind == "file":
            body.update(file_name=file_name, len=str(len(data)))
        item = {"type": kinds[kind], f"{kind}_item": body}
        message = self.user_message(user, [item])
        self.push(message)
        return message

    # -- the bot's side, and faults ----------------------------------------------------------

    async def next_sent(self) -> WeixinSentMessage:
        """The next message the bot sent that this method has not returned yet (waits).

        Cancelled, nothing is consumed: the next call returns it."""
        return await self.sent.next()

    def fail(self, endpoint: str, fault: WeixinFault, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``endpoint`` with ``fault``.

        Endpoints: ``getupdates``, ``sendmessage``, ``getconfig``, ``sendtyping``,
        ``getuploadurl``, ``notifystart``, ``notifystop``, ``cdn_upload``, ``cdn_download``.
        """
        self._faults.setdefault(endpoint, deque()).extend([fault] * times)

    def calls(self, endpoint: str) -> list[RecordedRequest]:
        """The recorded requests to one endpoint, oldest first."""
        return [r for r in self.requests if r.endpoint == endpoint]

    async def wait_acknowledged(self, count: int) -> None:
        """Wait until a client polled with a cursor past the first ``count`` messages
        (cancelled: nothing changes)."""
        while self._acked < count:
            await self._ack_event.wait()

    def repeat_next_page(self) -> None:
        """Deliver the next page but keep the cursor where it was, so it comes again."""
        self._repeat_next_page = True

    def omit_next_cursor(self) -> None:
        """Answer the next page without ``get_updates_buf``: the client must keep its old one."""
        self._omit_cursor_next = True

    # -- HTTP --------------------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request (the whole emulator is this one function).

        Cancelled (a long poll whose client went away), the request goes unanswered: the
        messages it held stay unacknowledged, and the next poll gets them."""
        path = urlsplit(str(request.url)).path
        endpoint = path.rsplit("/", 1)[-1]
        if "/c2c/" in path:
            endpoint = "cdn_" + endpoint
        if path.startswith("/admin"):
            return await handle_admin(self, request)
        body = _json_body(request)
        if self.record_requests:
            self.requests.append(
                RecordedRequest(
                    endpoint,
                    dict(request.headers),
                    body,
                    trio.current_time(),
                    {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()},
                )
            )
        fault = self._take_fault(endpoint)
        if fault is not None:
            if fault.delay:
                await trio.sleep(fault.delay)
            if fault.drop:
                raise DropConnection
            if fault.body is not None or fault.status != 200:
                content = fault.body
                if isinstance(content, dict):
                    return json_response(content, fault.status)
                return httpx.Response(fault.status, content=content or b"", headers=fault.headers)
        handler = getattr(self, f"_ep_{endpoint}", None)
        if handler is None:
            return httpx.Response(404, content=b"no such endpoint")
        if endpoint not in ("get_bot_qrcode", "get_qrcode_status") and not endpoint.startswith(
            "cdn_"
        ):
            auth = request.headers.get("authorization", "")
            if not self.session_valid or auth != f"Bearer {self.token}":
                expired: dict[str, Any] = {
                    "errcode": p.SESSION_EXPIRED,
                    "errmsg": "session timeout",
                }
                if endpoint == "sendmessage":
                    expired["ret"] = p.SESSION_EXPIRED  # see the module docstring
                return json_response(expired)
        answer: httpx.Response = await handler(request, body)
        return answer

    handle_http = handle
    """The same function under the name the other emulators use."""

    def _take_fault(self, endpoint: str) -> WeixinFault | None:
        queue = self._faults.get(endpoint)
        return queue.popleft() if queue else None

    async def _ep_getupdates(self, request: httpx.Request, body: Any) -> httpx.Response:
        cursor = body.get("get_updates_buf", "") if isinstance(body, dict) else ""
        position = self._decode_cursor(cursor)
        if position > self._acked:
            self._acked = position
            self._ack_event.set()
            self._ack_event = trio.Event()
        if position >= len(self._queue) and not self._drop_polls:
            with trio.move_on_after(self.hold):
                await self._arrived.wait()
        if self._drop_polls:
            self._drop_polls = False
            raise DropConnection
        page = self._queue[position : position + self.page_size]
        next_position = position + len(page)
        if self._repeat_next_page and page:
            self._repeat_next_page = False
            next_position = position
        answer: dict[str, Any] = {
            "ret": 0,
            "msgs": page,
            "longpolling_timeout_ms": int(self.hold * 1000),
        }
        if self._omit_cursor_next and page:
            self._omit_cursor_next = False
        else:
            answer["get_updates_buf"] = _encode_cursor(next_position)
        return json_response(answer)

    def _decode_cursor(self, cursor: str) -> int:
        if not cursor:
            return self._acked
        try:
            return int(base64.b64decode(cursor).decode().split(":", 1)[1])
        except (ValueError, IndexError):
            return self._acked

    async def _ep_sendmessage(self, request: httpx.Request, body: Any) -> httpx.Response:
        msg = body.get("msg") if isinstance(body, dict) else None
        problem = _envelope_problem(msg)
        if problem:
            return json_response({"ret": -2, "errmsg": problem})
        assert isinstance(msg, dict)
        token = msg.get("context_token")
        if token:
            self._replies[token] += 1
            if self._replies[token] > self.reply_quota:
                return json_response({"ret": -2, "errmsg": "unknown error"})
        item = msg["item_list"][0]
        text = item.get("text_item", {}).get("text") if item.get("type") == 1 else None
        kind = ITEM_KINDS.get(item.get("type"), "unknown")
        media = None
        if kind in MEDIA_ITEM_KINDS:
            media_ref = get_object(get_object(item, f"{kind}_item"), "media")
            media = self.media.get(get_str(media_ref, "encrypt_query_param") or "")
            if media is None:
                return json_response({"ret": -2, "errmsg": "media not found"})
        self.sent.append(
            WeixinSentMessage(msg["to_user_id"], text, item, token, msg.get("client_id"), media)
        )
        self.activity.append(
            Activity(
                "weixin",
                kind,
                "sendmessage",
                msg["to_user_id"],
                text=text,
                media=media,
                id=msg.get("client_id"),
                detail={"context_token": token},
            )
        )
        if self.send_answer == "empty":
            return httpx.Response(200, content=b"")
        if self.send_answer == "ret":
            return json_response({"ret": 0, "errmsg": ""})
        return json_response({"message_id": 9_000_000_000 + len(self.sent)})

    async def _ep_getconfig(self, request: httpx.Request, body: Any) -> httpx.Response:
        user = body.get("ilink_user_id") if isinstance(body, dict) else None
        if not user:
            return json_response({"ret": -2, "errmsg": "ilink_user_id required"})
        ticket = self._tickets.setdefault(
            str(user), base64.b64encode(f"ticket-for-{user}-{next(self._ids)}".encode()).decode()
        )
        return json_response({"ret": 0, "errmsg": "", "typing_ticket": ticket})

    async def _ep_sendtyping(self, request: httpx.Request, body: Any) -> httpx.Response:
        fields = body if isinstance(body, dict) else {}
        user, ticket = str(fields.get("ilink_user_id", "")), fields.get("typing_ticket")
        if not ticket or self._tickets.get(user) != ticket:
            return json_response({"ret": -2, "errmsg": "invalid typing_ticket"})
        status = int(fields.get("status", 0))
        self.typing.append((user, status))
        self.activity.append(
            Activity("weixin", "typing", "sendtyping", user, detail={"status": status})
        )
        return json_response({"ret": 0, "errmsg": ""})

    async def _ep_notifystart(self, request: httpx.Request, body: Any) -> httpx.Response:
        return self._notify("start")

    async def _ep_notifystop(self, request: httpx.Request, body: Any) -> httpx.Response:
        return self._notify("stop")

    def _notify(self, what: str) -> httpx.Response:
        self.notifications.append(what)
        self.activity.append(Activity("weixin", "notify", f"notify{what}", detail={"what": what}))
        return json_response({"ret": 0, "errmsg": ""})

    async def _ep_getuploadurl(self, request: httpx.Request, body: Any) -> httpx.Response:
        filekey = str(body.get("filekey", ""))
        self._pending_uploads[filekey] = _Upload(
            bytes.fromhex(body.get("aeskey", "")),
            int(body.get("filesize", -1)),
            int(body.get("rawsize", -1)),
            str(body.get("rawfilemd5", "")),
            int(body.get("media_type", 0)),
        )
        param = base64.b64encode(json.dumps({"filekey": filekey}).encode()).decode()
        return json_response({"upload_param": param, "thumb_upload_param": ""})

    async def _ep_cdn_upload(self, request: httpx.Request, body: Any) -> httpx.Response:
        query = parse_qs(urlsplit(str(request.url)).query)
        upload = self._pending_uploads.pop(query.get("filekey", [""])[0], None)
        if upload is None:
            return httpx.Response(400, headers={"x-error-message": "unknown filekey"})
        data = request.content
        if len(data) != upload.filesize:
            return httpx.Response(400, headers={"x-error-message": "filesize mismatch"})
        plain = _crypto.decrypt(upload.key, data)
        if len(plain) != upload.rawsize or hashlib.md5(plain).hexdigest() != upload.md5:
            return httpx.Response(400, headers={"x-error-message": "md5 mismatch"})
        param = f"up-{len(self.uploads) + 1}"
        self.uploads[param] = plain
        self._blobs[param] = data
        kind = UPLOAD_KINDS.get(upload.media_type, "file")
        record = MediaRecord(param, kind, len(plain), hashlib.sha256(plain).hexdigest())
        self.media[param] = record
        self.activity.append(Activity("weixin", "upload", "cdn_upload", media=record, id=param))
        return httpx.Response(200, headers={"x-encrypted-param": param})

    async def _ep_cdn_download(self, request: httpx.Request, body: Any) -> httpx.Response:
        query = parse_qs(urlsplit(str(request.url)).query)
        blob = self._blobs.get(query.get("encrypted_query_param", [""])[0])
        if blob is None:
            return httpx.Response(404)
        return httpx.Response(200, content=blob)

    async def _ep_get_bot_qrcode(self, request: httpx.Request, body: Any) -> httpx.Response:
        self._qr_polls = 0
        return json_response(
            {"qrcode": "emulator-qr", "qrcode_img_content": self.base_url + "qr/emulator-qr"}
        )

    async def _ep_get_qrcode_status(self, request: httpx.Request, body: Any) -> httpx.Response:
        status = self.qr_script[min(self._qr_polls, len(self.qr_script) - 1)]
        self._qr_polls += 1
        answer: dict[str, Any] = {"status": status}
        if status == "confirmed":
            answer.update(
                bot_token=self.token,
                ilink_bot_id=self.bot_id,
                baseurl=self.base_url,
                ilink_user_id="owner@im.wechat",
            )
        return json_response(answer)


def _encode_cursor(position: int) -> str:
    return base64.b64encode(f"pos:{position}".encode()).decode()


def _json_body(request: httpx.Request) -> Any:
    if not request.content:
        return {}
    try:
        return json.loads(request.content)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None


def _envelope_problem(msg: Any) -> str | None:
    if not isinstance(msg, dict):
        return "msg required"
    if not msg.get("to_user_id"):
        return "to_user_id required"
    items = msg.get("item_list")
    if not isinstance(items, list) or len(items) != 1:
        return "exactly one item per message"
    if (
        msg.get("message_type") != p.MessageType.BOT
        or msg.get("message_state") != p.MessageState.FINISH
    ):
        return "message_type must be 2 (BOT) and message_state 2 (FINISH)"
    if not msg.get("client_id"):
        return "client_id required"
    return None

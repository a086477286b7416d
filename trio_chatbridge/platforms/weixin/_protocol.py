"""WeChat iLink bot protocol facts: constants, headers, and lenient typed models.

Sources and reasons are in ``docs/protocols/weixin.md`` (sections cited below). Every field is
optional on the wire and enums may grow, so parsing never fails on a missing field or an unknown
value (docs/protocols/weixin.md#lenient-json); only a payload of the wrong shape is a
:class:`ProtocolError`.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Final, final

import attrs

from ..._errors import ProtocolError

DEFAULT_BASE_URL: Final = "https://ilinkai.weixin.qq.com/"
DEFAULT_CDN_BASE_URL: Final = "https://novac2c.cdn.weixin.qq.com/c2c"
# the protocol level our behaviour follows (docs/protocols/weixin.md#client-identification)
CHANNEL_VERSION: Final = "2.4.6"
ILINK_APP_ID: Final = "bot"
BOT_AGENT: Final = "trio_chatbridge/0.1"

# Timeouts, seconds (docs/protocols/weixin.md#timeouts)
DEFAULT_LONG_POLL_TIMEOUT: Final = 35.0
LONG_POLL_TIMEOUT_RANGE: Final = (5.0, 120.0)  # what a server's longpolling_timeout_ms may set
# client waits this much longer than the server holds (docs/protocols/weixin.md#timeouts)
LONG_POLL_MARGIN: Final = 5.0
API_TIMEOUT: Final = 15.0  # sendmessage, getuploadurl
CONFIG_TIMEOUT: Final = 10.0  # getconfig, sendtyping, notify*
QR_POLL_TIMEOUT: Final = 35.0

# The poll loop's retry policy (docs/protocols/weixin.md#retry-policy)
MAX_CONSECUTIVE_FAILURES: Final = 3
RETRY_DELAY: Final = 2.0  # seconds
BACKOFF_DELAY: Final = 30.0  # seconds, after MAX_CONSECUTIVE_FAILURES in a row
SESSION_EXPIRED: Final = -14
SESSION_PAUSE: Final = 3600.0  # seconds (docs/protocols/weixin.md#session-pause)

TEXT_LIMIT: Final = 4000  # characters per outbound text message (docs/protocols/weixin.md#limits)
# the platform refuses more per inbound message (docs/protocols/weixin.md#limits)
MAX_REPLIES_PER_MESSAGE: Final = 10
# seconds between "typing" refreshes (docs/protocols/weixin.md#typing)
TYPING_KEEPALIVE: Final = 5.0
# seconds; refreshed at a random fraction of it (docs/protocols/weixin.md#typing)
CONFIG_CACHE_TTL: Final = 24 * 3600.0
CONFIG_RETRY_INITIAL: Final = 2.0
CONFIG_RETRY_MAX: Final = 3600.0
UPLOAD_ATTEMPTS: Final = 3
PAGE_MAX_BYTES: Final = 8 * 1024 * 1024  # a getupdates answer; other answers: 1 MiB
# the reference client's inbound cap (docs/protocols/weixin.md#limits)
MEDIA_MAX_BYTES: Final = 100 * 1024 * 1024


class MessageType(IntEnum):
    NONE = 0
    USER = 1
    BOT = 2


class MessageState(IntEnum):
    NEW = 0
    GENERATING = 1
    FINISH = 2


class ItemType(IntEnum):
    NONE = 0
    TEXT = 1
    IMAGE = 2
    VOICE = 3
    FILE = 4
    VIDEO = 5
    TOOL_CALL_START = 11
    TOOL_CALL_RESULT = 12


class UploadMediaType(IntEnum):
    IMAGE = 1
    VIDEO = 2
    FILE = 3
    VOICE = 4


class TypingStatus(IntEnum):
    TYPING = 1
    CANCEL = 2


def client_version(version: str = CHANNEL_VERSION) -> str:
    """``iLink-App-ClientVersion``: ``(major<<16)|(minor<<8)|patch``, each 8 bits, as decimal."""
    parts = [int(p) & 0xFF for p in [*version.split("."), "0", "0"][:3]]
    return str((parts[0] << 16) | (parts[1] << 8) | parts[2])


def random_uin() -> str:
    """``X-WECHAT-UIN``: a fresh random uint32, as its decimal string in standard base64."""
    return base64.b64encode(str(secrets.randbits(32)).encode()).decode()


def common_headers(route_tag: str | None = None) -> dict[str, str]:
    """Headers on every request, GET included (docs/protocols/weixin.md#headers)."""
    headers = {"iLink-App-Id": ILINK_APP_ID, "iLink-App-ClientVersion": client_version()}
    if route_tag:
        headers["SKRouteTag"] = route_tag
    return headers


def post_headers(token: str | None, route_tag: str | None = None) -> dict[str, str]:
    """Headers on every POST: JSON, the token type, a random UIN, and the bearer token if any."""
    headers = common_headers(route_tag)
    headers["Content-Type"] = "application/json"
    headers["AuthorizationType"] = "ilink_bot_token"
    headers["X-WECHAT-UIN"] = random_uin()
    if token and token.strip():
        headers["Authorization"] = f"Bearer {token.strip()}"
    return headers


def base_info() -> dict[str, str]:
    """The ``base_info`` object of every authenticated POST body.

    See ``docs/protocols/weixin.md#client-identification``.
    """
    return {"channel_version": CHANNEL_VERSION, "bot_agent": BOT_AGENT}


def normalise_base_url(url: str) -> str:
    """Make sure the base ends in ``/`` so relative endpoints keep its path.

    See ``docs/protocols/weixin.md#base-urls``.
    """
    url = url.strip()
    if not url:
        return DEFAULT_BASE_URL
    if "://" not in url:
        url = "https://" + url
    return url if url.endswith("/") else url + "/"


# -- lenient readers -------------------------------------------------------------------------


# Hot path (every field of every message): exact type checks first, JSON gives exact types.


def read_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if type(value) is int or value is None:
        return value
    if isinstance(value, int):  # bool
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def read_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if type(value) is str or value is None:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


_EMPTY: Mapping[str, Any] = {}


def read_obj(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if type(value) is dict or isinstance(value, Mapping) else _EMPTY


@final
@attrs.frozen
class CDNMedia:
    """Where a piece of media lives on the CDN, and its key."""

    encrypt_query_param: str | None = None
    aes_key: str | None = attrs.field(default=None, repr=False)
    """base64 of either the raw 16-byte key or its 32 hex digits."""
    encrypt_type: int | None = None
    full_url: str | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> CDNMedia | None:
        if not data:
            return None
        return cls(
            read_str(data, "encrypt_query_param"),
            read_str(data, "aes_key"),
            read_int(data, "encrypt_type"),
            read_str(data, "full_url"),
        )

    @property
    def downloadable(self) -> bool:
        return bool(self.encrypt_query_param or self.full_url)


@final
@attrs.frozen
class MessageItem:
    """One item of a message: text, image, voice, file, video, or a kind we do not know."""

    type: int
    text: str | None = None
    media: CDNMedia | None = None
    image_aeskey: str | None = attrs.field(default=None, repr=False)
    """For images: the key as 32 hex digits, preferred over ``media.aes_key``."""
    file_name: str | None = None
    size: int | None = None
    """Plaintext length for files (sent as a string), ciphertext for video."""
    duration: float | None = None
    """Seconds, for voice and video."""
    ref_title: str | None = None
    ref_item: MessageItem | None = None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> MessageItem:
        kind = read_int(data, "type") or 0
        ref = read_obj(data, "ref_msg")
        ref_item = read_obj(ref, "message_item")
        item = cls._parse_body(kind, data)
        if not ref:
            return item
        return attrs.evolve(
            item,
            ref_title=read_str(ref, "title"),
            ref_item=cls.parse(ref_item) if ref_item else None,
        )

    @classmethod
    def _parse_body(cls, kind: int, data: Mapping[str, Any]) -> MessageItem:
        if kind == ItemType.TEXT:
            return cls(kind, text=read_str(read_obj(data, "text_item"), "text"))
        if kind == ItemType.IMAGE:
            image = read_obj(data, "image_item")
            return cls(
                kind,
                media=CDNMedia.parse(read_obj(image, "media")),
                image_aeskey=read_str(image, "aeskey"),
                size=read_int(image, "mid_size"),
            )
        if kind == ItemType.VOICE:
            voice = read_obj(data, "voice_item")
            playtime = read_int(voice, "playtime")
            return cls(
                kind,
                text=read_str(voice, "text"),
                media=CDNMedia.parse(read_obj(voice, "media")),
                duration=None if playtime is None else playtime / 1000,
            )
        if kind == ItemType.FILE:
            file = read_obj(data, "file_item")
            return cls(
                kind,
                media=CDNMedia.parse(read_obj(file, "media")),
                file_name=read_str(file, "file_name"),
                size=read_int(file, "len"),
            )
        if kind == ItemType.VIDEO:
            video = read_obj(data, "video_item")
            length = read_int(video, "play_length")
            return cls(
                kind,
                media=CDNMedia.parse(read_obj(video, "media")),
                size=read_int(video, "video_size"),
                duration=None if length is None else float(length),
            )
        return cls(kind)  # tool calls and kinds added later: kept, not understood


@final
@attrs.frozen
class GetUpdatesResponse:
    """The answer to one long poll (docs/protocols/weixin.md#getupdates)."""

    ret: int | None
    errcode: int | None
    errmsg: str | None
    messages: tuple[Any, ...]
    """Raw message objects: each is parsed on its own, so one bad one spoils nothing."""
    cursor: str | None
    longpolling_timeout_ms: int | None

    @classmethod
    def parse(cls, data: Any) -> GetUpdatesResponse:
        if not isinstance(data, Mapping):
            raise ProtocolError(f"getupdates answered with {type(data).__name__}, not an object")
        msgs = data.get("msgs")
        return cls(
            ret=read_int(data, "ret"),
            errcode=read_int(data, "errcode"),
            errmsg=read_str(data, "errmsg"),
            messages=tuple(msgs) if isinstance(msgs, list) else (),
            # an empty cursor keeps the old one; RS falls back to the deprecated sync_buf
            cursor=read_str(data, "get_updates_buf") or read_str(data, "sync_buf") or None,
            longpolling_timeout_ms=read_int(data, "longpolling_timeout_ms"),
        )

    @classmethod
    def empty(cls) -> GetUpdatesResponse:
        """What a client-side timeout means: nothing new, same cursor.

        See ``docs/protocols/weixin.md#the-poll-loop``.
        """
        return cls(0, None, None, (), None, None)


def error_code(data: Mapping[str, Any]) -> int | None:
    """The non-zero ``ret`` or ``errcode`` of a response, or None when it is a success.

    See ``docs/protocols/weixin.md#errors``.
    """
    for key in ("ret", "errcode"):
        code = read_int(data, key)
        if code:
            return code
    return None

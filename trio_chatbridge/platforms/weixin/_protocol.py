"""WeChat iLink bot protocol, sans-I/O: constants, headers, lenient models, the poll core.

Sources and reasons are in ``docs/protocols/weixin.md`` (sections cited below). Every field is
optional on the wire and enums may grow, so parsing never fails on a missing field or an unknown
value (docs/protocols/weixin.md#lenient-json); only a payload of the wrong shape is a
:class:`ProtocolError`.

:class:`Poller` is the long poll's protocol core: it describes each ``getupdates`` request and
turns each answer's bytes into an event (a page of messages with its cursor and context
tokens, a refusal to retry, or the session pause), keeping the cursor, the server's hold time
and the :class:`SessionGuard`. It does no I/O and reads no clock: the HTTP long-poll driver
(``trio_chatbridge/_longpoll.py``) runs it, passing the time in. This module imports no I/O
library (a test checks).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any, Final, final

import attrs
import msgspec

from ..._errors import PlatformError, ProtocolError, quoted
from ..._fifo import trim
from ..._json import json_object_items
from ..._messages import Message
from ..._poll_events import HTTPRequest, Page, Paused, PollEvent, RetryLater

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

# The poll loop's retry policy (docs/protocols/weixin.md#retry-policy): the driver's Backoff
# waits RETRY_DELAY, and the core's hint makes every third failure in a row wait BACKOFF_DELAY
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
CONTEXT_TOKEN_TTL: Final = 24 * 3600.0
"""Seconds a peer's context token is kept in the store: the longest reported token life, and
the time after the user's last message past which WeChat refuses a reply (docs/weixin.md).
Past it, a send to the peer finds none and says so, and the store has forgotten it."""
REDELIVERY_WINDOW: Final = CONTEXT_TOKEN_TTL
"""Seconds a message may be dated before the newest of its peer and still count as a
redelivery (its context token not taken): the longest reported token life."""
TOKEN_TIMES: Final = 4096
"""Peers whose newest message time the poll remembers (an older redelivery's context token is
not taken); past that, the first seen half are forgotten (see :func:`_fifo.trim`)."""
CONTEXT_TOKEN_PREFIX: Final = "context_token:"  # store key of a peer's latest context token
TOKEN: Final = "context_token"  # a message's reply handle holds its context token by this name
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


CLIENT_VERSION: Final = client_version()
"""``iLink-App-ClientVersion`` of :data:`CHANNEL_VERSION`, computed once (every request has it)."""


def random_uin() -> str:
    """``X-WECHAT-UIN``: a fresh random uint32, as its decimal string in standard base64."""
    return base64.b64encode(str(secrets.randbits(32)).encode()).decode()


def common_headers(route_tag: str | None = None) -> dict[str, str]:
    """Headers on every request, GET included (docs/protocols/weixin.md#headers)."""
    headers = {"iLink-App-Id": ILINK_APP_ID, "iLink-App-ClientVersion": CLIENT_VERSION}
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


def encode_body(body: Mapping[str, Any]) -> bytes:
    """A POST body as iLink takes it: compact JSON, UTF-8, non-ASCII kept as is."""
    return msgspec.json.encode(body)


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


def error_code(data: Mapping[str, Any]) -> int | None:
    """The non-zero ``ret`` or ``errcode`` of a response, or None when it is a success.

    See ``docs/protocols/weixin.md#errors``.
    """
    for key in ("ret", "errcode"):
        code = read_int(data, key)
        if code:
            return code
    return None


# -- errors ----------------------------------------------------------------------------------


class ILinkError(PlatformError):
    """The iLink API answered with an error code (HTTP 200 with ``ret``/``errcode`` != 0)."""

    platform = "weixin"

    def __init__(
        self,
        endpoint: str,
        *,
        ret: int | None = None,
        errcode: int | None = None,
        errmsg: str | None = None,
        hint: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.ret = ret
        self.errcode = errcode
        self.errmsg = errmsg
        said = "None" if errmsg is None else quoted(errmsg)  # (cut: the error keeps it whole)
        detail = f"iLink {endpoint} failed: ret={ret} errcode={errcode} errmsg={said}"
        # the code that matters: ``ret`` if non-zero, else ``errcode``
        super().__init__(f"{detail}. {hint}".strip() if hint else detail, code=ret or errcode)


class SessionExpiredError(ILinkError):
    """errcode/ret -14: the bot token is stale; a new QR login is needed."""


def error_for(endpoint: str, data: Mapping[str, Any]) -> ILinkError | None:
    """The error a response's non-zero ``ret``/``errcode`` means, if any."""
    code = error_code(data)
    if code is None:
        return None
    ret, errcode, errmsg = (
        read_int(data, "ret"),
        read_int(data, "errcode"),
        read_str(data, "errmsg"),
    )
    if code == SESSION_EXPIRED:
        return SessionExpiredError(
            endpoint,
            ret=ret,
            errcode=errcode,
            errmsg=errmsg,
            hint="The bot's session expired (token stale, or bound elsewhere): log in again "
            "with 'python -m trio_chatbridge weixin-login'.",
        )
    return ILinkError(endpoint, ret=ret, errcode=errcode, errmsg=errmsg)


# -- the long poll's core (docs/protocols/weixin.md#the-poll-loop) ---------------------------


class _Answer(msgspec.Struct, gc=False):
    """A ``getupdates`` answer, its messages left as their own bytes.

    See ``docs/protocols/weixin.md#getupdates``. The other fields are read leniently
    afterwards (:func:`read_int`, :func:`read_str`), so they take any JSON value here.
    """

    ret: Any = None
    errcode: Any = None
    errmsg: Any = None
    longpolling_timeout_ms: Any = None
    get_updates_buf: Any = None
    sync_buf: Any = None
    msgs: list[msgspec.Raw] | None = None


_answer: Final = msgspec.json.Decoder(_Answer)
_ANSWER_FIELDS: Final = tuple(name for name in _Answer.__struct_fields__ if name != "msgs")


def read_answer(body: bytes) -> tuple[dict[str, Any], Sequence[Any], bool]:
    """A ``getupdates`` answer's fields, its ``msgs`` (each entry's own bytes), and whether
    every entry is its bytes (False on the rare page read as below).

    One pass of msgspec splits the page without building a dict per message; each entry's
    bytes are copied out (a message's ``raw`` never keeps the page alive). An entry that is
    not UTF-8 fails alone, in the converter. A page msgspec cannot read whole (an entry
    nested too deeply, ``NaN``, a lone surrogate escape, ``msgs`` not an array, or not JSON at
    all) is read as Python's decoder reads it (:func:`json_object_items`): entries are then
    decoded values, an undecodable one replaced by its :class:`ProtocolError`, and a page
    that is bad as a whole raises :class:`ProtocolError`. An empty body is an empty answer.
    """
    if not body.strip():
        return {}, (), True
    if len(body) <= PAGE_MAX_BYTES:
        try:
            answer = _answer.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            pass  # read again below, where each kind of bad input gets its own error
        else:
            data = {name: getattr(answer, name) for name in _ANSWER_FIELDS}
            return data, list(map(bytes, answer.msgs or ())), True
    data = json_object_items(body, "iLink getupdates", "msgs", max_bytes=PAGE_MAX_BYTES)
    entries = data.get("msgs")
    return data, entries if isinstance(entries, list) else (), False


@final
@attrs.define
class SessionGuard:
    """The pause after errcode -14: no poll until it ends, and sends fail fast meanwhile.

    Times are on whatever clock the caller passes as ``now`` (Trio's, in the connector). See
    ``docs/protocols/weixin.md#session-pause``.
    """

    paused_until: float | None = None

    def pause(self, now: float) -> Paused:
        """Start a pause of :data:`SESSION_PAUSE` seconds from ``now``, counted in
        ``session_expired``. During a pause already in force (another call's -14 came first:
        the same expiry), that pause is kept as it is and the event's counter is None."""
        paused = self.paused(now)
        if paused is not None:
            return attrs.evolve(paused, counter=None)
        self.paused_until = now + SESSION_PAUSE
        return self._paused(self.paused_until, SESSION_PAUSE)

    def resume(self) -> None:
        """End the pause now (a new login was found)."""
        self.paused_until = None

    def paused(self, now: float) -> Paused | None:
        """The pause in force at ``now``, if any (a pause that ended is forgotten)."""
        if self.paused_until is None:
            return None
        left = self.paused_until - now
        if left <= 0:
            self.paused_until = None
            return None
        return self._paused(self.paused_until, left)

    @staticmethod
    def _paused(until: float, left: float) -> Paused:
        detail = (
            f"session expired (errcode -14); polling resumes in {left / 60:.0f} min. "
            "The token is stale or the bot was bound elsewhere: run "
            "'python -m trio_chatbridge weixin-login' to log in again"
        )
        return Paused(until, detail, counter="session_expired")


@final
@attrs.define
class Poller:
    """WeChat's ``getupdates`` long poll without I/O: requests out, answers in, events out.

    ``convert`` turns one message into a :class:`Message` (None: not for the agent); it is
    given the entry's own bytes (see :func:`read_answer` for the rare page it is given decoded
    entries instead). A message it refuses, or that could not even be decoded, is skipped
    alone (in :attr:`Page.skipped`), never the page. It must be pure: a page is converted
    in one pass, and again entry by entry when one of its conversions raises. A message's
    reply handle holds its peer (``to_user_id``) and context token as strings, as
    :func:`~._convert.to_message` builds them; the page's context tokens are read from
    there. The cursor moves only in :meth:`commit`, once the driver has made the page
    durable; the server's hold time (``longpolling_timeout_ms``) is adopted from every
    answer, errors included, held to :data:`LONG_POLL_TIMEOUT_RANGE`.
    """

    token: str = attrs.field(repr=False)
    base_url: str = attrs.field(converter=normalise_base_url)
    convert: Callable[[Any], Message | None] = attrs.field(repr=False)
    guard: SessionGuard = attrs.Factory(SessionGuard)
    route_tag: str | None = None
    cursor: str = ""
    hold: float = DEFAULT_LONG_POLL_TIMEOUT
    """Seconds the server holds a poll: each request waits that plus :data:`LONG_POLL_MARGIN`."""
    _newest: dict[str, float] = attrs.field(init=False, factory=dict, repr=False)
    """Per peer, the time of the newest message whose context token a page gave (at most
    :data:`TOKEN_TIMES` peers, the first seen half forgotten past that)."""

    def start(self, cursor: str | None) -> None:
        self.cursor = cursor or ""

    def paused(self, now: float) -> Paused | None:
        return self.guard.paused(now)

    def request(self) -> HTTPRequest:
        body = {"get_updates_buf": self.cursor, "base_info": base_info()}
        return HTTPRequest(
            "iLink getupdates",
            "POST",
            self.base_url + "ilink/bot/getupdates",
            post_headers(self.token, self.route_tag),
            encode_body(body),
            timeout=self.hold + LONG_POLL_MARGIN,
            max_bytes=PAGE_MAX_BYTES,
        )

    def receive(self, body: bytes, now: float) -> PollEvent:
        data, entries, as_bytes = read_answer(body)
        held = read_int(data, "longpolling_timeout_ms")  # milliseconds
        if held:  # held to the range as an integer first: a huge one cannot overflow
            low, high = LONG_POLL_TIMEOUT_RANGE
            self.hold = min(max(held, int(low * 1000)), int(high * 1000)) / 1000
        error = error_for("getupdates", data)
        if isinstance(error, SessionExpiredError):
            return self.guard.pause(now)
        if error is not None:
            return RetryLater(error)
        return self._page(data, entries, as_bytes)

    def _page(self, data: Mapping[str, Any], entries: Sequence[Any], as_bytes: bool) -> Page:
        converted = self._convert_all(entries) if as_bytes else None
        if converted is None:  # a bad entry: each converted alone, so it costs only itself
            messages, skipped, filtered = self._convert_each(entries)
        else:
            # C's loop again: a Message is always true (a record without a length), so
            # filter(None, ...) keeps exactly the messages, dropping the Nones
            messages = list(filter(None, converted))
            skipped, filtered = [], len(converted) - len(messages)
        tokens: dict[str, str | None] = {}
        newest = self._newest
        peer: Any
        token: Any
        for message in messages:
            handle = message.reply_handle
            entries = handle.entries
            if len(entries) == 2 and entries[0][0] == "to_user_id" and entries[1][0] == TOKEN:
                (_, peer), (_, token) = entries  # the handle to_message builds, read in place
            else:
                peer, token = handle.get("to_user_id"), handle.get(TOKEN)
            # The newest wins (replies after a restart use it); a message older than one
            # whose token was taken (a redelivery, docs/protocols/weixin.md#getupdates) gives
            # none: its token may be past its life or its ten replies. One older by more than
            # REDELIVERY_WINDOW counts as new: a message dated wrongly in the future holds
            # the peer's tokens back that long at most.
            if token and peer:
                at = message.timestamp
                last = newest.get(peer)
                if last is None or at >= last or last - at > REDELIVERY_WINDOW:
                    newest[peer] = at
                    tokens[CONTEXT_TOKEN_PREFIX + peer] = token
        trim(newest, TOKEN_TIMES)
        # an empty cursor keeps the old one; RS falls back to the deprecated sync_buf
        cursor = read_str(data, "get_updates_buf") or read_str(data, "sync_buf") or None
        return Page(
            messages=messages,
            skipped=skipped,
            filtered=filtered,
            cursor=None if cursor == self.cursor else cursor,
            values=tokens,
            values_ttl=CONTEXT_TOKEN_TTL,
        )

    def _convert_all(self, entries: Sequence[bytes]) -> list[Message | None] | None:
        """Every entry converted in one pass, the common page (no Python step of ours per
        entry); None if a conversion raises. ``convert`` is pure, so converting the page
        again entry by entry is safe."""
        try:
            return list(map(self.convert, entries))
        except Exception:
            return None

    def _convert_each(
        self, entries: Sequence[Any]
    ) -> tuple[list[Message], list[ProtocolError], int]:
        """Each entry converted alone: the messages, the entries skipped (undecodable, or
        refused by the converter, or a converter's bug: never the page's end), and how many
        were filtered out (not for the agent)."""
        messages: list[Message] = []
        skipped: list[ProtocolError] = []
        filtered = 0
        for n, entry in enumerate(entries):
            if isinstance(entry, ProtocolError):  # undecodable: json_object_items says why
                skipped.append(entry)
                continue
            try:
                message = self.convert(entry)
            except ProtocolError as exc:
                skipped.append(exc)
                continue
            except Exception as exc:  # a converter's bug must not cost the page
                bad = ProtocolError(f"iLink getupdates: msgs[{n}]: {type(exc).__name__}: {exc}")
                bad.__cause__ = exc
                skipped.append(bad)
                continue
            if message is None:
                filtered += 1
            else:
                messages.append(message)
        return messages, skipped, filtered

    def commit(self, page: Page) -> None:
        if page.cursor:
            self.cursor = page.cursor

    def retry_hint(self, failures: int) -> float | None:
        """30 s after every third failure in a row; else nothing (the driver's backoff, 2 s
        for WeChat, holds). See ``docs/protocols/weixin.md#retry-policy``."""
        return BACKOFF_DELAY if failures % MAX_CONSECUTIVE_FAILURES == 0 else None

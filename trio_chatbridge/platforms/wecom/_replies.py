"""What WeCom's replies send next, sans I/O: stream frames, proactive pieces, refusals read.

A reply to a callback is a stream on its ``req_id`` (docs/protocols/wecom.md#stream-replies):
every frame carries the whole text so far, at most :data:`~._protocol.STREAM_LIMIT` bytes of
UTF-8, and the last one says ``finish``. What does not fit, and what a callback can no longer
take, goes as proactive ``markdown`` messages cut at the same limit, never inside a character.
:class:`StreamState` keeps what one stream showed and decides the next frame; :func:`after_refusal`
reads the two errcodes that mean "this callback takes no more" (846605, 846608;
docs/protocols/wecom.md#error-codes). The connector (``_long.py``) only sends what these say.
Nothing here does I/O or reads a clock (the time comes in as ``now``); a test checks that this
module imports neither trio, httpx nor trio_websocket.
"""

from __future__ import annotations

import enum
import secrets
from typing import Any, Final, final

import attrs

from ..._content import Card
from ._protocol import INVALID_REQ_ID, STREAM_EXPIRED, STREAM_LIMIT

MAX_CHARACTER_BYTES: Final = 4  # bytes: the longest UTF-8 encoding of one character


def new_stream_id() -> str:
    """A fresh stream id, in the official SDK's shape."""
    return f"stream_{secrets.token_hex(8)}"


def _cut(data: bytes, start: int, limit: int) -> int:
    """Where the piece of ``data`` from ``start`` ends: at most ``limit`` bytes on, at the
    start of a character (a UTF-8 continuation byte is ``0b10xxxxxx``)."""
    end = start + limit
    if end >= len(data):
        return len(data)
    while data[end] & 0xC0 == 0x80:
        end -= 1
    return end


def utf8_pieces(text: str, limit: int = STREAM_LIMIT) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` bytes of UTF-8 each, never inside a
    character; joined, they are ``text`` (none for an empty text)."""
    if limit < MAX_CHARACTER_BYTES:
        raise ValueError(f"a piece holds at least one character: {MAX_CHARACTER_BYTES} bytes")
    if len(text) * MAX_CHARACTER_BYTES <= limit:  # fits whatever its characters: no encoding
        return [text] if text else []
    data = text.encode()
    pieces, start = [], 0
    while start < len(data):
        end = _cut(data, start, limit)
        pieces.append(data[start:end].decode())
        start = end
    return pieces


def utf8_prefix(text: str, limit: int = STREAM_LIMIT) -> str:
    """The longest prefix of ``text`` whose UTF-8 fits in ``limit`` bytes (whole characters)."""
    if len(text) * MAX_CHARACTER_BYTES <= limit:
        return text
    data = text.encode()
    return data[: _cut(data, 0, limit)].decode()


def stream_body(
    stream_id: str, content: str, *, finish: bool, card: Card | None = None
) -> dict[str, Any]:
    """The body of one ``aibot_respond_msg`` stream frame; ``card`` rides along
    (``stream_with_template_card``)."""
    body: dict[str, Any] = {
        "msgtype": "stream",
        "stream": {"id": stream_id, "finish": finish, "content": content},
    }
    if card is not None:
        body["msgtype"] = "stream_with_template_card"
        body["template_card"] = card.as_dict()
    return body


def markdown_bodies(chat_id: str, text: str) -> list[dict[str, Any]]:
    """The ``aibot_send_msg`` bodies that push ``text`` to a chat: Markdown, in pieces of at
    most :data:`STREAM_LIMIT` bytes, in order."""
    return [
        {"chatid": chat_id, "msgtype": "markdown", "markdown": {"content": piece}}
        for piece in utf8_pieces(text)
    ]


class Then(enum.Enum):
    """What follows a callback's refusal to take (more of) an answer."""

    RAISE = enum.auto()
    """Not a refusal of the callback: the error stands."""
    DONE = enum.auto()
    """846608 for a callback an earlier process received and this one replays: it was
    answered before (the run killed after answering); nothing more is sent."""
    ALL_PROACTIVELY = enum.auto()
    """Nothing of the answer showed, or the req_id is not one the server knows (an old
    connection's): all of it goes proactively, a stream's card first."""
    REST_PROACTIVELY = enum.auto()
    """The stream showed part of the answer before its window closed: the rest goes
    proactively."""


def after_refusal(errcode: int, *, replayed: bool, frames_shown: int = 0) -> Then:
    """What follows an answer refused with ``errcode`` (docs/protocols/wecom.md#error-codes).

    ``replayed``: the callback came to an earlier process (its message replayed from the
    journal); ``frames_shown``: frames of this answer the callback took before.
    """
    if errcode not in (INVALID_REQ_ID, STREAM_EXPIRED):
        return Then.RAISE
    if errcode == STREAM_EXPIRED and replayed and not frames_shown:
        return Then.DONE
    if errcode == INVALID_REQ_ID or not frames_shown:
        return Then.ALL_PROACTIVELY
    return Then.REST_PROACTIVELY


@final
@attrs.define
class StreamState:
    """One reply stream on a callback: what it showed, and what to send next.

    ``req_id`` is the callback's (None: a message without one, which only proactive messages
    can answer); ``finish_by`` is when the stream must be finished, on the connector's clock
    (None: unknown, for a callback an earlier process received).
    """

    req_id: str | None
    finish_by: float | None
    card: Card | None = None
    stream_id: str = attrs.Factory(new_stream_id)
    shown: str = ""
    """The content of the last frame the callback took."""
    frames: int = 0
    """Frames the callback took."""
    finished: bool = False
    """A frame with ``finish`` was sent (or is on its way): the stream takes no more."""

    def too_late(self, now: float) -> bool:
        """Whether the stream may take no more frames at ``now``."""
        return self.finished or (self.finish_by is not None and now >= self.finish_by)

    def update(self, text: str) -> dict[str, Any] | None:
        """The intermediate frame that shows ``text`` (the whole text so far), or None when
        it would show nothing new (or there is no callback to show it on)."""
        content = utf8_prefix(text)
        if content == self.shown or not self.req_id:
            return None
        return self.frame(content, finish=False)

    def finish(self, text: str, now: float) -> dict[str, Any] | int:
        """The final frame for ``text``, or the errcode the callback would refuse it with
        (846605 without a req_id; 846608 once finished or its window is closing)."""
        if not self.req_id:
            return INVALID_REQ_ID
        if self.too_late(now):
            return STREAM_EXPIRED
        return self.frame(utf8_prefix(text), finish=True)

    def finish_now(self, text: str) -> dict[str, Any] | None:
        """The frame that finishes the stream with ``text`` as its window is about to close
        (None without a callback); the stream takes no more after it."""
        self.finished = True
        return self.frame(utf8_prefix(text), finish=True) if self.req_id else None

    def frame(self, content: str, *, finish: bool) -> dict[str, Any]:
        """The body of a frame showing ``content``; the card rides on the first only."""
        card = self.card if self.frames == 0 else None
        return stream_body(self.stream_id, content, finish=finish, card=card)

    def took(self, body: dict[str, Any]) -> None:
        """The callback took the frame ``body``."""
        self.shown = body["stream"]["content"]
        self.frames += 1

    def unshown(self, text: str, then: Then) -> str:
        """What of ``text`` (the whole answer) is still to go proactively after ``then``."""
        if then is Then.DONE:
            return ""
        if then is Then.ALL_PROACTIVELY:
            return text
        return text[len(self.shown) :]

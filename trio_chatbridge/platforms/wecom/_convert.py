"""From WeCom callback bodies to the bridge's :class:`Message`.

A body is decoded straight from its JSON into the typed records below (every field optional, a
field of the wrong type read as missing), then into a :class:`Message` that keeps those bytes
as ``raw``. See ``docs/protocols/wecom.md#message-callbacks``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from ..._errors import ProtocolError
from ..._messages import (
    File,
    Handle,
    Image,
    Media,
    Mention,
    Message,
    Part,
    Quote,
    Text,
    Video,
    Voice,
    shared_chat,
    shared_sender,
)
from ..._ranges import MAX_TIMESTAMP, clamp
from ..._wire import Lenient, payload_bytes

PLATFORM = "wecom"
_LEADING_MENTION = re.compile(r"^\s*@(\S+)\s*")


class _Content(msgspec.Struct, gc=False):
    content: str | None = None


class _Media(msgspec.Struct, gc=False):
    url: str | None = None
    aeskey: str | None = None
    filename: str | None = None


class _From(msgspec.Struct, gc=False):
    userid: str | None = None


class _Item(msgspec.Struct, gc=False):
    """One item of a ``mixed`` message."""

    msgtype: str | None = None
    text: _Content | None = None
    image: _Media | None = None


class _Mixed(msgspec.Struct, gc=False):
    msg_item: list[_Item] | None = None


class _Quoted(msgspec.Struct, gc=False):
    """What a message quotes: a body of its own, whose own quote is not read (one level, no
    recursion a deeply nested body could run out of)."""

    msgtype: str | None = None
    text: _Content | None = None
    voice: _Content | None = None
    image: _Media | None = None
    file: _Media | None = None
    video: _Media | None = None
    mixed: _Mixed | None = None


class _Body(_Quoted, gc=False):
    """An ``aibot_msg_callback`` body (docs/protocols/wecom.md#message-callbacks)."""

    msgid: str | None = None
    chattype: str | None = None
    chatid: str | None = None
    create_time: int | float | None = None
    sender: _From | None = msgspec.field(default=None, name="from")
    quote: _Quoted | None = None


_decoder = Lenient(_Body, "WeCom message callback")


def _media(kind: Literal["image", "file", "video"], data: _Media | None) -> Media:
    if data is None:
        return Media(kind)
    ref = {"url": data.url, "aeskey": data.aeskey}
    return Media(kind, name=data.filename, ref=Handle.of({k: v for k, v in ref.items() if v}))


def _text_parts(text: str, group: bool, bot_name: str | None) -> list[Part]:
    """Group messages start with the bot's @-mention: keep it as a Mention, not as text."""
    parts: list[Part] = []
    if group:
        if bot_name:
            if f"@{bot_name}" in text:
                parts.append(Mention(bot_name, bot_name))
                text = text.replace(f"@{bot_name}", "", 1)
        elif match := _LEADING_MENTION.match(text):
            parts.append(Mention(match.group(1), match.group(1)))
            text = text[match.end() :]
    parts.append(Text(text.strip() if group else text))
    return parts


def _content(data: _Content | None) -> str | None:
    return None if data is None else data.content


def parts_of(body: _Quoted, group: bool, bot_name: str | None) -> list[Part]:
    """The parts of a callback body, or of what it quotes."""
    parts: list[Part] = []
    quote = body.quote if type(body) is _Body else None
    if quote is not None:
        quoted_parts = parts_of(quote, False, None)
        summary = " ".join(p.text for p in quoted_parts if type(p) is Text)
        if summary or quote.msgtype:
            parts.append(Quote(summary or f"[{quote.msgtype}]"))
    if body.msgtype == "mixed":
        if body.mixed is not None:
            parts += _mixed_parts(body.mixed.msg_item or (), group and not parts, bot_name)
    else:
        parts += _single_parts(body, group, bot_name)
    return parts


def _single_parts(body: _Quoted, group: bool, bot_name: str | None) -> list[Part]:
    """The parts of a body of one kind (text, voice, image, file, video; others: none)."""
    msgtype = body.msgtype
    if msgtype == "text":
        return _text_parts(_content(body.text) or "", group, bot_name)
    if msgtype == "voice":
        return [Voice(Media("voice"), transcript=_content(body.voice))]
    if msgtype == "image":
        return [Image(_media("image", body.image))]
    if msgtype == "file":
        return [File(_media("file", body.file))]
    if msgtype == "video":
        return [Video(_media("video", body.video))]
    return []


def _mixed_parts(items: Iterable[_Item], group: bool, bot_name: str | None) -> list[Part]:
    """The parts of a ``mixed`` body: its texts and images in order (the bot's mention is
    stripped from the first part only, when ``group``)."""
    parts: list[Part] = []
    for item in items:
        if item.msgtype == "text":
            parts += _text_parts(_content(item.text) or "", group and not parts, bot_name)
        elif item.msgtype == "image":
            parts.append(Image(_media("image", item.image)))
    return parts


def to_message(
    account: str,
    req_id: str,
    body: bytes | Mapping[str, Any],
    *,
    bot_name: str | None = None,
    handle: Mapping[str, Any] | None = None,
) -> Message:
    """The bridge's message for an ``aibot_msg_callback``; the callback's req_id is the handle
    (with ``handle``'s entries: the connector's note of when it may be answered).

    ``body`` is the callback body's JSON as it came (kept as the message's ``raw``), or the body
    already decoded. Raises :class:`ProtocolError` for a body that is not a JSON object, or one
    without a sender (or, in a group, without its chat).
    """
    data = payload_bytes(body, "a WeCom message callback")
    wire = _decoder.decode(data)
    sender = wire.sender.userid if wire.sender is not None else None
    if not sender:
        raise ProtocolError("message callback without from.userid")
    group = wire.chattype == "group"
    chat_id = wire.chatid if group else sender
    if not chat_id:
        raise ProtocolError("group message callback without chatid")
    return Message(
        platform=PLATFORM,
        account=account,
        id=wire.msgid or req_id,
        chat=shared_chat(chat_id, "group" if group else "direct"),
        sender=shared_sender(sender),
        parts=tuple(parts_of(wire, group, bot_name)),
        timestamp=clamp(wire.create_time, 0.0, MAX_TIMESTAMP, 0.0),
        reply_handle=Handle.of({"req_id": req_id, "chatid": chat_id, **handle})
        if handle
        else Handle((("req_id", req_id), ("chatid", chat_id))),  # both strings: built directly
        raw=data,
    )

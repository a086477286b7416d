"""From ``im.message.receive_v1`` events to the bridge's :class:`Message`.

An event is decoded straight from its JSON into the typed records below (every field optional,
a field of the wrong type read as missing), then into a :class:`Message` that keeps those bytes
as ``raw``; only the message's ``content`` (JSON in a string, small, its shape per type) is read
as plain JSON. See ``docs/protocols/lark.md#message-events``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from ..._errors import ProtocolError
from ..._json import get_str, json_value
from ..._messages import (
    File,
    Handle,
    Image,
    Media,
    Mention,
    Message,
    Part,
    Text,
    Voice,
    shared_chat,
    shared_sender,
)
from ..._wire import Lenient, lone_surrogate, payload_bytes

PLATFORM: Final = "lark"
MESSAGE_EVENT: Final = "im.message.receive_v1"


def _post_text(content: Mapping[str, Any]) -> str:
    """A rich-text post flattened to lines of text (any locale, title first)."""
    body = content
    if "content" not in body:  # {"zh_cn": {...}} or {"en_us": {...}}
        body = next((v for v in content.values() if isinstance(v, Mapping)), {})
    lines = [get_str(body, "title") or ""]
    paragraphs = body.get("content")
    for paragraph in paragraphs if isinstance(paragraphs, list) else ():
        if isinstance(paragraph, list):
            lines.append(
                "".join(
                    str(el.get("text") or el.get("user_name") or "")
                    for el in paragraph
                    if isinstance(el, Mapping)
                )
            )
    return "\n".join(line for line in lines if line)


def _is_millis(text: str) -> bool:
    """Whether ``text`` is a plausible epoch-milliseconds number (ASCII digits, 15 at most)."""
    return len(text) <= 15 and text.isascii() and text.isdigit()


class _Ids(msgspec.Struct, gc=False):
    open_id: str | None = None
    union_id: str | None = None
    user_id: str | None = None


class _Sender(msgspec.Struct, gc=False):
    sender_id: _Ids | None = None
    sender_type: str | None = None


class _Mention(msgspec.Struct, gc=False):
    key: str = ""
    id: _Ids | None = None
    name: str = ""


class _Message(msgspec.Struct, gc=False):
    message_id: str | None = None
    chat_id: str | None = None
    chat_type: str | None = None
    message_type: str | None = None
    content: str | None = None
    """JSON in a string, its shape per ``message_type``."""
    create_time: str | None = None
    """Epoch milliseconds, as a string."""
    mentions: list[_Mention] | None = None


class _Event(msgspec.Struct, gc=False):
    sender: _Sender | None = None
    message: _Message | None = None


class _Header(msgspec.Struct, gc=False):
    event_id: str | None = None
    event_type: str | None = None


class Envelope(msgspec.Struct, gc=False):
    """An event's payload, typed (docs/protocols/lark.md#message-events): what the protocol
    core reads to route an event, and :func:`message_of` reads a message from."""

    header: _Header | None = None
    event: _Event | None = None

    @property
    def event_type(self) -> str | None:
        """The event's type (``im.message.receive_v1``...), if it says."""
        return self.header.event_type if self.header is not None else None

    @property
    def event_id(self) -> str:
        """The event's id (``""`` when it has none)."""
        return (self.header.event_id if self.header is not None else None) or ""


_decoder = Lenient(Envelope, "Lark event")


def envelope_of(data: bytes) -> Envelope:
    """The typed envelope of an event's JSON bytes (every field optional, one of the wrong type
    read as missing); :class:`ProtocolError` for bytes that are no JSON object, and for an
    event whose fields hold a lone surrogate escape (``\\ud800``: no text)."""
    try:
        return _decoder.first(data)  # msgspec refuses lone surrogates, and so does the repair
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        return _decoder.recover(data, exc)


_ENCODER: Final = msgspec.json.Encoder()


def _sender_id(sender: _Sender) -> str:
    """The sender's id: ``open_id``, else ``union_id``, else ``user_id``."""
    ids = sender.sender_id or _Ids()
    user = ids.open_id or ids.union_id or ids.user_id
    if not user:
        raise ProtocolError("message event without a sender id")
    return user


def _text_parts(
    text: str, mentions: list[_Mention], bot_open_id: str | None
) -> tuple[list[Part], bool]:
    """The text with its mentions resolved, and whether the bot was one of them.

    Longer placeholders are tried first, so ``@_user_10`` is never read as ``@_user_1``.
    """
    parts: list[Part] = []
    addressed = False
    shown: list[tuple[str, str]] = []  # (placeholder, what it becomes): "" for the bot's
    for mention in sorted(mentions, key=lambda m: -len(m.key)):
        key, name = mention.key, mention.name
        open_id = (mention.id.open_id if mention.id is not None else None) or ""
        is_bot = bool(bot_open_id) and open_id == bot_open_id
        addressed = addressed or is_bot
        if key:  # an empty one is no placeholder
            shown.append((key, "" if is_bot else f"@{name}"))
        parts.append(Mention(open_id, name or None))
    parts.append(Text(_resolved(text, shown).strip()))
    return parts, addressed


def _resolved(text: str, shown: list[tuple[str, str]]) -> str:
    """``text`` with each placeholder of ``shown`` replaced, in one pass over the text as it
    came: a name is never read again for a placeholder (a name holding one, replaced in
    turn, multiplied the text); the bot's, removed, takes a space after it along."""
    if len(shown) == 1:  # the usual group message: one pass of str.replace is that already
        key, value = shown[0]
        return text.replace(key, value) if value else text.replace(key + " ", "").replace(key, "")
    if not shown:
        return text
    placeholders = tuple(shown)
    return _placeholders(placeholders)(lambda found: placeholders[found.lastindex - 1][1], text)


@functools.lru_cache(maxsize=256)
def _placeholders(shown: tuple[tuple[str, str], ...]) -> Callable[..., str]:
    """A ``sub`` of one pattern matching each placeholder in its own group, in order."""
    groups = (f"({re.escape(key)}{'' if value else ' ?'})" for key, value in shown)
    return re.compile("|".join(groups)).sub


def _media_part(msgtype: str | None, content: Mapping[str, Any], message_id: str) -> Part | None:
    """The image, file or voice a message carries (None for other types)."""
    if msgtype == "image":
        return Image(
            Media("image", ref=Handle.of(message_id=message_id, key=get_str(content, "image_key")))
        )
    if msgtype == "file":
        return File(
            Media(
                "file",
                name=get_str(content, "file_name"),
                ref=Handle.of(message_id=message_id, key=get_str(content, "file_key")),
            )
        )
    if msgtype == "audio":
        return Voice(
            Media("voice", ref=Handle.of(message_id=message_id, key=get_str(content, "file_key")))
        )
    return None


def to_message(
    account: str, envelope: bytes | Mapping[str, Any], bot_open_id: str | None
) -> Message | None:
    """The message in an event envelope (``None`` for the bot's own), with mentions resolved.

    ``envelope`` is the event's JSON as it came (kept as the message's ``raw``), or the event
    already decoded. ``@_user_N`` placeholders become ``@Name``; the bot's own mention is
    removed from the text and kept as a :class:`Mention`, and ``reply_handle["addressed"]``
    says whether the bot was mentioned (the group filter reads it). Raises
    :class:`ProtocolError` for an event that is not a JSON object or lacks the message's ids.
    """
    data = payload_bytes(envelope, "a Lark event")
    return message_of(account, envelope_of(data), data, bot_open_id)


def message_of(
    account: str, wire: Envelope, data: bytes, bot_open_id: str | None
) -> Message | None:
    """:func:`to_message` of an envelope decoded already (``wire``, from ``data``): one decode
    of an event's bytes serves both the routing and the message."""
    event = wire.event or _Event()
    message = event.message or _Message()
    sender = event.sender or _Sender()
    message_id = message.message_id
    chat_id = message.chat_id
    if not message_id or not chat_id:
        raise ProtocolError("message event without message_id or chat_id")
    user = _sender_id(sender)
    raw_content = message.content or "{}"
    content = json_value(raw_content, "message content")
    if "\\u" in raw_content:  # an escape: maybe a lone surrogate, which Python's decoder takes
        try:  # (docs/protocols/lark.md#message-events)
            _ENCODER.encode(content)
        except UnicodeEncodeError as exc:
            raise lone_surrogate("Lark message content", exc) from exc
    if not isinstance(content, Mapping):
        content = {}
    msgtype = message.message_type
    text = (
        content.get("text")
        if msgtype == "text"
        else _post_text(content)
        if msgtype == "post"
        else None
    )
    parts: list[Part] = []
    addressed = False
    if isinstance(text, str):
        parts, addressed = _text_parts(text, message.mentions or [], bot_open_id)
    else:
        media = _media_part(msgtype, content, message_id)
        if media is not None:
            parts.append(media)
    created = message.create_time
    return Message(
        platform=PLATFORM,
        account=account,
        id=message_id,
        chat=shared_chat(chat_id, "group" if message.chat_type == "group" else "direct"),
        sender=shared_sender(user, is_bot=sender.sender_type not in (None, "user")),
        parts=tuple(parts),
        timestamp=int(created) / 1000 if created and _is_millis(created) else 0.0,
        reply_handle=Handle(  # strings and a bool: built directly (Handle.of checks)
            (
                ("message_id", message_id),
                ("chat_id", chat_id),
                ("event_id", wire.event_id),
                ("addressed", addressed),
            )
        ),
        raw=data,
    )

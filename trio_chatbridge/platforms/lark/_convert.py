"""From ``im.message.receive_v1`` events to the bridge's :class:`Message`.

See ``docs/protocols/lark.md#message-events``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from ..._errors import ProtocolError
from ..._json import get_object, get_str, json_value
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

PLATFORM: Final = "lark"
MESSAGE_EVENT: Final = "im.message.receive_v1"


def _post_text(content: Mapping[str, Any]) -> str:
    """A rich-text post flattened to lines of text (any locale, title first)."""
    body = content
    if "content" not in body:  # {"zh_cn": {...}} or {"en_us": {...}}
        body = next((v for v in content.values() if isinstance(v, Mapping)), {})
    lines = [get_str(body, "title") or ""]
    for paragraph in body.get("content") or []:
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


def _sender(sender: Mapping[str, Any]) -> str:
    """The sender's id: ``open_id``, else ``union_id``, else ``user_id``."""
    ids = get_object(sender, "sender_id")
    user = get_str(ids, "open_id") or get_str(ids, "union_id") or get_str(ids, "user_id")
    if not user:
        raise ProtocolError("message event without a sender id")
    return user


def _text_parts(
    text: str, mentions: list[Mapping[str, Any]], bot_open_id: str | None
) -> tuple[list[Part], bool]:
    """The text with its mentions resolved, and whether the bot was one of them.

    Longer placeholders are replaced first, so ``@_user_10`` is never read as ``@_user_1``.
    """
    parts: list[Part] = []
    addressed = False
    for mention in sorted(mentions, key=lambda m: -len(str(m.get("key", "")))):
        key, name = str(mention.get("key", "")), str(mention.get("name", ""))
        open_id = get_str(get_object(mention, "id"), "open_id") or ""
        if bot_open_id and open_id == bot_open_id:
            addressed = True
            text = text.replace(key + " ", "").replace(key, "")
        else:
            text = text.replace(key, f"@{name}")
        parts.append(Mention(open_id, name or None))
    parts.append(Text(text.strip()))
    return parts, addressed


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
    account: str, envelope: Mapping[str, Any], bot_open_id: str | None
) -> Message | None:
    """The message in an event envelope (``None`` for the bot's own), with mentions resolved.

    ``@_user_N`` placeholders become ``@Name``; the bot's own mention is removed from the text
    and kept as a :class:`Mention`, and ``reply_handle["addressed"]`` says whether the bot was
    mentioned (the group filter reads it).
    """
    event = get_object(envelope, "event")
    message = get_object(event, "message")
    sender = get_object(event, "sender")
    message_id = get_str(message, "message_id")
    chat_id = get_str(message, "chat_id")
    if not message_id or not chat_id:
        raise ProtocolError("message event without message_id or chat_id")
    user = _sender(sender)
    content = json_value(get_str(message, "content") or "{}", "message content")
    if not isinstance(content, Mapping):
        content = {}
    msgtype = get_str(message, "message_type")
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
        listed = message.get("mentions")
        mentions = [m for m in listed if isinstance(m, Mapping)] if isinstance(listed, list) else []
        parts, addressed = _text_parts(text, mentions, bot_open_id)
    else:
        media = _media_part(msgtype, content, message_id)
        if media is not None:
            parts.append(media)
    chat_type = get_str(message, "chat_type")
    created = get_str(message, "create_time")
    header = get_object(envelope, "header")
    return Message(
        platform=PLATFORM,
        account=account,
        id=message_id,
        chat=shared_chat(chat_id, "group" if chat_type == "group" else "direct"),
        sender=shared_sender(user, is_bot=get_str(sender, "sender_type") not in (None, "user")),
        parts=tuple(parts),
        timestamp=int(created) / 1000 if created and _is_millis(created) else 0.0,
        reply_handle=Handle.of(
            message_id=message_id,
            chat_id=chat_id,
            event_id=get_str(header, "event_id") or "",
            addressed=addressed,
        ),
        raw=msgspec.json.encode(envelope),
    )

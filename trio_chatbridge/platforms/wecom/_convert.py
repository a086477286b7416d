"""From WeCom callback bodies to the bridge's :class:`Message`.

See ``docs/protocols/wecom.md#message-callbacks``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from ..._errors import ProtocolError
from ..._json import get_object, get_str
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
from ..._receive import MAX_TIMESTAMP, clamp

PLATFORM = "wecom"
_LEADING_MENTION = re.compile(r"^\s*@(\S+)\s*")


def _media(kind: str, data: Mapping[str, Any]) -> Media:
    ref = {k: v for k in ("url", "aeskey") if isinstance(v := data.get(k), str)}
    return Media(kind, name=get_str(data, "filename"), ref=Handle.of(ref))  # type: ignore[arg-type]


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


def parts_of(
    body: Mapping[str, Any], group: bool, bot_name: str | None, *, quoted: bool = False
) -> list[Part]:
    """The parts of a callback body; a quote's own quote is not read (one level, no recursion
    a deeply nested body could run out of)."""
    msgtype = get_str(body, "msgtype")
    parts: list[Part] = []
    quote = {} if quoted else get_object(body, "quote")
    if quote:
        quoted_parts = parts_of(quote, False, None, quoted=True)
        summary = (
            " ".join(p.text for p in quoted_parts if isinstance(p, Text))
            or f"[{quote.get('msgtype')}]"
        )
        parts.append(Quote(summary))
    if msgtype == "text":
        parts += _text_parts(get_str(get_object(body, "text"), "content") or "", group, bot_name)
    elif msgtype == "voice":
        parts.append(
            Voice(Media("voice"), transcript=get_str(get_object(body, "voice"), "content"))
        )
    elif msgtype == "image":
        parts.append(Image(_media("image", get_object(body, "image"))))
    elif msgtype == "file":
        parts.append(File(_media("file", get_object(body, "file"))))
    elif msgtype == "video":
        parts.append(Video(_media("video", get_object(body, "video"))))
    elif msgtype == "mixed":
        items = get_object(body, "mixed").get("msg_item")
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, Mapping):
                continue
            if item.get("msgtype") == "text":
                text = get_str(get_object(item, "text"), "content") or ""
                parts += _text_parts(text, group and not parts, bot_name)
            elif item.get("msgtype") == "image":
                parts.append(Image(_media("image", get_object(item, "image"))))
    return parts


def to_message(
    account: str,
    req_id: str,
    body: Mapping[str, Any],
    *,
    bot_name: str | None = None,
    handle: Mapping[str, Any] | None = None,
) -> Message:
    """The bridge's message for an ``aibot_msg_callback``; the callback's req_id is the handle
    (with ``handle``'s entries: the connector's note of when it may be answered)."""
    sender = get_str(get_object(body, "from"), "userid")
    if not sender:
        raise ProtocolError("message callback without from.userid")
    group = body.get("chattype") == "group"
    chat_id = get_str(body, "chatid") if group else sender
    if not chat_id:
        raise ProtocolError("group message callback without chatid")
    created = body.get("create_time")
    return Message(
        platform=PLATFORM,
        account=account,
        id=get_str(body, "msgid") or req_id,
        chat=shared_chat(chat_id, "group" if group else "direct"),
        sender=shared_sender(sender),
        parts=tuple(parts_of(body, group, bot_name)),
        timestamp=clamp(created, 0.0, MAX_TIMESTAMP, 0.0),
        reply_handle=Handle.of({"req_id": req_id, "chatid": chat_id, **(handle or {})}),
        raw=msgspec.json.encode(body),
    )

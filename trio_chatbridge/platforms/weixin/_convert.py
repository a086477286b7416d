"""From iLink messages to the bridge's :class:`Message`, and text splitting for replies."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

from ..._messages import Chat, File, Image, Media, Message, Part, Quote, Sender, Text, Video, Voice
from . import _protocol as p
from ._media import media_ref

PLATFORM = "weixin"


def message_id(msg: p.WeixinMessage) -> str:
    """The dedup key, in the reference client's order: message_id, client_id, seq, content hash."""
    if msg.message_id:
        return str(msg.message_id)
    if msg.client_id:
        return f"client:{msg.client_id}"
    if msg.seq is not None:
        return f"seq:{msg.seq}"
    text = "".join(item.text or "" for item in msg.items)
    digest = hashlib.sha256(f"{msg.from_user_id}|{text}|{msg.create_time_ms}".encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def _media_part(item: p.MessageItem) -> Part | None:
    if item.media is None or not item.media.downloadable:
        return None
    ref = media_ref(item)
    if item.type == p.ItemType.IMAGE:
        return Image(Media("image", size=item.size, ref=ref))
    if item.type == p.ItemType.FILE:
        return File(Media("file", name=item.file_name, size=item.size, ref=ref))
    if item.type == p.ItemType.VIDEO:
        return Video(Media("video", size=item.size, ref=ref), duration=item.duration)
    if item.type == p.ItemType.VOICE:
        return Voice(Media("voice", ref=ref), transcript=item.text, duration=item.duration)
    return None


def _quote(item: p.MessageItem) -> list[Part]:
    """A quoted message: media quoted is offered as media; anything else as a Quote [6.4]."""
    ref = item.ref_item
    if ref is None and not item.ref_title:
        return []
    if ref is not None and ref.type != p.ItemType.TEXT:
        media = _media_part(ref)
        if media is not None:
            return [media]
    quoted = " | ".join(s for s in (item.ref_title, ref.text if ref else None) if s)
    return [Quote(quoted)] if quoted else []


def parts_of(msg: p.WeixinMessage) -> list[Part]:
    parts: list[Part] = []
    for item in msg.items:
        if item.type == p.ItemType.TEXT:
            parts.extend(_quote(item))
            parts.append(Text(item.text or ""))
        elif item.type == p.ItemType.VOICE and (item.media is None or not item.media.downloadable):
            parts.append(Voice(Media("voice"), transcript=item.text, duration=item.duration))
        else:
            part = _media_part(item)
            if part is not None:
                parts.append(part)
    return parts


def to_message(account: str, msg: p.WeixinMessage, raw: dict[str, Any]) -> Message:
    """The bridge's message for an inbound iLink message.

    Group messages are [UNCONFIRMED]: the reference plugin handles direct chats only. We keep
    the group as the chat (so a group is one session) and reply to the sender, the only
    addressing sendmessage is known to take.
    """
    chat = Chat(msg.group_id, "group") if msg.group_id else Chat(msg.from_user_id, "direct")
    handle = {"to_user_id": msg.from_user_id}
    if msg.context_token:
        handle["context_token"] = msg.context_token
    return Message(
        platform=PLATFORM,
        account=account,
        id=message_id(msg),
        chat=chat,
        sender=Sender(msg.from_user_id),
        parts=parts_of(msg),
        timestamp=(msg.create_time_ms or 0) / 1000,
        reply_handle=handle,
        raw=raw,
    )


def split_text(text: str, limit: int = p.TEXT_LIMIT) -> Iterator[str]:
    """Pieces of at most ``limit`` characters that join back into ``text``.

    Each cut falls just after the last newline, else the last space, in the piece's second
    half; failing both, it is a hard cut at the limit.
    """
    while len(text) > limit:
        window = text[:limit]
        cut = window.rfind("\n") + 1 or window.rfind(" ") + 1
        if cut <= limit // 2:
            cut = window.rfind(" ") + 1
        if cut <= limit // 2:
            cut = limit
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text

"""From iLink messages to the bridge's :class:`Message`, and text splitting for replies."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec

from ..._errors import ProtocolError
from ..._messages import (
    File,
    Handle,
    Image,
    Media,
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
from . import _protocol as p
from ._media import media_ref

PLATFORM = "weixin"


def message_id(raw: Mapping[str, Any], sender: str, parts: Sequence[Part]) -> str:
    """The dedup key, in the reference client's order: message_id, client_id, seq, content hash."""
    number = p.read_int(raw, "message_id")
    if number:
        return str(number)
    client_id = p.read_str(raw, "client_id")
    if client_id:
        return f"client:{client_id}"
    seq = p.read_int(raw, "seq")
    if seq is not None:
        return f"seq:{seq}"
    text = "".join(part.text for part in parts if isinstance(part, Text))
    created = p.read_int(raw, "create_time_ms")
    digest = hashlib.sha256(f"{sender}|{text}|{created}".encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def _media_part(item: p.MessageItem) -> Part | None:
    if item.media is None or not item.media.downloadable:
        return None
    ref = Handle.of(media_ref(item))
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
    """A quoted message: media quoted is offered as media; anything else as a Quote.

    See ``docs/protocols/weixin.md#quotes``.
    """
    ref = item.ref_item
    if ref is None and not item.ref_title:
        return []
    if ref is not None and ref.type != p.ItemType.TEXT:
        media = _media_part(ref)
        if media is not None:
            return [media]
    quoted = " | ".join(s for s in (item.ref_title, ref.text if ref else None) if s)
    return [Quote(quoted)] if quoted else []


def _parts_of_item(item: p.MessageItem) -> list[Part]:
    if item.type == p.ItemType.TEXT:
        return [*_quote(item), Text(item.text or "")]
    if item.type == p.ItemType.VOICE and (item.media is None or not item.media.downloadable):
        return [Voice(Media("voice"), transcript=item.text, duration=item.duration)]
    part = _media_part(item)
    return [] if part is None else [part]


def parts_of(items: Any) -> list[Part]:
    """The parts of a raw ``item_list`` (entries that are not objects are skipped)."""
    parts: list[Part] = []
    if type(items) is not list:
        return parts
    for item in items:
        if type(item) is not dict:
            continue
        if item.get("type") == p.ItemType.TEXT and "ref_msg" not in item:
            # the common case, read in place: a plain text item
            parts.append(Text(p.read_str(p.read_obj(item, "text_item"), "text") or ""))
        else:
            parts.extend(_parts_of_item(p.MessageItem.parse(item)))
    return parts


def to_message(account: str, raw: Any) -> Message | None:
    """The bridge's message for one entry of getupdates' ``msgs``, or None if not for the agent.

    Not for the agent (docs/protocols/weixin.md#inbound-filtering): the bot's own messages,
    GENERATING ones, recalled ones. Every field is optional and read leniently
    (docs/protocols/weixin.md#lenient-json); only an entry that is not an object (or one the
    page could not decode) raises :class:`ProtocolError`. This runs for every inbound message,
    so it reads the payload in place, without an intermediate model.

    Group messages are unconfirmed (docs/protocols/weixin.md#unconfirmed): the reference plugin
    handles direct chats only. We keep the group as the chat (so a group is one session) and reply
    to the sender, the only addressing sendmessage is known to take.
    """
    if isinstance(raw, ProtocolError):
        raise raw  # the page could not decode this entry (see json_object_items)
    if not isinstance(raw, dict):
        raise ProtocolError(f"a message is a JSON object, got {type(raw).__name__}")
    if (
        p.read_int(raw, "message_type") != p.MessageType.USER
        or (p.read_int(raw, "delete_time_ms") or 0) > 0
        or p.read_int(raw, "message_state") == p.MessageState.GENERATING
    ):
        return None
    sender = p.read_str(raw, "from_user_id") or ""
    group = p.read_str(raw, "group_id")
    token = p.read_str(raw, "context_token")
    handle = (
        Handle.of(to_user_id=sender, context_token=token) if token else Handle.of(to_user_id=sender)
    )
    parts = tuple(parts_of(raw.get("item_list")))
    return Message(
        platform=PLATFORM,
        account=account,
        id=message_id(raw, sender, parts),
        chat=shared_chat(group, "group") if group else shared_chat(sender, "direct"),
        sender=shared_sender(sender),
        parts=parts,
        timestamp=clamp(p.read_int(raw, "create_time_ms"), 0.0, MAX_TIMESTAMP * 1000, 0.0) / 1000,
        reply_handle=handle,
        raw=msgspec.json.encode(raw),
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

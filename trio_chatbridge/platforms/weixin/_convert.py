"""From iLink messages to the bridge's :class:`Message`, and text splitting for replies.

A message is decoded straight from its JSON into the typed records below (every field optional,
numbers where strings were and strings where numbers were taken, enums kept as plain ints so
that new values pass: docs/protocols/weixin.md#lenient-json), then into a :class:`Message` that
keeps those bytes as ``raw``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, TypeAlias, TypeGuard

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
from ..._ranges import MAX_TIMESTAMP, clamp
from ..._wire import Lenient, payload_bytes
from . import _protocol as p

PLATFORM = "weixin"

Id: TypeAlias = str | int
"""An id or a text that iLink sends as a string in one place and a number in another."""


class _CDNMedia(msgspec.Struct, gc=False):
    encrypt_query_param: str | None = None
    aes_key: str | None = None
    """base64 of either the raw 16-byte key or its 32 hex digits."""
    full_url: str | None = None


class _TextItem(msgspec.Struct, gc=False):
    text: Id | None = None


class _ImageItem(msgspec.Struct, gc=False):
    media: _CDNMedia | None = None
    aeskey: str | None = None
    """The key as 32 hex digits, preferred over ``media.aes_key``."""
    mid_size: int | None = None


class _VoiceItem(msgspec.Struct, gc=False):
    media: _CDNMedia | None = None
    text: Id | None = None
    playtime: int | None = None
    """Milliseconds."""


class _FileItem(msgspec.Struct, gc=False):
    media: _CDNMedia | None = None
    file_name: str | None = None
    len: int | None = None
    """Plaintext length, sent as a string."""


class _VideoItem(msgspec.Struct, gc=False):
    media: _CDNMedia | None = None
    video_size: int | None = None
    play_length: int | None = None
    """Seconds."""


class _RefMsg(msgspec.Struct, gc=False):
    title: str | None = None
    message_item: _Item | None = None


class _Item(msgspec.Struct, gc=False):
    """One item of a message: text, image, voice, file, video, or a kind we do not know."""

    type: int | None = None
    text_item: _TextItem | None = None
    image_item: _ImageItem | None = None
    voice_item: _VoiceItem | None = None
    file_item: _FileItem | None = None
    video_item: _VideoItem | None = None
    ref_msg: _RefMsg | None = None


class _Wire(msgspec.Struct, gc=False):
    """One entry of getupdates' ``msgs`` (docs/protocols/weixin.md#getupdates)."""

    message_id: int | None = None
    client_id: Id | None = None
    seq: int | None = None
    from_user_id: Id | None = None
    group_id: Id | None = None
    create_time_ms: int | None = None
    message_type: int | None = None
    message_state: int | None = None
    delete_time_ms: int | None = None
    context_token: Id | None = None
    item_list: list[_Item] | None = None


_decoder = Lenient(_Wire, "WeChat message")
_wire: Final = _decoder.first
"""The decode every message takes first (no Python frame of ours around it); an entry it
refuses goes to :meth:`_decoder.recover <Lenient.recover>`, which repairs a field of the wrong
type or says why not (without decoding it the same way again)."""

# Plain ints: compared for every item of every message, and an IntEnum member costs a lookup.
_TEXT: Final = int(p.ItemType.TEXT)
_IMAGE: Final = int(p.ItemType.IMAGE)
_VOICE: Final = int(p.ItemType.VOICE)
_FILE: Final = int(p.ItemType.FILE)
_VIDEO: Final = int(p.ItemType.VIDEO)
_USER: Final = int(p.MessageType.USER)
_GENERATING: Final = int(p.MessageState.GENERATING)
_MAX_TIME_MS: Final = MAX_TIMESTAMP * 1000  # milliseconds


def _text(value: Id | None) -> str | None:
    return value if type(value) is str or value is None else str(value)


def message_id(wire: _Wire, sender: str, parts: Sequence[Part]) -> str:
    """The dedup key, in the reference client's order: message_id, client_id, seq, content hash."""
    if wire.message_id:
        return str(wire.message_id)
    client_id = _text(wire.client_id)
    if client_id:
        return f"client:{client_id}"
    if wire.seq is not None:
        return f"seq:{wire.seq}"
    text = "".join(part.text for part in parts if type(part) is Text)
    digest = hashlib.sha256(f"{sender}|{text}|{wire.create_time_ms}".encode()).hexdigest()
    return f"sha256:{digest[:32]}"


def _media(kind: Any, media: _CDNMedia, key: str | None = None, **fields: Any) -> Media:
    """A Media whose ref holds what ``_media.download`` needs (its repr shows no key)."""
    ref = {
        "encrypt_query_param": media.encrypt_query_param,
        "aes_key": media.aes_key,
        "full_url": media.full_url,
        "image_aeskey": key,
    }
    return Media(kind, ref=Handle.of({k: v for k, v in ref.items() if v}), **fields)


def _downloadable(media: _CDNMedia | None) -> TypeGuard[_CDNMedia]:
    return media is not None and bool(media.encrypt_query_param or media.full_url)


def _media_part(item: _Item) -> Part | None:
    """The item's media, if it can be downloaded."""
    kind = item.type
    if kind == _IMAGE and item.image_item is not None:
        image = item.image_item
        if _downloadable(image.media):
            return Image(_media("image", image.media, image.aeskey, size=image.mid_size))
    elif kind == _FILE and item.file_item is not None:
        file = item.file_item
        if _downloadable(file.media):
            return File(_media("file", file.media, name=file.file_name, size=file.len))
    elif kind == _VIDEO and item.video_item is not None:
        video = item.video_item
        if _downloadable(video.media):
            duration = None if video.play_length is None else float(video.play_length)
            return Video(_media("video", video.media, size=video.video_size), duration=duration)
    elif kind == _VOICE and item.voice_item is not None:
        voice = item.voice_item
        if _downloadable(voice.media):
            return _voice(voice, _media("voice", voice.media))
    return None


def _voice(voice: _VoiceItem, media: Media) -> Voice:
    duration = None if voice.playtime is None else voice.playtime / 1000
    return Voice(media, transcript=_text(voice.text), duration=duration)


def _item_text(item: _Item) -> str | None:
    """A text item's text, a voice item's transcript."""
    if item.type == _TEXT and item.text_item is not None:
        return _text(item.text_item.text)
    if item.type == _VOICE and item.voice_item is not None:
        return _text(item.voice_item.text)
    return None


def _quote(ref: _RefMsg) -> list[Part]:
    """A quoted message: media quoted is offered as media; anything else as a Quote.

    See ``docs/protocols/weixin.md#quotes``.
    """
    item = ref.message_item
    if item is not None and item.type != _TEXT:
        media = _media_part(item)
        if media is not None:
            return [media]
    quoted = " | ".join(s for s in (ref.title, item and _item_text(item)) if s)
    return [Quote(quoted)] if quoted else []


def _parts(items: list[_Item]) -> tuple[Part, ...]:
    """Every item's parts (the common message, one text quoting nothing, is read inline by
    :func:`to_message`)."""
    parts: list[Part] = []
    for item in items:
        if item.type == _TEXT:
            if item.ref_msg is not None:
                parts += _quote(item.ref_msg)
            parts.append(Text(_item_text(item) or ""))
            continue
        part = _media_part(item)
        if part is None and item.type == _VOICE:  # a transcript, nothing to fetch
            part = _voice(item.voice_item or _VoiceItem(), Media("voice"))
        if part is not None:
            parts.append(part)
    return tuple(parts)


def to_message(account: str, raw: bytes | Mapping[str, Any]) -> Message | None:
    """The bridge's message for one entry of getupdates' ``msgs``, or None if not for the agent.

    ``raw`` is the entry's JSON as it came (kept as the message's ``raw``), or the entry already
    decoded. Not for the agent (docs/protocols/weixin.md#inbound-filtering): the bot's own
    messages, GENERATING ones, recalled ones. Every field is optional and read leniently
    (docs/protocols/weixin.md#lenient-json); only an entry that is not a JSON object (or one
    the page could not decode), or a user's message without a sender (``from_user_id``: no
    one to answer), raises :class:`ProtocolError`.

    Group messages are unconfirmed (docs/protocols/weixin.md#unconfirmed): the reference plugin
    handles direct chats only. We keep the group as the chat (so a group is one session) and reply
    to the sender, the only addressing sendmessage is known to take.
    """
    if type(raw) is bytes:
        data = raw
    elif isinstance(raw, ProtocolError):
        raise raw  # the page could not decode this entry (see json_object_items)
    else:
        data = payload_bytes(raw, "a WeChat message")
    try:
        wire = _wire(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        wire = _decoder.recover(data, exc)
    if (
        wire.message_type != _USER
        or (wire.delete_time_ms or 0) > 0
        or wire.message_state == _GENERATING
    ):
        return None
    # Every message of every page comes through here: exact type checks inline, and the
    # general readers (_text, clamp, message_id) only where the common case does not hold.
    sender = wire.from_user_id
    if type(sender) is not str or not sender:
        sender = _text(sender)
        if not sender:  # nobody to answer: a chat "" of every such message, replies refused
            raise ProtocolError(
                f"WeChat message {wire.message_id or '(no id)'} has no from_user_id: skipped, "
                "there is no one to answer"
            )
    group = wire.group_id
    if group is not None and type(group) is not str:
        group = str(group)
    token = wire.context_token
    if token is not None and type(token) is not str:
        token = str(token)
    items = wire.item_list
    if (  # the common message: one text item, quoting nothing
        items is not None
        and len(items) == 1
        and (item := items[0]).type == _TEXT
        and item.ref_msg is None
        and item.text_item is not None
        and type(text := item.text_item.text) is str
    ):
        parts: tuple[Part, ...] = (Text(text),)
    else:
        parts = _parts(items or [])
    ms: float | None = wire.create_time_ms
    if not (type(ms) is int and 0 <= ms <= _MAX_TIME_MS):
        ms = clamp(ms, 0.0, _MAX_TIME_MS, 0.0)
    return Message(  # by position, in the fields' order: cheaper than by keyword
        PLATFORM,  # platform
        account,  # account
        str(wire.message_id) if wire.message_id else message_id(wire, sender, parts),  # id
        shared_chat(group, "group") if group else shared_chat(sender, "direct"),  # chat
        shared_sender(sender),  # sender
        parts,  # parts
        ms / 1000,  # timestamp
        # reply_handle, built directly: both are strings (Handle.of checks what callers give)
        Handle((("to_user_id", sender), ("context_token", token)))
        if token
        else Handle((("to_user_id", sender),)),
        data,  # raw
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

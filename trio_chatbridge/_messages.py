"""What flows through the bridge: messages, their parts, and batches of them.

Every record is a frozen attrs class that round-trips through JSON (the journal stores
messages as JSON text). Platform-specific data that a connector needs to reply or to fetch
media lives in ``reply_handle`` and ``Media.ref``; both are kept out of ``repr`` because
they may hold tokens or keys.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal, TypeAlias, final

import attrs

from ._errors import ProtocolError

ChatKind: TypeAlias = Literal["direct", "group"]


def _as_dict(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """A dict is kept as given (a connector hands over a fresh one); anything else is copied."""
    if type(value) is dict:
        return value
    return dict(value) if value else {}


@final
@attrs.frozen
class Sender:
    """Who sent a message."""

    id: str
    """The platform's id for the user."""
    name: str | None = None
    """A display name, when the platform sends one."""
    is_bot: bool = False
    """True for messages sent by a bot (usually ignored by connectors)."""


@final
@attrs.frozen
class Chat:
    """Where a message was sent: a direct chat with one user, or a group."""

    id: str
    """The platform's id for the conversation."""
    kind: ChatKind = "direct"
    """``"direct"`` or ``"group"``."""
    title: str | None = None
    """The group's name, when known."""


# Chats and senders repeat across a conversation's messages and never change, so connectors
# take them from these caches: a busy journal then holds one object per person rather than
# two per message (less memory, and fewer objects for the garbage collector to walk).
shared_chat = functools.lru_cache(maxsize=4096)(Chat)
shared_sender = functools.lru_cache(maxsize=4096)(Sender)


@final
@attrs.frozen
class Media:
    """A reference to a piece of media that the connector knows how to download."""

    kind: Literal["image", "file", "voice", "video"]
    """What the media is."""
    name: str | None = None
    """A file name, when the platform gives one."""
    size: int | None = None
    """Size in bytes, when known before download."""
    ref: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict, repr=False)
    """Platform data needed to fetch it (URLs, keys). Never shown in reprs."""


@final
@attrs.frozen
class Text:
    """Plain text."""

    kind: ClassVar[str] = "text"
    text: str


@final
@attrs.frozen
class Image:
    """An image."""

    kind: ClassVar[str] = "image"
    media: Media


@final
@attrs.frozen
class File:
    """A file attachment."""

    kind: ClassVar[str] = "file"
    media: Media


@final
@attrs.frozen
class Voice:
    """A voice message, with the platform's transcript when it gives one."""

    kind: ClassVar[str] = "voice"
    media: Media
    transcript: str | None = None
    duration: float | None = None
    """Seconds."""


@final
@attrs.frozen
class Video:
    """A video."""

    kind: ClassVar[str] = "video"
    media: Media
    duration: float | None = None
    """Seconds."""


@final
@attrs.frozen
class Quote:
    """A quoted (replied-to) message, summarised as text."""

    kind: ClassVar[str] = "quote"
    text: str
    message_id: str | None = None


@final
@attrs.frozen
class Mention:
    """An @-mention of a user (or of the bot itself)."""

    kind: ClassVar[str] = "mention"
    user_id: str
    name: str | None = None


Part: TypeAlias = Text | Image | File | Voice | Video | Quote | Mention


def _parts(parts: Iterable[Part]) -> tuple[Part, ...]:
    return tuple(parts)


_PART_TYPES: Mapping[str, type[Part]] = {
    cls.kind: cls for cls in (Text, Image, File, Voice, Video, Quote, Mention)
}


@final
@attrs.frozen
class Message:
    """One inbound message, as every connector reports it.

    ``reply_handle`` and ``raw`` keep the dicts they are given (a connector hands over fresh
    ones, and copying every payload would cost every message): treat them as read-only.
    """

    platform: str
    """Which platform it came from (``"weixin"``, ``"wecom"``, ``"lark"``, ...)."""
    account: str
    """Which bot account of that platform received it."""
    id: str
    """The platform's message id: the journal's dedup key with platform and account."""
    chat: Chat
    sender: Sender
    parts: tuple[Part, ...] = attrs.field(converter=_parts)
    timestamp: float = 0.0
    """When it was sent, in wall-clock seconds since the epoch."""
    reply_handle: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict, repr=False)
    """What the connector needs to answer this message (a context token, a req_id...)."""
    raw: Mapping[str, Any] = attrs.field(factory=dict, converter=_as_dict, repr=False)
    """The platform's payload, for escape hatches. Not stable across platform versions."""

    @property
    def text(self) -> str:
        """The message's text parts joined by newlines (a voice transcript counts)."""
        pieces: list[str] = []
        for part in self.parts:
            if isinstance(part, Text):
                pieces.append(part.text)
            elif isinstance(part, Voice) and part.transcript:
                pieces.append(part.transcript)
        return "\n".join(pieces)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_json` gives back an equal message."""
        return {
            "platform": self.platform,
            "account": self.account,
            "id": self.id,
            "chat": {"id": self.chat.id, "kind": self.chat.kind, "title": self.chat.title},
            "sender": {
                "id": self.sender.id,
                "name": self.sender.name,
                "is_bot": self.sender.is_bot,
            },
            "parts": [_part_to_json(part) for part in self.parts],
            "timestamp": self.timestamp,
            "reply_handle": dict(self.reply_handle),
            "raw": dict(self.raw),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Message:
        """Rebuild a message from :meth:`to_json`'s output; bad input raises ProtocolError."""
        try:
            return cls(
                platform=data["platform"],
                account=data["account"],
                id=data["id"],
                chat=Chat(**data["chat"]),
                sender=Sender(**data["sender"]),
                parts=[_part_from_json(part) for part in data["parts"]],
                timestamp=float(data.get("timestamp", 0.0)),
                reply_handle=data.get("reply_handle") or {},
                raw=data.get("raw") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"not a serialised Message: {exc!r}") from exc


def _part_to_json(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):  # the common case, without attrs' generic walk
        return {"kind": "text", "text": part.text}
    body = attrs.asdict(part)
    body["kind"] = part.kind
    return body


def _part_from_json(data: Mapping[str, Any]) -> Part:
    fields = dict(data)
    cls = _PART_TYPES[fields.pop("kind")]
    if "media" in fields:
        fields["media"] = Media(**fields["media"])
    return cls(**fields)


def _messages(messages: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(messages)


@final
@attrs.frozen
class Batch:
    """Every message one session sent during one quiet window, oldest first."""

    session: str
    """The session key (by default ``platform:account:chat``)."""
    messages: tuple[Message, ...] = attrs.field(converter=_messages)

    @property
    def latest(self) -> Message:
        """The newest message: replies answer this one."""
        return self.messages[-1]

    @property
    def text(self) -> str:
        """Each message's text, one per line."""
        return "\n".join(m.text for m in self.messages if m.text)

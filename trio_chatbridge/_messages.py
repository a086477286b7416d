"""What flows through the bridge: messages, their parts, and batches of them.

A message and everything in it is a frozen msgspec record (``msgspec.Struct``) that the
garbage collector never tracks (``gc=False``): a bridge keeps many messages alive (the
journal, the debouncer's sessions), and records of strings, numbers and tuples of such records
cannot form a reference cycle, so walking them would only cost time. That is why every field
holds an atom, bytes, a :class:`Handle` or a tuple of records, never a dict or a list.

Platform-specific data that a connector needs to reply or to fetch media lives in
``reply_handle`` and ``Media.ref``, both a read-only :class:`Handle` whose repr shows its keys
only (the values may be tokens or keys). ``raw`` is the platform's payload as it came, undecoded;
it is kept out of ``repr`` too.

Being msgspec records, messages serialise with msgspec itself:
``msgspec.json.encode(message)`` and ``msgspec.json.decode(data, type=Message)`` (or the
msgpack pair) give back an equal message.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias, final

import attrs
import msgspec

from ._errors import ProtocolError

ChatKind: TypeAlias = Literal["direct", "group"]
HandleValue: TypeAlias = str | int | float | bool | None
"""What a :class:`Handle` holds: JSON's atoms, nothing the collector would have to walk."""

_ATOMS: Final = frozenset({str, int, float, bool, type(None)})
_MIN_INT: Final = -(2**63)
_MAX_INT: Final = 2**64


@final
class Handle(msgspec.Struct, frozen=True, gc=False):
    """A read-only mapping of names to atoms: what a connector keeps with a message to act on
    it later (a context token, a req_id, a media key). Read it like a dict (``handle["x"]``,
    ``handle.get("x")``, ``dict(handle)``); build one with :meth:`of`.

    Its repr shows the keys, never the values: they may be tokens or keys.
    """

    entries: tuple[tuple[str, HandleValue], ...] = ()
    """The (name, value) pairs, in the order given."""

    @classmethod
    def of(cls, entries: Mapping[str, HandleValue] | None = None, /, **more: HandleValue) -> Handle:
        """A handle of ``entries`` and ``more``; raises TypeError for a value that is not a
        string, a number (finite; an int of 64 bits at most, as JSON and msgpack take), a
        bool or None."""
        pairs = {**entries, **more} if entries else more
        for value in pairs.values():
            kind = type(value)
            if kind not in _ATOMS:
                raise TypeError(f"a Handle holds atoms only, not a {kind.__name__}")
            if kind is int and not _MIN_INT <= value < _MAX_INT:  # type: ignore[operator]
                raise TypeError(f"a Handle's int has 64 bits at most, not {value}")
            if kind is float and not math.isfinite(value):  # type: ignore[arg-type]
                raise TypeError(f"a Handle's number is finite, not {value}")
        return cls(tuple(pairs.items()))

    def __getitem__(self, key: str) -> Any:
        for name, value in self.entries:
            if name == key:
                return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The value for ``key``, else ``default``."""
        for name, value in self.entries:
            if name == key:
                return value
        return default

    def __contains__(self, key: object) -> bool:
        return any(name == key for name, _ in self.entries)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> list[str]:
        """The names, in order."""
        return [name for name, _ in self.entries]

    def items(self) -> tuple[tuple[str, HandleValue], ...]:
        """The (name, value) pairs, in order."""
        return self.entries

    def __repr__(self) -> str:
        return f"Handle(keys={self.keys()!r})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("keys", self.keys())]


Mapping.register(Handle)
EMPTY_HANDLE: Final = Handle()


def _check_handle(field: str, value: object) -> None:
    """A record holds a Handle, never a dict: a dict could come to hold the record itself, a
    cycle the collector would never see (the record is not tracked)."""
    if type(value) is not Handle:
        raise TypeError(f"{field} is a Handle (Handle.of(...)), not a {type(value).__name__}")


@final
class Sender(msgspec.Struct, frozen=True, gc=False):
    """Who sent a message."""

    id: str
    """The platform's id for the user."""
    name: str | None = None
    """A display name, when the platform sends one."""
    is_bot: bool = False
    """True for messages sent by a bot (usually ignored by connectors)."""


@final
class Chat(msgspec.Struct, frozen=True, gc=False):
    """Where a message was sent: a direct chat with one user, or a group."""

    id: str
    """The platform's id for the conversation."""
    kind: ChatKind = "direct"
    """``"direct"`` or ``"group"``."""
    title: str | None = None
    """The group's name, when known."""


# Chats and senders repeat across a conversation's messages and never change, so connectors
# take them from these caches: a busy journal then holds one object per person rather than
# two per message.
shared_chat = functools.lru_cache(maxsize=4096)(Chat)
shared_sender = functools.lru_cache(maxsize=4096)(Sender)


@final
class Media(msgspec.Struct, frozen=True, gc=False):
    """A reference to a piece of media that the connector knows how to download."""

    kind: Literal["image", "file", "voice", "video"]
    """What the media is."""
    name: str | None = None
    """A file name, when the platform gives one."""
    size: int | None = None
    """Size in bytes, when known before download."""
    ref: Handle = EMPTY_HANDLE
    """Platform data needed to fetch it (URLs, keys). Its repr shows the keys only."""

    def __post_init__(self) -> None:
        _check_handle("ref", self.ref)


class _Part(msgspec.Struct, frozen=True, gc=False, tag_field="kind"):
    """What every part is: serialised with its ``kind`` as the tag."""


@final
class Text(_Part, frozen=True, gc=False, tag="text"):
    """Plain text."""

    kind: ClassVar[str] = "text"
    text: str


@final
class Image(_Part, frozen=True, gc=False, tag="image"):
    """An image."""

    kind: ClassVar[str] = "image"
    media: Media


@final
class File(_Part, frozen=True, gc=False, tag="file"):
    """A file attachment."""

    kind: ClassVar[str] = "file"
    media: Media


@final
class Voice(_Part, frozen=True, gc=False, tag="voice"):
    """A voice message, with the platform's transcript when it gives one."""

    kind: ClassVar[str] = "voice"
    media: Media
    transcript: str | None = None
    duration: float | None = None
    """Seconds."""


@final
class Video(_Part, frozen=True, gc=False, tag="video"):
    """A video."""

    kind: ClassVar[str] = "video"
    media: Media
    duration: float | None = None
    """Seconds."""


@final
class Quote(_Part, frozen=True, gc=False, tag="quote"):
    """A quoted (replied-to) message, summarised as text."""

    kind: ClassVar[str] = "quote"
    text: str
    message_id: str | None = None


@final
class Mention(_Part, frozen=True, gc=False, tag="mention"):
    """An @-mention of a user (or of the bot itself)."""

    kind: ClassVar[str] = "mention"
    user_id: str
    name: str | None = None


Part: TypeAlias = Text | Image | File | Voice | Video | Quote | Mention
"""One piece of a message: a :class:`Text`, :class:`Image`, :class:`File`, :class:`Voice`,
:class:`Video`, :class:`Quote` or :class:`Mention`."""


@final
class Message(msgspec.Struct, frozen=True, gc=False):
    """One inbound message, as every connector reports it.

    ``parts`` is a tuple and ``reply_handle`` a :class:`Handle` (never a dict, which could
    come to hold the record itself: a cycle the collector would never see, the record being
    untracked). Checked where a message enters the bridge (a connector's ``put`` refuses
    anything else), not at each construction: building one runs no Python code of ours.
    """

    platform: str
    """Which platform it came from (``"weixin"``, ``"wecom"``, ``"lark"``, ...)."""
    account: str
    """Which bot account of that platform received it."""
    id: str
    """The platform's message id: the journal's dedup key with platform and account."""
    chat: Chat
    sender: Sender
    parts: tuple[Part, ...]
    timestamp: float = 0.0
    """When it was sent, in wall-clock seconds since the epoch."""
    reply_handle: Handle = EMPTY_HANDLE
    """What the connector needs to answer this message (a context token, a req_id...)."""
    raw: bytes = b""
    """The platform's payload for this message as it came (JSON), for escape hatches:
    :meth:`raw_json` decodes it. Not stable across platform versions; not in the repr."""

    @property
    def text(self) -> str:
        """The message's text parts joined by newlines (a voice transcript counts)."""
        pieces: list[str] = []
        for part in self.parts:
            if type(part) is Text:
                pieces.append(part.text)
            elif type(part) is Voice and part.transcript:
                pieces.append(part.transcript)
        return "\n".join(pieces)

    def raw_json(self) -> Any:
        """``raw`` decoded (a fresh value each call; None when there is none). Raises
        :class:`ProtocolError` if it is not JSON."""
        if not self.raw:
            return None
        try:
            return msgspec.json.decode(self.raw)
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"this message's raw payload is not JSON: {exc}") from exc

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.__struct_fields__ if name != "raw"]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"Message({fields})"


def _messages(messages: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(messages)


@final
@attrs.frozen
class Batch:
    """Every message one session sent during one quiet window, oldest first."""

    session: str
    """The session key (by default ``platform:account:chat``, see :func:`session_key`)."""
    messages: tuple[Message, ...] = attrs.field(converter=_messages)

    @property
    def latest(self) -> Message:
        """The newest message: replies answer this one."""
        return self.messages[-1]

    @property
    def text(self) -> str:
        """Each message's text, one per line."""
        return "\n".join(m.text for m in self.messages if m.text)

"""What a bot can send besides plain text: one set of types for every platform.

``reply.send(content)`` and ``connector.send_first(chat_id, content)`` take a ``str`` (plain
text) or one of these. Each platform sends what it supports and raises :class:`SendError`,
naming the platform and what to send instead, for what it does not (see docs/weixin.md,
docs/wecom.md and docs/lark.md for the table and what the user sees).
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias, cast, final, get_args

import attrs

from ._errors import ConfigurationError, SendError

MediaKind: TypeAlias = Literal["image", "file", "video", "voice"]

_KINDS_BY_TYPE: dict[str, MediaKind] = {"image": "image", "video": "video", "audio": "voice"}
_MEDIA_KINDS: Final = frozenset(get_args(MediaKind))


def _freeze(value: Any) -> Any:
    """A read-only deep copy of JSON: objects as ``MappingProxyType``, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    frozen: Mapping[str, Any] = _freeze(value)
    return frozen


def _thaw(value: Any) -> Any:
    """A fresh, mutable deep copy of frozen JSON (plain dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _canonical(value: Mapping[str, Any]) -> str:
    """What equality and the hash of a card or post compare: its JSON, keys sorted."""
    return json.dumps(_thaw(value), sort_keys=True, separators=(",", ":"))


def media_kind(kind: object) -> MediaKind | None:
    """``kind`` checked: one of the four media kinds, or None (guess from the file name).
    Anything else raises :class:`ConfigurationError` naming the kinds allowed."""
    if kind is None or kind in _MEDIA_KINDS:
        return cast("MediaKind | None", kind)
    raise ConfigurationError(
        f"media kind {kind!r}: use 'image', 'file', 'video', 'voice' or None (guess from the "
        "file name)"
    )


def _check_kind(_: object, __: object, kind: object) -> None:
    media_kind(kind)


@final
@attrs.frozen
class Markdown:
    """Text with Markdown formatting, rendered where the platform renders it."""

    text: str


@final
@attrs.frozen
class Attachment:
    """An image, a file, a video or a voice clip: uploaded to the platform, then sent."""

    data: bytes = attrs.field(repr=False)
    """The file's bytes (not shown in reprs)."""
    filename: str
    """The name the user sees (and where ``kind`` is guessed from)."""
    kind: MediaKind | None = attrs.field(default=None, validator=_check_kind)
    """``"image"``, ``"file"``, ``"video"`` or ``"voice"``; None guesses from ``filename``.
    Anything else raises :class:`ConfigurationError` when the attachment is built."""

    @property
    def media_kind(self) -> MediaKind:
        """``kind``, or what the file name says (an unknown type is a ``"file"``)."""
        if self.kind is not None:
            return self.kind
        mime, _ = mimetypes.guess_type(self.filename)
        return _KINDS_BY_TYPE.get((mime or "").split("/", 1)[0], "file")

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes (what the emulators record)."""
        return hashlib.sha256(self.data).hexdigest()


class _PlatformJSON:
    """What a :class:`Card` and a :class:`Post` share: their JSON, read-only."""

    __slots__ = ()
    json: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """A fresh plain copy of ``json`` (dicts and lists): what ``json.dumps`` takes, a
        request body embeds, or a bot changes to build the next card."""
        plain: dict[str, Any] = _thaw(self.json)
        return plain


@final
@attrs.frozen
class Card(_PlatformJSON):
    """A platform-native card, passed through as the platform's JSON.

    On WeCom a ``template_card`` object (``{"card_type": "text_notice", ...}``); on Lark an
    interactive card (``{"elements": [...], ...}`` or ``{"type": "template", ...}``).
    """

    json: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, eq=_canonical)
    """Read-only (objects are ``MappingProxyType``, arrays tuples): see :meth:`as_dict`."""


@final
@attrs.frozen
class Post(_PlatformJSON):
    """A Lark rich-text post, as the platform's JSON (``{"zh_cn": {"title", "content"}}``)."""

    json: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, eq=_canonical)
    """Read-only (objects are ``MappingProxyType``, arrays tuples): see :meth:`as_dict`."""


Content: TypeAlias = str | Markdown | Attachment | Card | Post
"""What ``send`` and ``send_first`` take: a ``str`` (plain text), :class:`Markdown`,
:class:`Attachment`, :class:`Card` or :class:`Post`."""


@final
@attrs.frozen
class Sent:
    """A message the bot sent, as far as the platform identified it."""

    platform: str
    chat: str
    """Where it went (the chat, user or group id the platform uses)."""
    kind: str
    """``"text"``, ``"markdown"``, ``"card"``, ``"post"``, or the media kind."""
    message_id: str | None = None
    """The platform's id for it, where the platform returns one (Lark); needed to edit it."""


def unsupported(platform: str, account: str, content: Content, instead: str) -> SendError:
    """The error for content a platform cannot show: what was tried, what to send instead."""
    return SendError(f"{platform} account {account} cannot send {kind_of(content)}: {instead}")


def kind_of(content: Content) -> str:
    """A short name for the content's kind (``"card"``, ``"image"``...)."""
    if isinstance(content, str):
        return "text"
    if isinstance(content, Attachment):
        return content.media_kind
    return type(content).__name__.lower()

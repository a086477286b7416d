"""What a Lark reply does, decided without I/O: its body, where it goes, when a refused reply
goes to the chat instead, and how a streamed reply spends its edits
(docs/protocols/lark.md#open-api).

Like the protocol core next to it, this imports no trio, httpx or trio_websocket
(``tests/test_lark_protocol.py`` checks), so its rules are tested on known answers; the
connector and ``_outbound.py`` do the calls. Limits the platform documents (see docs/lark.md):
a text or post message can be edited (``PUT``) at most 20 times; a card is updated in place by
``PATCH``, at most 5 times a second per message, within 14 days; a card or post body is at most
30 KB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, final

import attrs

from ..._content import Attachment, Card, Content, Markdown, Post, unsupported
from ..._errors import ConfigurationError
from ._convert import PLATFORM

MAX_EDITS: Final = 20  # edits (PUT) of one text or post message the platform allows
EDIT_INTERVAL: Final = 1.0  # seconds between edits of one streamed reply, by default
FILE_TYPES: Final = {"video": ("mp4", "media"), "voice": ("opus", "audio")}
"""Upload ``file_type`` and message ``msg_type`` per media kind; anything else is a file."""
MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024  # bytes of an uploaded image the platform takes
MAX_FILE_BYTES: Final = 30 * 1024 * 1024  # bytes of an uploaded file, video or voice clip
REPLY_FALLBACK: Final = frozenset({230011, 230019, 230050, 230071, 230072, 230111})
"""Codes that make a reply impossible (the message recalled, its topic gone...: see
docs/protocols/lark.md#open-api): the reply is sent to the chat as a new message instead."""


def falls_back(code: int | None) -> bool:
    """Whether a reply the platform refused with ``code`` goes to the chat as a new message
    (any other refusal is the send's failure)."""
    return code in REPLY_FALLBACK


@final
@attrs.frozen
class EditBudget:
    """How a streamed reply spends Lark's edits: a message is shown at the first write and
    edited as the text grows, at most every ``interval`` seconds and ``max_edits`` times
    (the final edit included, which is always kept in reserve). ``max_edits=0``: no edits
    at all, one message at the end.

    Lark allows 20 edits of a message (the default), and every edit is an API call counted
    against the tenant's quota; a long answer at one edit a second would spend them all in
    20 s. A larger ``interval`` spreads them, ``max_edits=0`` spends none.
    """

    interval: float = EDIT_INTERVAL
    max_edits: int = MAX_EDITS

    def __attrs_post_init__(self) -> None:
        if not self.interval >= 0 or not 0 <= self.max_edits <= MAX_EDITS:  # NaN too
            raise ConfigurationError(
                f"EditBudget: interval (stream_interval) must be >= 0 and max_edits within "
                f"0..{MAX_EDITS} (Lark's limit per message); got {self.interval}, {self.max_edits}"
            )

    def shows_now(self, sent: bool, edits: int) -> bool:
        """Whether a write before the end is shown: by the first message (``sent`` False) or
        by an edit while more than one is left (``edits`` spent so far; the last is kept for
        the final text). With ``max_edits=0`` nothing shows before the end."""
        if self.max_edits == 0:
            return False
        return not sent or edits < self.max_edits - 1


def body(account: str, content: Content, key: str | None = None) -> tuple[str, str]:
    """``(msg_type, content)`` for the open API; ``key`` is an uploaded attachment's."""
    if isinstance(content, str):
        return "text", compact_json({"text": content})
    if isinstance(content, Markdown):
        return "post", compact_json({"zh_cn": {"content": [[{"tag": "md", "text": content.text}]]}})
    if isinstance(content, Post):
        return "post", compact_json(content.as_dict())
    if isinstance(content, Card):
        return "interactive", compact_json(content.as_dict())
    if isinstance(content, Attachment) and key is not None:
        kind = content.media_kind
        if kind == "image":
            return "image", compact_json({"image_key": key})
        return FILE_TYPES.get(kind, ("stream", "file"))[1], compact_json({"file_key": key})
    raise unsupported(PLATFORM, account, content, "send text, Markdown, a post or a card")


@final
@attrs.frozen
class Upload:
    """Where an attachment is uploaded and how (docs/protocols/lark.md#open-api)."""

    path: str
    """The open API path: ``images`` for an image, ``files`` for anything else."""
    form: Mapping[str, str]
    """The form fields beside the file."""
    field: str
    """The multipart field the file goes in."""
    answer_key: str
    """The key of the answer's ``data`` that holds the uploaded file's key."""
    most: int
    """The largest upload the platform takes here, in bytes (none may be empty)."""


def upload_of(attachment: Attachment) -> Upload:
    """How ``attachment`` is uploaded: an image for ``image_key``, a video (mp4), a voice clip
    (opus) or any other file (stream) for ``file_key``."""
    kind = attachment.media_kind
    if kind == "image":
        form = {"image_type": "message"}
        return Upload("/open-apis/im/v1/images", form, "image", "image_key", MAX_IMAGE_BYTES)
    file_type = FILE_TYPES.get(kind, ("stream", "file"))[0]
    form = {"file_type": file_type, "file_name": attachment.filename}
    return Upload("/open-apis/im/v1/files", form, "file", "file_key", MAX_FILE_BYTES)


def refused_upload(account: str, attachment: Attachment, how: Upload) -> str | None:
    """Why the platform would refuse ``attachment`` (empty, or over ``how.most``), said for
    the user: None when it may go. Checked before the upload, which would send it whole."""
    size = len(attachment.data)
    if size and size <= how.most:
        return None
    kind = "image" if how.field == "image" else "file"
    why = "it is empty" if not size else f"it is {size} bytes"
    return (
        f"Lark app {account}: cannot send {attachment.filename[:100]!r}: {why}; Lark takes "
        f"{kind}s of 1 byte to {how.most // 2**20} MiB ({how.most} bytes): send a smaller "
        "one, or a link"
    )


def receive_id_type(receive_id: str) -> str:
    """Which ``receive_id_type`` an id is, from its prefix (``oc_`` chats, ``ou_`` open ids,
    ``on_`` union ids); anything else is taken for a chat id."""
    prefixes = {"ou_": "open_id", "on_": "union_id"}
    return prefixes.get(receive_id[:3], "chat_id")


def compact_json(value: Mapping[str, Any]) -> str:
    """``value`` as the open API takes JSON inside JSON: compact, non-ASCII kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

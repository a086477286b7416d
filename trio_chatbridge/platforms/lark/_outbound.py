"""What a Lark bot sends besides text: posts, cards, images and files, edits, budgets.

Limits the platform documents (see docs/lark.md and docs/protocols/lark.md): a text or post
message can be edited (``PUT``) at most 20 times; a card is updated in place by ``PATCH``, at
most 5 times a second per message, within 14 days; a card or post body is at most 30 KB.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, final

import attrs

from ..._content import Attachment, Card, Content, Markdown, Post, unsupported
from ..._errors import ConfigurationError
from ._api import LarkError, OpenAPI
from ._convert import PLATFORM

MAX_EDITS: Final = 20  # edits (PUT) of one text or post message the platform allows
EDIT_INTERVAL: Final = 1.0  # seconds between edits of one streamed reply, by default
FILE_TYPES: Final = {"video": ("mp4", "media"), "voice": ("opus", "audio")}
"""Upload ``file_type`` and message ``msg_type`` per media kind; anything else is a file."""


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
        if self.interval < 0 or not 0 <= self.max_edits <= MAX_EDITS:
            raise ConfigurationError(
                f"EditBudget: interval must be >= 0 and max_edits within 0..{MAX_EDITS} "
                f"(Lark's limit per message); got {self.interval}, {self.max_edits}"
            )


def body(account: str, content: Content, key: str | None = None) -> tuple[str, str]:
    """``(msg_type, content)`` for the open API; ``key`` is an uploaded attachment's."""
    if isinstance(content, str):
        return "text", _dumps({"text": content})
    if isinstance(content, Markdown):
        return "post", _dumps({"zh_cn": {"content": [[{"tag": "md", "text": content.text}]]}})
    if isinstance(content, Post):
        return "post", _dumps(content.as_dict())
    if isinstance(content, Card):
        return "interactive", _dumps(content.as_dict())
    if isinstance(content, Attachment) and key is not None:
        kind = content.media_kind
        if kind == "image":
            return "image", _dumps({"image_key": key})
        return FILE_TYPES.get(kind, ("stream", "file"))[1], _dumps({"file_key": key})
    raise unsupported(PLATFORM, account, content, "send text, Markdown, a post or a card")


async def upload(api: OpenAPI, attachment: Attachment) -> str:
    """Upload an image (``image_key``) or a file, video or voice clip (``file_key``), through
    :meth:`OpenAPI.call` (a multipart body): an expired token is renewed, a rate limit retried.
    If cancelled, the file may or may not have been uploaded; its key is lost either way."""
    kind = attachment.media_kind
    files = {"image" if kind == "image" else "file": (attachment.filename, attachment.data)}
    if kind == "image":
        path, form, answer_key = "/open-apis/im/v1/images", {"image_type": "message"}, "image_key"
    else:
        file_type = FILE_TYPES.get(kind, ("stream", "file"))[0]
        form = {"file_type": file_type, "file_name": attachment.filename}
        path, answer_key = "/open-apis/im/v1/files", "file_key"
    data = await api.call("POST", path, form, files=files)
    key = data.get(answer_key) if isinstance(data, dict) else None
    if not isinstance(key, str):
        raise LarkError(f"app {api.app_id}: POST {path}", -1, f"no {answer_key} in the answer")
    return key


async def reply(api: OpenAPI, message_id: str, msg_type: str, content: str) -> str:
    """Reply to a message; returns the new message's id. If cancelled, the reply may or may
    not have been sent."""
    data = await api.call(
        "POST",
        f"/open-apis/im/v1/messages/{message_id}/reply",
        {"msg_type": msg_type, "content": content},
    )
    return str(data.get("message_id", ""))


async def create(api: OpenAPI, receive_id: str, msg_type: str, content: str) -> str:
    """Send to a chat (``oc_...``) or a user (``ou_...``, ``on_...``); returns the id. If
    cancelled, the message may or may not have been sent."""
    id_type = receive_id_type(receive_id)
    data = await api.call(
        "POST",
        f"/open-apis/im/v1/messages?receive_id_type={id_type}",
        {"receive_id": receive_id, "msg_type": msg_type, "content": content},
    )
    return str(data.get("message_id", ""))


async def update(api: OpenAPI, message_id: str, msg_type: str, content: str) -> None:
    """Edit a sent text or post (``PUT``), or a card in place (``PATCH``). If cancelled, the
    message shows the old content or the new."""
    path = f"/open-apis/im/v1/messages/{message_id}"
    if msg_type == "interactive":
        await api.call("PATCH", path, {"content": content})
    else:
        await api.call("PUT", path, {"msg_type": msg_type, "content": content})


def receive_id_type(receive_id: str) -> str:
    """Which ``receive_id_type`` an id is, from its prefix (``oc_`` chats, ``ou_`` open ids,
    ``on_`` union ids); anything else is taken for a chat id."""
    prefixes = {"ou_": "open_id", "on_": "union_id"}
    return prefixes.get(receive_id[:3], "chat_id")


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

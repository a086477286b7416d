"""The open API calls a Lark bot sends with: uploads, replies, new messages, edits.

What each call carries, and when to make which, is decided without I/O in ``_send_policy.py``;
these functions only call :class:`OpenAPI`.
"""

from __future__ import annotations

import json
from typing import Any, final

import attrs

from ..._content import Attachment
from ..._errors import ProtocolError, SendError
from ._api import LarkAnswerError, OpenAPI
from ._send_policy import receive_id_type, refused_upload, upload_of


async def upload(api: OpenAPI, attachment: Attachment) -> str:
    """Upload an image (``image_key``) or a file, video or voice clip (``file_key``), through
    :meth:`OpenAPI.call` (a multipart body): an expired token is renewed, a rate limit retried.
    One the platform would refuse for its size (empty, an image over 10 MiB, a file over
    30 MiB) is a :class:`SendError` before anything is sent.
    If cancelled, the file may or may not have been uploaded; its key is lost either way."""
    how = upload_of(attachment)
    refused = refused_upload(api.app_id, attachment, how)
    if refused is not None:
        raise SendError(refused)
    files = {how.field: (attachment.filename, attachment.data)}
    data = await api.call("POST", how.path, how.form, files=files)
    key = data.get(how.answer_key) if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        raise LarkAnswerError(f"app {api.app_id}: POST {how.path}", how.answer_key)
    return key


@final
@attrs.frozen
class Posted:
    """What a send's answer says of the message it made."""

    message_id: str
    holds_sent: bool
    """Whether the message holds the content this send carried. Not when a send with the
    same ``uuid`` within the hour made it (the platform answers with that message, as it
    was sent or edited since: an earlier try whose answer was lost, or a run's first life
    before a restart), nor when the answer does not say (its ``body.content``)."""


async def reply(
    api: OpenAPI, message_id: str, msg_type: str, content: str, uuid: str | None = None
) -> Posted:
    """Reply to a message. Calls with the same ``uuid`` make one message within an hour
    (docs/protocols/lark.md#open-api). If cancelled, the reply may or may not have been sent."""
    body = {"msg_type": msg_type, "content": content}
    path = f"/open-apis/im/v1/messages/{message_id}/reply"
    data = await api.call("POST", path, _with_uuid(body, uuid))
    return _posted(api, path, data, content)


async def create(
    api: OpenAPI, receive_id: str, msg_type: str, content: str, uuid: str | None = None
) -> Posted:
    """Send to a chat (``oc_...``) or a user (``ou_...``, ``on_...``); the same ``uuid`` as
    :func:`reply`. If cancelled, the message may or may not have been sent."""
    body = {"receive_id": receive_id, "msg_type": msg_type, "content": content}
    path = f"/open-apis/im/v1/messages?receive_id_type={receive_id_type(receive_id)}"
    data = await api.call("POST", path, _with_uuid(body, uuid))
    return _posted(api, path, data, content)


def _posted(api: OpenAPI, path: str, data: dict[str, Any], content: str) -> Posted:
    """A send's answer, for a send that carried ``content``. One without the new message's
    id (the message may have been sent) is a :class:`ProtocolError`: nothing could edit or
    quote it."""
    message_id = data.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise ProtocolError(
            f"Lark app {api.app_id}: POST {path} answered without the new message's "
            f"message_id (got {str(message_id)[:40]!r}); the message may have been sent"
        )
    return Posted(message_id, _holds(data.get("body"), content))


def _holds(body: object, content: str) -> bool:
    """Whether an answer's message ``body`` holds ``content``: the same JSON, however the
    platform spaced or escaped it."""
    shown = body.get("content") if isinstance(body, dict) else None
    if not isinstance(shown, str):
        return False
    if shown == content:
        return True
    try:
        return bool(json.loads(shown) == json.loads(content))
    except (ValueError, RecursionError):
        return False


def _with_uuid(body: dict[str, str], uuid: str | None) -> dict[str, str]:
    """``body``, with ``uuid`` when one is given."""
    return body if uuid is None else {**body, "uuid": uuid}


async def update(api: OpenAPI, message_id: str, msg_type: str, content: str) -> None:
    """Edit a sent text or post (``PUT``), or a card in place (``PATCH``). If cancelled, the
    message shows the old content or the new."""
    path = f"/open-apis/im/v1/messages/{message_id}"
    if msg_type == "interactive":
        await api.call("PATCH", path, {"content": content})
    else:
        await api.call("PUT", path, {"msg_type": msg_type, "content": content})

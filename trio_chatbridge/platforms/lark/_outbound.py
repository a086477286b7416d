"""The open API calls a Lark bot sends with: uploads, replies, new messages, edits.

What each call carries, and when to make which, is decided without I/O in ``_send_policy.py``;
these functions only call :class:`OpenAPI`.
"""

from __future__ import annotations

from typing import Any

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


async def reply(
    api: OpenAPI, message_id: str, msg_type: str, content: str, uuid: str | None = None
) -> str:
    """Reply to a message; returns the new message's id. Calls with the same ``uuid`` make
    one message within an hour (docs/protocols/lark.md#open-api). If cancelled, the reply may
    or may not have been sent."""
    body = {"msg_type": msg_type, "content": content}
    path = f"/open-apis/im/v1/messages/{message_id}/reply"
    data = await api.call("POST", path, _with_uuid(body, uuid))
    return _message_id(api, path, data)


async def create(
    api: OpenAPI, receive_id: str, msg_type: str, content: str, uuid: str | None = None
) -> str:
    """Send to a chat (``oc_...``) or a user (``ou_...``, ``on_...``); returns the id; the
    same ``uuid`` as :func:`reply`. If cancelled, the message may or may not have been sent."""
    body = {"receive_id": receive_id, "msg_type": msg_type, "content": content}
    path = f"/open-apis/im/v1/messages?receive_id_type={receive_id_type(receive_id)}"
    data = await api.call("POST", path, _with_uuid(body, uuid))
    return _message_id(api, path, data)


def _message_id(api: OpenAPI, path: str, data: dict[str, Any]) -> str:
    """The new message's id in a send's answer; an answer without one (the message may have
    been sent) is a :class:`ProtocolError`: nothing could edit or quote it."""
    message_id = data.get("message_id")
    if not isinstance(message_id, str) or not message_id:
        raise ProtocolError(
            f"Lark app {api.app_id}: POST {path} answered without the new message's "
            f"message_id (got {str(message_id)[:40]!r}); the message may have been sent"
        )
    return message_id


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

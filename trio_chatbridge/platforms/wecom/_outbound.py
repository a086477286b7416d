"""What the WeCom long connection sends besides streams: media uploads and message bodies.

Media goes up in chunks over the socket itself, as the official Node SDK does (see
docs/protocols/wecom.md): ``aibot_upload_media_init`` answers an ``upload_id``, each
``aibot_upload_media_chunk`` carries up to 512 KiB as base64 (indexes from 0), and
``aibot_upload_media_finish`` answers the ``media_id`` (valid three days) that a reply or a
proactive message then names.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from ..._content import Attachment, Card, Content, Markdown, unsupported
from ..._errors import ProtocolError, SendError
from ..._ws_core import Answer
from . import _protocol as f
from ._convert import PLATFORM

UPLOAD_INIT: Final = "aibot_upload_media_init"
UPLOAD_CHUNK: Final = "aibot_upload_media_chunk"
UPLOAD_FINISH: Final = "aibot_upload_media_finish"
RESPOND_UPDATE: Final = "aibot_respond_update_msg"
CHUNK_BYTES: Final = 512 * 1024  # raw bytes per chunk, before base64
MAX_CHUNKS: Final = 100
MAX_UPLOAD_BYTES: Final = MAX_CHUNKS * CHUNK_BYTES  # bytes: 50 MiB per file

Command = Callable[[str, str, Mapping[str, Any]], Awaitable[Answer]]
"""Send one command on a fresh or given req_id; its answer (``LongConnection.command``)."""


async def upload(command: Command, account: str, attachment: Attachment) -> str:
    """Upload ``attachment`` in chunks; returns its ``media_id``. A file over
    :data:`MAX_UPLOAD_BYTES` is refused before anything is copied or sent. If cancelled, the
    upload is abandoned where it was: WeCom may keep an unfinished upload (it is never
    finished, so no ``media_id`` refers to it) and nothing was sent to anyone."""
    data = attachment.data
    if len(data) > MAX_UPLOAD_BYTES:
        raise SendError(
            f"wecom bot {account}: {attachment.filename} is {len(data)} bytes; WeCom takes at "
            f"most {MAX_UPLOAD_BYTES} (50 MiB) per upload"
        )
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    init = await command(
        UPLOAD_INIT,
        f.new_req_id(UPLOAD_INIT),
        {
            "type": attachment.media_kind,
            "filename": attachment.filename,
            "total_size": len(data),
            "total_chunks": len(chunks),
            "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(),
        },
    )
    upload_id = _answer(init, "upload_id", UPLOAD_INIT)
    for index, chunk in enumerate(chunks):
        await command(
            UPLOAD_CHUNK,
            f.new_req_id(UPLOAD_CHUNK),
            {
                "upload_id": upload_id,
                "chunk_index": index,
                "base64_data": base64.b64encode(chunk).decode(),
            },
        )
    finish = await command(UPLOAD_FINISH, f.new_req_id(UPLOAD_FINISH), {"upload_id": upload_id})
    return _answer(finish, "media_id", UPLOAD_FINISH)


def _answer(ack: Answer, key: str, cmd: str) -> str:
    value = ack.body.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"wecom {cmd} was acknowledged without a {key}")
    return value


def message_body(account: str, content: Content, media_id: str | None = None) -> dict[str, Any]:
    """The body of a single (not streamed) message: a card or uploaded media.

    Text and Markdown are streams on a reply and ``markdown`` when proactive (the callers
    handle those); a post is Lark's.
    """
    if isinstance(content, Card):
        return {"msgtype": "template_card", "template_card": content.as_dict()}
    if isinstance(content, Attachment) and media_id is not None:
        kind = content.media_kind
        return {"msgtype": kind, kind: {"media_id": media_id}}
    raise unsupported(PLATFORM, account, content, "send text, Markdown, a card or an attachment")


def is_text(content: Content) -> bool:
    """True for what WeCom shows as Markdown text (a ``str`` or :class:`Markdown`)."""
    return isinstance(content, str | Markdown)


def text_of(content: Content) -> str:
    return content.text if isinstance(content, Markdown) else str(content)

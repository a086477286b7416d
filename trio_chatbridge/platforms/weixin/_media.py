"""Media on the WeChat CDN: guarded downloads of inbound media, encrypted uploads
(docs/protocols/weixin.md#media).

A download goes through the core's guard (allowed hosts, a size cap, a deadline), then is
decrypted with whichever key the item carries. An upload encrypts with a fresh key, POSTs the
ciphertext (three attempts, paced by the one retry policy; a 4xx aborts), and returns the
message item that refers to it.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import secrets
from typing import Any, Final

import trio

from ..._errors import ConnectorError, MediaError, ProtocolError
from ..._http import HTTPRefusedError, send
from ..._media import MediaPolicy, fetch, guarded_request
from ..._messages import Media
from ..._supervise import Backoff
from . import _crypto
from . import _protocol as p
from ._api import ILinkClient

ERROR_PEEK: Final = 64 * 1024  # bytes of a CDN answer read at most (its error message)
UPLOAD_BACKOFF: Final = Backoff(initial=1.0, maximum=4.0, jitter=0.0)
"""The one retry policy between a CDN upload's attempts: 1 s, then 2 s, or a 429's longer
``Retry-After``."""
UPLOAD_MAX_WAIT: Final = 60.0
"""Seconds: a longer wait asked between attempts (``Retry-After``) fails the upload at once
rather than hold the reply that much longer."""
DEFAULT_ALLOWED_HOSTS: Final = (
    "novac2c.cdn.weixin.qq.com",
    "ilinkai.weixin.qq.com",
    ".qlogo.cn",
    ".qpic.cn",
)


def default_policy() -> MediaPolicy:
    """WeChat's CDN hosts, the reference client's 100 MiB cap, a 60 s deadline."""
    return MediaPolicy(allowed_hosts=DEFAULT_ALLOWED_HOSTS, max_bytes=p.MEDIA_MAX_BYTES)


async def download(client: ILinkClient, policy: MediaPolicy, media: Media) -> bytes:
    """Fetch and decrypt inbound media; raises :class:`MediaError` with the reason. If
    cancelled, nothing is kept."""
    ref = media.ref
    url = ref.get("full_url") or (
        client.download_url(ref["encrypt_query_param"]) if ref.get("encrypt_query_param") else None
    )
    if not url:
        raise MediaError(f"this {media.kind} has no download location")
    ciphertext = await fetch(client.http, url, policy, client.cdn_host)
    key = _key_for(media)
    if key is None:
        if media.kind == "image":
            # an image without any key is stored in the clear
            # (docs/protocols/weixin.md#media-download)
            return ciphertext
        raise MediaError(f"this {media.kind} has no aes_key to decrypt it with")
    try:
        return _crypto.decrypt(key, ciphertext)
    except ProtocolError as exc:
        raise MediaError(f"cannot decrypt the {media.kind}: {exc}") from exc


def _key_for(media: Media) -> bytes | None:
    try:
        if media.kind == "image" and media.ref.get("image_aeskey"):
            return _crypto.parse_hex_key(media.ref["image_aeskey"])
        if media.ref.get("aes_key"):
            return _crypto.parse_aes_key(media.ref["aes_key"])
    except ProtocolError as exc:
        raise MediaError(f"bad media key: {exc}") from exc
    return None


def upload_type(filename: str, kind: str | None = None) -> p.UploadMediaType:
    """The upload media type, from ``kind`` if given, else from the file name's MIME type."""
    if kind is not None:
        return {
            "image": p.UploadMediaType.IMAGE,
            "video": p.UploadMediaType.VIDEO,
            "voice": p.UploadMediaType.VOICE,
        }.get(kind, p.UploadMediaType.FILE)
    mime = mimetypes.guess_type(filename)[0] or ""
    for prefix, media_type in (
        ("video/", p.UploadMediaType.VIDEO),
        ("image/", p.UploadMediaType.IMAGE),
        ("audio/", p.UploadMediaType.VOICE),
    ):
        if mime.startswith(prefix):
            return media_type
    return p.UploadMediaType.FILE


async def upload(
    client: ILinkClient,
    policy: MediaPolicy,
    to_user: str,
    data: bytes,
    filename: str,
    kind: str | None = None,
) -> dict[str, Any]:
    """Encrypt and upload ``data``; returns the ``item_list`` entry that sends it.

    See ``docs/protocols/weixin.md#media-upload``. The upload URL comes from the server, so
    it obeys ``policy`` as a download's does (http or https, an allowed host or the CDN's).
    If cancelled, nothing was sent to anyone; the CDN may keep a file no message names.
    """
    media_type = upload_type(filename, kind)
    filekey = secrets.token_hex(16)
    key = secrets.token_bytes(16)
    ciphertext = _crypto.encrypt(key, data)
    answer = await client.get_upload_url(
        {
            "filekey": filekey,
            "media_type": int(media_type),
            "to_user_id": to_user,
            "rawsize": len(data),
            "rawfilemd5": hashlib.md5(data).hexdigest(),
            "filesize": len(ciphertext),
            "no_need_thumb": True,
            "aeskey": key.hex(),
        }
    )
    url = client.upload_url(answer, filekey)
    download_param = await _post_ciphertext(client, policy, url, ciphertext)
    # The outbound aes_key is base64 of the hex digits, not of the raw key [7.1 step 8].
    media = {
        "encrypt_query_param": download_param,
        "aes_key": base64.b64encode(key.hex().encode()).decode(),
        "encrypt_type": 1,
    }
    if media_type is p.UploadMediaType.IMAGE:
        return {
            "type": p.ItemType.IMAGE,
            "image_item": {"media": media, "mid_size": len(ciphertext)},
        }
    if media_type is p.UploadMediaType.VIDEO:
        return {
            "type": p.ItemType.VIDEO,
            "video_item": {"media": media, "video_size": len(ciphertext)},
        }
    if media_type is p.UploadMediaType.VOICE:
        return {"type": p.ItemType.VOICE, "voice_item": {"media": media, "encode_type": 6}}
    return {
        "type": p.ItemType.FILE,
        "file_item": {"media": media, "file_name": filename, "len": str(len(data))},
    }


async def _post_ciphertext(
    client: ILinkClient, policy: MediaPolicy, url: str, ciphertext: bytes
) -> str:
    """POST the ciphertext where ``getuploadurl`` said, three attempts; the URL came from the
    network, so it must pass ``policy`` first. Returns ``x-encrypted-param``. Failures are
    mapped by the one HTTP mapping (``_http.send``): what it retries (no answer, 408, 425, 429,
    5xx, an unreadable answer) takes another attempt after :data:`UPLOAD_BACKOFF`'s wait (at
    least the server's ``Retry-After``); a 4xx aborts. If cancelled, the CDN may or may not
    have the file; nothing refers to it."""
    retries = UPLOAD_BACKOFF.retries(p.UPLOAD_ATTEMPTS - 1)
    while True:
        hint: float | None = None
        request = await guarded_request(
            client.http,
            "POST",
            url,
            policy,
            client.cdn_host,
            verb="upload media to",
            content=ciphertext,
            headers={"Content-Type": "application/octet-stream"},
        )
        try:
            answer = await send(
                client.http,
                request,
                what="WeChat CDN upload",
                platform="weixin",
                time_limit=p.API_TIMEOUT * 4,
                max_bytes=ERROR_PEEK,
            )
        except HTTPRefusedError as exc:  # an answer that is neither 2xx nor 4xx nor 5xx
            raise MediaError(f"CDN refused the upload: {exc}") from exc
        except (ConnectorError, ProtocolError) as exc:  # unreachable, timed out, 429 or 5xx
            last, hint = str(exc), getattr(exc, "retry_after", None)
        else:
            if not answer.ok:  # a 4xx: this upload will never be taken
                reason = answer.headers.get("x-error-message") or answer.body[:200].decode(
                    errors="replace"
                )
                raise MediaError(f"CDN refused the upload (HTTP {answer.status}): {reason}")
            param: str | None = answer.headers.get("x-encrypted-param")
            if answer.status == 200 and param:
                return param
            last = f"HTTP {answer.status} without x-encrypted-param"
        delay = retries.fail(hint)
        if delay is None:
            raise MediaError(
                f"CDN upload failed after {p.UPLOAD_ATTEMPTS} attempts; the last: {last}"
            )
        if delay > UPLOAD_MAX_WAIT:
            raise MediaError(
                f"CDN upload: the server asked to wait {delay:.0f} s before another attempt "
                f"(more than {UPLOAD_MAX_WAIT:.0f} s): given up; the last: {last}"
            )
        await trio.sleep(delay)

"""An httpx client for the iLink bot HTTP API: one method per endpoint, errors mapped once.

Timeouts are Trio cancel scopes (so they follow Trio's clock, mock clocks included); httpx's
own timeout stays as a backstop a little longer. Every lower-level failure is mapped in
:meth:`ILinkClient._request`: transport problems become :class:`ConnectorError` (retry),
answers that are not JSON objects become :class:`ProtocolError`, and non-zero ``ret`` /
``errcode`` become :class:`ILinkError` carrying both codes and the server's message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, final
from urllib.parse import quote, urlsplit

import httpx
import trio

from ..._errors import ChatBridgeError, ConnectorError, PlatformError, ProtocolError
from ..._json import MAX_JSON_BYTES, json_object, json_object_items, read_body
from . import _protocol as p

log = logging.getLogger("trio_chatbridge.weixin.api")

BACKSTOP: Final = 10.0  # seconds httpx waits beyond our own deadline


class ILinkError(PlatformError):
    """The iLink API answered with an error code (HTTP 200 with ``ret``/``errcode`` != 0)."""

    platform = "weixin"

    def __init__(
        self,
        endpoint: str,
        *,
        ret: int | None = None,
        errcode: int | None = None,
        errmsg: str | None = None,
        hint: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.ret = ret
        self.errcode = errcode
        self.errmsg = errmsg
        detail = f"iLink {endpoint} failed: ret={ret} errcode={errcode} errmsg={errmsg!r}"
        super().__init__(f"{detail}. {hint}".strip() if hint else detail)

    @property
    def code(self) -> int | None:
        """The code that matters: ``ret`` if non-zero, else ``errcode``."""
        return self.ret or self.errcode


class SessionExpiredError(ILinkError):
    """errcode/ret -14: the bot token is stale; a new QR login is needed."""


class HTTPStatusError(ConnectorError):
    """The API answered with a non-2xx HTTP status (e.g. a 524 gateway timeout)."""

    def __init__(self, endpoint: str, status: int, body: bytes) -> None:
        self.status = status
        super().__init__(f"iLink {endpoint}: HTTP {status} {body[:200]!r}")


def raise_for_code(endpoint: str, data: Mapping[str, Any]) -> None:
    """Raise the error a response's non-zero ``ret``/``errcode`` means, if any."""
    code = p.error_code(data)
    if code is None:
        return
    ret, errcode, errmsg = (
        p.read_int(data, "ret"),
        p.read_int(data, "errcode"),
        p.read_str(data, "errmsg"),
    )
    if code == p.SESSION_EXPIRED:
        raise SessionExpiredError(
            endpoint,
            ret=ret,
            errcode=errcode,
            errmsg=errmsg,
            hint="The bot's session expired (token stale, or bound elsewhere): log in again "
            "with 'python -m trio_chatbridge weixin-login'.",
        )
    raise ILinkError(endpoint, ret=ret, errcode=errcode, errmsg=errmsg)


@final
class ILinkClient:
    """Typed calls of the iLink bot API for one bot token. Pass ``http`` to share a client."""

    def __init__(
        self,
        token: str | None,
        *,
        base_url: str = p.DEFAULT_BASE_URL,
        cdn_base_url: str = p.DEFAULT_CDN_BASE_URL,
        route_tag: str | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``http``: a client to share (the caller closes it); else one is made here, on
        ``transport`` if given (an emulator's), and closed by :meth:`aclose`."""
        self._token = token
        self.base_url: str = p.normalise_base_url(base_url)
        self.cdn_base_url: str = cdn_base_url.rstrip("/")
        self.route_tag = route_tag
        self._own_http = http is None
        self.http: httpx.AsyncClient = (
            http if http is not None else httpx.AsyncClient(transport=transport)
        )

    def __repr__(self) -> str:  # never the token
        return f"ILinkClient(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # -- plumbing ---------------------------------------------------------------------------

    async def _request(
        self,
        endpoint: str,
        *,
        method: str = "POST",
        body: Mapping[str, Any] | None = None,
        time_limit: float,
        base: str | None = None,
        auth: bool = True,
        params: Mapping[str, str] | None = None,
        max_bytes: int = MAX_JSON_BYTES,
        items: str | None = None,
    ) -> dict[str, Any]:
        """One call; returns the JSON object (``{}`` for an empty body). Raises on timeout.

        The answer is read with a cap of ``max_bytes``; ``items`` names an array of the
        answer whose elements are decoded one by one if need be (see ``json_object_items``).
        """
        url = (base or self.base_url) + endpoint
        if method == "POST":
            headers = p.post_headers(self._token if auth else None, self.route_tag)
            content = json.dumps(body or {}, ensure_ascii=False).encode()
        else:
            headers, content = p.common_headers(self.route_tag), None
        what = f"iLink {endpoint}"
        try:
            with trio.fail_after(time_limit):
                async with self.http.stream(
                    method,
                    url,
                    headers=headers,
                    content=content,
                    params=params,
                    timeout=time_limit + BACKSTOP,
                ) as response:
                    data = await read_body(response, what, max_bytes=max_bytes)
        except trio.TooSlowError:
            raise
        except httpx.TimeoutException as exc:
            raise trio.TooSlowError(f"iLink {endpoint} timed out") from exc
        except httpx.HTTPError as exc:
            raise ConnectorError(f"iLink {endpoint}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise HTTPStatusError(endpoint, response.status_code, data)
        if not data.strip():
            # sendmessage may answer with nothing at all (docs/protocols/weixin.md#sendmessage)
            return {}
        if items is not None:
            return json_object_items(data, what, items, max_bytes=max_bytes)
        return json_object(data, what, max_bytes=max_bytes)

    # -- endpoints --------------------------------------------------------------------------

    async def get_updates(self, cursor: str, time_limit: float) -> p.GetUpdatesResponse:
        """Long-poll for messages; a client-side timeout is an empty answer, not an error.

        See ``docs/protocols/weixin.md#timeouts``.
        """
        body = {"get_updates_buf": cursor, "base_info": p.base_info()}
        try:
            data = await self._request(
                "ilink/bot/getupdates",
                body=body,
                time_limit=time_limit,
                max_bytes=p.PAGE_MAX_BYTES,
                items="msgs",
            )
        except trio.TooSlowError:
            return p.GetUpdatesResponse.empty()
        return p.GetUpdatesResponse.parse(data)

    async def send_message(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Send one message; an empty body or a missing ``ret`` is success.

        See ``docs/protocols/weixin.md#sendmessage``.
        """
        body = {"msg": dict(msg), "base_info": p.base_info()}
        return await self._call("ilink/bot/sendmessage", body, p.API_TIMEOUT)

    async def get_config(self, user_id: str, context_token: str | None) -> dict[str, Any]:
        """The account's config for a peer: its ``typing_ticket``.

        See ``docs/protocols/weixin.md#typing``.
        """
        body: dict[str, Any] = {"ilink_user_id": user_id, "base_info": p.base_info()}
        if context_token:
            body["context_token"] = context_token
        return await self._call("ilink/bot/getconfig", body, p.CONFIG_TIMEOUT)

    async def send_typing(self, user_id: str, ticket: str, status: p.TypingStatus) -> None:
        """Show (or cancel) "typing..." to a peer, with a ticket from :meth:`get_config`.

        See ``docs/protocols/weixin.md#typing``.
        """
        body = {
            "ilink_user_id": user_id,
            "typing_ticket": ticket,
            "status": int(status),
            "base_info": p.base_info(),
        }
        await self._call("ilink/bot/sendtyping", body, p.CONFIG_TIMEOUT)

    async def notify(self, what: str) -> bool:
        """``notifystart`` / ``notifystop``: best effort, so failures are only logged; returns
        whether the server accepted it.

        See ``docs/protocols/weixin.md#notifystart-and-notifystop``.
        """
        try:
            await self._call(
                f"ilink/bot/msg/{what}", {"base_info": p.base_info()}, p.CONFIG_TIMEOUT
            )
        except (ChatBridgeError, trio.TooSlowError) as exc:
            log.info("iLink %s failed (ignored): %s", what, exc)
            return False
        return True

    async def get_upload_url(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Where to upload an encrypted file to the CDN (``upload_param`` or a full URL).

        See ``docs/protocols/weixin.md#getuploadurl``.
        """
        body = {**request, "base_info": p.base_info()}
        return await self._call("ilink/bot/getuploadurl", body, p.API_TIMEOUT)

    async def _call(
        self, endpoint: str, body: Mapping[str, Any], time_limit: float
    ) -> dict[str, Any]:
        try:
            data = await self._request(endpoint, body=body, time_limit=time_limit)
        except trio.TooSlowError as exc:
            raise ConnectorError(f"iLink {endpoint} timed out after {time_limit} s") from exc
        raise_for_code(endpoint, data)
        return data

    # -- QR login: no token, fixed base (docs/protocols/weixin.md#qr-login) ---------------------

    async def get_bot_qrcode(self, local_tokens: Sequence[str] = ()) -> dict[str, Any]:
        """A login QR code (no token needed); step one of :func:`login`.

        See ``docs/protocols/weixin.md#qr-login``.
        """
        body = {"local_token_list": list(local_tokens)[-10:]}
        return await self._request(
            "ilink/bot/get_bot_qrcode",
            body=body,
            time_limit=p.API_TIMEOUT,
            auth=False,
            params={"bot_type": "3"},
        )

    async def get_qrcode_status(
        self, qrcode: str, *, base: str | None = None, verify_code: str | None = None
    ) -> dict[str, Any]:
        """One status long poll; a timeout or a network error means ``wait``.

        See ``docs/protocols/weixin.md#qr-login``.
        """
        params = {"qrcode": qrcode}
        if verify_code:
            params["verify_code"] = verify_code
        try:
            return await self._request(
                "ilink/bot/get_qrcode_status",
                method="GET",
                time_limit=p.QR_POLL_TIMEOUT,
                base=base,
                params=params,
            )
        except (trio.TooSlowError, ConnectorError):
            return {"status": "wait"}

    # -- CDN ---------------------------------------------------------------------------------

    def upload_url(self, answer: Mapping[str, Any], filekey: str) -> str:
        """Where to POST the ciphertext: ``upload_full_url``, else built from ``upload_param``."""
        full = (p.read_str(answer, "upload_full_url") or "").strip()
        if full:
            return full
        param = p.read_str(answer, "upload_param")
        if not param:
            raise ProtocolError("getuploadurl gave neither upload_full_url nor upload_param")
        return (
            f"{self.cdn_base_url}/upload?encrypted_query_param={quote(param, safe='')}"
            f"&filekey={quote(filekey, safe='')}"
        )

    def download_url(self, encrypt_query_param: str) -> str:
        """The CDN URL of inbound media, from its ``encrypt_query_param``."""
        param = quote(encrypt_query_param, safe="")
        return f"{self.cdn_base_url}/download?encrypted_query_param={param}"

    @property
    def cdn_host(self) -> str:
        return urlsplit(self.cdn_base_url).hostname or ""

"""An httpx client for the iLink bot HTTP API: one method per endpoint, errors mapped once.

Requests are described by the protocol core's helpers and sent by the long-poll driver's
:func:`~trio_chatbridge._longpoll.exchange`, on the library's one HTTP mapping: transport
problems and transient statuses (408, 425, 429, 5xx: :class:`HTTPStatusError`) become
:class:`ConnectorError` (retry), any other 4xx :class:`HTTPRefusedError` (the call fails at
once); timeouts are Trio cancel scopes (so they follow Trio's clock, mock clocks included).
Here, answers that are not JSON objects become :class:`ProtocolError`, and non-zero ``ret`` /
``errcode`` become :class:`ILinkError` carrying both codes and the server's message. The long
poll itself is not here: the driver runs the protocol core's :class:`~._protocol.Poller`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, final
from urllib.parse import quote, urlsplit

import httpx
import trio

from ..._errors import ChatBridgeError, ConnectorError, ProtocolError
from ..._http import HTTPRefusedError as HTTPRefusedError
from ..._http import HTTPStatusError as HTTPStatusError
from ..._http import new_client
from ..._json import MAX_JSON_BYTES, json_object
from ..._longpoll import exchange
from ..._poll_events import HTTPRequest
from . import _protocol as p
from ._convert import PLATFORM
from ._protocol import ILinkError as ILinkError
from ._protocol import SessionExpiredError as SessionExpiredError

log = logging.getLogger("trio_chatbridge.weixin.api")


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
        on_session_expired: Callable[[SessionExpiredError], None] | None = None,
    ) -> None:
        """``http``: a client to share (the caller closes it); else one is made here, on
        ``transport`` if given (an emulator's), and closed by :meth:`aclose`.
        ``on_session_expired`` is told of every errcode -14 an authenticated call meets
        with the token in use (the connector pauses the account there), before the call
        raises it; one met by a call made with a token :meth:`use_token` replaced since is
        only raised."""
        self._token = token
        self._on_session_expired = on_session_expired
        self.base_url: str = p.normalise_base_url(base_url)
        self.cdn_base_url: str = cdn_base_url.rstrip("/")
        self.route_tag = route_tag
        self._own_http = http is None
        self.http: httpx.AsyncClient = http if http is not None else new_client(transport)

    def __repr__(self) -> str:  # never the token
        return f"ILinkClient(base_url={self.base_url!r})"

    def use_token(self, token: str, base_url: str) -> None:
        """Send ``token`` to ``base_url`` from now on (a new login's); requests under way
        keep the old ones."""
        self._token = token
        self.base_url = p.normalise_base_url(base_url)

    async def aclose(self) -> None:
        """Close the httpx client made here (not one passed as ``http``). If cancelled, it
        may be left open."""
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
    ) -> dict[str, Any]:
        """One call; returns the JSON object (``{}`` for an empty body). Raises
        :class:`trio.TooSlowError` when no answer came within ``time_limit`` seconds."""
        url = str(httpx.URL((base or self.base_url) + endpoint, params=params))
        if method == "POST":
            headers = p.post_headers(self._token if auth else None, self.route_tag)
            content = p.encode_body(body or {})
        else:
            headers, content = p.common_headers(self.route_tag), b""
        what = f"iLink {endpoint}"
        request = HTTPRequest(what, method, url, headers, content, time_limit, MAX_JSON_BYTES)
        data = await exchange(self.http, request, PLATFORM)
        if data is None:
            raise trio.TooSlowError(f"{what} timed out")
        if not data.strip():
            # sendmessage may answer with nothing at all (docs/protocols/weixin.md#sendmessage)
            return {}
        return json_object(data, what)

    # -- endpoints --------------------------------------------------------------------------

    async def send_message(self, msg: Mapping[str, Any]) -> dict[str, Any]:
        """Send one message; an empty body or a missing ``ret`` is success. If cancelled,
        the message may or may not have been sent.

        See ``docs/protocols/weixin.md#sendmessage``.
        """
        body = {"msg": dict(msg), "base_info": p.base_info()}
        return await self._call("ilink/bot/sendmessage", body, p.API_TIMEOUT)

    async def get_config(self, user_id: str, context_token: str | None) -> dict[str, Any]:
        """The account's config for a peer: its ``typing_ticket``. If cancelled, nothing
        changed (it only reads).

        See ``docs/protocols/weixin.md#typing``.
        """
        body: dict[str, Any] = {"ilink_user_id": user_id, "base_info": p.base_info()}
        if context_token:
            body["context_token"] = context_token
        return await self._call("ilink/bot/getconfig", body, p.CONFIG_TIMEOUT)

    async def send_typing(self, user_id: str, ticket: str, *, typing: bool) -> None:
        """Show (``typing=True``) or cancel "typing..." to a peer, with a ticket from
        :meth:`get_config`. If cancelled, the indicator may or may not have changed.

        See ``docs/protocols/weixin.md#typing``.
        """
        body = {
            "ilink_user_id": user_id,
            "typing_ticket": ticket,
            "status": int(p.TypingStatus.TYPING if typing else p.TypingStatus.CANCEL),
            "base_info": p.base_info(),
        }
        await self._call("ilink/bot/sendtyping", body, p.CONFIG_TIMEOUT)

    async def notify(self, what: str) -> bool:
        """``notifystart`` / ``notifystop``: best effort, so failures are only logged; returns
        whether the server accepted it. If cancelled, the server may or may not have had it.

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
        """Where to upload an encrypted file to the CDN (``upload_param`` or a full URL). If
        cancelled, nothing was uploaded (the server may have reserved a slot).

        See ``docs/protocols/weixin.md#getuploadurl``.
        """
        body = {**request, "base_info": p.base_info()}
        return await self._call("ilink/bot/getuploadurl", body, p.API_TIMEOUT)

    async def _call(
        self, endpoint: str, body: Mapping[str, Any], time_limit: float
    ) -> dict[str, Any]:
        token = self._token  # what the request carries
        try:
            data = await self._request(endpoint, body=body, time_limit=time_limit)
        except trio.TooSlowError as exc:
            raise ConnectorError(f"iLink {endpoint} timed out after {time_limit} s") from exc
        error = p.error_for(endpoint, data)
        if error is not None:
            # A -14 to a request made with a token replaced since (a new login while it was
            # under way) is the old login's expiry, told already: it pauses nothing.
            current = token == self._token
            if isinstance(error, SessionExpiredError) and current and self._on_session_expired:
                self._on_session_expired(error)
            raise error
        return data

    # -- QR login: no token, fixed base (docs/protocols/weixin.md#qr-login) ---------------------

    async def get_bot_qrcode(self, local_tokens: Sequence[str] = ()) -> dict[str, Any]:
        """A login QR code (no token needed); step one of :func:`login`. If cancelled, no
        code was shown to anyone (the server may have made one, which expires).

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
        """One status long poll; a timeout or a network error means ``wait``. If cancelled,
        nothing changed here (the login goes on server-side until its code expires).

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

"""Guarded downloads of inbound media: an allow-list of hosts, a size cap, a deadline.

A media URL comes from the network, so it is checked before any request (no SSRF through a
crafted URL), read as a stream that stops at the cap, and bounded by a Trio deadline.

The check is by name, then by address: an allowed name is resolved once, refused if any of
its addresses is not a public one (loopback, private, link-local...), and the request goes
to the address that was checked, never to a second lookup that could answer otherwise (DNS
rebinding); TLS still verifies the certificate against the name. A host given as an IP
address is used as it is, but only one listed in ``allowed_hosts`` passes the name check.
A client with a transport of its own (an emulator, a mock) decides itself where requests go:
nothing is resolved for it.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Final, final
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from ._errors import MediaError, ProtocolError
from ._json import read_body

DEFAULT_MAX_BYTES: Final = 100 * 1024 * 1024
DEFAULT_TIMEOUT: Final = 60.0  # seconds


@final
@attrs.frozen
class MediaPolicy:
    """Limits on inbound media downloads; each platform's connector brings its own hosts."""

    allowed_hosts: tuple[str, ...]
    """Hosts media may come from; ``.example.com`` allows its subdomains."""
    max_bytes: int = DEFAULT_MAX_BYTES
    """Refuse media larger than this (bytes as downloaded)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds a download may take in all."""
    private_addresses: bool = False
    """Allow names that resolve to loopback, private or link-local addresses (an
    on-premises media server); off by default: such an address is refused."""

    def allows(self, host: str, also: str = "") -> bool:
        """Whether ``host`` is allowed (``also``: one more host, the configured CDN's)."""
        host = host.lower()
        if also and host == also.lower():
            return True
        return any(
            host == allowed or (allowed.startswith(".") and host.endswith(allowed))
            for allowed in self.allowed_hosts
        )


async def fetch(
    http: httpx.AsyncClient, url: str, policy: MediaPolicy, also_host: str = ""
) -> bytes:
    """GET ``url`` under ``policy``; raises :class:`MediaError` saying what was refused. If
    cancelled, nothing of the body is kept."""
    try:
        with trio.fail_after(policy.timeout):
            request = await guarded_request(http, "GET", url, policy, also_host)
            return await _get_capped(http, request, policy.max_bytes)
    except trio.TooSlowError as exc:
        raise MediaError(f"media download took longer than {policy.timeout} s") from exc
    except httpx.HTTPError as exc:
        raise MediaError(f"media download failed: {type(exc).__name__}: {exc}") from exc


async def guarded_request(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    policy: MediaPolicy,
    also_host: str = "",
    *,
    verb: str = "download media from",
    **options: Any,
) -> httpx.Request:
    """A request to ``url`` that ``policy`` allows, by name then by address (see above), for
    ``http.send``; :class:`MediaError` saying what was refused (``verb`` says what for). It
    sends nothing (it may resolve the host): if cancelled, nothing was sent."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not policy.allows(parts.hostname or "", also_host):
        raise MediaError(
            f"refusing to {verb} {parts.hostname!r}: not an allowed host "
            "(add it to MediaPolicy.allowed_hosts if you trust it)"
        )
    request = http.build_request(method, url, **options)
    if isinstance(http._transport, httpx.AsyncHTTPTransport):  # the network, not a mock
        request = await _pinned(request, policy, verb)
    return request


async def _pinned(request: httpx.Request, policy: MediaPolicy, verb: str) -> httpx.Request:
    """``request`` sent to the one address its host was resolved to and checked against
    ``policy`` (the Host header and TLS server name stay the host's name)."""
    host = request.url.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return request  # an address listed in allowed_hosts: nothing to resolve
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MediaError(f"cannot {verb} {host!r}: the name does not resolve: {exc}") from exc
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        if not policy.private_addresses and not ipaddress.ip_address(address).is_global:
            raise MediaError(
                f"refusing to {verb} {host!r}: it resolves to {address}, not a "
                "public address (set MediaPolicy.private_addresses if that is intended)"
            )
    if not addresses:
        raise MediaError(f"cannot {verb} {host!r}: the name resolves to no address")
    request.url = request.url.copy_with(host=addresses[0])
    request.extensions = {**request.extensions, "sni_hostname": host}
    return request  # its Host header was set from the name already


async def _get_capped(http: httpx.AsyncClient, request: httpx.Request, max_bytes: int) -> bytes:
    # a redirect would leave the address the guard checked, whatever a shared client says
    response = await http.send(request, stream=True, follow_redirects=False)
    try:
        if not response.is_success:
            raise MediaError(f"media download answered HTTP {response.status_code}")
        return await read_body(response, "media", max_bytes=max_bytes)
    except ProtocolError as exc:  # over the cap
        raise MediaError(str(exc)) from exc
    finally:
        await response.aclose()

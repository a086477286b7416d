"""Guarded downloads of inbound media: an allow-list of hosts, a size cap, a deadline.

A media URL comes from the network, so it is checked before any request (no SSRF through a
crafted URL), read as a stream that stops at the cap, and bounded by a Trio deadline.
"""

from __future__ import annotations

from typing import Final, final
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from ._errors import MediaError

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
    """GET ``url`` under ``policy``; raises :class:`MediaError` saying what was refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not policy.allows(parts.hostname or "", also_host):
        raise MediaError(
            f"refusing to download media from {parts.hostname!r}: not an allowed host "
            "(add it to MediaPolicy.allowed_hosts if you trust it)"
        )
    try:
        with trio.fail_after(policy.timeout):
            return await _get_capped(http, url, policy.max_bytes)
    except trio.TooSlowError as exc:
        raise MediaError(f"media download took longer than {policy.timeout} s") from exc
    except httpx.HTTPError as exc:
        raise MediaError(f"media download failed: {type(exc).__name__}: {exc}") from exc


async def _get_capped(http: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with http.stream("GET", url) as response:
        if not response.is_success:
            raise MediaError(f"media download answered HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise MediaError(f"media of {declared} bytes is over the {max_bytes}-byte cap")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise MediaError(f"media is over the {max_bytes}-byte cap")
        return bytes(body)

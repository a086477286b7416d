"""The one way the library makes its own HTTP clients.

Every platform's client is made here so that two things hold everywhere:

- ``Accept-Encoding`` names only what :func:`trio_chatbridge._json.read_body` can inflate within
  its size cap (gzip, deflate). httpx would otherwise ask for ``br`` and ``zstd`` whenever their
  packages happen to be installed, and the bounded reader refuses those.
- One TLS context serves every client of the process. Building one loads the CA bundle (about
  850 KiB and 30 ms of CPU each): at hundreds of accounts per process, one per connector
  stalls the event loop and costs memory per account for nothing.

A client a user passes in (``http=``) is theirs: give it the same ``Accept-Encoding``.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any, Final

import httpx

ACCEPT_ENCODING: Final = "gzip, deflate"
"""The encodings the bounded reader inflates within its cap."""


@functools.cache
def shared_tls() -> ssl.SSLContext:
    """The process's one client TLS context (certifi's CA bundle, as httpx's default)."""
    return httpx.create_ssl_context()


def new_client(
    transport: httpx.AsyncBaseTransport | None = None, **options: Any
) -> httpx.AsyncClient:
    """An httpx client for the library's own use: bounded encodings, the shared TLS context.

    ``transport`` (an emulator's in-memory one, say) is used as given; ``options`` go to
    :class:`httpx.AsyncClient` (``timeout``, ``base_url``...).
    """
    headers = {"Accept-Encoding": ACCEPT_ENCODING, **options.pop("headers", {})}
    return httpx.AsyncClient(transport=transport, verify=shared_tls(), headers=headers, **options)

"""The one way the library makes its own HTTP clients, and maps their calls' failures.

Every platform's client is made here so that two things hold everywhere:

- ``Accept-Encoding`` names only what :func:`trio_chatbridge._json.read_body` can inflate within
  its size cap (gzip, deflate). httpx would otherwise ask for ``br`` and ``zstd`` whenever their
  packages happen to be installed, and the bounded reader refuses those.
- One TLS context serves every client of the process. Building one loads the CA bundle (about
  850 KiB and 30 ms of CPU each): at hundreds of accounts per process, one per connector
  stalls the event loop and costs memory per account for nothing.

A client a user passes in (``http=``) is theirs: give it the same ``Accept-Encoding``.

A call's failures are mapped in one place, :func:`exchange`, in the way of httpx's one
``map_httpcore_exceptions``: transport errors and timeouts are a :class:`ConnectorError`,
transient statuses (408, 425, 429, 5xx) an :class:`HTTPStatusError` whose ``retry_after`` is
the server's ``Retry-After`` (a hint to the one retry policy, ``Backoff.delay``, held to its
range by :func:`retry_after`), a 4xx the platform does not explain an
:class:`HTTPRefusedError`, an unreadable body a :class:`ProtocolError`; each says which call
of which account, and what to do. The mapping classifies; what a loop does with the class is
the loop's (the WeChat long poll retries even a refusal, a reply fails on it at once).
"""

from __future__ import annotations

import functools
import math
import ssl
from typing import Any, Final, final

import attrs
import httpx
import trio

from ._errors import ConnectorError, PlatformError, ProtocolError
from ._json import MAX_JSON_BYTES, json_object, read_body
from ._ranges import clamp
from ._redact import redact_body
from ._supervise import MAX_HINT

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


# -- the one mapping of an HTTP call's failures ------------------------------------------------

RETRIED_STATUSES: Final = frozenset({408, 425, 429})
"""4xx statuses that say "not now" rather than "never" (timeout, too early, rate limited):
transient like every 5xx."""

SHOWN_BYTES: Final = 200
"""Bytes of a failed answer's body quoted in its error."""


def shown(body: bytes) -> bytes:
    """What an error quotes of a failed answer's ``body``: its start, secrets masked."""
    return redact_body(body[:SHOWN_BYTES])


class HTTPStatusError(ConnectorError):
    """The server answered a transient status (429, 408, 425 or any 5xx): a loop that retries
    (a long poll) waits at least :attr:`retry_after` when the server said (``Retry-After``).
    The text promises no retry: what the caller does with it is the caller's (a WeChat reply
    is not sent again). ``status`` is the HTTP status."""

    def __init__(
        self,
        what: str,
        status: int,
        body: bytes,
        retry_after: float | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.headers: httpx.Headers = httpx.Headers() if headers is None else headers
        """The answer's headers (a platform's own rate-limit hint, say)."""
        if status == 429:
            todo = "rate limited: lower the bot's rate if it persists"
        elif status < 500:  # 408, 425
            todo = "the server asked for the request again later"
        else:
            todo = "the platform's server failed"
        wait = "" if retry_after is None else f", Retry-After {retry_after:g} s"
        super().__init__(f"{what}: HTTP {status}{wait} {shown(body)!r} ({todo})")


class HTTPRefusedError(PlatformError):
    """The server refused the request with a 4xx status and no answer the platform's code could
    read (or an answer that is neither 2xx, 4xx nor 5xx): retrying the same request cannot help,
    so a reply or an API call fails at once. ``code`` and ``status`` are the HTTP status."""

    def __init__(self, what: str, platform: str, status: int, body: bytes) -> None:
        self.status = status
        if 300 <= status < 400:
            todo = (
                "a redirect, never followed: if the service moved, set the base URL or domain "
                "to where it leads"
            )
        else:
            todo = (
                "retrying cannot help: check the domain or base URL, the credentials and the "
                "app's permissions"
            )
        super().__init__(
            f"{what}: refused, HTTP {status} {shown(body)!r} ({todo})",
            platform=platform,
            code=status,
        )


@final
@attrs.frozen
class HTTPAnswer:
    """An answer :func:`exchange` returns: a 2xx, or a 4xx the platform explains in its body."""

    what: str
    """The call, as errors name it (``"Lark app cli_x: POST /open-apis/..."``)."""
    platform: str
    """The platform called, as in ``Message.platform``."""
    status: int
    """The HTTP status."""
    headers: httpx.Headers = attrs.field(repr=False)
    """The answer's headers."""
    body: bytes = attrs.field(repr=False)
    """The body, read within its cap."""

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status < 300

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, ``{}`` for an empty 2xx body.

        A 2xx body that is not a JSON object raises :class:`ProtocolError` (the answer is
        unreadable: counted, the call fails); a 4xx whose body is not one (a proxy's error
        page, an empty body) raises :class:`HTTPRefusedError`, since its status says it all.
        """
        if self.ok:
            if not self.body:
                return {}
            try:
                return json_object(self.body, self.what)
            except ProtocolError as exc:
                raise ProtocolError(
                    f"{exc} (an unreadable answer: a proxy in the way or a changed API; "
                    "the call fails and is not retried)"
                ) from exc
        try:
            return json_object(self.body, self.what)
        except ProtocolError:
            raise HTTPRefusedError(self.what, self.platform, self.status, self.body) from None


async def exchange(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    platform: str,
    time_limit: float | None,
    max_bytes: int = MAX_JSON_BYTES,
    **options: Any,
) -> HTTPAnswer:
    """One HTTP call, every lower-level failure mapped here, once, to the library's errors.

    Sends ``method url`` with ``options`` (``json``, ``data``, ``files``, ``content``,
    ``headers``: as :meth:`httpx.AsyncClient.stream` takes them) and reads the body within
    ``max_bytes``, all within ``time_limit`` seconds of Trio's clock (None: within the
    caller's own cancel scope, which must then have a deadline). ``what`` names the call,
    with its account, in every error. Raises:

    - :class:`ConnectorError` for a transport failure (unreachable, reset, TLS), no answer
      within ``time_limit`` (:class:`NoAnswer`), or an answer that began and did not end
      within it (a dripping server): transient, whoever called decides whether to retry;
    - :class:`HTTPStatusError` (a :class:`ConnectorError`) for 429, 408, 425 and every 5xx,
      with the server's ``Retry-After`` (delay-seconds) as :attr:`~ConnectorError.retry_after`;
    - :class:`ProtocolError` for a body over its cap or a corrupt compressed one.

    Other answers (2xx, and a 4xx the platform may explain in its body) are returned:
    :meth:`HTTPAnswer.json` reads them. If cancelled, the request may or may not have reached
    the server; nothing of the answer is kept.
    """
    request = http.build_request(method, url, **options)
    return await send(
        http, request, what=what, platform=platform, time_limit=time_limit, max_bytes=max_bytes
    )


async def send(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    what: str,
    platform: str,
    time_limit: float | None,
    max_bytes: int = MAX_JSON_BYTES,
) -> HTTPAnswer:
    """:func:`exchange` for a request already built (one checked and pinned to an address
    by the media guard, say): the same errors, the same answer. If cancelled, the request may
    or may not have reached the server; nothing of the answer is kept."""
    try:
        response, body = await _answer(http, request, what, max_bytes, time_limit)
    except (httpx.HTTPError, OSError) as exc:
        raise ConnectorError(
            f"{what}: {type(exc).__name__}: {exc} (a transient failure; check the network, "
            "a proxy, or the domain if it persists)"
        ) from exc
    status = response.status_code
    if status in RETRIED_STATUSES or status >= 500:
        raise HTTPStatusError(what, status, body, retry_after(response.headers), response.headers)
    if status >= 400 or 200 <= status < 300:
        return HTTPAnswer(what, platform, status, response.headers, body)
    raise HTTPRefusedError(what, platform, status, body)  # 1xx or 3xx: nothing to read


class NoAnswer(ConnectorError):
    """No answer began within the call's time limit: the server was silent (for a long poll,
    it had nothing to say)."""


async def _answer(
    http: httpx.AsyncClient,
    request: httpx.Request,
    what: str,
    max_bytes: int,
    time_limit: float | None,
) -> tuple[httpx.Response, bytes]:
    """``request`` sent, and its answer's body read within ``max_bytes``, all within
    ``time_limit`` seconds (None: the caller's scope bounds it); the response is closed in
    any case. Raises :class:`NoAnswer` when no answer began in time, and
    :class:`ConnectorError` when one began and did not end (a stalled or dripping server: a
    long poll must not take it for silence). If cancelled, nothing of the answer is kept."""
    response: httpx.Response | None = None
    try:
        # One scope for both: a second scope here cost WeChat's receive path 1 % of its
        # instructions (callgrind, `python -m benchmarks weixin-stages`).
        with trio.move_on_after(math.inf if time_limit is None else time_limit):
            # Never a redirect, whatever a shared client says: the body (a context token, a
            # reply) would go to whatever host the answer named.
            response = await http.send(request, stream=True, follow_redirects=False)
            return response, await read_body(response, what, max_bytes=max_bytes)
        if response is None:
            raise NoAnswer(
                f"{what}: no answer within {time_limit:g} s (a transient failure; check the "
                "network if it persists)"
            )
        raise ConnectorError(
            f"{what}: the answer began but did not end within {time_limit:g} s (a stalled or "
            "dripping server, or a slow network: a transient failure; check the network or a "
            "proxy if it persists)"
        )
    finally:
        if response is not None:  # outside the scope: closing is not cut short by its deadline
            await response.aclose()


def retry_after(headers: httpx.Headers, name: str = "retry-after") -> float | None:
    """``Retry-After`` (or the header ``name``, a platform's own) in delay-seconds, held to
    the one retry policy's range for a hint (0 to :data:`~trio_chatbridge._supervise.MAX_HINT`
    s); None when absent or a date (rare from an API, and reading one would need the wall
    clock)."""
    text = headers.get(name, "").strip()
    if not (text.isascii() and text.isdigit()):
        return None
    return clamp(int(text[:8]), 0.0, MAX_HINT, 0.0)  # 8 digits: no huge int parsed

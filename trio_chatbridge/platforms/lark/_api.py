"""The Lark open API over httpx: endpoint discovery, the tenant token, messages
(docs/protocols/lark.md#endpoint-discovery, docs/protocols/lark.md#open-api).

The tenant access token is cached until a minute before it expires, on Trio's clock, and
dropped at once when the API calls it expired or invalid (then the call is made once more);
a refusal of a token already replaced drops nothing, so a burst refreshes it once.
Calls of one app go out over at most :data:`API_CONNECTIONS` connections at once, each
call holding one (``_Clients``). Rate-limit answers (HTTP 429, code 230020, 99991400) are
retried under the library's one retry policy (a :class:`~trio_chatbridge.Backoff` counted by
a ``Retries``), an HTTP 429's ``Retry-After`` as its hint. HTTP failures are mapped by the
library's one mapping (``trio_chatbridge._http.exchange``); a refusal with a code is a
:class:`LarkError` carrying the platform's code and message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, final

import httpx
import trio

from ..._errors import FatalConnectorError, PlatformError, ProtocolError, quoted
from ..._http import HTTPAnswer, HTTPStatusError, exchange, new_client, retry_after
from ..._ranges import clamp
from ..._supervise import Backoff, Retries
from ._protocol import ClientConfig, read_endpoint

log = logging.getLogger("trio_chatbridge.lark.api")

FEISHU: Final = "https://open.feishu.cn"
LARK: Final = "https://open.larksuite.com"
TOKEN_MARGIN: Final = 60.0  # seconds before expiry a token is renewed
TOKEN_LIFETIME_MAX: Final = 7200.0  # seconds a token is trusted, whatever its "expire" says
API_TIMEOUT: Final = 10.0  # seconds per call
API_CONNECTIONS: Final = 16  # calls of one app in flight at once, a connection each
ONE_CONNECTION: Final = httpx.Limits(max_connections=1, max_keepalive_connections=1)
RATE_LIMIT_RETRIES: Final = 4
# the one retry policy (cb.Backoff) for rate limits: waits of 0.5, 1, 2 and 4 s
RATE_LIMIT_BACKOFF: Final = Backoff(initial=0.5, maximum=4.0, jitter=0.0)
# codes that mean "the access token is invalid or expired": drop it, fetch one, call once
# more; the official SDKs' own set (tenant token 99991663, app token 99991664, a token
# unreadable as one 99991671), docs/protocols/lark.md#open-api
TOKEN_EXPIRED: Final = frozenset({99991663, 99991664, 99991671})
RATE_LIMITED: Final = frozenset({230020, 99991400})
# the header in which a rate limit says how long it lasts (seconds), and the longest of it
# a call waits: a limit for longer fails the call at once rather than hold a reply's run
# (https://open.feishu.cn/document/server-docs/api-call-guide/frequency-control)
RATE_LIMIT_RESET: Final = "x-ogw-ratelimit-reset"
RATE_LIMIT_WAIT_MAX: Final = 60.0


class LarkError(PlatformError):
    """The open API answered with a non-zero ``code``."""

    platform = "lark"

    def __init__(self, what: str, code: int, msg: str) -> None:
        self.msg = msg
        """What the server said, whole (the error's text quotes the start of it)."""
        super().__init__(f"Lark {what} failed: code={code} msg={quoted(msg)}", code=code)


class LarkAnswerError(LarkError, ProtocolError):
    """The open API answered without what the call needs: Lark's numeric ``code`` (a proxy's
    JSON, say), or, on success, what the call is for (an upload's ``image_key`` or
    ``file_key``, a ``tenant_access_token``): a bad answer, not a refusal. A
    :class:`LarkError` (what callers catch), and a :class:`ProtocolError`; ``code`` is None:
    the platform gave none."""

    def __init__(self, what: str, missing: str) -> None:
        self.msg: str = f"answered without {missing}"
        """What was wrong with the answer."""
        PlatformError.__init__(
            self,
            f"Lark {what}: {self.msg} (a changed API, or a proxy in the way; a send may have "
            "been done): try again, and report it if it lasts",
        )


@final
class OpenAPI:
    """Calls of the open API for one app. Never shows the secret or the token."""

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        *,
        domain: str = FEISHU,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.app_id = app_id
        self._secret = app_secret
        self.domain: str = domain.rstrip("/")
        self._clients = _Clients(
            functools.partial(
                new_client,
                None if transport is None else _Shared(transport),
                timeout=API_TIMEOUT + 5,
                limits=ONE_CONNECTION,
            ),
            API_CONNECTIONS,
            f"Lark app {app_id}",
            transport,
        )
        self.http: httpx.AsyncClient = self._clients.first
        """The client the calls use first (the others are made alike)."""
        self._token: str | None = None
        self._token_until = 0.0
        self._token_lock = trio.Lock()
        self._fetches = 0  # token fetches ended (done, failed or cancelled)
        self._fetch_failure: Exception | None = None  # the last one's error, if it failed

    def __repr__(self) -> str:
        return f"lark.OpenAPI(app_id={self.app_id!r})"

    async def aclose(self) -> None:
        """Close the HTTP clients (and the transport given, once): for good, a call after it,
        or one still waiting for a client, raises :class:`FatalConnectorError`. If cancelled,
        the clients are closed for use but their connections may be left to the garbage
        collector."""
        await self._clients.aclose()

    async def _exchange(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        headers: Mapping[str, str],
        files: Mapping[str, tuple[str, bytes]] | None = None,
    ) -> HTTPAnswer:
        """One request through the one HTTP error mapping (:func:`~.._http.exchange`), within
        :data:`API_TIMEOUT`. With ``files`` the body is multipart: ``body``'s fields as form
        fields, then the files."""
        async with self._clients.lend() as http:
            return await exchange(
                http,
                method,
                self.domain + path,
                what=f"Lark app {self.app_id}: {method} {path}",
                platform="lark",
                time_limit=API_TIMEOUT,
                json=None if body is None or files is not None else dict(body),
                data=None if body is None or files is None else dict(body),
                files=None if files is None else dict(files),
                headers=dict(headers),
            )

    async def endpoint(self) -> tuple[str, ClientConfig]:
        """The WebSocket URL and client config for a new connection.

        See ``docs/protocols/lark.md#endpoint-discovery``.

        Retryable failures raise :class:`ConnectorError`; a refusal that retrying cannot fix
        (bad credentials) raises :class:`FatalConnectorError`. If cancelled, nothing is kept:
        the next call asks again.
        """
        answer = await self._exchange(
            "POST",
            "/callback/ws/endpoint",
            {"AppID": self.app_id, "AppSecret": self._secret},
            {"locale": "zh"},
        )
        secure = self.domain.startswith("https://")
        return read_endpoint(self.app_id, answer.status, answer.json(), secure=secure)

    async def token(self) -> str:
        """The tenant access token, fetched when missing or within a minute of expiry (one
        fetch at a time; calls that wait for it share it, and its failure: a burst of calls
        while the token endpoint does not answer fails after one fetch's 10 s, not one fetch
        each in turn). A cached one is returned at once, with no scheduler step: the call it
        is for makes enough of them. If cancelled, a fetch under way is abandoned: nothing is
        kept, the next call fetches (and so do the calls that waited for it)."""
        token = self._cached_token()
        if token is not None:
            return token
        fetches = self._fetches
        async with self._token_lock:
            token = self._cached_token()
            if token is not None:
                return token
            if self._fetches != fetches and self._fetch_failure is not None:
                raise _fresh(self._fetch_failure) from self._fetch_failure  # it failed
            self._fetch_failure = None
            try:
                return await self._fetch_token()
            except Exception as exc:
                self._fetch_failure = exc
                raise
            finally:
                self._fetches += 1

    def _cached_token(self) -> str | None:
        """The token until it is due for renewal (:data:`TOKEN_MARGIN` before it expires),
        else None."""
        return self._token if trio.current_time() < self._token_until else None

    async def _fetch_token(self) -> str:
        answer = await self._exchange(
            "POST",
            "/open-apis/auth/v3/tenant_access_token/internal",
            {"app_id": self.app_id, "app_secret": self._secret},
            {},
        )
        data = answer.json()
        token = data.get("tenant_access_token")
        what = f"app {self.app_id}: tenant_access_token"
        code = _code(data, self.app_id, "POST", "tenant_access_token")
        if code != 0:
            raise LarkError(what, code, str(data.get("msg")))
        if not isinstance(token, str) or not token:
            raise LarkAnswerError(what, "a tenant_access_token")
        expire = clamp(data.get("expire"), 0.0, TOKEN_LIFETIME_MAX, TOKEN_LIFETIME_MAX)
        self._token = token
        self._token_until = trio.current_time() + max(expire - TOKEN_MARGIN, TOKEN_MARGIN)
        return token

    async def call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        whole: bool = False,
        files: Mapping[str, tuple[str, bytes]] | None = None,
    ) -> Any:
        """An authenticated call; returns ``data``, an object (``{}`` when the answer has
        none; ``whole``: the whole answer, for the few calls that answer outside ``data``).
        Token expiry and rate limits are handled: an HTTP 429 waits at least its
        ``Retry-After``. With ``files`` (name: ``(filename, bytes)``) the body is multipart,
        ``body`` its fields. Raises :class:`ConnectorError` for a failed exchange
        (unreachable, no answer in time, HTTP 429/408/425/5xx once the retries are spent),
        :class:`ProtocolError` for an unreadable answer (or a ``data`` that is no object), a
        :class:`PlatformError` for an HTTP refusal without a code, :class:`LarkError` for a
        refusal with a code (:class:`LarkAnswerError` for an answer with no numeric code),
        and :class:`FatalConnectorError` once the API is closed. If cancelled, the call may
        or may not have reached the platform (a send may be done)."""
        renewed = False
        retries = RATE_LIMIT_BACKOFF.retries(RATE_LIMIT_RETRIES)
        while True:
            token = await self.token()
            try:
                answer = await self._exchange(
                    method, path, body, {"Authorization": f"Bearer {token}"}, files
                )
            except HTTPStatusError as exc:
                hint = retry_after(exc.headers, RATE_LIMIT_RESET) or exc.retry_after
                if exc.status == 429 and await self._rate_limited(path, retries, hint):
                    continue
                raise
            data = answer.json()
            code = _code(data, self.app_id, method, path) if data else 0
            if code in TOKEN_EXPIRED and not renewed:
                self._drop_token(token)
                renewed = True
                continue
            hint = retry_after(answer.headers, RATE_LIMIT_RESET)
            if code in RATE_LIMITED and await self._rate_limited(path, retries, hint):
                continue
            if code != 0:
                raise LarkError(f"app {self.app_id}: {method} {path}", code, str(data.get("msg")))
            return data if whole else self._data(method, path, data.get("data"))

    def _drop_token(self, token: str) -> None:
        """Forget ``token``, which the API called expired or invalid, unless it was already
        replaced: the calls of a burst sent with the old one are refused one after another,
        and the first refusal's fetch must not be undone by the next (one fetch, not one a
        call)."""
        if self._token == token:
            self._token = None

    def _data(self, method: str, path: str, data: Any) -> dict[str, Any]:
        """An answer's ``data``: an object, ``{}`` when there is none."""
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ProtocolError(
                f"Lark app {self.app_id}: {method} {path}: the answer's data is a "
                f"{type(data).__name__}, not an object (a changed API, or a proxy in the way)"
            )
        return data

    async def _rate_limited(self, path: str, retries: Retries, hint: float | None) -> bool:
        """Wait before retrying a rate-limited call (at least ``hint`` seconds, the limit's
        own word on how long it lasts); False once the retries are spent, or at once when the
        limit lasts longer than :data:`RATE_LIMIT_WAIT_MAX`."""
        if retries.spent:
            return False
        if hint is not None and hint > RATE_LIMIT_WAIT_MAX:
            log.warning(
                "Lark app %s: rate limit on %s for %g s, over the %g s a call waits: failed",
                self.app_id,
                path,
                hint,
                RATE_LIMIT_WAIT_MAX,
            )
            return False
        log.info("Lark app %s: rate limit on %s: retry %d", self.app_id, path, retries.failures + 1)
        return await retries.wait(hint)


def _fresh(failure: Exception) -> Exception:
    """A new error like ``failure`` (its class, message and fields, no traceback) for one of
    the calls that waited for the fetch it ended: one object raised in many tasks would share
    one traceback, each raise adding its frames to it. Its ``__cause__`` is ``failure``."""
    fresh = type(failure).__new__(type(failure), *failure.args)
    vars(fresh).update(vars(failure))
    return fresh


@final
class _Clients:
    """HTTP clients of one connection each, each lent to one call at a time, at most ``size``
    of them: made as calls overlap, then kept with their keep-alive connection.

    One httpx client shared by concurrent calls costs more per call the more calls overlap:
    its pool goes over every connection and every waiting request at each request and
    response, and hands one idle connection to several waiting requests at once, all but one
    of which then wait and retry. With the dispatcher's 16 runs replying at once, that doubled
    the Python calls of the HTTP stack per reply (docs/performance.md, "Lark, fourth
    session"); a client per call in flight has none of it. Calls past ``size`` wait here, in
    turn. Closing is final: no client is lent or made after it, and every client made is
    closed once, then ``transport`` (the one the user gave, shared by the clients), once.
    """

    def __init__(
        self,
        make: Callable[[], httpx.AsyncClient],
        size: int,
        name: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._make = make
        self._name = name
        self._transport = transport
        self.first = make()
        self._made = [self.first]
        self._free = [self.first]
        self._slots = trio.Semaphore(size)
        self._closed = False

    @asynccontextmanager
    async def lend(self) -> AsyncIterator[httpx.AsyncClient]:
        """A client no other call uses until this one is done (the last one freed: its
        connection is the likeliest to be open). :class:`FatalConnectorError` once closed,
        also for a call that was waiting for a client. If cancelled while waiting, nothing
        was lent."""
        try:
            self._slots.acquire_nowait()  # no scheduler step when one is free: the call has many
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            if self._closed:
                raise self._closed_error()
            if self._free:
                client = self._free.pop()
            else:
                client = self._make()
                self._made.append(client)
            try:
                yield client
            finally:
                self._free.append(client)
        finally:
            self._slots.release()

    def _closed_error(self) -> FatalConnectorError:
        return FatalConnectorError(
            f"{self._name}: this OpenAPI is closed (its connector was closed, or aclose() "
            "called); calls need a new OpenAPI (or connector)"
        )

    async def aclose(self) -> None:
        """Close every client made, then the transport given, each even if closing one
        before it raised (that error is raised after). If cancelled, the rest are left to
        the garbage collector."""
        if self._closed:
            return  # closed once: a second aclose() closes nothing
        self._closed = True
        closes = [client.aclose for client in self._made]
        if self._transport is not None:
            closes.append(self._transport.aclose)
        await _close_all(closes)


async def _close_all(closes: Sequence[Callable[[], Awaitable[None]]]) -> None:
    if closes:
        try:
            await closes[0]()
        finally:
            await _close_all(closes[1:])


@final
class _Shared(httpx.AsyncBaseTransport):
    """The transport a user gave, as each client sees it: closing a client leaves it open
    (every client shares it; :meth:`_Clients.aclose` closes it once, after them)."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        pass


def _code(data: Mapping[str, Any], app_id: str, method: str, path: str) -> int:
    """The answer's ``code``; :class:`LarkAnswerError` when it has no numeric one (a proxy's
    JSON, say): no refusal either, whatever else it says."""
    code = data.get("code")
    if type(code) is not int:  # a bool is no code either
        what = f"app {app_id}: {method} {path}"
        raise LarkAnswerError(what, f"a numeric code (code={str(code)[:20]!r})")
    return code

"""The HTTP long-poll driver: runs a platform's sans-I/O poll core (see ``_poll_events.py``).

One loop, the same for every platform that long-polls over HTTP: ask the core for the next
request, send it, read the answer with a cap, hand the bytes to the core, and act on the event
it gives back. A page's messages go to ``ctx.put`` first; only once that returned (they are
durable) are the page's cursor and values saved and the core told, so a crash never skips a
message. A bad message is counted in ``protocol_errors``, logged and skipped alone; so is a
cursor over :data:`MAX_CURSOR_CHARS` or not storable (the previous one is kept, the page's
messages go on); a refusal right after another (a server answering the kept cursor with the same
page, say) is also a failed poll, paced by the backoff rather than polled flat out. A poll whose
answer has not begun by its request's deadline is an empty poll, never a failure; one whose
answer began and has not ended by then (a stalled or dripping server) is a failure. Every
lower-level failure is mapped by the library's one HTTP mapping
(:func:`trio_chatbridge._http.exchange`, through :func:`exchange` here): transport errors and
transient statuses (408, 425, 429, 5xx) are a :class:`ConnectorError` (with the server's
``Retry-After``, if any), any other 4xx an :class:`HTTPRefusedError`, unreadable answers
:class:`ProtocolError`. A poll loop must not die on a proxy's 404, so the loop retries a refusal
too, and shows it as what it is in its ``backoff`` status; failed polls are counted in a
:class:`~trio_chatbridge.connectors.Retries` under the one retry policy,
:class:`~trio_chatbridge.Backoff`, with the core's and the server's word on the wait as hints.
A core that says the platform asked for a pause gets no poll until it ends; a connector may
look, every :data:`PAUSE_CHECK` seconds of it, for what ends it early (a new login).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import httpx
import trio

from ._connector import ConnectorContext
from ._errors import ChatBridgeError, ConnectorError, ProtocolError
from ._http import HTTPRefusedError, NoAnswer
from ._http import exchange as http_exchange
from ._poll_events import HTTPRequest, Page, Paused, PollCore, PollEvent, RetryLater
from ._receive import skip_bad
from ._supervise import Backoff, Retries

log = logging.getLogger("trio_chatbridge.longpoll")

BACKSTOP: Final = 10.0
"""Seconds httpx's own timeout (on the system's clock) waits beyond a request's deadline (ours,
on Trio's clock, the mapping's ``time_limit``, which ends the poll first)."""

MAX_CURSOR_CHARS: Final = 64 * 1024
"""A cursor longer than this is refused: kept for good and sent back on every poll, it could
grow each poll's request without bound (WeChat's are short opaque strings)."""

PAUSE_CHECK: Final = 10.0
"""Seconds between a pause's checks by ``during_pause`` (see :func:`long_poll`)."""


class CoreFailed(ProtocolError):
    """A poll core raised something else than a :class:`ProtocolError` reading an answer (a
    bug in it): counted and retried like an unreadable answer, logged with its traceback."""


async def exchange(http: httpx.AsyncClient, request: HTTPRequest, platform: str) -> bytes | None:
    """Send ``request`` to ``platform`` and return the answer's 2xx body, read with its cap;
    None when no answer began within ``request.timeout`` seconds (on Trio's clock); one that
    began and did not end by then is a :class:`ConnectorError`.

    Raises what the one HTTP mapping raises (:func:`trio_chatbridge._http.exchange`):
    :class:`ConnectorError` for a transport failure or a transient status
    (:class:`~trio_chatbridge.HTTPStatusError`), :class:`ProtocolError` for a body over the
    cap; and :class:`~trio_chatbridge.HTTPRefusedError` for any other 4xx. If cancelled, the
    request may or may not have reached the server; nothing of the answer is kept.
    """
    try:
        answer = await http_exchange(
            http,
            request.method,
            request.url,
            what=request.name,
            platform=platform,
            time_limit=request.timeout,
            max_bytes=request.max_bytes,
            headers=dict(request.headers),
            content=request.body or None,
            timeout=request.timeout + BACKSTOP,
        )
    except NoAnswer:  # silence past the deadline: an empty poll, not a failure
        return None
    if not answer.ok:
        raise HTTPRefusedError(request.name, platform, answer.status, answer.body)
    return answer.body


async def long_poll(
    ctx: ConnectorContext,
    core: PollCore,
    http: httpx.AsyncClient,
    *,
    backoff: Backoff | None = None,
    during_pause: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Poll with ``core`` over ``http`` until cancelled, putting what arrives into ``ctx``.

    Starts from the account's saved cursor; calls ``task_status.started()`` after the first
    answer that is not a failure or a pause (pass ``TASK_STATUS_IGNORED`` if the connector is
    up already). Failed polls are counted in ``poll_failures`` and show as ``backoff``;
    ``backoff`` paces them (default: the bridge's, ``ctx.backoff``), waiting at least what
    the core's :meth:`~PollCore.retry_hint` or the server's ``Retry-After`` ask. While the core
    is paused, ``during_pause`` (if given) is awaited every 10 seconds, and
    polling resumes as soon as the core's pause no longer holds (it may lift it: a new login
    found). Raises only what ``ctx`` or ``during_pause`` raise (a store failure, say):
    polling failures (a refused 4xx included), and a core's bug reading an answer, are
    retried here. If cancelled, the cursor saved is that of the last page put into the
    inbox: what came after it is polled again next time.
    """
    unstarted = None if task_status is trio.TASK_STATUS_IGNORED else task_status
    retries = (backoff or ctx.backoff).retries()
    loop = _Loop(ctx, core, http, retries, unstarted, during_pause)
    await loop.run()


@attrs.define
class _Loop:
    ctx: ConnectorContext
    core: PollCore
    http: httpx.AsyncClient
    retries: Retries
    unstarted: trio.TaskStatus[None] | None
    during_pause: Callable[[], Awaitable[None]] | None
    failing: bool = False  # the status shows "backoff" until a poll succeeds again
    saved: str | None = None  # the cursor in the store: an unchanged one is not written again
    refusing: bool = False  # the last cursor a page brought was refused (the previous kept)

    async def run(self) -> None:
        self.saved = await self.ctx.get_cursor()
        self.core.start(self.saved)
        while True:
            await self._sit_out_pause()
            request = self.core.request()
            try:
                body = await exchange(self.http, request, self.ctx.platform)
                event = Page() if body is None else self._receive(request, body)
            except (ConnectorError, ProtocolError, HTTPRefusedError) as exc:
                event = RetryLater(exc)
            if isinstance(event, RetryLater):
                await self._failed(request, event.error)
                continue
            if isinstance(event, Paused):
                self.retries.reset()
                if event.counter is not None:  # None: a pause already in force, counted
                    self.ctx.count(event.counter)
                    log.warning("%s:%s: %s", self.ctx.platform, self.ctx.account, event.detail)
                continue
            self._up()
            # No prefetch: the next poll presents the new cursor, and a server may take that
            # as an acknowledgment (docs/protocols/weixin.md#unconfirmed), so it goes out only
            # once this page is durable.
            refused_again = await self._deliver(event, request.name)
            if refused_again is None:
                self.retries.reset()
            else:  # the same cursor will be polled again: paced as a failure, not flat out
                await self._failed(request, refused_again)

    async def _sit_out_pause(self) -> None:
        paused = self.core.paused(trio.current_time())
        if paused is None:
            return
        self.ctx.set_state("paused", paused.detail)
        while paused is not None:
            if self.during_pause is None:
                await trio.sleep_until(paused.until)
            else:
                await trio.sleep_until(min(paused.until, trio.current_time() + PAUSE_CHECK))
                await self.during_pause()
            paused = self.core.paused(trio.current_time())
        self.ctx.set_state("running" if self.unstarted is None else "starting")

    def _receive(self, request: HTTPRequest, body: bytes) -> PollEvent:
        """The core's event for ``body``. A core's bug (any other exception) is a
        :class:`ProtocolError` like an unreadable answer: counted, logged with its traceback
        once (in :meth:`_failed`) and retried under the policy, never the connector's end."""
        try:
            return self.core.receive(body, trio.current_time())
        except ProtocolError:
            raise
        except Exception as exc:
            raise CoreFailed(f"{request.name}: {type(exc).__name__}: {exc}") from exc

    def _up(self) -> None:
        if self.unstarted is not None:
            self.unstarted.started()  # the server answered: up
            self.unstarted = None
            self.failing = False
        elif self.failing:
            self.failing = False
            self.ctx.set_state("running")

    async def _failed(self, request: HTTPRequest, error: ChatBridgeError) -> None:
        ctx = self.ctx
        ctx.count("poll_failures")
        if isinstance(error, ProtocolError):
            ctx.count("protocol_errors")
        failures = self.retries.failures + 1
        hints = [self.core.retry_hint(failures), getattr(error, "retry_after", None)]
        delay = self.retries.fail(max((h for h in hints if h is not None), default=None))
        assert delay is not None  # no limit: never spent
        log.warning(
            "%s:%s: %s failed (%d in a row), retrying in %.0f s: %s",
            ctx.platform,
            ctx.account,
            request.name,
            failures,
            delay,
            error,
            exc_info=error if isinstance(error, CoreFailed) else None,  # a bug: its traceback
        )
        self.failing = True
        ctx.set_state("backoff", f"{request.name} failing ({error}); retrying in {delay:.0f} s")
        await trio.sleep(delay)

    async def _deliver(self, page: Page, name: str) -> ProtocolError | None:
        """Put ``page`` into the inbox, then save its cursor and values. Returns the error of
        a refused cursor that follows another refused one (the caller counts it as a failed
        poll and backs off); a first refusal is counted and logged here as a bad cursor."""
        ctx = self.ctx
        for bad in page.skipped:
            skip_bad(ctx, "message", bad)
        refused = _refused(page.cursor)
        refused_again = None
        if refused is not None:  # the page's messages go on; the previous cursor stays
            error = ProtocolError(f"{name}: {refused}")
            if self.refusing:
                refused_again = error
            else:
                skip_bad(ctx, "cursor", error)
            page = attrs.evolve(page, cursor=None)
        if page.cursor is not None or refused is not None:
            self.refusing = refused is not None
        if page.filtered:
            ctx.count("filtered", page.filtered)
        if page.messages:
            await ctx.put(page.messages)
        # Only now, the messages being durable: the cursor and the values, in one write; an
        # idle poll's unchanged cursor, nothing (a commit every empty poll otherwise).
        if page.cursor is not None and page.cursor != self.saved:
            await ctx.set_cursor(page.cursor, with_values=page.values, values_ttl=page.values_ttl)
            self.saved = page.cursor
        elif page.values:
            await ctx.set_many(page.values, ttl=page.values_ttl)
        self.core.commit(page)
        return refused_again


def _refused(cursor: str | None) -> str | None:
    """Why ``cursor`` cannot be kept (None: it can): over :data:`MAX_CURSOR_CHARS`, or not
    encodable as UTF-8 (a lone surrogate, which no request body or store can carry)."""
    if cursor is None:
        return None
    if len(cursor) > MAX_CURSOR_CHARS:
        return (
            f"a cursor of {len(cursor):,} characters (over {MAX_CURSOR_CHARS:,}) refused; "
            "the previous one is kept"
        )
    try:
        cursor.encode()
    except UnicodeEncodeError:
        return "a cursor not storable (a lone surrogate) refused; the previous one is kept"
    return None

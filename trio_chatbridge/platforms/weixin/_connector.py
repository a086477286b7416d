"""The WeChat iLink connector: the long-poll loop, the session guard, replies and typing.

The poll loop follows the reference clients (docs/protocols/weixin.md#the-poll-loop) and fixes their
known faults (docs/protocols/weixin.md#known-faults): the cursor is saved only after the inbox
accepted the page (a crash never skips a message), the client waits a few seconds longer than the
server holds a poll (no timeout race, #267), and a read timeout is an empty poll, never a failure
(#75). Replies are checked (no silent loss on ``ret -2``, #204), rate limited, and capped at ten per
inbound message (#81).
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, final

import attrs
import httpx
import trio

from ... import _connector as base
from ..._content import Attachment, Content, Sent, kind_of, unsupported
from ..._errors import (
    ConfigurationError,
    ConnectorError,
    FatalConnectorError,
    ProtocolError,
    SendError,
)
from ..._media import MediaPolicy
from ..._messages import Batch, Media, Message
from ..._receive import Skipped, clamp, parse_or_skip
from . import _media
from . import _protocol as p
from ._api import ILinkClient, ILinkError, SessionExpiredError
from ._convert import PLATFORM, split_text, to_message

log = logging.getLogger("trio_chatbridge.weixin")

TOKEN_KEY: Final = "token"  # store keys written by `weixin-login`
BASE_URL_KEY: Final = "base_url"
CONTEXT_TOKEN_PREFIX: Final = "context_token:"
QUOTA_MEMORY: Final = 4096  # inbound messages whose reply count we remember
TYPING_TICKETS: Final = 4096  # peers whose typing ticket we remember


class SessionPausedError(SendError):
    """The account is paused after errcode -14; nothing can be sent until it resumes."""


@final
@attrs.frozen
class RateLimit:
    """Outbound pacing per account: a burst, then a steady rate (a token bucket).

    The platform answers ``ret -2 "prepare failed"`` for minutes after bursts (18 messages in 34 s
    did it; 10 in 170 s did not: docs/protocols/weixin.md#limits); the defaults stay well under
    that.
    """

    burst: int = 5
    """Messages that may go out back to back."""
    per_second: float = 0.2
    """Steady rate once the burst is spent."""


class _Bucket:
    def __init__(self, limit: RateLimit) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()

    async def take(self) -> None:
        async with self._lock:  # first come, first served
            now = trio.current_time()
            if self._stamp is not None:
                elapsed = now - self._stamp
                self._tokens = min(
                    self._limit.burst, self._tokens + elapsed * self._limit.per_second
                )
            self._stamp = now
            if self._tokens < 1:
                wait = (1 - self._tokens) / self._limit.per_second
                await trio.sleep(wait)
                self._stamp = trio.current_time()
                self._tokens = 1.0
            self._tokens -= 1


class _SessionGuard:
    """The pause after errcode -14: the poll loop sleeps through it, sends fail fast.

    See ``docs/protocols/weixin.md#session-pause``.
    """

    def __init__(self, account: str) -> None:
        self.account = account
        self.paused_until: float | None = None

    def pause(self) -> None:
        self.paused_until = trio.current_time() + p.SESSION_PAUSE

    @property
    def remaining(self) -> float:
        if self.paused_until is None:
            return 0.0
        left = self.paused_until - trio.current_time()
        if left <= 0:
            self.paused_until = None
            return 0.0
        return left

    def detail(self) -> str:
        return (
            f"session expired (errcode -14); polling resumes in {self.remaining / 60:.0f} min. "
            "The token is stale or the bot was bound elsewhere: run "
            "'python -m trio_chatbridge weixin-login' to log in again"
        )

    def check(self) -> None:
        if self.remaining > 0:
            raise SessionPausedError(f"weixin account {self.account}: {self.detail()}")


@attrs.define
class _Ticket:
    ticket: str
    next_fetch: float
    retry: float = p.CONFIG_RETRY_INITIAL


class _TypingTickets:
    """Per-peer typing tickets from ``getconfig``, refreshed as the reference cache does.

    See ``docs/protocols/weixin.md#typing``. At most :data:`TYPING_TICKETS` peers are kept,
    the least recently used going first: a bot with many users keeps a bounded table.
    """

    def __init__(self, rand: Callable[[], float]) -> None:
        self._entries: OrderedDict[str, _Ticket] = OrderedDict()
        self._random = rand

    async def get(self, client: ILinkClient, peer: str, context_token: str | None) -> str:
        now = trio.current_time()
        entry = self._entries.get(peer)
        if entry is not None:
            self._entries.move_to_end(peer)
            if now < entry.next_fetch:
                return entry.ticket
        try:
            answer = await client.get_config(peer, context_token)
            ticket = p.read_str(answer, "typing_ticket") or ""
            self._keep(peer, _Ticket(ticket, now + self._random() * p.CONFIG_CACHE_TTL))
            return ticket
        except (ILinkError, ConnectorError, ProtocolError) as exc:
            log.debug("getconfig for typing failed: %s", exc)
            if entry is None:
                self._keep(peer, _Ticket("", now + p.CONFIG_RETRY_INITIAL))
                return ""
            entry.retry = min(2 * entry.retry, p.CONFIG_RETRY_MAX)
            entry.next_fetch = now + entry.retry
            return entry.ticket

    def _keep(self, peer: str, ticket: _Ticket) -> None:
        self._entries[peer] = ticket
        self._entries.move_to_end(peer)
        while len(self._entries) > TYPING_TICKETS:
            self._entries.popitem(last=False)


class LongPoll(base.Connector):
    """A WeChat bot account on the iLink long-poll API.

    Give ``token`` (and ``base_url`` if login returned one), or leave them out to use what
    ``python -m trio_chatbridge weixin-login`` stored for this ``account`` in the bridge's store.
    ``http`` shares an httpx client between accounts (you close it); ``transport`` points the
    connector's own client elsewhere (an emulator's in-memory transport).
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        account: str,
        token: str | None = None,
        base_url: str | None = None,
        cdn_base_url: str = p.DEFAULT_CDN_BASE_URL,
        route_tag: str | None = None,
        http: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        media: MediaPolicy | None = None,
        rate_limit: RateLimit | None = None,
        typing: bool = True,
        random: Callable[[], float] = random.random,
    ) -> None:
        if not account:
            raise ConfigurationError("weixin.LongPoll needs an account name")
        self.account = account
        self._token = token
        self._base_url = base_url
        self._cdn_base_url = cdn_base_url
        self._route_tag = route_tag
        self._http = http
        self._transport = transport
        self.media_policy: MediaPolicy = media or _media.default_policy()
        self._bucket = _Bucket(rate_limit or RateLimit())
        self._typing_enabled = typing
        self._tickets = _TypingTickets(random)
        self._guard = _SessionGuard(account)
        self._client: ILinkClient | None = None
        self._degraded = False  # status shows "backoff" until a poll succeeds again
        self._replies: OrderedDict[str, int] = OrderedDict()

    def __repr__(self) -> str:
        return f"weixin.LongPoll(account={self.account!r})"

    @property
    def paused(self) -> bool:
        """True while the account is paused after errcode -14."""
        return self._guard.remaining > 0

    async def _get_client(self) -> ILinkClient:
        if self._client is None:
            token, base_url = self._token, self._base_url
            if token is None:
                token = await self.ctx.get(TOKEN_KEY)
                base_url = base_url or await self.ctx.get(BASE_URL_KEY)
            if not token:
                raise FatalConnectorError(
                    f"weixin account {self.account} has no bot token: pass token=... or run "
                    f"'python -m trio_chatbridge weixin-login --account {self.account}' first"
                )
            self._client = ILinkClient(
                token,
                base_url=base_url or p.DEFAULT_BASE_URL,
                cdn_base_url=self._cdn_base_url,
                route_tag=self._route_tag,
                http=self._http,
                transport=self._transport,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        client = await self._get_client()
        cursor = await self.ctx.get_cursor() or ""
        # Running once the server has answered: notifystart, or else the first good poll.
        reached = await client.notify("notifystart")
        if reached:
            task_status.started()
        try:
            await self._poll(client, cursor, None if reached else task_status)
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + p.CONFIG_TIMEOUT):
                await client.notify("notifystop")

    async def _poll(
        self, client: ILinkClient, cursor: str, unstarted: trio.TaskStatus[None] | None
    ) -> None:
        ctx = self.ctx
        timeout = p.DEFAULT_LONG_POLL_TIMEOUT
        failures = 0
        while True:
            if self._guard.remaining > 0:
                ctx.set_state("paused", self._guard.detail())
                await trio.sleep(self._guard.remaining)
                ctx.set_state("running" if unstarted is None else "starting")
            try:
                answer = await client.get_updates(cursor, timeout + p.LONG_POLL_MARGIN)
            except (ConnectorError, ProtocolError) as exc:
                failures = await self._failed(failures, exc)
                continue
            if answer.longpolling_timeout_ms:  # milliseconds, held to a sane range
                low, high = p.LONG_POLL_TIMEOUT_RANGE
                held = clamp(answer.longpolling_timeout_ms, low * 1000, high * 1000, 0)
                timeout = held / 1000 or timeout
            code = answer.ret or answer.errcode
            if unstarted is not None and not code:
                unstarted.started()  # the server answered: up
                unstarted = None
            if code == p.SESSION_EXPIRED:
                self._guard.pause()
                ctx.count("session_expired")
                log.warning("weixin account %s: %s", self.account, self._guard.detail())
                failures = 0
                continue
            if code:
                error = ILinkError(
                    "getupdates", ret=answer.ret, errcode=answer.errcode, errmsg=answer.errmsg
                )
                failures = await self._failed(failures, error)
                continue
            if self._degraded:
                self._degraded = False
                ctx.set_state("running")
            failures = 0
            # No prefetch: the next poll presents the new cursor, and a server may take that as
            # an acknowledgment (docs/protocols/weixin.md#unconfirmed), so it goes out only once
            # this page is durable.
            tokens = await self._accept(answer.messages)
            # Only now, the page being durable in the journal: the cursor and the page's
            # context tokens, in one write.
            if answer.cursor and answer.cursor != cursor:
                cursor = answer.cursor
                await ctx.set_cursor(cursor, with_values=tokens)
            elif tokens:
                await ctx.set_many(tokens)

    async def _failed(self, failures: int, error: Exception) -> int:
        """Count a failed poll and sleep 2 s, or 30 s after three in a row.

        See ``docs/protocols/weixin.md#retry-policy``.
        """
        ctx = self.ctx
        ctx.count("poll_failures")
        if isinstance(error, ProtocolError):
            ctx.count("protocol_errors")
        failures += 1
        log.warning(
            "weixin account %s: getupdates failed (%d in a row): %s", self.account, failures, error
        )
        if failures >= p.MAX_CONSECUTIVE_FAILURES:
            self._degraded = True
            ctx.set_state("backoff", f"getupdates failing ({error}); retrying in 30 s")
            await trio.sleep(p.BACKOFF_DELAY)
            return 0
        await trio.sleep(p.RETRY_DELAY)
        return failures

    async def _accept(self, raw_messages: tuple[Any, ...]) -> dict[str, str | None]:
        """Turn a page into messages (a bad one is counted and skipped) and put them.

        Returns the newest context token per peer, to be stored with the cursor: replies after
        a restart use them.
        """
        ctx = self.ctx
        messages: list[Message] = []
        for raw in raw_messages:
            message = parse_or_skip(ctx, "message", to_message, self.account, raw)
            if message is None:
                ctx.count("filtered")
            elif not isinstance(message, Skipped):
                messages.append(message)
        if messages:
            await ctx.put(messages)
        latest: dict[str, str | None] = {}
        for message in messages:
            token = message.reply_handle.get("context_token")
            if token:
                latest[CONTEXT_TOKEN_PREFIX + message.reply_handle["to_user_id"]] = token
        return latest

    # -- sending -----------------------------------------------------------------------------

    async def _context_token(self, target: Message) -> str | None:
        """The latest token for the peer (it answers the newest message), else the message's."""
        peer = target.reply_handle.get("to_user_id")
        stored = await self.ctx.get(CONTEXT_TOKEN_PREFIX + peer) if peer else None
        return stored or target.reply_handle.get("context_token")

    def _reserve_replies(self, key: str, count: int) -> None:
        """Count ``count`` replies under ``key`` (a context token) against the platform's
        ten, all or none."""
        used = self._replies.pop(key, 0)
        if used + count > p.MAX_REPLIES_PER_MESSAGE:
            self._replies[key] = used
            left = p.MAX_REPLIES_PER_MESSAGE - used
            needs = f"this reply needs {count} messages, " if count > 1 else ""
            raise SendError(
                f"weixin account {self.account}: at most {p.MAX_REPLIES_PER_MESSAGE} replies per "
                f"inbound message (a platform limit); {needs}{left} left. Send less, or in "
                "fewer, longer messages"
            )
        self._replies[key] = used + count
        while len(self._replies) > QUOTA_MEMORY:
            self._replies.popitem(last=False)

    async def send(self, target: Message, text: str) -> None:
        """Send ``text`` to the sender of ``target``, split at 4000 characters.

        The pieces go out in order, or none does if they would pass the ten replies an inbound
        message allows: never a truncated message.
        """
        token = await self._context_token(target)
        peer = target.reply_handle["to_user_id"]
        await self._send_items(peer, token, f"message:{target.id}", _text_items(text))

    async def send_media(
        self, target: Message, data: bytes, *, filename: str, kind: str | None = None
    ) -> None:
        """Upload ``data`` (encrypted) and send it; ``kind`` defaults from the file name."""
        token = await self._context_token(target)
        peer = target.reply_handle["to_user_id"]
        item = await self._upload(peer, data, filename, kind)
        await self._send_items(peer, token, f"message:{target.id}", [item])

    async def send_first(self, chat_id: str, content: Content) -> Sent:
        """Send text or an attachment to a user (their user id) unprompted.

        iLink has no proactive API: a message goes out with the context token of the user's
        latest message, which the bridge stores as messages arrive (it survives restarts).
        Without one (the user never wrote) this raises :class:`SendError`. The platform
        refuses sends more than 24 h after the user's last message (``ret -2``; reported
        token lifetimes vary, see docs/weixin.md), and one token carries ten messages. If
        cancelled, some pieces of a long text may have gone out, in order.
        """
        token = await self.ctx.get(CONTEXT_TOKEN_PREFIX + chat_id)
        if not token:
            raise SendError(
                f"weixin account {self.account}: no context token for {chat_id}: WeChat lets "
                "a bot write only to users who wrote to it (within the last 24 h)"
            )
        if isinstance(content, str):
            items = _text_items(content)
        elif isinstance(content, Attachment):
            items = [await self._upload(chat_id, content.data, content.filename, content.kind)]
        else:
            raise unsupported(PLATFORM, self.account, content, "WeChat shows text and media")
        await self._send_items(chat_id, token, token, items)
        return Sent(PLATFORM, chat_id, kind_of(content))

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Text and attachments; Markdown, cards and posts raise :class:`SendError` (WeChat
        shows plain text only)."""
        if not isinstance(content, str | Attachment):
            raise unsupported(PLATFORM, self.account, content, "WeChat shows text and media")
        return await super().send_content(target, content)

    async def _upload(
        self, peer: str, data: bytes, filename: str, kind: str | None
    ) -> dict[str, Any]:
        self._guard.check()
        client = await self._get_client()
        try:
            return await _media.upload(client, self.media_policy, peer, data, filename, kind)
        except (ILinkError, ConnectorError, ProtocolError) as exc:
            raise SendError(f"weixin account {self.account}: upload failed: {exc}") from exc

    async def download(self, media: Media) -> bytes:
        """Download and decrypt an inbound image, file, voice or video (see ``media_policy``)."""
        return await _media.download(await self._get_client(), self.media_policy, media)

    async def _send_items(
        self, peer: str, token: str | None, fallback_key: str, items: list[dict[str, Any]]
    ) -> None:
        self._guard.check()
        client = await self._get_client()
        self._reserve_replies(token or fallback_key, len(items))
        for item in items:
            await self._send_item(client, peer, token, item)

    async def _send_item(
        self, client: ILinkClient, peer: str, token: str | None, item: dict[str, Any]
    ) -> None:
        await self._bucket.take()
        msg: dict[str, Any] = {
            "from_user_id": "",
            "to_user_id": peer,
            "client_id": f"trio-chatbridge:{int(time.time() * 1000)}-{random.getrandbits(32):08x}",
            "message_type": int(p.MessageType.BOT),
            "message_state": int(p.MessageState.FINISH),
            "item_list": [item],
        }
        if token:
            msg["context_token"] = token
        try:
            await client.send_message(msg)
        except SessionExpiredError as exc:
            self._guard.pause()
            self.ctx.count("session_expired")
            raise SessionPausedError(f"weixin account {self.account}: {exc}") from exc
        except ILinkError as exc:
            hint = (
                " The platform declines after bursts ('prepare failed'), with a stale context, "
                "or more than 24 h after the user's last message; wait and try again."
                if exc.code == -2
                else ""
            )
            raise SendError(f"weixin account {self.account}: {exc}.{hint}") from exc
        except (ConnectorError, ProtocolError) as exc:
            raise SendError(f"weixin account {self.account}: send failed: {exc}") from exc

    # streaming: the platform has no edit-in-place and renders nothing for GENERATING
    # (docs/protocols/weixin.md#replies-and-streaming),
    # so the base class's stream (collect, then one send at the end) is the right mapping.

    def running(self, batch: Batch) -> AbstractAsyncContextManager[None]:
        """Keep "typing..." shown to the sender while the agent runs (refreshed every 5 s)."""
        return self._typing(batch.latest)

    @asynccontextmanager
    async def _typing(self, target: Message) -> AsyncIterator[None]:
        peer = target.reply_handle.get("to_user_id")
        if not self._typing_enabled or not peer or self.paused:
            yield
            return
        client = await self._get_client()
        ticket = await self._tickets.get(client, peer, await self._context_token(target))
        if not ticket:
            yield
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_typing, client, peer, ticket)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True, deadline=trio.current_time() + p.CONFIG_TIMEOUT):
                    await self._typing_call(client, peer, ticket, p.TypingStatus.CANCEL)

    async def _keep_typing(self, client: ILinkClient, peer: str, ticket: str) -> None:
        while True:
            await self._typing_call(client, peer, ticket, p.TypingStatus.TYPING)
            await trio.sleep(p.TYPING_KEEPALIVE)

    async def _typing_call(
        self, client: ILinkClient, peer: str, ticket: str, status: p.TypingStatus
    ) -> None:
        try:
            await client.send_typing(peer, ticket, status)
        except (ILinkError, ConnectorError, ProtocolError) as exc:
            log.debug("weixin typing indicator failed (ignored): %s", exc)


def _text_items(text: str) -> list[dict[str, Any]]:
    return [{"type": p.ItemType.TEXT, "text_item": {"text": t}} for t in split_text(text)]

"""The WeChat iLink connector: its protocol core on the long-poll driver, replies and typing.

Receiving is the protocol core (:class:`~._protocol.Poller`) run by the core's HTTP long-poll
driver (``trio_chatbridge/_longpoll.py``). Together they follow the reference clients
(docs/protocols/weixin.md#the-poll-loop) and fix their known faults
(docs/protocols/weixin.md#known-faults): the cursor is saved only after the inbox accepted the
page (a crash never skips a message), the client waits a few seconds longer than the server
holds a poll (no timeout race, #267), and a read timeout is an empty poll, never a failure
(#75). Replies are checked (no silent loss on ``ret -2``, #204), rate limited, and capped at
ten per inbound message (#81).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, asynccontextmanager
from typing import Any, Final, final

import httpx
import trio

from ... import _connector as base
from ..._content import Attachment, Content, Sent, kind_of, unsupported
from ..._errors import (
    ConfigurationError,
    ConnectorError,
    FatalConnectorError,
    MediaError,
    ProtocolError,
    SendError,
)
from ..._longpoll import PAUSE_CHECK, long_poll
from ..._media import MediaPolicy
from ..._messages import Batch, Media, Message
from ..._supervise import Backoff
from . import _media
from . import _protocol as p
from ._api import (
    HTTPRefusedError,
    HTTPStatusError,
    ILinkClient,
    ILinkError,
    SessionExpiredError,
)
from ._convert import PLATFORM, to_message
from ._sending import (
    Outbox,
    RateLimit,
    TypingTickets,
    refusal,
    sendmessage_body,
    text_items,
)

log = logging.getLogger("trio_chatbridge.weixin")

TOKEN_KEY: Final = "token"  # store keys written by `weixin-login`
BASE_URL_KEY: Final = "base_url"
CONTEXT_TOKEN_PREFIX: Final = p.CONTEXT_TOKEN_PREFIX
RELOGIN_CHECK: Final = PAUSE_CHECK
"""Seconds between looks at the store for a new login's token while the account is paused
(an account given ``token=`` never looks)."""
# The reference clients' poll retries: 2 s; the core's hint makes every third 30 s
# (docs/protocols/weixin.md#retry-policy).
POLL_JITTER: Final = 0.2
"""The fraction of the 2 s either way a retry's wait is drawn in: the accounts of a process
that an outage hit together do not poll again in lockstep."""
NOT_SENT: Final = "send failed, the message was not sent"
UNCERTAIN: Final = (
    "it may have reached the user and is not sent again (WeChat would show a second copy as well)"
)


class SessionPausedError(SendError):
    """The account is paused after errcode -14; nothing can be sent until it resumes."""


@final
class LongPoll(base.Connector):
    """A WeChat bot account on the iLink long-poll API.

    Give ``token`` (and ``base_url`` if login returned one), or leave them out to use what
    ``python -m trio_chatbridge weixin-login`` stored for this ``account`` in the bridge's store.
    ``http`` shares an httpx client between accounts (you close it); ``transport`` points the
    connector's own client elsewhere (an emulator's in-memory transport). ``random`` (values
    in ``[0, 1)``) jitters the poll's retries and the typing tickets' refreshes; tests pass a
    constant.
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
        self._outbox = Outbox(account, rate_limit or RateLimit())
        self._typing_enabled = typing
        self._tickets = TypingTickets(random)
        self._poll_retries = Backoff(
            initial=p.RETRY_DELAY, maximum=p.RETRY_DELAY, jitter=POLL_JITTER, random=random
        )
        self._guard = p.SessionGuard()
        self._client: ILinkClient | None = None
        self._poller: p.Poller | None = None

    def __repr__(self) -> str:
        return f"weixin.LongPoll(account={self.account!r})"

    @property
    def paused(self) -> bool:
        """True while the account is paused after errcode -14."""
        return self._guard.paused(trio.current_time()) is not None

    def _check_paused(self) -> None:
        paused = self._guard.paused(trio.current_time())
        if paused is not None:
            raise SessionPausedError(f"weixin account {self.account}: {paused.detail}")

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
                on_session_expired=self._session_expired,
            )
            self._poller = p.Poller(
                token,
                self._client.base_url,
                functools.partial(to_message, self.account),
                self._guard,
                self._route_tag,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connector's own HTTP client (not one passed as ``http``). If cancelled,
        the client may be left open."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._poller = None

    # -- receiving ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll for messages until cancelled (see :func:`~trio_chatbridge.connectors.long_poll`).

        Running once the server has answered: ``notifystart``, or else the first good poll.
        If cancelled, the saved cursor is that of the last page the inbox accepted, and
        ``notifystop`` is still attempted (shielded, for at most 10 s).
        """
        client = await self._get_client()
        assert self._poller is not None  # made with the client
        reached = await client.notify("notifystart")
        if reached:
            task_status.started()
        try:
            await long_poll(
                self.ctx,
                self._poller,
                client.http,
                backoff=self._poll_retries,
                during_pause=self._look_for_login if self._token is None else None,
                task_status=trio.TASK_STATUS_IGNORED if reached else task_status,
            )
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + p.CONFIG_TIMEOUT):
                await client.notify("notifystop")

    async def _look_for_login(self) -> None:
        """While paused (every :data:`RELOGIN_CHECK` s): a token in the store other than the
        one in use (``weixin-login`` ran, in this process or another) is taken, with its base
        URL, and the pause ends: polls and sends go on with it, from the saved cursor."""
        client, poller = self._client, self._poller
        if client is None or poller is None:
            return
        token = await self.ctx.get(TOKEN_KEY)
        if not token or token == poller.token:
            return
        base_url = self._base_url or await self.ctx.get(BASE_URL_KEY) or p.DEFAULT_BASE_URL
        client.use_token(token, base_url)
        poller.token, poller.base_url = token, client.base_url
        self._guard.resume()
        log.warning("weixin account %s: a new login found: resuming", self.account)

    # -- sending -----------------------------------------------------------------------------

    async def _context_token(self, target: Message) -> str | None:
        """The latest token for the peer (it answers the newest message), else the message's."""
        peer = target.reply_handle.get("to_user_id")
        stored = await self.ctx.get(CONTEXT_TOKEN_PREFIX + peer) if peer else None
        return stored or target.reply_handle.get("context_token")

    async def send(self, target: Message, text: str) -> None:
        """Send ``text`` to the sender of ``target``, split at 4000 characters.

        The pieces go out in order, or none does if they would pass the ten replies an inbound
        message allows. If cancelled before the first piece went out (while waiting for the
        rate limit), nothing was sent; once it has, the call completes: the other pieces go
        out too (shielded; each waits at most for its rate-limit slot, booked in advance, and
        its 15 s request timeout; all of them together at most 120 s)
        and the cancellation reaches the caller at its next checkpoint. A cancel never cuts a
        reply short; only a failure midway (:class:`SendError`, or the cancellation if one is
        pending) can, or a platform so slow that the rest outlasts 120 s (then the same). A
        reply that fails is counted in ``replies_failed`` and never sent again here: a piece
        whose answer was lost may have arrived (the error says which), and WeChat would show
        a second copy as well.
        """
        token = await self._context_token(target)
        peer = target.reply_handle["to_user_id"]
        await self._send_items(peer, token, f"message:{target.id}", text_items(text))

    async def send_media(
        self, target: Message, data: bytes, *, filename: str, kind: str | None = None
    ) -> None:
        """Upload ``data`` (encrypted) and send it; ``kind`` defaults from the file name.

        If cancelled during the upload, nothing was sent (the CDN may keep the file); once the
        message itself is on its way, it is sent all the same (see :meth:`send`).
        """
        token = await self._context_token(target)
        peer = target.reply_handle["to_user_id"]
        item = await self._upload(peer, data, filename, kind)
        await self._send_items(peer, token, f"message:{target.id}", [item])

    async def _send_first(self, chat_id: str, content: Content) -> Sent:
        """Send text or an attachment to a user (their user id) unprompted.

        iLink has no proactive API: a message goes out with the context token of the user's
        latest message, which the bridge stores as messages arrive (it survives restarts) for
        ``CONTEXT_TOKEN_TTL`` (24 h). Without one (the user never wrote, or not
        within that time) this raises :class:`SendError`, nothing sent. The platform
        refuses sends more than 24 h after the user's last message (``ret -2``; reported
        token lifetimes vary, see docs/weixin.md), and one token carries ten messages. If
        cancelled, all of it was sent or none of it, as for :meth:`send`.
        """
        token = await self.ctx.get(CONTEXT_TOKEN_PREFIX + chat_id)
        if not token:
            raise SendError(
                f"weixin account {self.account}: no context token for {chat_id}: WeChat lets "
                "a bot write only to users who wrote to it (within the last 24 h)"
            )
        if isinstance(content, str):
            items = text_items(content)
        elif isinstance(content, Attachment):
            items = [await self._upload(chat_id, content.data, content.filename, content.kind)]
        else:
            raise unsupported(PLATFORM, self.account, content, "WeChat shows text and media")
        await self._send_items(chat_id, token, token, items)
        return Sent(PLATFORM, chat_id, kind_of(content))

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Text and attachments; Markdown, cards and posts raise :class:`SendError` (WeChat
        shows plain text only). If cancelled, all of it was sent or none of it, as for
        :meth:`send`."""
        if not isinstance(content, str | Attachment):
            raise unsupported(PLATFORM, self.account, content, "WeChat shows text and media")
        return await super().send_content(target, content)

    async def _upload(
        self, peer: str, data: bytes, filename: str, kind: str | None
    ) -> dict[str, Any]:
        with self._counting_failure():
            self._check_paused()
            client = await self._get_client()
            try:
                return await _media.upload(client, self.media_policy, peer, data, filename, kind)
            except SessionExpiredError as exc:  # getuploadurl's -14: paused by the client
                raise self._paused_error(exc) from exc
            except (ILinkError, HTTPRefusedError, ConnectorError, ProtocolError) as exc:
                raise SendError(f"weixin account {self.account}: upload failed: {exc}") from exc

    def _session_expired(self, exc: SessionExpiredError) -> None:
        """A -14 met by any call but the poll (sends, uploads, typing, notify; the client
        tells of each): the account pauses as for a poll's (no poll, sends fail fast),
        counted in ``session_expired`` and logged; one met during the pause is the same expiry
        (neither counted again nor extending the pause)."""
        paused = self._guard.pause(trio.current_time())
        if paused.counter is not None:
            self.ctx.count(paused.counter)
            log.warning("weixin:%s: %s", self.account, paused.detail)

    def _paused_error(self, exc: SessionExpiredError) -> SendError:
        """What a send that met a -14 raises: the account is paused already, unless the call
        went with the token a new login has replaced since (then only this send failed)."""
        if not self.paused:
            return SendError(
                f"weixin account {self.account}: {NOT_SENT}: it went with the token of the "
                f"login before, which expired ({exc}); the account goes on with a new login's"
            )
        return SessionPausedError(f"weixin account {self.account}: {exc}")

    def _counting_failure(self) -> AbstractContextManager[None]:
        """A reply that fails here is counted in ``replies_failed``: a :class:`SendError`, or
        a :class:`MediaError` of its upload (the CDN's refusal, the media policy's; the agent
        gets the MediaError as it was)."""
        return self.counting("replies_failed", (SendError, MediaError))

    async def download(self, media: Media) -> bytes:
        """Download and decrypt an inbound image, file, voice or video (see ``media_policy``);
        a :class:`MediaError` is counted in ``downloads_failed``. If cancelled, nothing is
        kept."""
        with self.counting("downloads_failed", MediaError):
            return await _media.download(await self._get_client(), self.media_policy, media)

    async def _send_items(
        self, peer: str, token: str | None, fallback_key: str, items: list[dict[str, Any]]
    ) -> None:
        """:meth:`_send_all`, a failure counted in ``replies_failed``."""
        with self._counting_failure():
            await self._send_all(peer, token, fallback_key, items)

    async def _send_all(
        self, peer: str, token: str | None, fallback_key: str, items: list[dict[str, Any]]
    ) -> None:
        """All of ``items`` in order, or none: a cancel before the first goes out sends
        nothing, and neither does a first piece that fails (both give the quota back); after
        it, the rest go out shielded, and the cancel reaches the caller afterwards. The shield
        is bounded: the slots are booked up front, every request has its own timeout, and the
        whole is held to :data:`~._sending.REPLY_SHIELD_MAX` (past it, :class:`SendError`: the
        reply was cut short). What goes out when is the :class:`~._sending.Outbox`'s plan."""
        self._check_paused()
        client = await self._get_client()
        plan = self._outbox.plan(token, fallback_key, items, trio.current_time())
        if not plan.items:
            return
        try:
            await trio.sleep_until(plan.slots[0])
        except BaseException:  # Cancelled: nothing went out
            self._outbox.cancelled(plan)
            raise
        sent = 0
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + plan.within):
                for slot, item in zip(plan.slots, plan.items, strict=True):
                    await trio.sleep_until(slot)
                    await self._send_item(client, peer, token, item)
                    sent += 1
        except SendError:
            if not sent:  # the first piece failed: nothing went out
                self._outbox.cancelled(plan)
            await trio.lowlevel.checkpoint_if_cancelled()  # a cancel says more than a refusal
            raise
        if sent < len(plan.items):  # the shield's deadline passed
            await trio.lowlevel.checkpoint_if_cancelled()
            raise SendError(  # the piece cut off was asked for: it may have arrived
                f"weixin account {self.account}: {sent} of the reply's {len(plan.items)} pieces "
                f"went out within {plan.within:.0f} s (the platform answers slowly); of the "
                f"next, {UNCERTAIN}; any after it were not sent"
            )

    async def _send_item(
        self, client: ILinkClient, peer: str, token: str | None, item: dict[str, Any]
    ) -> None:
        client_id = f"trio-chatbridge:{int(time.time() * 1000)}-{random.getrandbits(32):08x}"
        try:
            await client.send_message(sendmessage_body(peer, token, item, client_id))
        except SessionExpiredError as exc:  # paused by the client
            raise self._paused_error(exc) from exc
        except ILinkError as exc:
            raise refusal(self.account, exc) from exc
        except HTTPRefusedError as exc:
            raise SendError(f"weixin account {self.account}: {NOT_SENT}: {exc}") from exc
        except (ConnectorError, ProtocolError) as exc:
            # Cut off, silent, a 5xx or an unreadable answer: the request may have been taken,
            # and each send has its own client_id, so the platform would show a second copy.
            # No connection, or a 408, 425 or 429 ("not now"): the server did not take it.
            unsent = isinstance(exc.__cause__, httpx.ConnectError) or (
                isinstance(exc, HTTPStatusError) and exc.status < 500
            )
            gone = NOT_SENT if unsent else f"send failed: {UNCERTAIN}"
            raise SendError(f"weixin account {self.account}: {gone}: {exc}") from exc

    # streaming: the platform has no edit-in-place and renders nothing for GENERATING
    # (docs/protocols/weixin.md#replies-and-streaming),
    # so the base class's stream (collect, then one send at the end) is the right mapping.

    def running(self, batch: Batch) -> AbstractAsyncContextManager[None]:
        """Keep "typing..." shown to the sender while the agent runs (refreshed every 5 s).

        However the body ends, cancelled included, the indicator is then cancelled (shielded,
        for at most 10 s)."""
        return self._typing(batch.latest)

    @asynccontextmanager
    async def _typing(self, target: Message) -> AsyncIterator[None]:
        peer = target.reply_handle.get("to_user_id")
        if not self._typing_enabled or not peer or self.paused:
            yield
            return
        client = await self._get_client()
        ticket = await self._typing_ticket(client, peer, await self._context_token(target))
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
                    await self._typing_call(client, peer, ticket, typing=False)

    async def _typing_ticket(self, client: ILinkClient, peer: str, context: str | None) -> str:
        """The peer's typing ticket: cached, or fetched (``""``: none, typing is skipped)."""
        now = trio.current_time()
        ticket = self._tickets.cached(peer, now)
        if ticket is not None:
            return ticket
        try:
            answer = await client.get_config(peer, context)
        except (ILinkError, HTTPRefusedError, ConnectorError, ProtocolError) as exc:
            log.debug("getconfig for typing failed: %s", exc)
            return self._tickets.failed(peer, now)
        return self._tickets.fetched(peer, answer, now)

    async def _keep_typing(self, client: ILinkClient, peer: str, ticket: str) -> None:
        while True:
            await self._typing_call(client, peer, ticket, typing=True)
            await trio.sleep(p.TYPING_KEEPALIVE)

    async def _typing_call(
        self, client: ILinkClient, peer: str, ticket: str, *, typing: bool
    ) -> None:
        """Show or cancel "typing..."; failures are logged. Nothing while the account is
        paused (a -14 here pauses it, as any call's does)."""
        if self.paused:
            return
        try:
            await client.send_typing(peer, ticket, typing=typing)
        except (ILinkError, HTTPRefusedError, ConnectorError, ProtocolError) as exc:
            log.debug("weixin typing indicator failed (ignored): %s", exc)

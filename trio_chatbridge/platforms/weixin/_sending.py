"""WeChat's send policy, sans-I/O: pacing, the reply quota, typing tickets, what a reply becomes.

The connector (``_connector.py``) does the I/O: it asks an :class:`Outbox` for a
:class:`Plan` (the messages of a reply, each with the time it may go out), sleeps until each
slot, posts each message, and gives the quota back if nothing went out (cancelled before
the first message, or the first refused or failed). What the platform allows lives here: a
token bucket (:class:`RateLimit`), ten replies per inbound message
(docs/protocols/weixin.md#limits), and the per-peer typing tickets of ``getconfig``
(docs/protocols/weixin.md#typing). Nothing here reads a clock or draws a random number: times
(``now``, on any one clock) and the random source are passed in, and the module imports no
I/O library (a test checks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, final

import attrs

from ..._errors import SendError
from . import _protocol as p
from ._convert import split_text

QUOTA_MEMORY: Final = 4096
"""Context tokens (inbound messages) whose reply count is remembered, the least recent
forgotten first."""
TYPING_TICKETS: Final = 4096
"""Peers whose typing ticket is remembered, the least recent forgotten first."""
REPLY_SHIELD_MAX: Final = 120.0
"""Seconds the rest of a reply may take once its first piece went out, at most (its pieces'
rate-limit slots plus a request timeout each, held to this): a cancelled send returns by then."""
SHIELD_MARGIN: Final = 1.0
"""Seconds a reply's pieces may take beyond their request timeouts, one per piece: a piece
that times out fails with its own error (saying why), before the reply's deadline."""


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


@final
@attrs.define
class Bucket:
    """A token bucket that books send times: first come, first served, no lock needed.

    In any window of ``t`` seconds, at most ``burst + t * per_second`` of the times it books
    fall (a test checks this for any sequence of bookings).
    """

    limit: RateLimit
    tokens: float = attrs.field(init=False)
    stamp: float | None = attrs.field(init=False, default=None)
    """When the bucket holds :attr:`tokens`; ahead of ``now`` once sends are queued."""

    def __attrs_post_init__(self) -> None:
        self.tokens = float(self.limit.burst)

    def book(self, count: int, now: float) -> list[float]:
        """The times at which ``count`` messages may go out, in order, counted at once.

        Times booked are kept even if their messages never go (a cancelled send): the
        pacing errs on the slow side.
        """
        rate = self.limit.per_second
        if self.stamp is None:
            self.stamp = now
        elif now > self.stamp:
            self.tokens = min(self.limit.burst, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
        times = []
        for _ in range(count):
            if self.tokens < 1:
                self.stamp += (1 - self.tokens) / rate
                self.tokens = 1.0
            self.tokens -= 1
            times.append(self.stamp)
        return times


@final
@attrs.define
class ReplyQuota:
    """The replies each inbound message allows (its context token's ten), reserved all or none.

    At most ``memory`` keys are remembered, the least recently used going first.
    """

    account: str
    limit: int = p.MAX_REPLIES_PER_MESSAGE
    memory: int = QUOTA_MEMORY
    _used: OrderedDict[str, int] = attrs.field(init=False, factory=OrderedDict)

    def left(self, key: str) -> int:
        """Replies ``key`` has left."""
        return self.limit - self._used.get(key, 0)

    def reserve(self, key: str, count: int) -> None:
        """Count ``count`` replies under ``key``; :class:`SendError` (nothing counted) if they
        would pass the limit."""
        used = self._used.pop(key, 0)
        if used + count > self.limit:
            self._used[key] = used
            needs = f"this reply needs {count} messages, " if count > 1 else ""
            raise SendError(
                f"weixin account {self.account}: at most {self.limit} replies per inbound "
                f"message (a platform limit); {needs}{self.limit - used} left. Send less, or in "
                "fewer, longer messages"
            )
        self._used[key] = used + count
        while len(self._used) > self.memory:
            self._used.popitem(last=False)

    def release(self, key: str, count: int) -> None:
        """Give back ``count`` replies reserved under ``key`` that never went out."""
        if key in self._used:
            self._used[key] = max(0, self._used[key] - count)


@attrs.define
class _Ticket:
    ticket: str
    next_fetch: float
    retry: float = p.CONFIG_RETRY_INITIAL


@final
@attrs.define
class TypingTickets:
    """Per-peer typing tickets from ``getconfig``, refreshed as the reference cache does.

    A ticket is fetched again at a random fraction of :data:`~._protocol.CONFIG_CACHE_TTL`
    (so that many peers do not refresh at once); a failed fetch keeps the old ticket and is
    retried after a delay that doubles up to :data:`~._protocol.CONFIG_RETRY_MAX`. See
    ``docs/protocols/weixin.md#typing``. At most ``size`` peers are kept, the least recently
    used going first: a bot with many users keeps a bounded table.
    """

    random: Callable[[], float] = attrs.field(repr=False)
    """A number in [0, 1), fresh at each call."""
    size: int = TYPING_TICKETS
    _entries: OrderedDict[str, _Ticket] = attrs.field(init=False, factory=OrderedDict)

    def cached(self, peer: str, now: float) -> str | None:
        """The peer's ticket if it needs no fetch at ``now``; None: fetch one, then call
        :meth:`fetched` or :meth:`failed`."""
        entry = self._entries.get(peer)
        if entry is None:
            return None
        self._entries.move_to_end(peer)
        return entry.ticket if now < entry.next_fetch else None

    def fetched(self, peer: str, answer: Any, now: float) -> str:
        """Keep the ticket of a ``getconfig`` answer (``""``: the peer has none); return it."""
        ticket = p.read_str(answer, "typing_ticket") or ""
        self._keep(peer, _Ticket(ticket, now + self.random() * p.CONFIG_CACHE_TTL))
        return ticket

    def failed(self, peer: str, now: float) -> str:
        """After a failed fetch: the ticket to use meanwhile (the old one, or ``""``)."""
        entry = self._entries.get(peer)
        if entry is None:
            self._keep(peer, _Ticket("", now + p.CONFIG_RETRY_INITIAL))
            return ""
        entry.retry = min(2 * entry.retry, p.CONFIG_RETRY_MAX)
        entry.next_fetch = now + entry.retry
        return entry.ticket

    def _keep(self, peer: str, ticket: _Ticket) -> None:
        self._entries[peer] = ticket
        self._entries.move_to_end(peer)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def text_items(text: str) -> list[dict[str, Any]]:
    """A text reply's items: one per piece of at most :data:`~._protocol.TEXT_LIMIT`."""
    return [{"type": p.ItemType.TEXT, "text_item": {"text": t}} for t in split_text(text)]


def sendmessage_body(
    peer: str, token: str | None, item: dict[str, Any], client_id: str
) -> dict[str, Any]:
    """The ``msg`` of one ``sendmessage``: one finished bot message of one item to ``peer``.

    See ``docs/protocols/weixin.md#replies-and-streaming``.
    """
    msg: dict[str, Any] = {
        "from_user_id": "",
        "to_user_id": peer,
        "client_id": client_id,
        "message_type": int(p.MessageType.BOT),
        "message_state": int(p.MessageState.FINISH),
        "item_list": [item],
    }
    if token:
        msg["context_token"] = token
    return msg


def refusal(account: str, error: p.ILinkError) -> SendError:
    """What a person reads when the platform refuses a message (``ret -2`` explained)."""
    hint = (
        " The platform declines after bursts ('prepare failed'), with a stale context, "
        "or more than 24 h after the user's last message; wait and try again."
        if error.code == -2
        else ""
    )
    return SendError(f"weixin account {account}: {error}.{hint}")


@final
@attrs.frozen
class Plan:
    """One reply, planned: its items in order, each with the time it may go out."""

    key: str
    """What its replies count under: the context token, else the message answered."""
    items: Sequence[dict[str, Any]]
    slots: Sequence[float]
    """Send times, one per item, nondecreasing."""
    within: float
    """Seconds the pieces after the first may take, from the first slot on, at most."""


@final
@attrs.define
class Outbox:
    """Decides what a reply sends and when: quota first (all or none), then pacing.

    :meth:`plan` reserves the reply's quota and books its slots; :meth:`cancelled` gives the
    quota back when nothing went out. The slots stay booked either way (see :meth:`Bucket.book`).
    """

    account: str
    limit: RateLimit = attrs.Factory(RateLimit)
    bucket: Bucket = attrs.field(init=False)
    quota: ReplyQuota = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.bucket = Bucket(self.limit)
        self.quota = ReplyQuota(self.account)

    def plan(
        self, token: str | None, fallback_key: str, items: Sequence[dict[str, Any]], now: float
    ) -> Plan:
        """Plan ``items`` as one reply at ``now``; :class:`SendError` (nothing reserved nor
        booked) if the quota of ``token`` (else ``fallback_key``) has not room for all."""
        key = token or fallback_key
        if not items:
            return Plan(key, (), (), 0.0)
        self.quota.reserve(key, len(items))
        slots = self.bucket.book(len(items), now)
        within = slots[-1] - slots[0] + len(items) * (p.API_TIMEOUT + SHIELD_MARGIN)
        within = min(within, REPLY_SHIELD_MAX)
        return Plan(key, tuple(items), tuple(slots), within)

    def cancelled(self, plan: Plan) -> None:
        """Nothing of ``plan`` went out: its quota is free again."""
        self.quota.release(plan.key, len(plan.items))

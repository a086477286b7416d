"""Per-session debouncing: a burst of messages in one chat becomes one batch.

Each message re-arms its session's quiet window; when the window passes with nothing new, the
session's messages leave as one :class:`Batch`. ``max_delay`` caps the wait counted from the
session's first message and ``max_messages`` lets a batch out early.

All deadlines sit in one heap and one task serves them: it waits for the next message in a
cancel scope whose deadline it keeps on the earliest one, so each message costs O(log n) and
there is no task per session (nor a scope per put). A re-armed session leaves its old heap
entry behind; the entry is recognised as stale (its deadline no longer matches) and skipped
when it comes up. Time is Trio's clock.

The sessions it holds are bounded (``max_pending``), and so is memory, but a full debouncer
keeps reading: a message for a session it holds is filed as ever (it costs no session), and a
new chat's messages are *parked* in a small overflow (``max_parked`` sessions) that takes the
next free places, oldest first. Only when the overflow is full too does reading stop, at that
message, until a session leaves.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Final, final

import attrs
import trio

from ._errors import ConfigurationError
from ._messages import Batch, Message


def session_key(message: Message) -> str:
    """The default session: one per chat of one account (``platform:account:chat``).

    ``%`` and ``:`` in the platform and the account are percent-encoded (``%25``, ``%3A``), so
    the first two colons always separate the three parts and distinct (platform, account,
    chat) never share a key: unescaped, account ``a:b`` with chat ``c`` and account ``a`` with
    chat ``b:c`` would both be ``p:a:b:c`` and share one run. The chat id, last, stays as it
    is; so does the whole key when neither part holds a ``%`` or ``:`` (the usual case).
    """
    platform, account = message.platform, message.account
    # Rare, so looked for first: four `in` tests cost less than four replaces (once a session).
    if ":" in platform or ":" in account or "%" in platform or "%" in account:
        platform, account = _escaped(platform), _escaped(account)
    return f"{platform}:{account}:{message.chat.id}"


def _escaped(part: str) -> str:
    """``part`` with ``%`` and ``:`` percent-encoded: it holds no ``:`` and decodes back."""
    return part.replace("%", "%25").replace(":", "%3A")


def _check_positive(_: object, attribute: attrs.Attribute[float], value: float | None) -> None:
    if value is not None and not value >= 0:
        raise ConfigurationError(f"Debounce.{attribute.name} must be >= 0, got {value!r}")


@final
@attrs.frozen
class Debounce:
    """How long to wait for a chat to go quiet before its messages go to the agent."""

    window: float = attrs.field(default=3.0, validator=_check_positive)
    """Seconds of quiet after the latest message that end a batch."""
    max_delay: float | None = attrs.field(default=20.0, validator=_check_positive)
    """At most this many seconds from a batch's first message to its release (None: no cap)."""
    max_messages: int | None = None
    """Release a batch as soon as it holds this many messages (None: no limit)."""
    key: Callable[[Message], str] = session_key
    """Which messages belong together (default: same platform, account and chat). A message
    it raises on, or gives no ``str`` for, goes to its chat's default session, counted in
    ``stats().other["debouncer.bad_keys"]`` and logged."""

    def __attrs_post_init__(self) -> None:
        if self.max_messages is not None and self.max_messages < 1:
            raise ConfigurationError(
                f"Debounce.max_messages must be >= 1 or None, got {self.max_messages!r}"
            )


@attrs.define(eq=False)
class _Session:
    key: str
    home: dict[str, _Session]
    """The map it is filed in while pending (see ``Debouncer._add``)."""
    slot: str
    """Its key in ``home``."""
    messages: list[Message]
    cap: float  # release at the latest by this time (first message + max_delay)
    deadline: float
    parked: bool
    """Waiting for a place (in ``Debouncer._parked``, not in the heap) rather than held."""


NO_DEADLINE: Final = math.inf
MAX_PENDING: Final = 100_000  # sessions a Debouncer holds at most, by default
PARKED_SHARE: Final = 4  # the overflow parks max_pending // PARKED_SHARE sessions by default


@final
class Debouncer:
    """Runs a :class:`Debounce` policy between two channels.

    ``run(receive, send)`` reads tuples of messages and writes batches. When ``receive`` ends
    (or after :meth:`drain`), every pending session is released at once and later messages go
    out as they come; ``send`` is closed once ``receive`` has ended.

    **Full.** It holds at most ``max_pending`` sessions on its timer. Holding that many, it
    still reads: a message for a session it holds is filed at once (no head-of-line wait behind
    a flood of new chats), and a message for a new session is parked, with every later message
    of that session, in an overflow of at most ``max_parked`` sessions (by default
    ``max_pending // 4``, at least one). When a held session leaves, the oldest parked one
    takes its place with the deadline its messages' arrival times give it (the latest plus the
    window, capped at the first plus ``max_delay``), so one that already sat out its window
    leaves at once. A parked session that reaches ``max_messages`` leaves at once too, as a
    held one does. With the overflow full as well, reading stops at the next message for a new
    session, with the rest of its page kept in hand (not read again, not lost), until a
    session leaves; the input channel then fills and pushes back on whoever puts (the
    connectors). Parked rather than simply held past the bound: ``max_pending`` keeps its
    meaning (the sessions timed at once), the overflow is what lets reading go on past a new
    chat, and served oldest first it hands out places in arrival order, so no new chat
    overtakes one that waits longer.

    Per-session order holds throughout (a session's messages go to one place, held or parked,
    in arrival order; reading stops only in arrival order), every message leaves exactly once,
    and memory is bounded by ``max_pending + max_parked`` sessions (a few hundred bytes each)
    with their messages, plus one page in hand.
    """

    def __init__(
        self,
        policy: Debounce | None = None,
        *,
        max_pending: int = MAX_PENDING,
        max_parked: int | None = None,
        on_full: Callable[[], None] | None = None,
        on_bad_key: Callable[[Message, Exception], None] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ConfigurationError(f"Debouncer max_pending must be >= 1, got {max_pending!r}")
        if max_parked is not None and max_parked < 0:
            raise ConfigurationError(f"Debouncer max_parked must be >= 0, got {max_parked!r}")
        self.policy: Debounce = policy or Debounce()
        self.max_pending = max_pending
        """Sessions held on the timer at most."""
        self.max_parked: int = (
            max(1, max_pending // PARKED_SHARE) if max_parked is None else max_parked
        )
        """New sessions parked at most while ``max_pending`` are held (default: a quarter of
        ``max_pending``, at least one); with that many parked too, reading stops."""
        self.on_full = on_full
        """Called each time a full debouncer makes a message wait: a new chat parked, or
        reading stopped at a new chat's message because the overflow is full too. Parked
        messages wait until a held session leaves (up to ``max_delay`` or a window after its
        latest message); stopped reading makes everything behind wait, and whoever puts
        once the input channel is full."""
        self.on_bad_key = on_bad_key
        """Called for each message whose ``Debounce.key`` raised or gave no string: that
        message goes to the default session (:func:`session_key`) instead, so a key function's
        bug never stops the bridge nor loses the message (it would replay, and fail, at every
        start)."""
        # Pending sessions. With the default key, a map per account by chat id: finding a
        # message's session is one lookup by a string it already holds, and the session key
        # (session_key's string) is built once per session, not per message. With a key of the
        # user's, one map by that key. Parked sessions are filed there too (same lookup).
        self._by_chat: dict[tuple[str, str], dict[str, _Session]] | None = (
            {} if self.policy.key is session_key else None
        )
        self._by_key: dict[str, _Session] = {}
        self._pending = 0  # held sessions, not parked ones
        # Oldest first. An OrderedDict: promoting the oldest is popitem(last=False), O(1); a
        # dict's next(iter(d)) after front deletions scans every slot deleted before (a release
        # cost 54 us with 100k parked, 3 us now: docs/performance.md, "Debouncer, parked").
        self._parked: OrderedDict[_Session, None] = OrderedDict()
        # Where reading stopped: the message it stopped at, and the rest of its page (the
        # page's own iterator: a resume never wraps it, so however often reading stops in one
        # page, each later message costs one step). _rest means something only while
        # _stopped_at is set.
        self._stopped_at: Message | None = None
        self._rest: Iterator[Message] = iter(())
        self._heap: list[tuple[float, int, _Session]] = []
        self._tiebreak = 0
        self._draining = False
        self._wait = trio.CancelScope()

    @property
    def pending_sessions(self) -> int:
        """Sessions holding messages not yet released (held and parked)."""
        return self._pending + len(self._parked)

    def drain(self) -> None:
        """Release every pending session now (held, parked, and the page in hand), and every
        later message at once (for shutdown)."""
        self._draining = True
        self._wait.cancel()

    async def run(
        self,
        receive: trio.MemoryReceiveChannel[tuple[Message, ...]],
        send: trio.MemorySendChannel[Batch],
    ) -> None:
        """Debounce until ``receive`` ends; then release everything left and close ``send``.

        Cancelled, it closes both channels and drops the sessions it holds, parked ones and
        the page in hand included: their messages are journaled and not done, so they replay
        at the next start. A batch is never sent in part (a cancelled send sent nothing).
        """
        async with receive, send:
            while True:
                await self._release_due(send)
                # A cancelled receive took nothing, so waking up early (deadline, drain) is safe.
                # No checkpoint lies between _release_due and here, so a drain() cannot slip by.
                ready: list[Batch] | None = []
                deadline = self._heap[0][0] if self._heap else NO_DEADLINE
                with trio.CancelScope(deadline=deadline) as self._wait:
                    ready = await self._file(receive, self._wait, deadline)
                if ready is None:
                    break  # the end of the input
                # Sent outside the scope: drain() must not cancel a send half-way.
                for batch in ready:
                    await _send(send, batch)
            self._draining = True
            await self._release_due(send)

    async def _file(
        self,
        receive: trio.MemoryReceiveChannel[tuple[Message, ...]],
        wait: trio.CancelScope,
        deadline: float,
    ) -> list[Batch] | None:
        """Receive and file messages until some are due at once (returns their batches) or
        the input ends (returns None), keeping ``wait``'s deadline on the earliest pending
        one: one cancel scope serves every put until a deadline passes (or drain()), instead
        of one scope per put. The page in hand, if reading stopped, goes first; while it
        still cannot be filed (it stops again at once), this waits for a deadline (or
        drain()) reading nothing. Cancelled, the messages received so far are filed or in
        hand."""
        heap = self._heap
        while True:
            resumed = self._stopped_at
            if resumed is None:
                try:
                    page = await receive.receive()
                except trio.EndOfChannel:
                    return None
                messages: Iterator[Message] = iter(page)
            else:
                messages, self._stopped_at, self._rest = self._rest, None, iter(())
            now = trio.current_time()
            ready = self._add(messages, now, resumed)
            if ready or not heap or heap[0][0] <= now:
                return ready  # (with a window of 0, due already: released by the caller)
            if heap[0][0] != deadline:
                deadline = wait.deadline = heap[0][0]
            if self._stopped_at is not None:
                await trio.sleep_forever()  # full: woken by the next deadline, or drain()

    def _add(self, messages: Iterator[Message], now: float, resumed: Message | None) -> list[Batch]:
        """File each message under its session at time ``now``, ``resumed`` (where reading
        stopped before) first; returns the batches due at once. Stops at a message for a new
        session that can be neither held nor parked (the one definition of full), keeping it
        in ``_stopped_at`` and the rest of ``messages`` in ``_rest``."""
        policy = self.policy
        key_of, by_chat, most = policy.key, self._by_chat, policy.max_messages
        due = now + policy.window  # the deadline each message sets, its session's cap allowing
        ready: list[Batch] = []
        home = self._by_key
        platform: str | None = None  # of the message before (none yet)
        account: str | None = None
        session: _Session | None = None  # the message before's, while it is pending
        page = messages if resumed is None else itertools.chain((resumed,), messages)
        for message in page:
            if by_chat is None:
                try:
                    slot = key_of(message)
                    if type(slot) is not str:
                        raise TypeError(f"Debounce.key must return a str, got {slot!r}")
                except Exception as exc:  # the user's function: its bug is not a dead bridge
                    slot = session_key(message)
                    if self.on_bad_key is not None:
                        self.on_bad_key(message, exc)
            else:
                if message.account != account or message.platform != platform:
                    platform, account = message.platform, message.account
                    home = by_chat.setdefault((platform, account), {})
                    session = None
                slot = message.chat.id
            if session is not None and session.slot == slot:
                # A burst: the session of the message before, its deadline set this turn
                # already; no lookup and no re-arm.
                session.messages.append(message)
                if most is not None and len(session.messages) >= most:
                    ready.append(self._release(session))
                    session = None
                continue
            session = home.get(slot)
            if session is None:
                held = self._pending < self.max_pending or self._draining
                if not held and len(self._parked) >= self.max_parked:
                    self._stopped_at, self._rest = message, messages
                    self._full(message, resumed)
                    break
                key = slot if by_chat is None else session_key(message)
                cap = NO_DEADLINE if policy.max_delay is None else now + policy.max_delay
                deadline = due if due < cap else cap
                session = _Session(key, home, slot, [message], cap, deadline, not held)
                home[slot] = session
                if held:
                    self._pending += 1
                    self._push(session)
                else:
                    self._parked[session] = None
                    self._full(message, resumed)
            else:
                session.messages.append(message)
                # Deadlines only move later, so the heap entry can stay put: when it comes
                # up early, _release_due files it again under the new deadline. A parked
                # session keeps its deadline too, for when it takes a place.
                session.deadline = due if due < session.cap else session.cap
            if self._draining or (most is not None and len(session.messages) >= most):
                ready.append(self._release(session))
                session = None
        return ready

    def _full(self, message: Message, resumed: Message | None) -> None:
        """A new chat's ``message`` waits because the debouncer is full: tell ``on_full``,
        once a chat: not again for ``resumed``, counted when reading stopped at it (parked
        now, or stopped at again)."""
        if self.on_full is not None and message is not resumed:
            self.on_full()

    def _release(self, session: _Session) -> Batch:
        """Take ``session`` out of the pending ones, and put the oldest parked session in the
        place it leaves; returns its batch."""
        del session.home[session.slot]
        if session.parked:
            del self._parked[session]
        elif self._parked:
            promoted, _ = self._parked.popitem(last=False)
            promoted.parked = False
            self._push(promoted)  # leaves by the heap: in this pass if it is due already
        else:
            self._pending -= 1
        return Batch(session.key, session.messages)

    def _push(self, session: _Session) -> None:
        self._tiebreak += 1
        heapq.heappush(self._heap, (session.deadline, self._tiebreak, session))

    async def _release_due(self, send: trio.MemorySendChannel[Batch]) -> None:
        """Send every session whose deadline has passed (all of them while draining); a
        parked session promoted meanwhile leaves in the same pass if it is due."""
        heap = self._heap
        now = trio.current_time()
        while heap and (self._draining or heap[0][0] <= now):
            _, _, session = heapq.heappop(heap)
            if session.home.get(session.slot) is not session:
                continue  # released early (max_messages, drain): a leftover entry
            if not self._draining and session.deadline > now:
                self._push(session)  # re-armed since it was filed
                continue
            if await _send(send, self._release(session)):
                now = trio.current_time()  # it waited for room


async def _send(send: trio.MemorySendChannel[Batch], batch: Batch) -> bool:
    """Send without yielding while the channel has room: the batches released together reach
    the dispatcher together, which starts their runs in one turn. Full, it waits (the
    receive before the next release is this task's checkpoint). Returns whether it waited."""
    try:
        send.send_nowait(batch)
    except trio.WouldBlock:
        await send.send(batch)
        return True
    return False

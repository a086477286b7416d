"""The WebSocket long-connection driver: the I/O and policy of every push platform, once.

A platform brings a **protocol core** (:class:`WebSocketCore`): sans-I/O, it turns each frame
received into events and builds every frame to send, keeping the handshake, heartbeat,
``req_id`` and fragment state. :class:`WebSocketDriver` does the rest for every platform alike:

- connect through an injected opener (``open_websocket(url)``: in memory, loopback or the
  network), send the core's handshake (:meth:`WebSocketCore.open`), then read until the
  connection fails; the supervisor reconnects by calling :meth:`WebSocketDriver.run` again,
  under the bridge's one :class:`~trio_chatbridge.Backoff`;
- a silence watchdog (:attr:`WebSocketCore.silence`) and a heartbeat task
  (:meth:`WebSocketCore.heartbeat` every :attr:`WebSocketCore.heartbeat_interval`);
- the reader parses each frame (bad ones are counted in ``protocol_errors``, logged once and
  skipped: :func:`parse_or_skip`), sends at once what must be answered at once (a :class:`Send`
  among its events: a pong), hands answers of our requests to their waiters (:class:`Answer`, by
  key), notices to a bounded set of handler tasks (:class:`Notice`; one the platform pushes again
  unless answered is given back to the core when every slot is busy), counts what the core only
  counts (:class:`Counted`), counts and logs bad input inside a good frame (:class:`Bad`), and
  inbound messages (:class:`Inbound`) to a **bounded** backlog; when :data:`BACKLOG` of them wait
  for the inbox the reader stops reading (a slow inbox slows the socket), while heartbeats and the
  frames we send never wait behind the inbox: they go out from their own tasks, and while one of
  our requests waits for its answer (a heartbeat, a reply's ACK) the reader reads on past a full
  backlog, to twice :data:`BACKLOG` at most, so answers behind inbound frames still arrive;
  while the reader is stopped, neither the silence watchdog nor a heartbeat's answer window
  nor the posted requests' timer runs (the stall is ours, not the peer's: a stalled inbox
  never ends a connection, nor times out an ACK left unread), while an awaited reply's ACK
  window runs on (a reply that times out fails its run and frees its slot, so the
  inbox drains: were they paused too, runs waiting for ACKs behind the unread frames could hold
  every slot while the full inbox held the reader, for good);
- one worker takes everything waiting at once, :data:`BURST_LINGER` after the oldest arrived
  or the worker came for it (woken once, by a deadline the reader sets, not per frame), puts
  it in one ``ctx.put`` and only then sends the ACKs (:attr:`Inbound.ack`): a message is
  durable before the platform hears it was received. The put is shielded, with no time limit
  while the connection runs (a slow inbox is backpressure), for :data:`PUT_GRACE` seconds at
  most once its teardown began, on every platform: what was taken off the socket is journaled
  even while the connection is torn down (WeCom never delivers a callback again; for Lark the
  re-push is a journal duplicate), and its ACKs, if the connection is gone, are not sent; what
  the grace cut short is counted (``unconfirmed_at_teardown``) and logged once, at ERROR;
- errors are mapped in one place (:meth:`WebSocketDriver.run`): a rejected handshake goes to
  :meth:`WebSocketCore.rejected` (fatal or not, the core decides), a closed socket, a refused
  connection or silence is a :class:`ConnectorError`, and a :class:`Close` event ends the
  connection as the core says (fatal, or with a ``retry_after`` hint for the backoff).

Requests (:meth:`WebSocketDriver.request`) are matched with their :class:`Answer` by key (a
``req_id``); at most one request per key is in flight, the next waits its turn, and nothing is
kept for a key nobody waits on. A request waits for the connection to come back across a
reconnect, at most ``reconnect_wait`` seconds.

A request may also be **posted** (:meth:`WebSocketDriver.post`): written, and its answer not
awaited by anyone. The connection keeps it by key with its deadline, and settles it by calling
the poster's ``settle`` once: from the reader, inline, with its :class:`Answer`; with an
:class:`AckTimeout` from the connection's one timer (posted requests share ``answer_within``,
so their deadlines come in the order they were posted: one timer task serves them all, no task
per request; it waits while the reader is stopped by our own backpressure); with a
:class:`Disconnected` (``sent=True``) when the connection closes, its write done or in flight,
unless its poster asked for it to be carried over (``carried``): the driver then keeps it and
writes it again, first, on the next connection (:meth:`WebSocketDriver._carry`), or settles it
:class:`Disconnected` once no next connection is coming (:meth:`WebSocketDriver.stopped`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from typing import Final, Generic, Protocol, TypeAlias, TypeVar, final
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

from ._connector import ConnectorContext
from ._errors import ConnectorError, FatalConnectorError, find_error
from ._messages import Message
from ._receive import BURST_LINGER, Handlers, Skipped, parse_or_skip, rearm, skip_bad
from ._redact import redact
from ._supervise import Backoff, Retries
from ._ws_client import SendFailed
from ._ws_core import (
    REJECTION_BODY_BYTES,
    Answer,
    Bad,
    Close,
    Counted,
    Data,
    Inbound,
    Notice,
    Outgoing,
    Request,
    Retimed,
    Send,
    WebSocketCore,
)

log = logging.getLogger("trio_chatbridge.websocket")

N = TypeVar("N")


class WebSocket(Protocol):
    """An open WebSocket, as the driver uses it: the library's own client (no reader task, the
    default of WeCom and Lark) is one, so is a ``trio_websocket.WebSocketConnection``.

    Both calls raise ``trio_websocket.ConnectionClosed`` once the connection is closed (ours
    raises trio-websocket's types too: one mapping serves both): the driver's
    :meth:`~WebSocketDriver.run` then raises, and the supervisor reconnects.
    """

    async def get_message(self) -> Data:
        """The next message received, text or binary. If cancelled, nothing was taken."""
        ...

    async def send_message(self, message: Data) -> None:
        """Send one message. If cancelled, it may or may not have been sent."""
        ...


OpenWebSocket: TypeAlias = Callable[[str], AbstractAsyncContextManager[WebSocket]]
"""Opens a WebSocket to a URL: called with the URL, it returns an async context manager whose
``async with`` connects (handshake included), yields the :class:`WebSocket`, and closes it on
the way out. The library's own client is one (WeCom's and Lark's default, see
docs/connectors.md); ``trio_websocket.open_websocket_url`` is one too (bind its options with a
lambda: ``lambda url: open_websocket_url(url, max_message_size=2**22)``); so is an
emulator's ``open_websocket``, in memory. Connecting raises ``OSError`` or
``trio_websocket.HandshakeError`` when it fails (``ConnectionRejected``, a refused upgrade, is
given to :meth:`WebSocketCore.rejected`); the driver maps each to a :class:`ConnectorError`.
"""

PUT_BATCH: Final = 100
"""Inbound messages journaled together at most."""
BACKLOG: Final = 1000
"""Inbound messages that may wait for the inbox before the reader stops reading (twice as many
while a request waits for its answer)."""
PUT_GRACE: Final = 10.0
"""Seconds a put may still take once its connection is being torn down (shielded: what was
taken off the socket is journaled all the same). While the connection runs a put has no time
limit: a slow inbox holds it, and the full backlog stops the reader (backpressure)."""
UNCONFIRMED: Final = "unconfirmed_at_teardown"
"""The counter of messages taken off the socket whose put did not return within
:data:`PUT_GRACE` of the teardown (see :meth:`WebSocketDriver.run`)."""
ANSWER_WITHIN: Final = 5.0
"""Seconds a request waits for its answer, unless it says otherwise."""
RECONNECT_WAIT: Final = 60.0
"""Seconds a request waits for the connection to come back."""
CARRIED: Final = 1000
"""Posted requests written and unsettled when their connection closed that the driver keeps
to write again on the next (beyond: settled :class:`Disconnected`, counted in
``posted_not_carried``)."""
Settle: TypeAlias = Callable[[Answer | ConnectorError], None]
"""How a posted request is settled (:meth:`WebSocketDriver.post`): with its answer (a refusal
too), an :class:`AckTimeout`, or a :class:`Disconnected`. Called once, from the reader, the
connection's timer or its close: it must not raise, nor block."""
Carried: TypeAlias = Callable[[], None]
"""Tells a poster its request, unsettled when its connection closed, will be written again on
the next (:meth:`WebSocketDriver.post`): an answer "already had it" then means it arrived."""
BUSY_BACKOFF: Final = Backoff(initial=0.2, maximum=2.0, jitter=0.0)
"""Waits before a request answered "busy" goes again: 0.2 s, 0.4 s, 0.8 s..."""


@attrs.define
class Progress:
    """How far a task's awaited requests went (:data:`PROGRESS`), for a task cancelled midway
    that must know whether anything of it may have reached the server."""

    requests: int = 0
    """Requests the task began (:meth:`WebSocketDriver.request` calls)."""
    unsent: bool = False
    """The task waits for a connection with nothing of its current request on the wire: its
    first try, or the one before it never left (:class:`Disconnected` with ``sent=False``).
    Still True after a cancellation there."""


PROGRESS: ContextVar[Progress | None] = ContextVar("trio_chatbridge_progress", default=None)
"""Set by a task to learn how far its :meth:`WebSocketDriver.request` calls went."""


# -- errors of requests ----------------------------------------------------------------------


class AckTimeout(ConnectorError):
    """A request was not answered in time: a later answer is only counted, in ``stray_acks``
    (an unanswered heartbeat ends its connection; the supervisor reconnects). For a heartbeat,
    time the reader spent stopped by our own backpressure does not count: the answer may be
    among the frames it did not read, and so for a posted request. An awaited reply's
    window runs on (see ``_Connection.pause``)."""


class Disconnected(ConnectorError):
    """The connection closed before a request was answered.

    ``sent`` says whether the request may have reached the server (False: it never left).
    """

    def __init__(self, reason: str, *, sent: bool) -> None:
        self.reason = reason
        self.sent = sent
        super().__init__(f"connection closed: {reason}")


# -- one connection --------------------------------------------------------------------------


@attrs.define(eq=False)
class _Slot:
    """The requests of one key: one in flight, the others waiting for ``lock``."""

    lock: trio.Lock = attrs.Factory(trio.Lock)
    users: int = 0
    waiting: trio.Event | None = None
    answer: Answer | None = None
    timer: trio.CancelScope | None = None
    """The answer window of the request in flight, while it waits."""
    pausable: bool = False
    """Whether that window stops while the reader does (a heartbeat's: see
    :meth:`_Connection.pause`)."""
    left: float = 0.0
    """Seconds of that window left when the reader stopped (:meth:`_Connection.pause`)."""


@attrs.define(eq=False)
class _Posted:
    """A request written and not awaited (:meth:`WebSocketDriver.post`)."""

    request: Request
    settle: Settle
    deadline: float
    within: float
    carried: Carried | None = None
    """Called when it is kept for the next connection (None: settled :class:`Disconnected`
    when its connection closes instead)."""
    written: bool = False
    """Its write returned (or failed with a frame out): the connection's close hands it to
    ``orphaned`` (else its poster learns)."""
    ended: bool = False
    """Whether ``settle`` was called (:meth:`end`)."""

    def end(self, result: Answer | ConnectorError) -> None:
        """Settle it: once."""
        self.ended = True
        self.settle(result)


@attrs.define(eq=False)
class _Connection:
    """One open WebSocket: its writes, its requests in flight, why it closed."""

    ws: WebSocket
    name: str = "websocket"
    """Names the account in errors (the driver's ``name``)."""
    count: Callable[[str], None] = lambda name: None
    """Adds one to a counter of the connector (``busy_retries``)."""
    asking: Callable[[], None] = lambda: None
    """Called when a request begins to wait for its answer (wakes a reader stopped by a full
    backlog: the answer may be behind inbound frames)."""
    slots: dict[str, _Slot] = attrs.Factory(dict)
    posted: dict[str, _Posted] = attrs.Factory(dict)
    """Posted requests by key, in the order of their deadlines (see :meth:`expire`)."""
    posting: trio.Event = attrs.Factory(trio.Event)
    """Set when a request is posted while none was: wakes the timer (:meth:`expire`)."""
    orphaned: Callable[[_Posted, str], None] = lambda posted, reason: posted.end(
        Disconnected(reason, sent=True)
    )
    """Takes a posted request written and unsettled when the connection closed, and why (the
    driver's :meth:`WebSocketDriver._carry` keeps it for the next connection)."""
    closed: str | None = None
    paused: bool = False
    """Whether the reader stopped reading for our own backpressure (see :meth:`pause`)."""
    paused_at: float = 0.0
    """When it stopped (:meth:`resume` moves the posted requests' deadlines by the time since)."""
    resumed: trio.Event = attrs.Factory(trio.Event)
    """Set when the reader reads again: wakes the timer (:meth:`expire`) that waits meanwhile."""

    @property
    def awaiting(self) -> bool:
        """Whether a request waits for its answer (one answered is no longer waiting, though
        its task may not have run yet), posted ones included."""
        return bool(self.posted) or any(
            slot.waiting is not None and not slot.waiting.is_set() for slot in self.slots.values()
        )

    async def send(self, data: Data) -> None:
        """Send one frame; :class:`Disconnected` when the socket is gone: ``sent=True`` when
        the frame was in a write that failed (our client's ``SendFailed.may_have_been_sent``:
        it may have reached the peer), else ``sent=False``."""
        if self.closed is not None:
            raise Disconnected(self.closed, sent=False)
        try:
            await self.ws.send_message(data)
        except ConnectionClosed as exc:
            sent = isinstance(exc, SendFailed) and exc.may_have_been_sent
            raise Disconnected(str(exc.reason), sent=sent) from exc

    async def request(self, request: Request, within: float, *, pausable: bool = False) -> Answer:
        """Send ``request`` when its key is free; its answer, or an error (see
        :meth:`WebSocketDriver.request`). ``pausable``: its answer window stops while the
        reader is stopped by our own backpressure (:meth:`pause`; the heartbeat's)."""
        slot = self.slots.get(request.key)
        if slot is None:
            slot = self.slots[request.key] = _Slot()
        slot.users += 1
        try:
            try:  # a free key is taken without a scheduler step (the send checkpoints)
                slot.lock.acquire_nowait()
            except trio.WouldBlock:
                await slot.lock.acquire()
            try:
                retries: Retries | None = None
                while True:
                    answer = await self._exchange(slot, request, within, pausable)
                    if answer.busy:  # the retries are counted only when needed: rarely
                        retries = retries or BUSY_BACKOFF.retries(request.busy_retries)
                        if not retries.spent:
                            self.count("busy_retries")
                            await retries.wait()
                            continue
                    if answer.code:
                        raise request.refused(answer)
                    return answer
            finally:
                slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self.slots[request.key]

    async def _exchange(
        self, slot: _Slot, request: Request, within: float, pausable: bool
    ) -> Answer:
        slot.waiting, slot.answer, slot.pausable = trio.Event(), None, pausable
        try:
            await self.send(request.data)
            if not slot.waiting.is_set():  # else answered during the send's step: no wait
                slot.left = within  # a heartbeat's window waits for a stopped reader
                due = math.inf if pausable and self.paused else trio.current_time() + within
                with trio.CancelScope(deadline=due) as slot.timer:
                    self.asking()
                    await slot.waiting.wait()
            if slot.answer is None:
                if self.closed is not None:
                    raise Disconnected(self.closed, sent=True)
                raise self.timed_out(request, within)
            return slot.answer
        finally:
            slot.waiting = slot.timer = None

    async def post(
        self, request: Request, within: float, settle: Settle, carried: Carried | None
    ) -> bool:
        """Write ``request`` and keep it for ``settle`` (see :meth:`WebSocketDriver.post`);
        False, with nothing kept and ``settle`` never called, when its key is taken or the
        write failed with nothing sent (the caller may send it the awaited way). True once
        ``settle`` has been or will be called: an answer read during the write settled it,
        or the write may have gone (a write that failed after a frame left, or a close while
        it was in flight: handed to :attr:`orphaned` as :meth:`close` does)."""
        key = request.key
        if self.closed is not None or key in self.slots or key in self.posted:
            return False
        return await self.write(_Posted(request, settle, 0.0, within, carried))

    async def write(self, posted: _Posted) -> bool:
        """Write ``posted`` (new, or carried from a closed connection) and keep it; see
        :meth:`post`."""
        key = posted.request.key
        # posted while the reader is stopped: its window starts when it reads again (resume)
        start = self.paused_at if self.paused else trio.current_time()
        posted.deadline, posted.written = start + posted.within, False
        if not self.posted:
            self.posting.set()
        self.posted[key] = posted  # before the write: its answer may come during it
        try:
            await self.send(posted.request.data)
        except BaseException as exc:
            mine = self.posted.get(key) is posted  # else settled already (answered)
            if not isinstance(exc, Disconnected):
                if mine:
                    del self.posted[key]
                raise  # cancelled: it may or may not have gone, and nobody will know
            if mine and exc.sent:  # it may have gone: written, as far as anyone can tell
                posted.written = True
            elif mine:
                del self.posted[key]
                return False
        else:
            posted.written = True
        if self.closed is not None and self.posted.get(key) is posted:
            self._orphaned(key)  # closed while the write was in flight: as close does
        self.asking()
        return True

    async def expire(self) -> None:
        """The posted requests' one timer: settles each unanswered at its deadline with an
        :class:`AckTimeout`. Their deadlines come in the order they were posted (one
        ``within`` for all), so it sleeps until the oldest's, whichever that is by then."""
        posted = self.posted
        while True:
            if not posted:
                self.posting = trio.Event()
                await self.posting.wait()
                continue
            if self.paused:  # their answers may be among the frames not read: see pause
                await self.resumed.wait()
                continue
            key, oldest = next(iter(posted.items()))
            if trio.current_time() < oldest.deadline:
                await trio.sleep_until(oldest.deadline)
                continue
            del posted[key]
            oldest.end(self.timed_out(oldest.request, oldest.within))

    def timed_out(self, request: Request, within: float) -> AckTimeout:
        """The error of ``request`` unanswered within ``within`` seconds."""
        return AckTimeout(
            f"{self.name}: {request.name or 'request'} ({request.key}) not acknowledged "
            f"within {within:g} s: the platform is slow or unreachable"
        )

    def pause(self) -> None:
        """The reader stopped reading (our own backpressure: the inbox is slow): a heartbeat's
        answer window stops too, as its answer may be among the frames not read, and an
        unanswered heartbeat would end the connection (and, on WeCom, lose every callback still
        unread in the socket). A peer gone meanwhile is found once the reader reads again
        (:meth:`resume`): the window's rest runs then, and so does the silence watchdog.

        The posted requests' timer stops too (:meth:`expire`; :meth:`resume` moves every
        deadline by the time stopped, so their order holds): an ACK left unread would
        otherwise time out, and its poster send the reply again (seen twice). Posted requests
        hold no run's slot (their runs have ended), so waiting for them cannot stall the inbox.

        Other requests' windows (a reply's ACK) run on: a reply that times out fails its run,
        which frees the run's concurrency slot, so the dispatcher takes the next batch, the
        inbox drains and the reader reads again. Were they paused too, runs waiting for ACKs
        behind the unread frames would hold every slot while the full inbox stopped the reader:
        a stall that never ends."""
        self.paused = True
        self.resumed = trio.Event()
        now = self.paused_at = trio.current_time()
        for slot in self.slots.values():
            if slot.timer is not None and slot.pausable:
                slot.left, slot.timer.deadline = slot.timer.deadline - now, math.inf

    def resume(self) -> None:
        """The reader reads again: each answer window runs on for what it had left."""
        self.paused = False
        now = trio.current_time()
        for slot in self.slots.values():
            if slot.timer is not None and slot.pausable:
                slot.timer.deadline = now + slot.left
        stopped = now - self.paused_at
        for posted in self.posted.values():
            posted.deadline += stopped
        self.resumed.set()

    def deliver(self, answer: Answer) -> bool:
        """Hand ``answer`` to the request waiting on its key, or settle the request posted
        with it; False when there is none."""
        posted = self.posted.pop(answer.key, None)
        if posted is not None:
            posted.end(answer)
            return True
        slot = self.slots.get(answer.key)
        if slot is None or slot.waiting is None:
            return False
        slot.answer = answer
        slot.waiting.set()
        return True

    def close(self, reason: str) -> None:
        """Fail every request waiting on this connection now, and hand on every posted one
        written (whether it arrived, nobody can tell now) to :attr:`orphaned`."""
        if self.closed is None:
            self.closed = reason
        for slot in self.slots.values():
            if slot.waiting is not None:
                slot.waiting.set()
        for key in [key for key, posted in self.posted.items() if posted.written]:
            self._orphaned(key)

    def _orphaned(self, key: str) -> None:
        """Hand on the posted request of ``key``, written, with the connection closed."""
        assert self.closed is not None
        self.orphaned(self.posted.pop(key), self.closed)


@attrs.define(eq=False)
class _Backlog:
    """Inbound messages between the reader and the worker: bounded, handed over as lists.

    The worker sleeps in :attr:`timer` until the reader sets its deadline (``linger`` after
    the oldest message arrived or the worker came for it, whichever is later; at once when a
    batch is full): one wake-up per batch, and a batch gathers for at least ``linger``.
    The reader stops at ``limit`` messages, and reads on to twice that only while a request
    waits for its answer (:meth:`wait_for_room`); while it is stopped, the answer windows of
    the connection's requests are paused (:meth:`_Connection.pause`).
    """

    limit: int
    items: list[Inbound] = attrs.Factory(list)
    oldest: float = 0.0
    ready_since: float = 0.0
    """When the worker last came for a batch: a batch gathers for ``linger`` after this too."""
    timer: trio.CancelScope | None = None
    stirred: trio.Event = attrs.Factory(trio.Event)
    """Set when the worker took a batch, or a request began to wait: the reader looks again."""

    def add(self, item: Inbound, now: float, linger: float, batch: int) -> None:
        if not self.items:
            self.oldest = now
        self.items.append(item)
        if self.timer is not None:
            due = self._due(linger, batch)
            if due != self.timer.deadline:  # a deadline moved is a heap entry in trio
                self.timer.deadline = due

    def _due(self, linger: float, batch: int) -> float:
        """When the worker should take what waits: never (nothing does), at once (a batch is
        full), or ``linger`` after the oldest arrived."""
        if not self.items:
            return math.inf
        if len(self.items) >= batch:
            return -math.inf
        return max(self.oldest, self.ready_since) + linger

    @property
    def full(self) -> bool:
        return len(self.items) >= self.limit

    def stir(self) -> None:
        self.stirred.set()

    async def wait_for_room(self, awaiting: Callable[[], bool]) -> None:
        """Returns once the reader may read the next frame: the backlog has room, or a
        request waits for its answer (``awaiting()``; the answer may be behind inbound
        frames: acks and heartbeats never wait behind the inbox) and the backlog holds less
        than twice its limit (memory stays bounded; meanwhile the request's answer window
        waits too, see :meth:`_Connection.pause`)."""
        while self.full and not (awaiting() and len(self.items) < 2 * self.limit):
            self.stirred = trio.Event()
            await self.stirred.wait()

    async def take(self, linger: float, batch: int) -> list[Inbound]:
        """Up to ``batch`` messages, once the oldest waited ``linger`` (or a batch is full).

        If cancelled, nothing was taken."""
        self.ready_since = trio.current_time()
        with trio.CancelScope(deadline=self._due(linger, batch)) as self.timer:
            await trio.sleep_forever()
        self.timer = None
        taken, self.items = self.items[:batch], self.items[batch:]
        self.stir()
        return taken


@attrs.define(eq=False)
class _Puts:
    """A session's puts: with no time limit while it runs (a slow inbox is backpressure), for
    at most :data:`PUT_GRACE` seconds once its teardown began (:meth:`tear_down`, called by
    :meth:`guard` when the session's nursery is cancelled, or by the worker on its way out)."""

    deadline: float = math.inf
    scope: trio.CancelScope | None = None
    """The put in flight, if any."""
    unconfirmed: int = 0
    """Messages whose put the teardown's grace cut short (or never let begin): not acked."""

    def tear_down(self) -> None:
        if self.deadline == math.inf:
            self.deadline = trio.current_time() + PUT_GRACE
        if self.scope is not None:
            self.scope.deadline = min(self.scope.deadline, self.deadline)

    async def guard(self) -> None:
        """Sleeps until the session's nursery is cancelled, then starts the teardown's clock
        (the put itself is shielded: it cannot see that cancellation)."""
        try:
            await trio.sleep_forever()
        finally:
            self.tear_down()


# -- the driver ------------------------------------------------------------------------------


@final
class WebSocketDriver(Generic[N]):
    """Runs a :class:`WebSocketCore` over a WebSocket for one account (see docs/connectors.md).

    ``name`` names the account in errors (``"wecom bot X"``); ``open_websocket`` connects (an
    :data:`OpenWebSocket`); ``on_notice`` handles :class:`Notice` items, at most 100 at once
    (beyond that an item is dropped and counted in ``events_dropped``, or given back to the
    core, see :attr:`Notice.busy`). ``answer_within``: seconds a request waits for its answer
    unless it says otherwise (5); ``reconnect_wait``: seconds a request or send waits for the
    connection to come back (60); ``put_batch``: inbound messages journaled in one put at most
    (100); ``backlog``: inbound messages waiting for the inbox before the reader stops reading
    (1,000; twice that while a request waits for its answer); ``linger``: seconds a burst
    waits for company after its first message (0.001); ``on_journaled``: called with each
    put's messages and the new ones among them once it returned (the others the journal had
    already: a redelivery, which a platform may need to close); it must not block nor raise.
    """

    def __init__(
        self,
        core: WebSocketCore[N],
        *,
        name: str,
        open_websocket: OpenWebSocket,
        on_notice: Callable[[N], Awaitable[None]] | None = None,
        answer_within: float = ANSWER_WITHIN,
        reconnect_wait: float = RECONNECT_WAIT,
        put_batch: int = PUT_BATCH,
        backlog: int = BACKLOG,
        linger: float = BURST_LINGER,
        on_journaled: Callable[[Sequence[Message], Sequence[Message]], None] | None = None,
    ) -> None:
        self.core = core
        self.name = name
        self.answer_within = answer_within
        self.reconnect_wait = reconnect_wait
        self.put_batch = put_batch
        self.backlog = backlog
        self.linger = linger
        self._open_websocket = open_websocket
        self._on_notice = on_notice
        self._on_journaled = on_journaled
        self._handlers = Handlers()
        self._ctx: ConnectorContext | None = None
        self._connection: _Connection | None = None
        self._carried: dict[str, _Posted] = {}
        """Posted requests left unsettled by a closed connection, for the next (:meth:`_carry`)."""
        self._carrying = False
        """Whether a next connection is expected: :meth:`run` runs, or ended to reconnect."""
        self._up = trio.Event()  # set while connected; a new one once the connection is lost
        self._retimed = trio.Event()

    def __repr__(self) -> str:
        return f"WebSocketDriver({self.name!r})"

    @property
    def connected(self) -> bool:
        """Whether a connection is up (its handshake answered)."""
        return self._connection is not None

    @property
    def pending(self) -> int:
        """Keys with a request in flight or queued (0 when idle: nothing is kept)."""
        return 0 if self._connection is None else len(self._connection.slots)

    # -- running -------------------------------------------------------------------------------

    async def run(
        self,
        ctx: ConnectorContext,
        url: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect to ``url`` and run until the connection fails (it always does: it raises).

        :class:`FatalConnectorError` when the core says retrying cannot help, else
        :class:`ConnectorError` (or a group holding one). ``task_status.started()`` once the
        handshake is answered. If cancelled, the connection is closed; messages already taken
        off it are still journaled (for at most 10 s more) and not acked; those whose put did
        not return by then are counted in ``unconfirmed_at_teardown`` and logged at ERROR.
        """
        self._ctx, self._carrying = ctx, True
        try:
            await self._connect(ctx, url, task_status)
        except BaseException as exc:
            if find_error(exc, FatalConnectorError) or find_error(exc, trio.Cancelled):
                self.stopped()
            raise

    def stopped(self) -> None:
        """No next connection is coming (the connector stopped: cancelled, or failed for
        good, in :meth:`run` or while waiting to run it again): each posted request carried
        for the next connection is settled :class:`Disconnected` (``sent=True``: whether it
        arrived nobody can tell) now, and none is carried until :meth:`run` runs again."""
        self._carrying = False
        carried, self._carried = self._carried, {}
        for posted in carried.values():
            posted.end(Disconnected(f"{self.name} stopped", sent=True))

    async def _connect(
        self, ctx: ConnectorContext, url: str, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            async with self._open_websocket(url) as ws:
                connection = _Connection(ws, self.name, ctx.count, orphaned=self._carry)
                try:
                    await self._session(ctx, connection, task_status)
                finally:
                    self._lost(connection, "connection ended")
        except (HandshakeError, OSError, ConnectionClosed, BaseExceptionGroup) as exc:
            mapped = self._mapped(exc, url)
            if mapped is exc:
                raise  # ours already: not its own cause
            if mapped.__traceback__ is not None:  # ours, out of a group: raised as it was
                raise mapped from mapped.__cause__
            raise mapped from exc

    def _carry(self, posted: _Posted, reason: str) -> None:
        """Keep ``posted``, written and unsettled when its connection closed (``reason``), to
        write it again on the next connection, first (same frame, same key, a fresh window):
        the platform answers it, or says it had it (WeCom: 846608) or that its key is stale
        (846605). Settled :class:`Disconnected` instead when no next connection is expected
        (the driver stopped), or beyond :data:`CARRIED` kept (counted in
        ``posted_not_carried``), or posted without ``carried``."""
        if posted.carried is not None and self._carrying:
            if len(self._carried) < CARRIED:
                self._carried[posted.request.key] = posted
                posted.carried()
                return
            if self._ctx is not None:
                self._ctx.count("posted_not_carried")
        posted.end(Disconnected(reason, sent=True))

    def _mapped(self, exc: BaseException, url: str) -> BaseException:
        """The one place where the WebSocket layer's errors become ours."""
        if isinstance(exc, BaseExceptionGroup) and find_error(exc, HandshakeError) is None:
            fatal = find_error(exc, FatalConnectorError)
            if fatal is not None:  # a refusal read just before the close: it says why
                return fatal
            closed = find_error(exc, ConnectionClosed)
            if closed is None:
                return exc  # ours already, from a task of the connection
            exc = closed
        rejected = find_error(exc, ConnectionRejected)
        if rejected is not None:
            headers = {k.decode().lower(): v.decode(errors="replace") for k, v in rejected.headers}
            body = (rejected.body or b"")[:REJECTION_BODY_BYTES]
            return self.core.rejected(rejected.status_code, headers, body)
        if isinstance(exc, ConnectionClosed):
            return ConnectorError(f"{self.name}: socket closed ({exc.reason})")
        cause = exc.__cause__ or exc
        # the URL without its query, which may carry credentials (Lark's does), and with no
        # password of a user part, here or quoted by the cause: it reaches bridge.status()
        shown = urlsplit(url)._replace(query="", fragment="").geturl()
        return ConnectorError(redact(f"{self.name}: cannot connect to {shown}: {cause}"))

    async def _session(
        self,
        ctx: ConnectorContext,
        connection: _Connection,
        task_status: trio.TaskStatus[None],
    ) -> None:
        backlog, puts = _Backlog(self.backlog), _Puts()
        connection.asking = backlog.stir
        async with trio.open_nursery() as nursery:
            nursery.start_soon(puts.guard)
            nursery.start_soon(self._read, ctx, connection, backlog, nursery)
            for outgoing in self.core.open():
                await self._perform(connection, outgoing)
            await self._write_carried(connection)  # nothing else is written before them
            self._connection = connection
            self._up.set()
            task_status.started()
            nursery.start_soon(self._heartbeat, connection)
            nursery.start_soon(connection.expire)
            await self._deliver(ctx, connection, backlog, puts)

    async def _write_carried(self, connection: _Connection) -> None:
        """Write each frame carried from the last connection on ``connection``, at most once
        each: one whose write sent nothing, and those after it, are carried on for the next,
        and :class:`Disconnected` raised; so is it once the connection closed (a frame written
        as it closed is carried on by its close). Were they taken from :attr:`_carried` again
        instead, a closed connection would refuse each at once, with no checkpoint: the loop
        would never end, nor let the reader's cancellation in. If cancelled, the frame in
        flight is kept (unless settled) and so is every one not yet written."""
        carried, self._carried = self._carried, {}
        try:
            while carried:
                posted = carried.pop(next(iter(carried)))
                connection.count("requests_across_reconnects")
                try:
                    written = await connection.write(posted)
                except BaseException:
                    if not posted.ended:  # cancelled: still unknown, kept for what follows
                        self._carried[posted.request.key] = posted
                    raise
                reason = connection.closed or "connection ended"
                if not written:  # nothing went: the socket is gone (the reader may not know)
                    self._carry(posted, reason)
                if not written or connection.closed is not None:
                    await trio.lowlevel.checkpoint()  # a reader that saw the close raised:
                    raise Disconnected(reason, sent=False)  # its error alone is reported
        finally:
            self._carried.update(carried)  # those not tried, after those carried again

    async def _perform(
        self, connection: _Connection, outgoing: Outgoing, *, pausable: bool = False
    ) -> None:
        if isinstance(outgoing, Send):
            await connection.send(outgoing.data)
        else:
            within = self.answer_within if outgoing.within is None else outgoing.within
            await connection.request(outgoing, within, pausable=pausable)

    async def _read(
        self,
        ctx: ConnectorContext,
        connection: _Connection,
        backlog: _Backlog,
        nursery: trio.Nursery,
    ) -> None:
        """The receive loop: each frame parsed here, its events dispatched at once."""
        now = trio.current_time()  # when the last frame came (or the reader started)
        with trio.CancelScope() as watchdog:  # one scope, kept ahead of every frame
            while True:
                silence = self.core.silence  # the last frame may have changed it
                rearm(watchdog, silence, now)
                try:
                    data = await connection.ws.get_message()
                except ConnectionClosed as exc:
                    self._lost(connection, str(exc.reason))
                    raise ConnectorError(f"{self.name}: socket closed ({exc.reason})") from exc
                now = trio.current_time()
                events = parse_or_skip(ctx, "frame", self.core.receive, data, now)
                if isinstance(events, Skipped):
                    continue
                for event in events:
                    if isinstance(event, Inbound):
                        backlog.add(event, now, self.linger, self.put_batch)
                    else:
                        await self._dispatch(ctx, connection, event, nursery)
                if backlog.full:  # a slow inbox slows the socket: we stop reading
                    watchdog.deadline = math.inf  # meanwhile the silence is ours, not the peer's
                    connection.pause()  # and so is the wait for an answer
                    try:
                        await backlog.wait_for_room(lambda: connection.awaiting)
                    finally:
                        connection.resume()
                    now = trio.current_time()
        self._lost(connection, "silent")
        raise ConnectorError(f"{self.name}: no frame for {silence:.0f} s")

    async def _dispatch(
        self,
        ctx: ConnectorContext,
        connection: _Connection,
        event: Answer | Send | Notice[N] | Close | Retimed | Counted | Bad,
        nursery: trio.Nursery,
    ) -> None:
        if isinstance(event, Answer):
            if not connection.deliver(event):
                ctx.count("stray_acks")
        elif isinstance(event, Send):
            await connection.send(event.data)
        elif isinstance(event, Notice):
            if self._on_notice is None:
                pass
            elif event.busy is not None and self._handlers.running >= self._handlers.limit:
                counted = event.busy()
                ctx.count(counted.name, counted.n)
            else:
                self._handlers.start(ctx, nursery, self._on_notice, event.item)
        elif isinstance(event, Counted):
            ctx.count(event.name, event.n)
        elif isinstance(event, Bad):
            skip_bad(ctx, event.what, event.error)
        elif isinstance(event, Close):
            self._lost(connection, event.reason)
            if event.fatal:
                raise FatalConnectorError(f"{self.name}: {event.reason}")
            error = ConnectorError(f"{self.name}: {event.reason}")
            error.retry_after = event.retry_after
            raise error
        else:
            self._retimed.set()

    async def _heartbeat(self, connection: _Connection) -> None:
        """A heartbeat every interval; an unanswered or refused one ends the connection.

        Its answer window does not run while the reader is stopped by our own backpressure
        (the answer may be among the frames not read): a stalled inbox never ends the
        connection through its heartbeat. A peer gone meanwhile is found once the reader reads
        again, when the window's rest has run out (or the silence watchdog's time)."""
        sent_at = trio.current_time()
        while True:
            self._retimed = trio.Event()
            with trio.move_on_at(sent_at + self.core.heartbeat_interval) as wait:
                await self._retimed.wait()
            if not wait.cancelled_caught:
                continue  # a new interval: wait again, from the same start
            outgoing = self.core.heartbeat()
            sent_at = trio.current_time()
            if outgoing is None:
                continue
            try:
                await self._perform(connection, outgoing, pausable=True)
            except Disconnected:
                return  # the reader reports the closed socket

    async def _deliver(
        self, ctx: ConnectorContext, connection: _Connection, backlog: _Backlog, puts: _Puts
    ) -> None:
        """Off the receive loop: a burst into the inbox in one put, then its ACKs."""
        try:
            await self._deliver_bursts(ctx, connection, backlog, puts)
        finally:
            puts.tear_down()
            await self._put_shielded(ctx, [item.message for item in backlog.items], puts)
            if puts.unconfirmed:
                ctx.count(UNCONFIRMED, puts.unconfirmed)
                log.error(
                    "%s: the put of %d messages taken off the socket did not return within "
                    "the teardown's %g s (a stalled store, or a full inbox); none of them was "
                    "acked. Those the store had written are still handled; a platform that "
                    "does not push a message again (WeCom) has lost the others. Check the "
                    "store's health, and raise the bridge's queue_size if more chats wait in "
                    "the debouncer at once than it holds",
                    self.name,
                    puts.unconfirmed,
                    PUT_GRACE,
                )

    async def _put_shielded(
        self, ctx: ConnectorContext, messages: list[Message | None], puts: _Puts
    ) -> bool:
        """Put ``messages`` (the Nones left out), even while cancelled: with no time limit
        while the connection runs, for at most :data:`PUT_GRACE` seconds once its teardown
        began; whether the put returned (they are durable)."""
        wanted = [message for message in messages if message is not None]
        if not wanted:
            return True
        # Off the socket already: journal them even while the connection goes down.
        with trio.CancelScope(shield=True, deadline=puts.deadline) as put:
            puts.scope = put
            new = await ctx.put(wanted)
        puts.scope = None
        if put.cancelled_caught:
            puts.unconfirmed += len(wanted)
        elif self._on_journaled is not None:
            self._on_journaled(wanted, new)
        return not put.cancelled_caught

    async def _deliver_bursts(
        self, ctx: ConnectorContext, connection: _Connection, backlog: _Backlog, puts: _Puts
    ) -> None:
        while True:
            burst = await backlog.take(self.linger, self.put_batch)
            started = time.perf_counter()
            if not await self._put_shielded(ctx, [item.message for item in burst], puts):
                return  # torn down: no word that they are durable, no ACK either
            taken = time.perf_counter() - started
            for item in burst:
                if item.ack is not None:
                    await connection.send(item.ack(taken))

    # -- sending -------------------------------------------------------------------------------

    async def send(self, data: Data, *, until: float | None = None) -> None:
        """Send one frame on the connection, waiting for one (see :meth:`request`).

        Raises :class:`ConnectorError` when there is none in time or it closes first. If
        cancelled, the frame may or may not have been sent.
        """
        connection = await self._next_connection(until)
        await connection.send(data)

    async def request(
        self, request: Request, *, until: float | None = None, again: bool = False
    ) -> Answer:
        """Send ``request`` and return its answer, across a reconnect if need be.

        While the connection is re-established the request waits for the next one, at most
        ``reconnect_wait`` seconds and never past ``until`` (Trio's clock). One lost with its
        connection goes again on the next if it never left, or if ``again`` (a frame that
        replaces or repeats what it may have done). Raises ``request.refused(answer)`` for a
        refusal, :class:`AckTimeout`, or :class:`Disconnected`. If cancelled, the request may
        or may not have been sent.
        """
        progress, unsent = PROGRESS.get(), True
        if progress is not None:
            progress.requests += 1
        for attempt in range(2):
            if progress is not None:
                progress.unsent = unsent
            connection = await self._next_connection(until)
            if progress is not None:
                progress.unsent = False
            within = self.answer_within if request.within is None else request.within
            try:
                return await connection.request(request, within)
            except Disconnected as exc:
                if attempt or (exc.sent and not again):
                    raise
                unsent = not exc.sent
                connection.count("requests_across_reconnects")
        raise AssertionError("unreachable")  # the loop returns or raises

    async def post(
        self, request: Request, settle: Settle, *, carried: Carried | None = None
    ) -> bool:
        """Write ``request`` on the connection up now and return once it is written, its
        answer left to ``settle`` (called once, later: see :data:`Settle`). With ``carried``,
        if its connection closes before it is settled it is kept (at most 1,000 such, beyond
        settled :class:`Disconnected` and counted in ``posted_not_carried``) and written
        again, same frame, first on the next connection, ``carried()`` called when it is
        kept; without, it is settled :class:`Disconnected` then, as when the driver stops.

        False when it was not posted (no connection, its key in use, or the write failed
        before anything went, or the request has a window of its own: one timer serves the
        driver's ``answer_within``): nothing is kept, ``settle`` is never called, and the
        caller sends it the awaited way (:meth:`request`). True once ``settle`` ran or will
        run (an answer read during a write that then failed, too). A request awaited on a key
        posted meanwhile gets the answer after the posted one's (the platform answers a key's
        frames in order). A busy answer is not retried here: ``settle`` gets it.
        If cancelled, it may or may not have been written, and ``settle`` is never called.
        """
        connection = self._connection
        if connection is None or request.within not in (None, self.answer_within):
            return False  # (one timer serves requests with the same window only)
        return await connection.post(request, self.answer_within, settle, carried)

    async def _next_connection(self, until: float | None) -> _Connection:
        deadline = trio.current_time() + self.reconnect_wait
        if until is not None:
            deadline = min(deadline, until)
        while self._connection is None:
            with trio.move_on_at(deadline):
                await self._up.wait()
            if self._connection is None and trio.current_time() >= deadline:
                raise Disconnected(
                    f"{self.name} is not connected; no connection came back in "
                    f"{self.reconnect_wait:.0f} s (reconnect_wait) or before the deadline",
                    sent=False,
                )
        return self._connection

    def _lost(self, connection: _Connection, reason: str) -> None:
        """``connection`` closed: its requests fail now, new ones wait for the next."""
        connection.close(reason)
        if self._connection is connection:
            self._connection, self._up = None, trio.Event()

"""The bridge: wires connectors, inbox, debouncer and dispatcher, and shuts them down in order."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final, ParamSpec, final, get_args

import attrs
import trio

from . import _redact, _stats
from ._connector import Connector, ConnectorContext
from ._debounce import Debounce, Debouncer
from ._dispatch import Agent, Dispatcher, FailureListener, OnBusy, refused_agent
from ._errors import ChatBridgeError, ConfigurationError, process_stop
from ._inbox import Inbox
from ._latency import Latencies, LatencyListener
from ._lease import LeaseKeeper, Leases
from ._messages import Batch, Message
from ._status import StatusBoard, StatusChanges, Statuses
from ._supervise import Backoff, Supervisor
from .stores import SQLiteStore, Store

log = logging.getLogger("trio_chatbridge")
P = ParamSpec("P")

DEFAULT_STORE_PATH: Final = "chatbridge.db"
WEEK: Final = 7 * 24 * 3600.0  # seconds
PRUNE_EVERY: Final = 3600.0  # seconds between prunings of the journal while running, at most
_BRIDGE_COUNTERS: Final = frozenset(f.name for f in attrs.fields(_stats.Stats))
DEBOUNCER_FULL: Final = "debouncer.full"  # times a full debouncer made a new chat wait
BAD_SESSION_KEY: Final = "debouncer.bad_keys"  # messages whose Debounce.key failed
STUCK_AFTER: Final = 10.0  # seconds past a stop's grace before runs still going are reported


def _default_store() -> Store:
    return SQLiteStore(DEFAULT_STORE_PATH)


def _connectors(connectors: Iterable[Connector]) -> tuple[Connector, ...]:
    return tuple(connectors)


def _check_connectors(_: object, __: object, connectors: Sequence[Connector]) -> None:
    names = [c.name for c in connectors]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigurationError(f"each account may have one connector; given twice: {twice}")


def _check_on_busy(_: object, __: object, value: str) -> None:
    if value not in get_args(OnBusy):
        raise ConfigurationError(f"on_busy must be 'queue' or 'interrupt', got {value!r}")


def _at_least(
    minimum: float, *, above: bool = False, whole: bool = False
) -> Callable[[object, Any, Any], None]:
    """An attrs validator: the value is a number ``>= minimum`` (``> minimum`` if ``above``),
    never NaN, a whole number if ``whole``, or None where the field's default is; else a
    ConfigurationError naming the field (a count of 0 would hang the bridge, a NaN would
    fail it only once running)."""
    kinds = int if whole else (int, float)

    def check(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
        if value is None and attribute.default is None:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, kinds)
            or not (value > minimum if above else value >= minimum)
        ):
            bound = f"{'> ' if above else '>= '}{minimum:g}"
            number = "a whole number" if whole else "a number"
            raise ConfigurationError(
                f"Bridge {attribute.name} must be {number} {bound}, got {value!r}"
            )

    return check


@final
@attrs.define(eq=False)
class Bridge:
    """Connects chat platforms to ``agent``; run it with ``trio.run(bridge.run)``.

    ``await nursery.start(bridge.run)`` returns as soon as the pipeline accepts work, whatever
    the platforms do: a slow or unreachable one never holds up the application's start-up.
    Connector readiness is :meth:`status`, :meth:`wait_status` and :meth:`status_changes`.
    ``bridge.shutdown()`` stops it gracefully: pending sessions are flushed, running agents get
    ``shutdown_grace`` seconds (connectors stay up for their replies), then connectors stop.
    Cancelling ``run`` instead stops at once; the journal replays unfinished messages at the
    next start. :func:`open_bridge` does all of this for an ``async with`` block.
    """

    connectors: Sequence[Connector] = attrs.field(
        converter=_connectors, validator=_check_connectors
    )
    agent: Agent
    debounce: Debounce = attrs.field(factory=Debounce)
    store: Store = attrs.field(factory=_default_store)
    """Where the journal, cursors and tokens live (default: ``SQLiteStore("chatbridge.db")``)."""
    concurrency: int = attrs.field(default=16, validator=_at_least(1, whole=True))
    """At most this many agent runs at once, over all sessions."""
    on_busy: OnBusy = attrs.field(default="queue", validator=_check_on_busy)
    """A batch for a running session: ``"queue"`` (wait, merge) or ``"interrupt"`` (rerun)."""
    run_timeout: float | None = attrs.field(default=None, validator=_at_least(0, above=True))
    """Cancel an agent run after this many seconds (None: no limit)."""
    shutdown_grace: float = attrs.field(default=10.0, validator=_at_least(0))
    """Seconds running agents get to finish at shutdown."""
    backoff: Backoff = attrs.field(factory=Backoff)
    queue_size: int = attrs.field(default=1024, validator=_at_least(1, whole=True))
    """Capacity of the inbox and batch channels, and the most sessions the debouncer holds or
    the dispatcher keeps waiting for a slot: beyond it, connectors wait (backpressure). A
    full debouncer parks up to a quarter as many new chats more before it stops reading."""
    journal_retention: float = attrs.field(default=WEEK, validator=_at_least(0))
    """Handled journal entries older than this (seconds) are pruned at start, and while
    running every hour (or every ``journal_retention`` seconds, if that is shorter)."""
    wall_clock: Callable[[], float] | None = attrs.field(default=None, repr=False)
    """Wall-clock time (seconds since the epoch) for the bridge and its store alike: given
    here, the store uses it too; None (the default) uses the store's (``time.time``)."""
    leases: Leases = attrs.field(factory=Leases)
    """On a shared store (``RedisStore``): each connector runs only while this process holds
    its account's lease; see ``docs/deploying.md``."""
    close_timeout: float = attrs.field(default=5.0, validator=_at_least(0))
    """Seconds the connectors get, together, to close once they have stopped (whether the
    stop was graceful or not): a close still running then is cancelled and logged as
    abandoned (its connections go when the process exits), and the store closes next."""

    _counters: Counter[str] = attrs.field(factory=Counter, init=False, repr=False)
    _supervisors: list[Supervisor] = attrs.field(factory=list, init=False, repr=False)
    _stop: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _ran: bool = attrs.field(default=False, init=False, repr=False)
    _board: StatusBoard = attrs.field(init=False, repr=False)
    _latency_listeners: list[LatencyListener] = attrs.field(factory=list, init=False, repr=False)
    _failure_listeners: list[FailureListener] = attrs.field(factory=list, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        refused = refused_agent(
            self.agent, f"the agent {getattr(self.agent, '__qualname__', self.agent)!r}"
        )
        if refused is not None:
            raise ConfigurationError(refused)
        self._board = StatusBoard(c.name for c in self.connectors)
        if self.wall_clock is None:
            self.wall_clock = self.store.wall_clock
        else:
            self.store.wall_clock = self.wall_clock

    def stats(self) -> _stats.Stats:
        """The bridge's counters so far (``undecodable``: the store's, since it was built)."""
        stats = _stats.Stats.from_counter(self._counters)
        return attrs.evolve(stats, undecodable=self.store.undecodable)

    def status(self) -> Statuses:
        """Each connector's state now, by ``platform:account`` (``starting`` before ``run``)."""
        return self._board.snapshot()

    async def wait_status(self, predicate: Callable[[Statuses], bool]) -> Statuses:
        """Wait until ``predicate(bridge.status())`` holds; returns the statuses that did.

        For example, before announcing readiness:
        ``await bridge.wait_status(lambda s: all(c.state == "running" for c in s.values()))``.
        Raises :class:`ChatBridgeError` if the bridge stops first; if cancelled, nothing changes.
        """
        return await self._board.wait_for(predicate)

    def status_changes(self) -> StatusChanges:
        """``async for statuses in bridge.status_changes():`` the statuses now, then after each
        change, until the bridge stops. A slow loop sees the latest states (never a backlog)."""
        return self._board.changes()

    def add_failure_listener(self, listener: FailureListener) -> Callable[[], None]:
        """Call ``listener(batch, error, exception)`` for each agent run that failed (it raised,
        ran past ``run_timeout``, or its account has no connector), as the run ends: before
        the journal records the failure, which it does a moment later with the other runs'
        outcomes (a bridge cancelled in between replays the batch at its next start);
        ``error`` is the text the journal keeps, ``exception`` what the agent raised
        (None when it raised nothing). Not for runs an interrupt, the shutdown or a
        cancellation ended. Returns a function that removes the listener.

        The listener runs in the dispatcher's task: keep it short and never blocking; what it
        raises is logged and ignored. May be added while the bridge runs. A test harness's
        way to fail on an agent's bug (``testing.running_bridge`` uses it), or an alert's.
        The function returned may be called from the listener itself, and more than once
        (the calls after the first do nothing).
        """
        self._failure_listeners.append(listener)
        removed = False

        def remove() -> None:
            nonlocal removed
            if not removed:
                removed = True
                self._failure_listeners.remove(listener)

        return remove

    def add_latency_listener(self, listener: LatencyListener) -> None:
        """Call ``listener(kind, seconds)`` for each run: ``"agent_start"``, from receiving the
        batch's first message to the agent's start, then ``"reply"``, to its first reply sent.

        Add listeners before :meth:`run`; without any, nothing is measured. Messages replayed
        from the journal are not measured.
        """
        if self._ran:
            raise ChatBridgeError("add latency listeners before the bridge runs")
        self._latency_listeners.append(listener)

    def shutdown(self) -> None:
        """Ask :meth:`run` to stop gracefully; returns at once (``run`` returns when done)."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`shutdown` (graceful) or cancellation (immediate).

        Cancelled, it stops at once: running agents are cancelled, what was journaled but not
        answered is replayed at the next start, connectors get ``close_timeout`` to close and
        the store is closed, then Cancelled goes on.

        A ``KeyboardInterrupt`` or ``SystemExit`` raised in one of its tasks (an agent's, or
        Trio's Ctrl-C delivered there) stops it the same way and comes out as itself, not in
        the exception groups of the nurseries it passed through: ``except KeyboardInterrupt``
        catches it (as :func:`open_bridge`'s block and :func:`~trio_chatbridge.testing.
        running_bridge`'s do). Anything else a task raises comes out as Trio's nurseries
        make it, in groups (catch it with ``except*``).
        """
        if self._ran:
            raise ChatBridgeError("a Bridge runs once; build a new one to run again")
        self._ran = True
        _redact.install()  # on the loggers made since import too (platform modules)
        try:
            async with _opened(self.store):  # closes last, after the connectors
                try:
                    await self._run(task_status)
                finally:
                    self._board.close()
                    await self._close_connectors()
        except BaseExceptionGroup as group:
            stop = process_stop(group)
            if stop is None:
                raise
            raise stop from None  # its traceback reaches where it was raised
        finally:
            self._board.close()  # also when the store could not open

    async def _close_connectors(self) -> None:
        """Close every connector, concurrently, within ``close_timeout`` whatever cancels
        the caller; each is closed whatever the others do. A failure or a close cut short
        is logged, never raised over how ``run`` ended."""
        closing = dict(enumerate(self.connectors))  # those not closed yet, by position

        async def close(index: int, connector: Connector) -> None:
            try:
                await connector.aclose()
            except Exception:
                log.exception("closing %r failed", connector)
            del closing[index]

        deadline = trio.current_time() + self.close_timeout
        with trio.CancelScope(deadline=deadline, shield=True):
            async with trio.open_nursery() as nursery:
                for index, connector in closing.items():
                    nursery.start_soon(close, index, connector)
        for connector in closing.values():
            log.warning(
                "closing %s took longer than close_timeout (%.1f s): abandoned, its "
                "connections go when the process exits",
                connector.name,
                self.close_timeout,
            )

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        pruned = await self.store.journal_prune(self.store.wall_clock() - self.journal_retention)
        if pruned:
            log.info("pruned %d handled journal entries", pruned)
        leased = self.leases.applies_to(self.store)
        # With leases, an account's unfinished messages replay when its lease is acquired.
        unfinished = [] if leased else await self.store.journal_pending()

        to_debounce, from_inbox = trio.open_memory_channel[tuple[Message, ...]](self.queue_size)
        to_dispatch, from_debounce = trio.open_memory_channel[Batch](self.queue_size)
        latencies = Latencies(self._latency_listeners) if self._latency_listeners else None
        inbox = Inbox(
            self.store, to_debounce, self._counters, latencies.received if latencies else None
        )
        debouncer = Debouncer(
            self.debounce,
            max_pending=self.queue_size,
            on_full=self._debouncer_full,
            on_bad_key=self._bad_session_key,
        )
        dispatcher = Dispatcher(
            self.agent,
            {(c.platform, c.account): c for c in self.connectors},
            self.store,
            self._counters,
            concurrency=self.concurrency,
            on_busy=self.on_busy,
            run_timeout=self.run_timeout,
            latencies=latencies,
            max_waiting=self.queue_size,
            failure_listeners=self._failure_listeners,
        )
        for connector in self.connectors:
            supervisor = Supervisor(connector, self.backoff, self._counters, self._board.publish)
            connector.bind(self._context(connector, inbox, supervisor))
            self._supervisors.append(supervisor)

        dispatched = trio.Event()

        async def dispatch() -> None:
            try:
                await dispatcher.run(from_debounce, self.shutdown_grace)
            finally:
                dispatched.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbox.run)
            nursery.start_soon(debouncer.run, from_inbox, to_dispatch)
            nursery.start_soon(dispatch)
            nursery.start_soon(self._report_stuck, dispatcher, dispatched)
            await inbox.replay(unfinished)
            async with trio.open_nursery() as connectors:
                if leased:
                    keeper = LeaseKeeper(
                        self.leases, self.store, self._supervisors, inbox.replay, self._counters
                    )
                    connectors.start_soon(keeper.run)
                else:
                    for supervisor in self._supervisors:
                        connectors.start_soon(supervisor.run)
                connectors.start_soon(self._prune_while_running)
                task_status.started()  # the pipeline accepts work; connectors come up meanwhile
                await self._stop.wait()
                # Connectors stay up until the agents are done: their replies need them (a
                # WebSocket platform answers over the very connection it receives on). What
                # arrives meanwhile is journaled for the next start.
                log.info("shutting down: flushing sessions, finishing runs")
                debouncer.drain()
                inbox.close()
                dispatcher.drain()
                await dispatched.wait()
                connectors.cancel_scope.cancel()

    async def _report_stuck(self, dispatcher: Dispatcher, dispatched: trio.Event) -> None:
        """Once the bridge stops (gracefully or cancelled), log an error naming the sessions
        whose runs are still going ``STUCK_AFTER`` seconds past their grace: an agent that
        catches ``trio.Cancelled`` or shields itself from it cannot be stopped (Trio ends no
        task from outside), so ``run`` waits for it, and this says why it does not return."""
        grace = 0.0
        try:
            await self._stop.wait()
            grace = self.shutdown_grace
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + grace + STUCK_AFTER
                await dispatched.wait()
            stuck = dispatcher.session_keys()
            if scope.cancelled_caught and stuck:
                log.error(
                    "%d agent runs ignore cancellation %g s after the shutdown's grace: the "
                    "bridge cannot stop until they return (an agent that catches "
                    "trio.Cancelled or runs in a shielded cancel scope); sessions: %s",
                    len(stuck),
                    STUCK_AFTER,
                    ", ".join(stuck[:10]),
                )

    async def _prune_while_running(self) -> None:
        """Prune handled journal entries past their retention, periodically: a journal kept
        in memory would otherwise grow until the next start. Cancelled with the connectors.
        A pruning that fails (a busy or unreachable store) is logged and tried again next
        period: housekeeping never stops the bridge."""
        while True:
            await trio.sleep(min(PRUNE_EVERY, max(self.journal_retention, 1.0)))
            cutoff = self.store.wall_clock() - self.journal_retention
            try:
                pruned = await self.store.journal_prune(cutoff)
            except Exception as exc:
                log.warning("pruning the journal failed (tried again later): %r", exc)
                continue
            if pruned:
                log.debug("pruned %d handled journal entries", pruned)

    def _debouncer_full(self) -> None:
        """Count each time the debouncer, holding ``queue_size`` sessions, makes a new chat
        wait (parked, or unread once its overflow is full too); warn the first time: they wait
        up to a window, and the connectors (WeCom's ACKs with them) once the inbox channel is
        full."""
        self._counters[DEBOUNCER_FULL] += 1
        if self._counters[DEBOUNCER_FULL] == 1:
            log.warning(
                "more chats talk within one debounce window than queue_size (%d): the "
                "debouncer holds that many sessions, and new chats wait for one to leave (up "
                "to %g s); past a quarter as many more it reads nothing meanwhile, and the "
                "connectors wait too once the inbox is full. Raise the bridge's queue_size "
                "above the number of chats that talk within one window (counted in "
                "stats().other[%r])",
                self.queue_size,
                self.debounce.window,
                DEBOUNCER_FULL,
            )

    def _bad_session_key(self, message: Message, error: Exception) -> None:
        """Count and log a message whose ``Debounce.key`` failed (it goes to its chat's
        default session): the key function has a bug to fix."""
        self._counters[BAD_SESSION_KEY] += 1
        log.error(
            "Debounce.key failed on message %s of %s:%s (it goes to its chat's session "
            "instead; fix the key function, counted in stats().other[%r])",
            message.id,
            message.platform,
            message.account,
            BAD_SESSION_KEY,
            exc_info=error,
        )

    def _context(self, connector: Connector, inbox: Inbox, sup: Supervisor) -> ConnectorContext:
        prefix = connector.platform

        def count(name: str, n: int) -> None:
            self._counters[name if name in _BRIDGE_COUNTERS else f"{prefix}.{name}"] += n

        return ConnectorContext(
            connector.platform,
            connector.account,
            self.store,
            inbox.put,
            count,
            sup.set_state,
            backoff=self.backoff,
        )


@asynccontextmanager
async def _opened(store: Store) -> AsyncIterator[None]:
    """Open ``store`` for the block, close it after; its connections outlive the block's
    own clean-up even when the block is cancelled.

    A store may run tasks for its connections (RedisStore's client does, in a task group
    that ``open`` opens). They run here in a task of their own, shielded once the store is
    open: cancelling the bridge outright cancels the block, whose shielded and bounded
    clean-up (lease releases, leaving the membership, the connectors' closes) still reaches
    the store; only then does the store close, cancelled with the caller if it is (a store
    closes all the same). What opening or the block raises comes out as itself, not in a group.
    Cancelled while opening: not open.
    """
    leaving = trio.Event()

    async def hold(task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            await store.open()
            try:
                # Cancelled by now, started() would leave this task in start()'s nursery,
                # waiting (shielded) for a block that never runs: close the store at once.
                await trio.lowlevel.checkpoint_if_cancelled()
                scope.shield = True
                task_status.started()
                await leaving.wait()
            finally:
                scope.shield = False
                try:
                    await store.aclose()
                except Exception:
                    log.exception("closing %r failed", store)

    async with _serving() as nursery:
        try:
            await nursery.start(hold)
            yield
        finally:
            leaving.set()


@asynccontextmanager
async def _serving() -> AsyncIterator[trio.Nursery]:
    """A nursery for the tasks that serve an ``async with`` block: what the block raises
    comes out as itself, not wrapped in a group by the nursery, and so does a
    KeyboardInterrupt or SystemExit out of a task (any other error of a task still is)."""
    raised: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                raised = exc
                raise
    except BaseExceptionGroup as group:
        if raised is not None and list(group.exceptions) == [raised]:
            raise raised from raised.__cause__
        stop = process_stop(group)  # the bridge's task stopped by the process's own
        if stop is None:
            raise
        raise stop from None


def _opener(
    build: Callable[P, Bridge],
) -> Callable[P, AbstractAsyncContextManager[Bridge]]:
    """``open_bridge``, taking exactly what ``Bridge(...)`` takes (type checkers see it so)."""

    @asynccontextmanager
    async def open_bridge(*args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Bridge]:
        """Build a :class:`Bridge` from the same arguments, run it for the ``async with`` block
        and stop it on the way out, owning the nursery it runs in.

        The block starts as soon as the bridge accepts work (connectors come up meanwhile; wait
        with :meth:`Bridge.wait_status`). Leaving the block normally stops the bridge
        gracefully (sessions flushed, runs get ``shutdown_grace``); an exception or a
        cancellation out of the block stops it at once, the journal keeping what was pending.
        """
        async with running(build(*args, **kwargs)) as bridge:
            yield bridge

    return open_bridge


@asynccontextmanager
async def running(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Run an existing ``bridge`` for an ``async with`` block (what :func:`open_bridge` does).

    Cancelled (in the block or while starting), the bridge stops at once, as a cancelled
    ``bridge.run`` does, and Cancelled goes on.
    """
    async with _serving() as nursery:
        await nursery.start(bridge.run)
        try:
            yield bridge
        finally:
            bridge.shutdown()


open_bridge: Final = _opener(Bridge)

"""The dispatcher: runs the agent on each batch, one run per session, N runs at most.

A batch for a session that is already running either waits and merges with whatever else
arrives meanwhile (``on_busy="queue"``) or cancels the running agent and reruns it with all
the messages (``on_busy="interrupt"``). A run that raises or times out is logged and counted
and its messages are marked as failed in the journal, so a poison message cannot loop. Runs
cut short by shutdown leave their messages pending, to be replayed at the next start.

A run whose replies are confirmed after it (a WeCom run's final frame: see ``_confirm``) frees
its slot when it ends, and its messages are marked when its confirmations have settled: done,
failed, or left pending when one is unknown. A graceful shutdown waits for them within its
grace; interrupted and cut-off runs ignore theirs.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import types
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any, Final, Literal, TypeAlias

import attrs
import trio

from . import _stats
from ._confirm import RUN, Outcome
from ._connector import NOTHING, Connector
from ._errors import StoreError, find_error, sole
from ._latency import Latencies
from ._logs import SESSION
from ._messages import Batch, Message
from ._reply import Reply
from .stores import Store

log = logging.getLogger("trio_chatbridge.dispatch")

Agent: TypeAlias = Callable[[Batch, Reply], Awaitable[None]]
"""``async def agent(batch, reply) -> None``: what the user writes."""


DEFAULT_MAX_WAITING: Final = 1024  # sessions waiting for a concurrency slot, at most
OnBusy: TypeAlias = Literal["queue", "interrupt"]
FailureListener: TypeAlias = Callable[[Batch, str, "BaseException | None"], None]
"""``listener(batch, error, exception)``, called for each run that failed: ``error`` is what the
journal records, ``exception`` what the agent raised (None: no connector for the account; a
timeout gives the exception the cut-off run raised, if any)."""
UNMARKED: Final = "journal.unmarked"  # handled messages whose done-mark the store refused
_UNLIMITED: Final = nullcontext()  # in place of a timeout scope, without a run_timeout
LEAVE_GRACE: Final = 10.0
"""Seconds past ``run_timeout`` a connector's ``running()`` context has to be entered and left
(leaving a timed-out run may do network work: WeCom closes its callback)."""


def refused_agent(agent: object, shown: str) -> str | None:
    """Why ``agent`` cannot be an agent (None: it can). One is an async function, a
    ``functools.partial`` of one, a function wrapped around one with ``functools.wraps`` (a
    decorator's), or an object whose ``__call__`` is one. A plain function is refused even
    if it returns a coroutine (a lambda around an agent): nothing tells it, before it runs,
    from one that returns None, and every run of that failed ("object NoneType can't be used
    in 'await' expression")."""
    for candidate in (agent, getattr(agent, "__call__", None)):  # noqa: B004 - the method
        try:
            unwrapped = inspect.unwrap(candidate) if callable(candidate) else candidate
        except ValueError:  # a cycle of __wrapped__
            unwrapped = candidate
        if inspect.iscoroutinefunction(candidate) or inspect.iscoroutinefunction(unwrapped):
            return None
    return (
        f"{shown} is not an async function: write 'async def agent(batch, reply)' (a plain "
        "function is refused even if it returns a coroutine, as a lambda around an agent "
        "does: make that an async def too, or use functools.partial)"
    )


@types.coroutine
def _in_context(
    context: contextvars.Context,
    coro: Coroutine[Any, Any, None],
    on_suspend: Callable[[], None],
) -> Generator[Any, Any, None]:
    """Run ``coro`` in the current task as if it were a task of its own in ``context``:
    every step of it runs inside ``context.run`` (so the context variables it sets stay in
    ``context``, and tasks it starts copy ``context``), and what the scheduler sends back
    (a value, or an exception such as Cancelled) goes to it. ``on_suspend`` is called the
    first time it waits. Cancelled or not, ``coro`` has ended when this returns or raises
    (an exception raised here between its steps, such as a KeyboardInterrupt, closes it in
    ``context`` before it goes on). One difference from a task of its own: an async
    function a thread of the run calls with ``trio.from_thread.run`` runs in the run's
    context too (it sets variables there), not in a copy of the thread's.
    """
    send: Callable[[Any], Any] = coro.send
    value: Any = None
    suspended = False
    try:
        while True:
            try:
                trap = context.run(send, value)
            except StopIteration:
                return
            if not suspended:
                suspended = True
                on_suspend()
            try:
                value = yield trap
                send = coro.send
            except BaseException as exc:  # Cancelled, or GeneratorExit: the run's to handle
                send, value = coro.throw, exc
    except BaseException:
        context.run(coro.close)  # a no-op when the exception came out of coro itself
        raise


_STOPS: Final = (trio.Cancelled, KeyboardInterrupt, SystemExit, GeneratorExit)


class _OwnFailure(Exception):
    """Carries an agent's own BaseException through the ``except* Exception`` that records
    its failures (see :func:`_sorted`)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _TimedOut(Exception):
    """Raised inside the connector's ``running()`` context when ``run_timeout`` ended the
    run: it sees a run that failed (and closes what a failed run leaves open), where the
    timeout's Cancelled would say "interrupted, or shut down: leave it"."""


def _sorted(exc: BaseException) -> BaseException | None:
    """What the dispatcher raises for ``exc`` out of an agent's run: what stops a run or the
    process (Trio's Cancelled, KeyboardInterrupt, SystemExit) as it is, and the agent's own
    errors wrapped in :class:`_OwnFailure`, beside the stops when a group holds both; None
    for the run's :class:`_TimedOut` alone (a connector's task group may wrap it). Any
    exception of the agent's own, BaseException subclasses included (an
    ``asyncio.CancelledError`` out of its library, say), fails the run alone, or its
    message would end the bridge again at every start."""
    if not isinstance(exc, BaseExceptionGroup):
        if isinstance(exc, _TimedOut):
            return None
        return exc if isinstance(exc, _STOPS) else _OwnFailure(exc)
    _, rest = exc.split(_TimedOut)
    if rest is None:
        return None
    stops, own = rest.split(_STOPS)
    if own is None:
        return rest  # (a new group of the stops: raised as it is, Trio splits them out)
    if stops is None:
        return _OwnFailure(own)
    return BaseExceptionGroup("a run stopped, and failed", [stops, _OwnFailure(own)])


def _innermost(error: BaseException) -> BaseException:
    """``error`` out of the groups of one that hold it (what a task group makes of one
    task's error): the error a person needs to see in the journal."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


@attrs.define(eq=False)
class _Session:
    key: str
    waiting: list[Message]
    batch: Batch | None = None
    """The batch that opened it, while its next run is exactly that batch (no second one)."""
    scope: trio.CancelScope | None = None
    """With ``on_busy="interrupt"``, the running agent's scope: cancelling it interrupts."""


class Dispatcher:
    """Reads batches from a channel and runs the agent on them (see the module docstring).

    Runs are driven by workers, at most ``concurrency``, each running one run at a time
    and, when it ends, the next waiting session's: a session waiting for a slot is an entry
    in a queue, not a task, and a run costs no task of its own. Each run is still stepped
    in a fresh copy of the dispatcher's context (:func:`_in_context`): the context variables
    an agent sets stay in its run, and the tasks its nurseries start inherit them. A worker
    is started when sessions wait, a slot is free and no other worker is about to start; a
    run that waits for the first time starts one for the sessions behind it, so runs that
    wait run concurrently and runs that never wait cost one task for many. First come, first
    served: a session with more to do after its run queues behind those already waiting.
    """

    def __init__(
        self,
        agent: Agent,
        connectors: Mapping[tuple[str, str], Connector],
        store: Store,
        counters: Counter[str],
        *,
        concurrency: int = 16,
        on_busy: OnBusy = "queue",
        run_timeout: float | None = None,
        latencies: Latencies | None = None,
        max_waiting: int = DEFAULT_MAX_WAITING,
        failure_listeners: Sequence[FailureListener] = (),
    ) -> None:
        self._agent = agent
        self._latencies = latencies
        self._failure_listeners = failure_listeners
        self._connectors = connectors
        # Connectors whose running() holds something (typing indicators): the others' agents
        # run without entering the default's empty context manager.
        self._holding = frozenset(
            key for key, c in connectors.items() if type(c).running is not Connector.running
        )
        self._store = store
        self._counters = counters
        self._concurrency = concurrency
        self._interrupt = on_busy == "interrupt"
        self._run_timeout = math.inf if run_timeout is None else run_timeout
        self._sessions: dict[str, _Session] = {}
        self._workers = 0  # alive, each holding a slot
        self._starting = False  # a worker was started and has not taken a session yet
        # Sessions waiting for a slot, oldest first: at most max_waiting before run() stops
        # reading batches, so an overloaded agent pushes back on the channel, then the
        # debouncer, the inbox and the connectors, instead of holding ever more sessions here.
        self._ready: deque[_Session] = deque()
        self._max_waiting = max_waiting
        self._room = trio.Event()
        self._draining = False
        # Runs that finished, with the failure to record, until _mark_finished writes them.
        self._finished: list[tuple[list[Message], str | None]] = []
        # Runs that ended with confirmations unsettled (see _confirm), and an event set when
        # the last of them settles: the shutdown waits for them within its grace.
        self._unsettled = 0
        self._settled = trio.Event()
        self._closed = False  # run() returned: a late confirmation records nothing
        self._marks_due = trio.Event()
        self._nursery: trio.Nursery | None = None
        # Each run in a copy of the context the dispatcher was made in, never of the run
        # before it in the same worker (whose agent may have set vars).
        self._context = contextvars.copy_context()

    @property
    def running_sessions(self) -> int:
        """Sessions with a run in progress or waiting for a slot."""
        return len(self._sessions)

    def session_keys(self) -> list[str]:
        """The sessions with a run in progress or waiting for a slot, oldest first."""
        return list(self._sessions)

    async def run(
        self,
        batches: trio.MemoryReceiveChannel[Batch],
        grace: float = 10.0,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Dispatch until ``batches`` ends, then give running agents ``grace`` seconds.

        Cancelled, every run is cancelled at once; the messages of a run that had not
        finished are not marked done and replay at the next start (a run that had finished
        is marked done even then, shielded).
        """
        async with trio.open_nursery() as marking:
            marking.start_soon(self._mark_finished)
            try:
                async with trio.open_nursery() as self._nursery:
                    task_status.started()
                    async with batches:
                        async for batch in batches:
                            # Every batch already waiting is taken in this turn: runs started
                            # together end together, and their done-marks share a write.
                            self._take(batch)
                            while len(self._ready) < self._max_waiting or self._draining:
                                try:
                                    self._take(batches.receive_nowait())
                                except (trio.WouldBlock, trio.EndOfChannel):
                                    break  # (at the end, the async for sees it too)
                            await self._wait_for_room()
                    self._nursery.cancel_scope.deadline = trio.current_time() + grace
                # Runs whose replies wait for their confirmation: within the same grace.
                with trio.move_on_at(self._nursery.cancel_scope.deadline):
                    while self._unsettled:
                        self._settled = trio.Event()
                        await self._settled.wait()
            finally:
                self._closed = True
                # Cancelled: the sessions left waiting stay pending in the journal, and the
                # runs that finished are recorded all the same (shielded).
                self._ready.clear()
                self._sessions.clear()
                await self._write_marks()
                marking.cancel_scope.cancel()

    def _take(self, batch: Batch) -> None:
        """File a batch under its session: a new one waits for a slot, a running or waiting
        one takes the messages into its next run (interrupting the current one, if so set)."""
        self._counters[_stats.BATCHES] += 1
        session = self._sessions.get(batch.session)
        if session is None:
            session = _Session(batch.session, list(batch.messages), batch)
            self._sessions[batch.session] = session
            self._ready.append(session)
            if not self._starting:  # (else the worker about to start takes it)
                self._start_runs()
            return
        session.waiting.extend(batch.messages)
        session.batch = None
        if session.scope is not None:
            session.scope.cancel()

    def drain(self) -> None:
        """At shutdown: stop holding back batches, so :meth:`run` reaches the end of its
        channel and the grace period can start even while every slot is taken."""
        self._draining = True
        self._room.set()

    async def _wait_for_room(self) -> None:
        while len(self._ready) >= self._max_waiting and not self._draining:
            self._room = trio.Event()
            await self._room.wait()

    def _start_runs(self) -> None:
        """Start a worker if sessions wait, a slot is free and none is about to start."""
        if self._ready and not self._starting and self._workers < self._concurrency:
            assert self._nursery is not None
            self._workers += 1
            self._starting = True
            self._context.run(self._nursery.start_soon, self._work)

    async def _work(self) -> None:
        """Run waiting sessions one after another, each in a fresh copy of the dispatcher's
        context, until none waits. Cancelled (shutdown grace, a cancelled bridge), it ends
        with the run it was in; the sessions still waiting stay pending in the journal."""
        self._starting = False
        ready = self._ready
        try:
            while ready:
                session = ready.popleft()
                if len(ready) >= self._max_waiting - 1:  # it was full: run() may wait for room
                    self._room.set()
                await _in_context(self._context.copy(), self._serve(session), self._start_runs)
        finally:
            self._workers -= 1

    async def _serve(self, session: _Session) -> None:
        """Run the agent once for ``session``, record the outcome, and queue it again if more
        arrived meanwhile.

        What ends a run is decided by what was asked of it, not by the exception that came
        out: an agent whose cleanup raises while it is interrupted, cut off by the shutdown
        grace or cancelled with the bridge is treated exactly as if ``Cancelled`` had come out
        (see :meth:`_run_agent`). An interrupted run queues its messages again, ahead of what
        arrived meanwhile; shutdown leaves them pending, counted as abandoned. A session only
        waiting for a slot has no run yet: batches that arrive meanwhile merge into its first
        run, and shutdown leaves them pending without counting an interrupted or abandoned run.
        """
        key = session.key
        await trio.lowlevel.checkpoint_if_cancelled()  # shut down while it waited: no run
        SESSION.set(key)  # this run's log lines name the session (see _logs)
        outcome = Outcome(self._confirmed)
        RUN.set(outcome)  # replies left to confirm after the run (see _confirm)
        messages, session.waiting = session.waiting, []
        batch, session.batch = session.batch or Batch(key, messages), None
        interrupted = False
        try:
            if self._interrupt:
                with trio.CancelScope() as scope:
                    session.scope = scope
                    error = await self._run_agent(batch)
                session.scope = None
                interrupted = scope.cancelled_caught
            else:
                error = await self._run_agent(batch)
        except BaseException as exc:
            # Cut off by the shutdown grace or a cancelled bridge: the messages stay
            # pending and replay at the next start.
            outcome.ignore()
            if find_error(exc, trio.Cancelled) is not None:
                self._counters[_stats.ABANDONED] += 1
            raise
        if interrupted:  # by a newer batch: rerun with all
            outcome.ignore()
            self._counters[_stats.INTERRUPTS] += 1
            session.waiting[:0] = messages
        elif outcome.end(messages, error):  # answered: recorded by _mark_finished
            if not outcome.unknown:  # (else its messages stay pending: see _confirm)
                self._record(messages, outcome.failure)
        else:  # once its replies are confirmed (_confirmed): its slot is free meanwhile
            self._unsettled += 1
        if session.waiting:
            self._ready.append(session)
        else:
            del self._sessions[key]

    def _record(self, messages: list[Message], error: str | None) -> None:
        """Have :meth:`_mark_finished` record a run that finished, even at shutdown."""
        if not self._finished:  # the first since the last write: wake _mark_finished
            self._marks_due.set()
        self._finished.append((messages, error))

    def _confirmed(self, outcome: Outcome) -> None:
        """The last confirmation of a run that ended settled: record it, unless one is
        unknown or the dispatcher is gone (its messages stay pending, replayed at the next
        start)."""
        self._unsettled -= 1
        if not self._unsettled:
            self._settled.set()
        if not self._closed and not outcome.unknown:
            self._record(outcome.messages, outcome.failure)

    async def _mark_finished(self) -> None:
        """Mark finished runs done (or failed) in the journal, every run that finished since
        the last write together: a turn's runs share one write per account and outcome."""
        while True:
            if not self._finished:
                self._marks_due = trio.Event()
                await self._marks_due.wait()
            await self._write_marks()

    async def _write_marks(self) -> None:
        """Write the marks of the runs finished so far, shielded: a run that finished is
        recorded even when the bridge is cancelled, or its messages would replay."""
        finished, self._finished = self._finished, []
        groups: dict[tuple[str, str, str | None], list[Message]] = {}
        for messages, error in finished:
            first = messages[0]  # one account's messages go together (a RedisStore fences each)
            groups.setdefault((first.platform, first.account, error), []).extend(messages)
        with trio.CancelScope(shield=True):
            for (platform, account, error), messages in groups.items():
                try:
                    await self._store.journal_done(messages, error=error)
                except Exception as exc:  # Redis away, our lease lost, a locked file, a
                    # user's store failing: not a crash; they replay at the next start.
                    self._counters[UNMARKED] += len(messages)
                    log.warning(
                        "%d handled messages of %s:%s not marked done (replayed at the next "
                        "start): %s",
                        len(messages),
                        platform,
                        account,
                        exc,
                        # a store's own error says why; any other is a bug in the store
                        exc_info=None if isinstance(exc, StoreError) else exc,
                    )

    async def _run_agent(self, batch: Batch) -> str | None:
        """Run the agent once; returns the failure to record, or None."""
        latest = batch.messages[-1]
        key = (latest.platform, latest.account)
        connector = self._connectors.get(key)
        if connector is None:
            log.error(
                "no connector for %s:%s: batch of session %s not handled",
                latest.platform,
                latest.account,
                batch.session,
            )
            return self._failed(batch, "no connector configured for this account", None)
        self._counters[_stats.RUNS] += 1
        on_sent = self._count_reply
        if self._latencies is not None:
            on_sent = self._latencies.run_started(batch, on_sent)
        reply = Reply._create(batch, connector, on_sent)
        failure: BaseException | None = None
        # No scope without a run_timeout (a cancel scope is a good part of a short run's
        # cost), and no context manager where the connector holds nothing (its running() is
        # the default, or gives the default's shared empty one for this batch).
        # The timeout is inside the connector's context, and a run it ends leaves that
        # context with _TimedOut, not Cancelled: the connector closes what a run that
        # failed leaves open (a WeCom callback), as after an interrupt it would not. Its
        # deadline is set before the context is entered, so entering counts in run_timeout;
        # entering and leaving the context are bounded too, LEAVE_GRACE past that deadline.
        timeout = outer = None
        cut_off = False  # a Cancelled came out of the agent, into the connector's context
        if self._run_timeout != math.inf:
            timeout = trio.move_on_at(trio.current_time() + self._run_timeout)
        try:
            held = connector.running(batch) if key in self._holding else NOTHING
            try:
                if timeout is None and held is NOTHING:  # (WeCom: a batch of one message)
                    await self._agent(batch, reply)
                else:
                    if timeout is not None and held is not NOTHING:
                        outer = trio.move_on_at(timeout.deadline + LEAVE_GRACE)
                    with _UNLIMITED if outer is None else outer:
                        async with held:
                            with _UNLIMITED if timeout is None else timeout:
                                try:
                                    await self._agent(batch, reply)
                                except BaseException as exc:
                                    cut_off = find_error(exc, trio.Cancelled) is not None
                                    raise
                            if timeout is not None and timeout.cancelled_caught:
                                raise _TimedOut
            except BaseException as exc:
                error = _sorted(exc)  # (None: timed out, counted below from its scope)
                if error is exc:
                    raise
                if error is not None:
                    raise error from None
        except* Exception as group:
            # The agent is user code: anything may come out, even instead of or alongside
            # the Cancelled of an interrupt, a timeout or a shutdown (a cleanup that failed).
            # It is logged and counted, and never escapes to the dispatcher; a Cancelled
            # beside it goes on up to its cancel scope.
            failure = sole(group)
            if isinstance(failure, _OwnFailure):
                failure = failure.error
            log.error(
                "agent failed on session %s (%d messages)",
                batch.session,
                len(batch.messages),
                exc_info=failure,
            )
            self._counters[_stats.FAILURES] += 1
        if timeout is not None and (
            timeout.cancelled_caught
            or (outer is not None and outer.cancelled_caught)  # stuck entering or leaving
            or (failure is not None and timeout.cancel_called)
        ):
            self._counters[_stats.TIMEOUTS] += 1
            if failure is None:
                self._counters[_stats.FAILURES] += 1
            return self._failed(batch, f"agent timed out after {self._run_timeout} s", failure)
        if failure is None:
            if cut_off:  # but the context swallowed the Cancelled (a connector's bug): the
                # interrupt, the shutdown grace or the bridge's cancellation that cut the run
                # off decides its fate, not the context; else it was marked done unanswered.
                await trio.lowlevel.checkpoint_if_cancelled()
            return None
        # An error came out instead of Cancelled: if an interrupt, the shutdown grace or the
        # bridge's cancellation asked this run to stop, that is what decides its fate.
        await trio.lowlevel.checkpoint_if_cancelled()
        innermost = _innermost(failure)
        return self._failed(batch, f"{type(innermost).__name__}: {innermost}", failure)

    def _failed(self, batch: Batch, error: str, exception: BaseException | None) -> str:
        """Tell the failure listeners that the run on ``batch`` failed; returns ``error``.
        Those listening when it failed are told, each once, even when one adds or removes
        listeners as it is called (a one-shot alert removing itself)."""
        for listener in tuple(self._failure_listeners):
            try:
                listener(batch, error, exception)
            except Exception:  # a listener's bug: never the dispatcher's end
                log.exception("a failure listener raised")
        return error

    def _count_reply(self) -> None:
        self._counters[_stats.REPLIES] += 1

"""The dispatcher: runs the agent on each batch, one run per session, N runs at most.

A batch for a session that is already running either waits and merges with whatever else
arrives meanwhile (``on_busy="queue"``) or cancels the running agent and reruns it with all
the messages (``on_busy="interrupt"``). A run that raises or times out is logged and counted
and its messages are marked as failed in the journal, so a poison message cannot loop. Runs
cut short by shutdown leave their messages pending, to be replayed at the next start.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Final, Literal, TypeAlias

import attrs
import trio

from . import _stats
from ._connector import Connector
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


@attrs.define(eq=False)
class _Session:
    waiting: list[Message]
    scope: trio.CancelScope | None = None
    """Set while the agent runs (not while it waits for a slot): cancelling it interrupts."""


class Dispatcher:
    """Reads batches from a channel and runs the agent on them (see the module docstring)."""

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
    ) -> None:
        self._agent = agent
        self._latencies = latencies
        self._connectors = connectors
        self._store = store
        self._counters = counters
        self._limiter = trio.CapacityLimiter(concurrency)
        self._on_busy = on_busy
        self._run_timeout = math.inf if run_timeout is None else run_timeout
        self._sessions: dict[str, _Session] = {}
        # Sessions waiting for a slot: at most max_waiting before run() stops reading batches,
        # so an overloaded agent pushes back on the channel, then the debouncer, the inbox and
        # the connectors, instead of holding ever more sessions here.
        self._max_waiting = max_waiting
        self._slot_waiters = 0
        self._room = trio.Event()
        self._draining = False

    @property
    def running_sessions(self) -> int:
        """Sessions with a run in progress or waiting for a slot."""
        return len(self._sessions)

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
        async with trio.open_nursery() as nursery:
            task_status.started()
            async with batches:
                async for batch in batches:
                    self._counters[_stats.BATCHES] += 1
                    session = self._sessions.get(batch.session)
                    if session is None:
                        session = self._sessions[batch.session] = _Session(list(batch.messages))
                        self._slot_waiters += 1
                        nursery.start_soon(self._serve, batch.session, session)
                        await self._wait_for_room()
                        continue
                    session.waiting.extend(batch.messages)
                    if self._on_busy == "interrupt" and session.scope is not None:
                        session.scope.cancel()
            nursery.cancel_scope.deadline = trio.current_time() + grace

    def drain(self) -> None:
        """At shutdown: stop holding back batches, so :meth:`run` reaches the end of its
        channel and the grace period can start even while every slot is taken."""
        self._draining = True
        self._room.set()

    async def _wait_for_room(self) -> None:
        while self._slot_waiters >= self._max_waiting and not self._draining:
            self._room = trio.Event()
            await self._room.wait()

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """A concurrency slot, for a session counted in ``_slot_waiters`` until it has one."""
        try:
            await self._limiter.acquire()
        finally:
            self._slot_waiters -= 1
            self._room.set()
        try:
            yield
        finally:
            self._limiter.release()

    async def _serve(self, key: str, session: _Session) -> None:
        """Run the agent for one session until nothing is waiting for it.

        What ends a run is decided by what was asked of it, not by the exception that came
        out: an agent whose cleanup raises while it is interrupted, cut off by the shutdown
        grace or cancelled with the bridge is treated exactly as if ``Cancelled`` had come out
        (see :meth:`_run_agent`). A session only waiting for a slot has no run yet: batches
        that arrive meanwhile merge into its first run, and shutdown leaves them pending
        without counting an interrupted or abandoned run.
        """
        SESSION.set(key)  # this task's log lines name the session (see _logs)
        try:
            first = True
            while session.waiting:
                if not first:
                    self._slot_waiters += 1
                first = False
                with trio.CancelScope() as scope:
                    async with self._slot():
                        # Taken once the slot is ours: whatever arrived while waiting joins in.
                        messages, session.waiting = session.waiting, []
                        session.scope = scope
                        error = await self._run_agent(Batch(key, messages))
                        session.scope = None
                if scope.cancelled_caught:  # interrupted by a newer batch: rerun with all
                    session.scope = None
                    self._counters[_stats.INTERRUPTS] += 1
                    session.waiting[:0] = messages
                    continue
                with trio.CancelScope(shield=True):  # answered: record it even at shutdown
                    try:
                        await self._store.journal_done(messages, error=error)
                    except StoreError as exc:  # Redis away, or our lease lost: not a crash
                        log.warning("batch of session %s not marked done: %s", key, exc)
        except BaseException as exc:
            # Cut off by the shutdown grace or a cancelled bridge: the messages stay pending
            # and replay at the next start. Counted only if the agent was running.
            if session.scope is not None and find_error(exc, trio.Cancelled) is not None:
                self._counters[_stats.ABANDONED] += 1
            raise
        finally:
            del self._sessions[key]

    async def _run_agent(self, batch: Batch) -> str | None:
        """Run the agent once; returns the failure to record, or None."""
        latest = batch.latest
        connector = self._connectors.get((latest.platform, latest.account))
        if connector is None:
            log.error(
                "no connector for %s:%s: batch of session %s not handled",
                latest.platform,
                latest.account,
                batch.session,
            )
            return "no connector configured for this account"
        self._counters[_stats.RUNS] += 1
        on_sent = self._count_reply
        if self._latencies is not None:
            on_sent = self._latencies.run_started(batch, on_sent)
        reply = Reply._create(batch, connector, on_sent)
        failure: BaseException | None = None
        try:
            with trio.move_on_after(self._run_timeout) as timeout:
                async with connector.running(batch):
                    await self._agent(batch, reply)
        except* Exception as group:
            # The agent is user code: anything may come out, even instead of or alongside
            # the Cancelled of an interrupt, a timeout or a shutdown (a cleanup that failed).
            # It is logged and counted, and never escapes to the dispatcher; a Cancelled
            # beside it goes on up to its cancel scope.
            failure = sole(group)
            log.error(
                "agent failed on session %s (%d messages)",
                batch.session,
                len(batch.messages),
                exc_info=failure,
            )
            self._counters[_stats.FAILURES] += 1
        if timeout.cancelled_caught or (failure is not None and timeout.cancel_called):
            self._counters[_stats.TIMEOUTS] += 1
            if failure is None:
                self._counters[_stats.FAILURES] += 1
            return f"agent timed out after {self._run_timeout} s"
        if failure is None:
            return None
        # An error came out instead of Cancelled: if an interrupt, the shutdown grace or the
        # bridge's cancellation asked this run to stop, that is what decides its fate.
        await trio.lowlevel.checkpoint_if_cancelled()
        return f"{type(failure).__name__}: {failure}"

    def _count_reply(self) -> None:
        self._counters[_stats.REPLIES] += 1

"""Run a bridge inside an asyncio application, Trio running as a guest on asyncio's loop.

asyncio applications (FastAPI, Starlette, aiohttp, ...) cannot ``await`` Trio code. Trio's
guest mode (``trio.lowlevel.start_guest_run``) runs a whole Trio run on top of the asyncio loop
instead: both take turns on the loop's thread, and Trio waits for its own I/O in a helper
thread. :func:`asyncio_bridge` runs a bridge that way for the length of an ``async with``
block (an application's lifespan). :func:`asyncio_agent` lets the agent be an ordinary asyncio
coroutine: each run becomes an asyncio task on the host loop, and its :class:`AsyncioReply`
forwards every reply call to the Trio side and waits there for the answer.

Cancellation crosses over both ways: a run the bridge cancels (``on_busy="interrupt"``,
``run_timeout``, the end of ``shutdown_grace``) cancels the asyncio task, and the bridge waits
for that task to finish before it considers the run over, so no reply is written after it;
an asyncio task cancelled in a reply call cancels that call on the Trio side.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import (
    TYPE_CHECKING,
    Any,
    Final,
    Generic,
    TypeAlias,
    TypeVar,
    TypeVarTuple,
    Unpack,
    final,
)

import attrs
import trio

from ._bridge import Bridge
from ._connector import Connector, ReplyStream
from ._construction import NoPublicConstructor
from ._content import Attachment, Card, Content, Sent, media_kind
from ._dispatch import Agent
from ._errors import ChatBridgeError, ConfigurationError
from ._messages import Batch, Message
from ._reply import Reply

if TYPE_CHECKING:
    import outcome

T = TypeVar("T")
ArgsT = TypeVarTuple("ArgsT")

AsyncioAgent: TypeAlias = Callable[[Batch, "AsyncioReply"], Coroutine[Any, Any, None]]
"""``async def agent(batch, reply) -> None`` written for asyncio (see :func:`asyncio_agent`)."""


@attrs.frozen
class _Host:
    """The asyncio side of a guest run, as the Trio side sees it."""

    loop: asyncio.AbstractEventLoop
    context: contextvars.Context
    """The context ``asyncio_bridge`` was entered in; each agent task runs in a copy of it."""


_HOST: Final = trio.lowlevel.RunVar[_Host]("trio_chatbridge.asyncio_host")


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[T], value: T) -> None:
    """Give ``future`` its result on the asyncio side, unless it is already settled."""

    def settle() -> None:
        if not future.done():
            future.set_result(value)

    loop.call_soon_threadsafe(settle)


def _fail(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], exc: BaseException) -> None:
    """Settle ``future`` with ``exc`` (a Trio cancellation cancels it) on the asyncio side."""

    def settle() -> None:
        if future.done():
            return
        if isinstance(exc, (trio.Cancelled, asyncio.CancelledError)):
            future.cancel()
        else:
            future.set_exception(exc)

    loop.call_soon_threadsafe(settle)


def _soon(token: trio.lowlevel.TrioToken, fn: Callable[[], object]) -> None:
    """Have the guest run call ``fn`` soon, unless that run is over (or closing its entry
    queue, which it does before its end reaches asyncio): then there is nothing left to
    stop or cancel, and the asyncio caller keeps its own outcome, not RunFinishedError."""
    with contextlib.suppress(trio.RunFinishedError):
        token.run_sync_soon(fn)


@final
class AsyncioBridge(metaclass=NoPublicConstructor):
    """What :func:`asyncio_bridge` yields: the running bridge, and a way into its Trio run."""

    def __init__(self, bridge: Bridge, _portal: _Portal) -> None:
        self.bridge = bridge
        """The bridge; ``status()`` and ``stats()`` may be read from asyncio."""
        self._portal = _portal

    def __repr__(self) -> str:
        return f"<AsyncioBridge of {self.bridge!r}>"

    async def call(self, fn: Callable[[Unpack[ArgsT]], Awaitable[T]], *args: *ArgsT) -> T:
        """From asyncio: run ``await fn(*args)`` in the bridge's Trio run and return its result.

        For Trio calls an asyncio application makes besides the agent, such as a connector's
        proactive send from a web handler. Cancelled on the asyncio side, the Trio call is
        cancelled too; calls still running when the bridge has stopped are cancelled. Awaited
        on another loop (another thread's), it raises :class:`ConfigurationError` before
        anything runs: hand it to ``asyncio.run_coroutine_threadsafe`` with the bridge's loop.
        """
        return await self._portal.call(fn, *args)


@asynccontextmanager
async def asyncio_bridge(bridge: Bridge) -> AsyncIterator[AsyncioBridge]:
    """From asyncio: run ``bridge`` as a Trio guest for the length of the ``async with`` block.

    The block is entered once ``nursery.start(bridge.run)`` has returned on the Trio side; an
    error raised while the bridge starts (a store that cannot open) is raised here. Leaving
    the block normally shuts the bridge down gracefully (pending sessions flushed, running
    agents get ``shutdown_grace``) and waits for the Trio run to end; an error the bridge
    ended with is raised then. Stop the bridge by leaving the block, not with
    ``bridge.shutdown()`` (a Trio call, which :meth:`AsyncioBridge.call` could make).

    An exception or a cancellation out of the block stops the bridge at once, as it would out
    of a Trio nursery or :func:`open_bridge`, and so does a cancellation during the graceful
    stop: the bridge is cancelled (what was journaled but not handled is replayed at the next
    start), the wait goes on until the Trio run has ended, and then the exception is raised:
    the loop never stops under a running guest. One guest run per loop at a time (Trio's rule).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigurationError(
            "asyncio_bridge runs a bridge inside an asyncio application; under Trio, start "
            "bridge.run in a nursery or use trio_chatbridge.open_bridge"
        ) from None
    if trio.lowlevel.in_trio_run():
        raise ConfigurationError(
            "a Trio run is going on in this thread already (another asyncio_bridge block?): "
            "one asyncio_bridge at a time per event loop; give one bridge every connector"
        )
    host = _Host(loop, contextvars.copy_context())
    started: asyncio.Future[_Portal] = loop.create_future()
    done: asyncio.Future[outcome.Outcome[None]] = loop.create_future()
    stop = trio.CancelScope()

    async def guest() -> None:
        _HOST.set(host)
        with stop:
            async with trio.open_nursery() as calls:
                portal = _Portal(loop, calls, "the bridge has stopped")
                try:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(bridge.run)
                        _resolve(loop, started, portal)
                finally:
                    portal.close()
                    calls.cancel_scope.cancel()

    def finished(result: outcome.Outcome[None]) -> None:
        if not done.done():
            done.set_result(result)

    trio.lowlevel.start_guest_run(
        guest,
        run_sync_soon_threadsafe=loop.call_soon_threadsafe,
        run_sync_soon_not_threadsafe=loop.call_soon,
        done_callback=finished,
        host_uses_signal_set_wakeup_fd=True,
    )
    token = trio.lowlevel.current_trio_token()  # usable once start_guest_run returned
    try:
        waits: list[asyncio.Future[Any]] = [started, done]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _stop_now(token, stop, done)
        raise
    if not started.done():  # the bridge failed to start
        _unwrap(done.result())
    try:
        yield AsyncioBridge._create(bridge, started.result())
    except BaseException:  # as out of a Trio nursery (and cb.open_bridge): stop at once
        await _stop_now(token, stop, done)
        raise
    await _stop_gracefully(bridge, token, stop, done)
    _unwrap(done.result())


async def _stop_gracefully(
    bridge: Bridge,
    token: trio.lowlevel.TrioToken,
    stop: trio.CancelScope,
    done: asyncio.Future[outcome.Outcome[None]],
) -> None:
    """Shut the bridge down and wait for the guest run to end; cancelled, stop it at once."""
    if not done.done():  # else it ended on its own, bridge.run having failed
        _soon(token, bridge.shutdown)
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        await _stop_now(token, stop, done)
        raise


async def _stop_now(
    token: trio.lowlevel.TrioToken,
    stop: trio.CancelScope,
    done: asyncio.Future[outcome.Outcome[None]],
) -> None:
    """Cancel the guest run and wait until it has ended, whatever else is cancelled."""
    if not done.done():
        _soon(token, stop.cancel)
    while not done.done():
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            continue  # the caller re-raises its cancellation once the guest has ended


def _unwrap(result: outcome.Outcome[None]) -> None:
    """Raise what the guest run ended with, out of the nurseries' groups when it is alone."""
    try:
        result.unwrap()
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from None


def _name(function: object) -> str:
    return str(getattr(function, "__qualname__", None) or function)


def asyncio_agent(agent: AsyncioAgent) -> Agent:
    """Wrap an asyncio agent so a bridge run by :func:`asyncio_bridge` can call it.

    ``agent(batch, reply)`` then runs as an asyncio task on the host loop, in a copy of the
    context ``asyncio_bridge`` was entered in, with an :class:`AsyncioReply`. What it raises is
    the run's failure, as for any agent. When the bridge cancels the run, the task is
    cancelled and the run ends only once the task has: an error its cleanup raises is raised
    in place of the cancellation, as a Trio agent's would be. A task cancelled by anything
    else counts as a failed run.
    """

    async def run(batch: Batch, reply: Reply) -> None:
        try:
            host = _HOST.get()
        except LookupError:
            raise ConfigurationError(
                "an asyncio_agent needs its bridge run by trio_chatbridge.asyncio_bridge "
                "inside an asyncio application"
            ) from None
        async with trio.open_nursery() as calls:
            portal = _Portal(host.loop, calls, "this reply's agent run is over: it cannot send")
            coro = agent(batch, AsyncioReply._create(reply, portal))
            if not asyncio.iscoroutine(coro):
                raise ConfigurationError(
                    f"asyncio_agent({_name(agent)}) returned {type(coro).__name__}, not a "
                    "coroutine: write 'async def agent(batch, reply)'"
                )
            task = host.loop.create_task(coro, context=host.context.copy())
            try:
                await _wait_for(task)
            finally:
                portal.close()
                calls.cancel_scope.cancel()  # calls the task left behind without waiting

    return run


async def _wait_for(task: asyncio.Task[None]) -> None:
    """Wait in Trio for an asyncio task; cancelled, cancel it and wait until it has ended."""
    token = trio.lowlevel.current_trio_token()
    ended = trio.Event()
    task.add_done_callback(lambda _: token.run_sync_soon(ended.set))
    try:
        await ended.wait()
    except trio.Cancelled:
        task.cancel()
        with trio.CancelScope(shield=True):
            await ended.wait()
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error from None
        raise
    if task.cancelled():
        raise ChatBridgeError("the asyncio agent's task was cancelled from the asyncio side")
    task.result()


@attrs.define(eq=False)
class _Portal:
    """Runs Trio calls for one agent run, in that run's nursery, on behalf of asyncio."""

    loop: asyncio.AbstractEventLoop
    nursery: trio.Nursery
    over: str
    """The error message for a call that comes, or is still running, once it has closed."""
    _token: trio.lowlevel.TrioToken = attrs.field(
        factory=trio.lowlevel.current_trio_token, init=False
    )
    _closed: bool = attrs.field(default=False, init=False)

    def close(self) -> None:
        self._closed = True

    async def call(self, fn: Callable[[Unpack[ArgsT]], Awaitable[T]], *args: *ArgsT) -> T:
        """From asyncio: ``await fn(*args)`` on the Trio side and return what it returned.

        Cancelled on the asyncio side, the Trio call is cancelled too; the agent run's end
        waits for it either way.
        """
        if self._closed:
            raise ChatBridgeError(self.over)
        if asyncio.get_running_loop() is not self.loop:  # before anything runs
            raise ConfigurationError(
                f"{_name(fn)} was called from another event loop than the one running the "
                "bridge: from another thread, use asyncio.run_coroutine_threadsafe(..., loop) "
                "with the bridge's loop"
            )
        future: asyncio.Future[T] = self.loop.create_future()
        call = _Call(fn, args, future, trio.CancelScope())
        try:
            self._token.run_sync_soon(self._start, call)
        except trio.RunFinishedError:
            raise ChatBridgeError(self.over) from None
        try:
            return await future
        except asyncio.CancelledError:
            _soon(self._token, call.scope.cancel)  # the run may be over: nothing to cancel
            raise

    def _start(self, call: _Call[Any]) -> None:
        if self._closed:
            _fail(self.loop, call.future, ChatBridgeError(self.over))
        else:
            self.nursery.start_soon(self._run, call)

    async def _run(self, call: _Call[Any]) -> None:
        try:
            with call.scope:
                _resolve(self.loop, call.future, await call.fn(*call.args))
        except Exception as exc:  # the asyncio caller's to handle, not the run's
            _fail(self.loop, call.future, exc)
        except BaseException as exc:
            # Cancelled because the agent run ended: say so, rather than cancel the caller.
            _fail(self.loop, call.future, ChatBridgeError(self.over) if self._closed else exc)
            raise
        if call.scope.cancelled_caught:
            _fail(self.loop, call.future, asyncio.CancelledError())


@attrs.frozen
class _Call(Generic[T]):
    """One Trio call asked for from asyncio: what to run, where its result goes, its scope."""

    fn: Callable[..., Awaitable[T]]
    args: tuple[Any, ...]
    future: asyncio.Future[T]
    scope: trio.CancelScope


@attrs.define(eq=False)
class _HeldStream:
    """A Trio reply stream held open by a task of its own while asyncio writes to it."""

    reply: Reply
    card: Card | None
    _closing: trio.Event = attrs.field(factory=trio.Event, init=False)
    _closed: trio.Event = attrs.field(factory=trio.Event, init=False)
    _ended_early: bool = attrs.field(default=False, init=False)
    _error: Exception | None = attrs.field(default=None, init=False)

    async def hold(self, *, task_status: trio.TaskStatus[ReplyStream]) -> None:
        opened = False
        try:
            async with self.reply.stream(card=self.card) as out:
                task_status.started(out)
                opened = True
                await self._closing.wait()
                if self._ended_early:
                    raise _EndedEarly
        except _EndedEarly:
            pass
        except Exception as exc:
            if not opened:
                raise  # nursery.start raises it: the asyncio block is never entered
            self._error = exc  # the stream failed closing: the asyncio side raises it there
        finally:
            self._closed.set()

    async def close(self, ended_early: bool) -> None:
        self._ended_early = ended_early
        self._closing.set()
        await self._closed.wait()
        if self._error is not None:
            raise self._error


class _EndedEarly(Exception):
    """Raised inside a held stream whose asyncio block raised: the stream ends as failed."""


@final
class AsyncioStream(metaclass=NoPublicConstructor):
    """A reply being written from asyncio: ``await out.write(text)`` appends text."""

    def __init__(self, stream: ReplyStream, _portal: _Portal) -> None:
        self._stream = stream
        self._portal = _portal

    async def write(self, text: str) -> None:
        """Append ``text`` to the reply (on the Trio side; returns once it has taken it).

        Cancelled, the write is cancelled on the Trio side too; the text may or may not be in.
        """
        await self._portal.call(self._stream.write, text)

    @property
    def text(self) -> str:
        """Everything written so far."""
        return self._stream.text


@final
class AsyncioReply(metaclass=NoPublicConstructor):
    """The ``reply`` an :func:`asyncio_agent` gets: :class:`Reply`'s calls, awaitable in asyncio.

    Each call runs on the Trio side in the agent run's nursery and returns once it has
    finished there, with its result or its error. ``trio_reply`` is the Trio :class:`Reply`;
    ``await reply.call(fn, *args)`` runs any Trio call, such as
    ``reply.call(reply.connector.download, part.media)``.
    """

    def __init__(self, reply: Reply, _portal: _Portal) -> None:
        self.trio_reply = reply
        self._portal = _portal

    def __repr__(self) -> str:
        return f"<AsyncioReply to {self.batch.session} via {self.connector.name}>"

    @property
    def batch(self) -> Batch:
        """The batch being answered."""
        return self.trio_reply.batch

    @property
    def target(self) -> Message:
        """The message a reply answers: the newest of the batch."""
        return self.trio_reply.target

    @property
    def connector(self) -> Connector:
        """The connector the batch came from (its calls are Trio calls: use :meth:`call`)."""
        return self.trio_reply.connector

    async def call(self, fn: Callable[[Unpack[ArgsT]], Awaitable[T]], *args: *ArgsT) -> T:
        """Run ``await fn(*args)`` on the Trio side and return its result (or raise its error).

        Cancelled on the asyncio side, the Trio call is cancelled too, and the agent run ends
        only once it has.
        """
        return await self._portal.call(fn, *args)

    async def send(self, content: Content) -> Sent:
        """Send ``content`` as one reply (text, ``Markdown``, ``Card``, ``Post``, an
        ``Attachment``), as :meth:`Reply.send` does; returns what the platform said about it.

        Cancelled, the send is cancelled as :meth:`call` says: it may or may not have gone out.
        """
        return await self.call(self.trio_reply.send, content)

    async def send_media(self, data: bytes, *, filename: str, kind: str | None = None) -> Sent:
        """Send a file (``kind`` "image", "file", "video", "voice"; by default from the name).

        Cancelled during the upload, nothing is sent; after it, as :meth:`send`.
        """
        return await self.send(Attachment(data, filename, media_kind(kind)))

    async def edit(self, sent: Sent, content: Content) -> None:
        """Change what an earlier reply shows, where the platform edits in place (Lark).

        Cancelled, the message shows the old content or the new one, never a mix.
        """
        await self.call(self.trio_reply.edit, sent, content)

    @asynccontextmanager
    async def stream(self, *, card: Card | None = None) -> AsyncIterator[AsyncioStream]:
        """Write the reply piece by piece; it is complete when the block exits.

        ``card`` shows a platform card with the streamed text, as in :meth:`Reply.stream`.

        A block that raises or is cancelled ends the stream as failed, as a Trio agent's would
        (the platform is told it ended, where it can), and what the block raised is what
        leaves it: a failure ending the stream (the run being over, say) is only added to it
        as a note. After a block that ended normally, an error closing the stream is raised
        at the exit.
        """
        held = _HeldStream(self.trio_reply, card)
        out: ReplyStream = await self.call(self._portal.nursery.start, held.hold)
        try:
            yield AsyncioStream._create(out, self._portal)
        except BaseException as exc:
            try:
                await self.call(held.close, True)
            except (Exception, asyncio.CancelledError) as closing:  # the block's own wins
                exc.add_note(f"ending the reply stream as failed also failed: {closing!r}")
            raise
        await self.call(held.close, False)

"""From asyncio: a bridge run as a Trio guest, with an asyncio coroutine as its agent.

These tests run a real asyncio loop (this is the asyncio integration), each bounded by
``asyncio.timeout``; the bridge's connector is the in-memory FakeConnector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sniffio
import trio

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector, running_bridge

LIMIT = 10.0  # seconds any one test may take on the asyncio loop
QUICK = cb.Debounce(window=0.01, max_delay=0.1)


def run_asyncio(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(LIMIT):
            await main()

    asyncio.run(bounded())


def bridge_for(agent: cb.AsyncioAgent, chat: FakeConnector, **options: Any) -> cb.Bridge:
    return cb.Bridge(
        [chat], cb.asyncio_agent(agent), debounce=QUICK, store=cb.MemoryStore(), **options
    )


def test_asyncio_agent_runs_on_the_loop_and_replies_by_send_and_stream() -> None:
    seen: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        seen.append(sniffio.current_async_library())
        await asyncio.sleep(0)  # any asyncio library may be awaited here
        await reply.send("heard " + batch.text)
        async with reply.stream() as out:
            await out.write("one ")
            await out.write("two")
            assert out.text == "one two"

    async def main() -> None:
        chat = FakeConnector()
        async with cb.asyncio_bridge(bridge_for(agent, chat)) as running:
            await running.call(chat.say, "hello")
            first = await running.call(chat.next_reply)
            second = await running.call(chat.next_reply)
            assert running.bridge.stats().replies == 2
        assert (first.text, first.streamed) == ("heard hello", False)
        assert (second.text, second.chunks) == ("one two", ("one ", "two"))

    run_asyncio(main)
    assert seen == ["asyncio"]


def test_interrupt_cancels_the_asyncio_task_and_waits_for_its_cleanup() -> None:
    events: list[str] = []
    started = asyncio.Event()

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        events.append(f"start {batch.text!r}")
        if len(batch.messages) == 1:
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(0.01)  # cleanup that takes a moment
                events.append("cleaned up")
                raise
        await reply.send(batch.text)

    stats = run_asyncio_interrupt(agent, started)
    assert stats.interrupts == 1
    assert events == ["start 'first'", "cleaned up", "start 'first\\nsecond'"]


def run_asyncio_interrupt(agent: cb.AsyncioAgent, started: asyncio.Event) -> cb.Stats:
    """Say "first", then "second" once the agent has ``started``, under
    ``on_busy="interrupt"``; the bridge's stats once both were answered, merged."""
    stats: list[cb.Stats] = []

    async def main() -> None:
        chat = FakeConnector()
        bridge = bridge_for(agent, chat, on_busy="interrupt")
        async with cb.asyncio_bridge(bridge) as running:
            await running.call(chat.say, "first")
            await started.wait()
            await running.call(chat.say, "second")
            sent = await running.call(chat.next_reply)
        assert sent.text == "first\nsecond"
        stats.append(bridge.stats())

    run_asyncio(main)
    return stats[0]


def test_an_asyncio_agent_that_raises_is_a_failed_run_and_the_bridge_goes_on() -> None:
    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        if batch.text == "boom":
            raise ValueError("the agent broke")
        await reply.send("ok")

    async def main() -> None:
        chat = FakeConnector()
        async with cb.asyncio_bridge(bridge_for(agent, chat)) as running:
            await running.call(partial(chat.say, "boom", chat="a"))
            await running.call(partial(chat.say, "fine", chat="b"))
            sent = await running.call(chat.next_reply)
            assert sent.text == "ok"
            assert running.bridge.stats().failures == 1

    run_asyncio(main)


def test_a_send_error_reaches_the_asyncio_agent() -> None:
    caught: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        try:
            await reply.send("lost")
        except cb.SendError as exc:
            caught.append(str(exc))
        await reply.send("second try")

    async def main() -> None:
        chat = FakeConnector()
        chat.fail_sends(1)
        async with cb.asyncio_bridge(bridge_for(agent, chat)) as running:
            await running.call(chat.say, "hi")
            assert (await running.call(chat.next_reply)).text == "second try"

    run_asyncio(main)
    assert len(caught) == 1
    assert "injected send failure" in caught[0]


def test_a_stream_that_cannot_open_raises_its_error_in_asyncio() -> None:
    caught: list[BaseException] = []

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        try:
            async with reply.stream():
                pytest.fail("entered a stream that did not open")
        except cb.SendError as exc:
            caught.append(exc)
        await reply.send("fell back to one message")

    async def main() -> None:
        chat = FakeConnector()
        chat.fail_sends(1)  # FakeConnector checks at the stream's opening
        async with cb.asyncio_bridge(bridge_for(agent, chat)) as running:
            await running.call(chat.say, "hi")
            assert (await running.call(chat.next_reply)).text == "fell back to one message"

    run_asyncio(main)
    assert len(caught) == 1


def test_a_stream_block_that_raises_ends_the_stream_as_failed() -> None:
    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        async with reply.stream() as out:
            await out.write("half an answer")
            raise RuntimeError("the model went away")

    async def main() -> None:
        chat = FakeConnector()
        bridge = bridge_for(agent, chat)
        async with cb.asyncio_bridge(bridge) as running:
            await running.call(chat.say, "hi")
        # Leaving the block flushed the session and waited for the run.
        assert bridge.stats().failures == 1
        # FakeConnector records a stream only when it closed without error.
        assert list(chat.sent) == []

    run_asyncio(main)


def test_a_call_cancelled_in_asyncio_is_cancelled_in_trio() -> None:
    trio_side: list[str] = []

    async def sleeps() -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            trio_side.append("cancelled")
            raise

    async def main() -> None:
        chat = FakeConnector()
        async with cb.asyncio_bridge(bridge_for(reply_ok, chat)) as running:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await running.call(sleeps)
            assert await running.call(trio_value, 7) == 7  # the portal still works

    run_asyncio(main)
    assert trio_side == ["cancelled"]


async def reply_ok(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
    await reply.send("ok")


async def trio_value(value: int) -> int:
    await trio.lowlevel.checkpoint()
    return value


def test_a_bridge_that_cannot_start_raises_on_entering(tmp_path: Path) -> None:
    async def main() -> None:
        bridge = cb.Bridge(
            [FakeConnector()], cb.asyncio_agent(reply_ok), store=cb.SQLiteStore(tmp_path)
        )
        with pytest.raises(cb.StoreError):
            async with cb.asyncio_bridge(bridge):
                pytest.fail("entered a bridge that never started")

    run_asyncio(main)


@pytest.mark.parametrize("where", ["in the block", "in the graceful stop", "an error"])
def test_leaving_by_cancellation_or_error_stops_the_bridge_at_once(where: str) -> None:
    running_agent = asyncio.Event()
    agent_cancelled = asyncio.Event()
    leaving = asyncio.Event()

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        running_agent.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            agent_cancelled.set()
            raise

    async def lifespan(chat: FakeConnector) -> None:
        # A long grace: only the cancellation can end the graceful stop early.
        bridge = bridge_for(agent, chat, shutdown_grace=3600.0)
        async with cb.asyncio_bridge(bridge) as running:
            await running.call(chat.say, "hi")
            await running_agent.wait()
            if where == "in the block":
                await asyncio.sleep(3600)
            if where == "an error":
                raise ValueError("the application failed")
            leaving.set()  # no await from here to the wait for the graceful stop

    async def main() -> None:
        task = asyncio.create_task(lifespan(FakeConnector()))
        if where == "an error":
            with pytest.raises(ValueError, match="the application failed"):
                await task
        else:
            await (leaving if where == "in the graceful stop" else running_agent).wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert agent_cancelled.is_set()
        # The guest run has ended: the loop can host another one.
        chat = FakeConnector()
        async with cb.asyncio_bridge(bridge_for(reply_ok, chat)) as running:
            await running.call(chat.say, "again")
            assert (await running.call(chat.next_reply)).text == "ok"

    run_asyncio(main)


async def test_an_asyncio_agent_outside_asyncio_bridge_fails_its_run_clearly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chat = FakeConnector()
    bridge = cb.Bridge([chat], cb.asyncio_agent(reply_ok), debounce=QUICK, store=cb.MemoryStore())
    with trio.fail_after(LIMIT):
        async with running_bridge(bridge, fail_on_agent_error=False):
            await chat.say("hi")
    assert bridge.stats().failures == 1  # the graceful stop waited for the run
    assert "needs its bridge run by trio_chatbridge.asyncio_bridge" in caplog.text
    assert list(chat.sent) == []


@pytest.mark.parametrize("cls", [cb.AsyncioBridge, cb.AsyncioReply, cb.AsyncioStream])
def test_the_asyncio_handles_are_built_by_the_library_only(cls: type) -> None:
    with pytest.raises(TypeError, match="built by the library"):
        cls()


def test_reply_call_runs_any_trio_call_and_a_reply_kept_past_its_run_refuses() -> None:
    kept: list[cb.AsyncioReply] = []

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        kept.append(reply)
        await reply.call(reply.connector.send, reply.target, "through the connector")

    async def main() -> None:
        chat = FakeConnector()
        async with cb.asyncio_bridge(bridge_for(agent, chat)) as running:
            await running.call(chat.say, "hi")
            assert (await running.call(chat.next_reply)).text == "through the connector"
        with pytest.raises(cb.ChatBridgeError, match="agent run is over"):
            await kept[0].send("too late")
        with pytest.raises(cb.ChatBridgeError, match="the bridge has stopped"):
            await running.call(trio_value, 1)
        assert len(chat.sent) == 1

    run_asyncio(main)


def test_rich_reply_calls_are_forwarded_with_their_results_and_errors() -> None:
    results: list[object] = []

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        sent = await reply.send("plain text")
        results.append(sent)
        for attempt in (
            reply.edit(sent, "changed"),  # FakeConnector cannot edit
            reply.send(cb.Markdown("**bold**")),  # nor send Markdown
        ):
            try:
                await attempt
            except cb.SendError as exc:
                results.append(type(exc))
        try:
            async with reply.stream(card=cb.Card({"title": "t"})):
                pytest.fail("streamed with a card the connector cannot show")
        except cb.SendError as exc:
            results.append(type(exc))

    async def main() -> None:
        chat = FakeConnector()
        async with cb.asyncio_bridge(bridge_for(agent, chat)) as running:
            await running.call(chat.say, "hi")
            assert (await running.call(chat.next_reply)).text == "plain text"

    run_asyncio(main)
    sent = results[0]
    assert isinstance(sent, cb.Sent)
    assert (sent.platform, sent.chat, sent.kind) == ("fake", "chat", "text")
    assert results[1:] == [cb.SendError] * 3


def test_a_block_cancelled_as_the_trio_run_ends_gets_its_cancellation() -> None:
    """The guest run closes its entry queue a loop turn or more before its end reaches
    asyncio; a block cancelled then must raise CancelledError, not trio.RunFinishedError."""
    bridge = bridge_for(reply_ok, FakeConnector())
    steps_in_the_window: list[int] = []

    async def stop_bridge() -> trio.lowlevel.TrioToken:
        bridge.shutdown()  # the guest run then ends on its own
        return trio.lowlevel.current_trio_token()

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            async with cb.asyncio_bridge(bridge) as running:
                token = await running.call(stop_bridge)
                while True:  # a step each loop turn, checking as soon as the queue closes
                    try:
                        token.run_sync_soon(lambda: None)
                    except trio.RunFinishedError:
                        steps_in_the_window.append(1)
                        raise asyncio.CancelledError from None  # as a cancellation then would
                    await asyncio.sleep(0)

    run_asyncio(main)
    assert steps_in_the_window == [1]


def test_a_stream_block_keeps_its_own_error_when_the_run_is_over() -> None:
    """A stream held past its run (by a task the agent left behind): what the block raised
    comes out, not "this reply's agent run is over" from ending the stream."""
    late: list[asyncio.Task[None]] = []
    opened, run_over = asyncio.Event(), asyncio.Event()

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        async def outlives_the_run() -> None:
            async with reply.stream() as out:
                await out.write("half an answer")
                opened.set()
                await run_over.wait()
                raise LookupError("the block's own error")

        late.append(asyncio.create_task(outlives_the_run()))
        await opened.wait()

    async def main() -> None:
        chat = FakeConnector()
        bridge = bridge_for(agent, chat)
        async with cb.asyncio_bridge(bridge) as running:
            await running.call(chat.say, "hi")
            await opened.wait()
        run_over.set()
        with pytest.raises(LookupError, match="the block's own error") as caught:
            await late[0]
        assert "agent run is over" in "".join(caught.value.__notes__)

    run_asyncio(main)


def test_an_error_raised_on_interrupt_inside_a_stream_block_is_the_runs_failure() -> None:
    """Interrupted, an agent whose cleanup raises fails the run with that error (as a Trio
    agent's would), even when the cleanup is inside a stream block."""
    started = asyncio.Event()

    async def agent(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        if len(batch.messages) > 1:
            await reply.send(batch.text)
            return
        async with reply.stream() as out:
            await out.write("thinking")
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise LookupError("cleanup failed") from None

    assert run_asyncio_interrupt(agent, started).failures == 1


def test_an_asyncio_agent_that_returns_no_coroutine_fails_its_runs_saying_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def not_async(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        pass

    async def main() -> None:
        chat = FakeConnector()
        bridge = bridge_for(not_async, chat)  # type: ignore[arg-type]
        async with cb.asyncio_bridge(bridge) as running:
            await running.call(partial(chat.say, "hello", chat="a"))
        assert (bridge.stats().failures, list(chat.sent)) == (1, [])  # the stop ran it

    run_asyncio(main)
    assert "asyncio_agent(" in caplog.text
    assert "not_async) returned NoneType, not a coroutine: write 'async def" in caplog.text


def test_asyncio_bridge_twice_on_one_loop_or_under_trio_says_what_to_do() -> None:
    async def twice() -> None:
        async with cb.asyncio_bridge(bridge_for(reply_ok, FakeConnector())):
            with pytest.raises(cb.ConfigurationError, match="one asyncio_bridge at a time"):
                async with cb.asyncio_bridge(bridge_for(reply_ok, FakeConnector())):
                    pytest.fail("entered a second guest run")

    run_asyncio(twice)

    async def under_trio() -> None:
        async with cb.asyncio_bridge(bridge_for(reply_ok, FakeConnector())):
            pytest.fail("entered without asyncio")

    with pytest.raises(cb.ConfigurationError, match=r"under Trio, start bridge\.run in a nursery"):
        trio.run(under_trio)


def test_a_call_from_another_threads_loop_is_refused_before_it_runs() -> None:
    """``AsyncioBridge.call`` awaited on another thread's loop: the Trio call ran (a message
    sent, say) and then asyncio raised "attached to a different loop". It is now refused
    before anything runs, naming the way that works, which then does."""
    ran: list[str] = []

    async def record(what: str) -> str:
        ran.append(what)
        return what

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with cb.asyncio_bridge(bridge_for(reply_ok, FakeConnector())) as abridge:

            def elsewhere() -> str:
                with pytest.raises(cb.ConfigurationError, match="run_coroutine_threadsafe"):
                    asyncio.run(abridge.call(record, "on another loop"))
                done = asyncio.run_coroutine_threadsafe(abridge.call(record, "threadsafe"), loop)
                return done.result(timeout=LIMIT)

            assert await asyncio.to_thread(elsewhere) == "threadsafe"
        assert ran == ["threadsafe"]

    run_asyncio(main)


def test_asyncio_run_ending_inside_the_block_stops_the_bridge_without_a_hang() -> None:
    """``asyncio.run`` ends while the block was never left (entered by hand, never exited):
    the loop's shutdown cancels the block, which stops the bridge at once (the running agent
    is cancelled; journaled messages are replayed at the next start) before the loop closes."""
    cancelled: list[str] = []
    started = asyncio.Event()

    async def slow(batch: cb.Batch, reply: cb.AsyncioReply) -> None:
        started.set()
        try:
            await asyncio.sleep(LIMIT)
        except asyncio.CancelledError:
            cancelled.append(batch.text)
            raise

    chat = FakeConnector()

    async def main() -> None:
        block = cb.asyncio_bridge(bridge_for(slow, chat))
        running = await block.__aenter__()
        await running.call(chat.say, "left running")
        await started.wait()

    run_asyncio(main)
    assert cancelled == ["left running"]

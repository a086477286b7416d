"""The WebSocket driver with a toy protocol core, over in-memory WebSockets.

The core speaks a line protocol: ``msg:<id>`` is a message (ACKed ``ack:<id>``), ``ans:<key>``
answers a request, ``close`` ends the connection for good, ``later`` asks to reconnect in 30 s,
``bad`` is a bad frame. The server side records every frame the driver sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection, WebSocketRequest

import trio_chatbridge as cb
from trio_chatbridge._errors import find_error
from trio_chatbridge._receive import MAX_HANDLERS
from trio_chatbridge._websocket import PUT_GRACE
from trio_chatbridge.connectors import (
    Answer,
    Bad,
    Close,
    ConnectorContext,
    Counted,
    Data,
    Event,
    Inbound,
    Notice,
    Outgoing,
    Request,
    Send,
    WebSocketDriver,
)
from trio_chatbridge.testing import FakeConnector
from trio_chatbridge.testing._ws import GONE, Abort, memory_websocket

FAKE = FakeConnector("acct", platform="line")  # the context's platform and account


class LineCore:
    heartbeat_interval = 5.0
    silence = 1000.0

    def __init__(self) -> None:
        self.read: list[str] = []
        self.back: list[str] = []

    def given_back(self, item: str) -> Counted:
        self.back.append(item)
        return Counted("notes_deferred")

    def open(self) -> Sequence[Outgoing]:
        return [Send("hello")]

    def heartbeat(self) -> Outgoing:
        return Send("ping")

    def receive(self, data: Data, now: float) -> Sequence[Event[str]]:
        text = data if isinstance(data, str) else data.decode()
        self.read.append(text)
        kind, _, rest = text.partition(":")
        if kind == "msg":
            return [Inbound(FAKE.message(rest, id=rest), ack=lambda taken: f"ack:{rest}")]
        if kind == "ans":
            return [Answer(rest, body={"n": 1})]
        if kind == "close":
            return [Close("replaced", fatal=True)]
        if kind == "later":
            return [Close("maintenance", retry_after=30.0)]
        if kind == "dup":
            return [Counted("duplicates")]
        if kind == "oddity":  # bad inside, yet owed its ACK
            bad = Bad("line oddity", cb.ProtocolError(rest))
            return [bad, Inbound(None, ack=lambda taken: f"ack:{rest}")]
        if kind == "note":
            return [Notice(rest, busy=lambda: self.given_back(rest))]
        raise cb.ProtocolError(f"bad frame {text!r}")

    def rejected(self, status: int | None, headers: Mapping[str, str], body: bytes) -> Exception:
        return cb.FatalConnectorError(f"refused {status} {body!r}")


class Server:
    """One in-memory WebSocket server: pushes frames, records what the driver sent."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.got: list[str] = []
        self.ws: WebSocketConnection | None = None
        self.connected = trio.Event()

    def open(self, url: str) -> Any:
        return memory_websocket(self.nursery, self._accept, "localhost", "/", 2**20)

    async def _accept(self, request: WebSocketRequest, abort: Abort) -> None:
        self.ws = await request.accept()
        self.connected.set()
        with suppress(*GONE):
            while True:
                self.got.append(str(await self.ws.get_message()))

    async def push(self, *frames: str) -> None:
        await self.connected.wait()
        assert self.ws is not None
        for frame in frames:
            await self.ws.send_message(frame)


class Inbox:
    """A ``ctx.put`` that records puts and can be held shut."""

    def __init__(self) -> None:
        self.puts: list[list[str]] = []
        self.open = trio.Event()
        self.open.set()
        self.counts: dict[str, int] = {}
        self.ended: list[float] = []  # when each put returned or was cancelled

    async def put(self, messages: Sequence[cb.Message]) -> list[cb.Message]:
        self.puts.append([m.id for m in messages])  # journaled, as the bridge's inbox does,
        try:
            await self.open.wait()  # then waits for room
        finally:
            self.ended.append(trio.current_time())
        return list(messages)

    def count(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def context(self) -> ConnectorContext:
        return ConnectorContext(
            "line", "acct", cb.MemoryStore(), self.put, self.count, lambda state, detail: None
        )


async def start(
    nursery: trio.Nursery, core: LineCore | None = None, **options: Any
) -> tuple[Server, Inbox, LineCore, WebSocketDriver[str]]:
    server, inbox, core = Server(nursery), Inbox(), core or LineCore()
    driver = WebSocketDriver(core, name="line acct", open_websocket=server.open, **options)
    await nursery.start(driver.run, inbox.context(), "ws://localhost/")
    return server, inbox, core, driver


@asynccontextmanager
async def held(
    core: LineCore | None = None, *, within: float = 60.0, **options: Any
) -> AsyncIterator[tuple[trio.Nursery, Server, Inbox, LineCore, WebSocketDriver[str]]]:
    """A running driver (see :func:`start`) whose inbox holds every put until ``inbox.open``
    is set, all within ``within`` seconds; its nursery is cancelled on the way out."""
    with trio.fail_after(within):
        async with trio.open_nursery() as nursery:
            server, inbox, core, driver = await start(nursery, core, **options)
            inbox.open = trio.Event()
            yield nursery, server, inbox, core, driver
            nursery.cancel_scope.cancel()


async def release(inbox: Inbox, server: Server, n: int) -> None:
    """Opens the held inbox: messages 0 to n-1 are all put, in order, then ACKed once each,
    in order."""
    inbox.open.set()
    await trio.sleep(1)
    assert [m for put in inbox.puts for m in put] == [str(i) for i in range(n)]
    acks = [frame for frame in server.got if frame.startswith("ack:")]
    assert acks == [f"ack:{i}" for i in range(n)]


async def test_a_burst_is_put_at_once_and_acked_only_after_its_put_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held() as (_, server, inbox, _, _):
        # the inbox is slow
        await server.push(*(f"msg:{n}" for n in range(5)))
        await trio.sleep(1)
        assert inbox.puts == [["0", "1", "2", "3", "4"]]  # one put for the burst
        assert server.got == ["hello"]  # nothing acked before the put returned
        inbox.open.set()
        await trio.sleep(1)
        assert server.got == ["hello", *(f"ack:{n}" for n in range(5))]


async def test_a_slow_inbox_slows_reading_but_heartbeats_and_the_link_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(backlog=3, put_batch=2) as (nursery, server, inbox, core, _):
        core.silence = 3.0  # the reader stops longer than that: not the peer's silence
        nursery.start_soon(server.push, *(f"msg:{n}" for n in range(20)))
        await trio.sleep(9)
        assert len(core.read) < 10  # the reader stopped: backpressure on the socket
        assert server.got.count("ping") == 1  # at 5 s, the inbox notwithstanding
        await release(inbox, server, 20)
        assert all(len(put) <= 2 for put in inbox.puts)


async def test_a_put_slower_than_the_grace_holds_the_reader_and_every_message_is_acked_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(backlog=3, put_batch=2, within=120) as (nursery, server, inbox, core, _):
        # slower than PUT_GRACE, but running: no teardown
        nursery.start_soon(server.push, *(f"msg:{n}" for n in range(20)))
        await trio.sleep(3 * PUT_GRACE)
        assert inbox.puts == [["0", "1"]]  # one put waiting, never abandoned and put on
        assert len(core.read) < 10  # the reader stopped: backpressure on the socket
        await release(inbox, server, 20)


async def test_a_put_at_teardown_is_given_the_grace_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(within=120) as (_, server, inbox, _, _):
        # never opens
        await server.push("msg:1")
        await trio.sleep(30)  # the put waits, running
    assert inbox.ended == [30 + PUT_GRACE]  # from the teardown on, not from its start
    assert inbox.puts == [["1"]] and "ack:1" not in server.got


async def test_bad_frames_are_counted_and_skipped(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, inbox, _, _ = await start(nursery)
            await server.push("bad", "msg:1", "bad")
            await trio.sleep(1)
            assert inbox.puts == [["1"]] and inbox.counts["protocol_errors"] == 2
            nursery.cancel_scope.cancel()


async def test_what_the_core_counts_is_counted_and_bad_input_inside_still_acked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, inbox, _, _ = await start(nursery)
            await server.push("dup", "oddity:7", "dup", "msg:1")
            await trio.sleep(1)
            assert inbox.counts == {"duplicates": 2, "protocol_errors": 1}
            assert inbox.puts == [["1"]] and server.got == ["hello", "ack:7", "ack:1"]
            nursery.cancel_scope.cancel()


async def test_a_notice_with_no_handler_free_is_given_back_when_it_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[str] = []

    async def on_notice(item: str) -> None:
        handled.append(item)
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, inbox, core, _ = await start(nursery, on_notice=on_notice)
            await server.push(*(f"note:{n}" for n in range(MAX_HANDLERS + 2)))
            await trio.sleep(1)
            assert len(handled) == MAX_HANDLERS
            assert core.back == [str(MAX_HANDLERS), str(MAX_HANDLERS + 1)]
            assert inbox.counts == {"notes_deferred": 2}  # given back, not dropped
            nursery.cancel_scope.cancel()


async def test_requests_are_answered_by_key(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server, inbox, _, driver = await start(nursery)

            def refused(answer: Answer) -> Exception:
                return cb.SendError("no")

            answers: list[Answer] = []

            async def ask() -> None:
                answers.append(await driver.request(Request("k1", "do:k1", refused)))

            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            assert server.got[-1] == "do:k1" and driver.pending == 1
            await server.push("ans:zz", "ans:k1")  # a stray answer first
            await trio.sleep(1)
            assert answers == [Answer("k1", body={"n": 1})] and driver.pending == 0
            assert inbox.counts["stray_acks"] == 1
            with pytest.raises(cb.connectors.AckTimeout, match=r"^line acct: request \(k2\)"):
                await driver.request(Request("k2", "do:k2", refused, within=2))
            nursery.cancel_scope.cancel()


async def test_what_was_read_is_put_even_when_the_connection_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60), pytest.RaisesGroup(cb.FatalConnectorError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            server, inbox, _, _ = await start(nursery, linger=5.0)
            await server.push("msg:1", "msg:2", "close")
            await trio.sleep_forever()
    assert inbox.puts == [["1", "2"]]
    assert server.got == ["hello"]  # not acked: the connection is gone


@pytest.mark.parametrize(
    ("frame", "error", "retry_after"),
    [("close", cb.FatalConnectorError, None), ("later", cb.ConnectorError, 30.0)],
)
async def test_the_core_ends_a_connection_as_it_says(
    autojump_clock: trio.testing.MockClock,
    frame: str,
    error: type[Exception],
    retry_after: float | None,
) -> None:
    with trio.fail_after(60), pytest.RaisesGroup(error, flatten_subgroups=True) as caught:
        async with trio.open_nursery() as nursery:
            server, _, _, driver = await start(nursery)
            await server.push(frame)
            await trio.sleep_forever()
    raised = find_error(caught.value, error)
    assert getattr(raised, "retry_after", None) == retry_after
    assert not driver.connected
    errors: list[BaseException] = [caught.value]
    seen: set[int] = set()
    while errors:  # ours already, raised as it was: never its own cause, nor in a cycle
        each = errors.pop()
        assert id(each) not in seen
        seen.add(id(each))
        if each.__cause__ is not None:
            errors.append(each.__cause__)
        if isinstance(each, BaseExceptionGroup):
            errors.extend(each.exceptions)


def _refused(answer: Answer) -> Exception:
    return cb.SendError(f"refused {answer.key}")


async def test_an_answer_behind_inbound_frames_is_read_while_the_inbox_is_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(backlog=3, put_batch=2) as (nursery, server, inbox, core, driver):
        # the inbox is slow: a put of 2 waits, 3 fill the backlog
        await server.push(*(f"msg:{n}" for n in range(5)))
        await trio.sleep(1)
        assert len(core.read) == 5  # the reader stopped: backpressure on the socket
        answers: list[Answer] = []

        async def reply() -> None:  # a reply waiting for its ACK, as WeCom's do
            request = Request("k1", "do:k1", _refused, within=3.0)
            answers.append(await driver.request(request))

        nursery.start_soon(reply)
        await trio.testing.wait_all_tasks_blocked()
        frames = ["msg:5", "ans:k1", *(f"msg:{n}" for n in range(6, 20))]
        nursery.start_soon(server.push, *frames)
        await trio.sleep(1)
        assert answers == [Answer("k1", body={"n": 1})]  # read behind msg:5, in time
        assert core.read[5:] == ["msg:5", "ans:k1"]  # then the reader stopped again
        await release(inbox, server, 20)


async def test_waiting_for_an_answer_reads_past_a_full_backlog_by_a_bound_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past twice the backlog the reader stops even for an answer; a reply's window runs on
    (a reply that times out fails its run and frees its slot, so the inbox can drain: were it
    paused, runs waiting for ACKs behind the unread frames could hold every slot for good)."""
    async with held(backlog=3, put_batch=2) as (nursery, server, inbox, core, driver):
        frames = [*(f"msg:{n}" for n in range(20)), "ans:k1"]
        nursery.start_soon(server.push, *frames)
        await trio.sleep(1)
        assert len(core.read) == 5
        failed: list[float] = []

        async def reply() -> None:  # a reply waiting for its ACK, as WeCom's do
            asked = trio.current_time()
            with pytest.raises(cb.connectors.AckTimeout):
                await driver.request(Request("k1", "do:k1", _refused, within=3.0))
            failed.append(trio.current_time() - asked)

        nursery.start_soon(reply)
        await trio.sleep(30)
        assert len(core.read) == 2 + 2 * 3  # the put's 2, then twice the backlog at most
        assert failed == [pytest.approx(3.0, abs=0.1)]  # its own window, stall or not
        assert driver.connected  # a reply's timeout is its own, not the connection's
        await release(inbox, server, 20)
        assert inbox.counts.get("stray_acks") == 1  # its answer came, late: counted


async def test_a_heartbeat_window_waits_for_a_stopped_reader_then_runs_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A heartbeat's answer may be among the frames our backpressure left unread: its window
    waits while the reader is stopped (a stall never ends the connection), and runs on for
    what it had left once the reader reads again, so a peer gone meanwhile is found then."""
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            server, inbox = Server(nursery), Inbox()
            inbox.open = trio.Event()
            driver = WebSocketDriver(
                AskingCore(), name="line acct", open_websocket=server.open, backlog=3, put_batch=2
            )
            ended: list[float] = []

            async def run(task_status: trio.TaskStatus[None]) -> None:
                with pytest.raises(BaseException) as raised:  # which: checked below
                    await driver.run(inbox.context(), "ws://localhost/", task_status=task_status)
                assert find_error(raised.value, cb.connectors.AckTimeout) is not None
                ended.append(trio.current_time())

            await nursery.start(run)
            nursery.start_soon(server.push, *(f"msg:{n}" for n in range(20)))  # no ans:hb
            await trio.sleep(60)  # heartbeats are due every 5 s, answered within 2 s
            assert server.got.count("ping") == 1 and ended == []  # it waits for the reader
            reading = trio.current_time()
            await release(inbox, server, 20)
            await trio.sleep(5)
            assert ended == [pytest.approx(reading + 2.0, abs=0.1)]


class AskingCore(LineCore):
    """Its heartbeat wants an answer (``ans:hb``) within 2 s, as WeCom's ping does."""

    def heartbeat(self) -> Outgoing:
        return Request("hb", "ping", _refused, within=2.0)


async def test_a_heartbeat_answered_behind_inbound_frames_keeps_the_connection_while_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with held(AskingCore(), backlog=3, put_batch=2) as (nursery, server, inbox, core, driver):
        await server.push(*(f"msg:{n}" for n in range(5)))
        await trio.sleep(5.5)  # the heartbeat went at 5 s, the reader stopped before it
        assert server.got[-1] == "ping" and len(core.read) == 5
        nursery.start_soon(server.push, "msg:5", "ans:hb", "msg:6")
        await trio.sleep(5)
        assert driver.connected and server.got.count("ping") == 2  # answered: still up
        await release(inbox, server, 7)


@given(
    backlog=st.integers(1, 4),
    put_batch=st.integers(1, 4),
    before=st.integers(0, 12),
    after=st.integers(0, 12),
)
def test_backpressure_holds_and_an_answer_within_reach_is_read(
    backlog: int, put_batch: int, before: int, after: int
) -> None:
    """A request waits from the start while the inbox is held; its answer comes behind
    ``before`` messages, ``after`` more follow. The reader never holds more than one put and
    twice the backlog; the answer is read whenever at most twice the backlog came before it;
    and once the inbox takes them, every message is put and ACKed once, in order."""

    async def main() -> None:
        async with held(backlog=backlog, put_batch=put_batch) as rig:
            nursery, server, inbox, core, driver = rig
            answers: list[Answer] = []

            async def ask() -> None:
                request = Request("k1", "do:k1", _refused, within=30.0)
                answers.append(await driver.request(request))

            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            n = before + after
            frames = [*(f"msg:{i}" for i in range(before)), "ans:k1"]
            frames += [f"msg:{i}" for i in range(before, n)]
            nursery.start_soon(server.push, *frames)
            await trio.sleep(5)
            assert len(core.read) <= put_batch + 2 * backlog + 1
            if before <= 2 * backlog:
                assert answers == [Answer("k1", body={"n": 1})]
            await release(inbox, server, n)
            assert answers  # by now, whatever was in the way went into the inbox

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class StepsOf(trio.abc.Instrument):
    """Counts each task's scheduler steps."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1

    def of(self, task: trio.lowlevel.Task) -> int:
        return self.steps.get(task, 0)


class QuickWebSocket:
    """A WebSocket whose server answers a request (``do:<key>``) before its send returns:
    the answer is read (the reader has run) while the requester is still in its send."""

    def __init__(self, steps: StepsOf) -> None:
        self.to_reader, self.incoming = trio.open_memory_channel[Data](10)
        self.steps = steps
        self.in_send: list[int] = []  # the requester's steps when each request's send ended

    async def get_message(self) -> Data:
        return await self.incoming.receive()

    async def send_message(self, message: Data) -> None:
        if isinstance(message, str) and message.startswith("do:"):
            self.to_reader.send_nowait(f"ans:{message[3:]}")
            await trio.testing.wait_all_tasks_blocked()  # the reader took the answer
            self.in_send.append(self.steps.of(trio.lowlevel.current_task()))
        else:
            await trio.lowlevel.checkpoint()


async def test_a_request_answered_during_its_send_returns_without_another_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    steps = StepsOf()
    ws = QuickWebSocket(steps)

    @asynccontextmanager
    async def open_quick(url: str) -> AsyncIterator[QuickWebSocket]:
        yield ws

    trio.lowlevel.add_instrument(steps)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                inbox = Inbox()
                driver = WebSocketDriver(LineCore(), name="line acct", open_websocket=open_quick)
                await nursery.start(driver.run, inbox.context(), "ws://localhost/")
                answer = await driver.request(Request("k1", "do:k1", _refused))
                assert answer == Answer("k1", body={"n": 1}) and driver.pending == 0
                # answered while its send ran: the request took no step after the send
                assert ws.in_send == [steps.of(trio.lowlevel.current_task())]
                nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)


# -- posted requests: written, their answers settled by the connection -------------------------


class Spawned(trio.abc.Instrument):
    """Counts the tasks started while it is installed."""

    def __init__(self) -> None:
        self.tasks = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.tasks += 1


def refused(answer: Answer) -> Exception:
    return cb.SendError(f"refused {answer.code}")


async def test_posted_requests_are_settled_by_the_reader_or_by_one_timer_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settled: list[tuple[str, Answer | cb.ConnectorError]] = []

    def settle(key: str) -> Callable[[Answer | cb.ConnectorError], None]:
        return lambda result: settled.append((key, result))

    async with held(answer_within=2.0) as (_, server, inbox, _, driver):
        inbox.open.set()
        spawned = Spawned()
        trio.lowlevel.add_instrument(spawned)
        try:
            for n in range(50):
                assert await driver.post(Request(f"k{n}", f"req:{n}", refused), settle(f"k{n}"))
            assert not await driver.post(Request("k0", "again", refused), settle("again"))
            await server.push(*(f"ans:k{n}" for n in range(0, 50, 2)))
            await trio.sleep(1)
            assert [key for key, _ in settled] == [f"k{n}" for n in range(0, 50, 2)]
            assert all(isinstance(result, Answer) for _, result in settled)
            assert spawned.tasks == 0  # no task per request: the reader settled them
            await trio.sleep(1.5)  # past the deadlines: the timer settles the rest, in order
        finally:
            trio.lowlevel.remove_instrument(spawned)
        late = settled[25:]
        assert [key for key, _ in late] == [f"k{n}" for n in range(1, 50, 2)]
        assert all(isinstance(result, cb.connectors.AckTimeout) for _, result in late)
        assert spawned.tasks == 0
        assert [frame for frame in server.got if frame.startswith("req:")] == [
            f"req:{n}" for n in range(50)
        ]
        await server.push("ans:k1")  # a late answer is a stray, settled already
        await trio.sleep(1)
        assert inbox.counts["stray_acks"] == 1
        assert len(settled) == 50


async def test_posted_requests_left_at_a_close_are_settled_as_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settled: list[Answer | cb.ConnectorError] = []
    with trio.fail_after(60), pytest.RaisesGroup(cb.FatalConnectorError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            server, _, _, driver = await start(nursery)
            assert await driver.post(Request("k", "req", refused), settled.append)
            await server.push("close")
            await trio.sleep_forever()
    assert len(settled) == 1
    assert isinstance(settled[0], cb.connectors.Disconnected) and settled[0].sent
    assert not await driver.post(Request("k2", "req", refused), settled.append)  # none up

"""Posted requests of the WebSocket driver: their timer and a backpressured reader, those a
close left unsettled written again on the next connection, a close while their write is in
flight, an answer read during a write that then fails.

The toy core, server and inbox are those of tests/test_websocket.py.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from test_websocket import Inbox, LineCore, held, refused, release
from trio_websocket import CloseReason, ConnectionClosed

import trio_chatbridge as cb
from trio_chatbridge._websocket import CARRIED
from trio_chatbridge.connectors import Answer, Data, Request, SendFailed, WebSocketDriver

Result = Answer | cb.ConnectorError


async def test_a_posted_request_does_not_expire_while_the_reader_is_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its ACK may be among the frames our backpressure left unread: its window counts from
    when the reader reads again, not from the write."""
    async with held(backlog=3, put_batch=2, answer_within=2.0) as (
        nursery,
        server,
        inbox,
        _,
        driver,
    ):
        nursery.start_soon(server.push, *(f"msg:{n}" for n in range(20)))  # no ans:k
        await trio.sleep(1)  # the put of 2 waits, the backlog is full: the reader stops
        settled: list[tuple[float, Result]] = []
        assert await driver.post(
            Request("k", "req:k", refused), lambda r: settled.append((trio.current_time(), r))
        )
        await trio.sleep(30)
        assert settled == []  # the reader is stopped (twice the backlog): no expiry
        reading = trio.current_time()
        await release(inbox, server, 20)
        await trio.sleep(5)
        assert [at for at, _ in settled] == [pytest.approx(reading + 2.0, abs=0.1)]
        assert isinstance(settled[0][1], cb.connectors.AckTimeout)


class GatedSocket:
    """A WebSocket, one connection after another: the test pushes the server's frames
    (:meth:`push`) and ends a connection (:meth:`drop`); a write of a ``req:`` frame waits
    for ``gate`` (even once cancelled, if ``in_flight``: the frame is in a write already),
    then fails if ``fail`` (after ``answer`` is read, if set). Once a write failed, every
    later one on that connection fails at once, as our client's do (no checkpoint)."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.gate.set()
        self.in_flight = False
        self.answer: str | None = None
        self.fail: ConnectionClosed | None = None
        self.broken: ConnectionClosed | None = None
        self.got: list[list[Data]] = []  # what each connection wrote
        self.to_client, self.incoming = trio.open_memory_channel[Data](10)

    async def get_message(self) -> Data:
        try:
            return await self.incoming.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(CloseReason(1006, "gone")) from None

    async def send_message(self, message: Data) -> None:
        if self.broken is not None:
            raise self.broken
        if str(message).startswith("req:"):
            if self.answer is not None:
                await self.to_client.send(self.answer)
            with trio.CancelScope(shield=self.in_flight):
                await self.gate.wait()
            if self.fail is not None:
                self.broken = ConnectionClosed(self.fail.reason)
                raise self.fail
        self.got[-1].append(message)

    async def push(self, frame: str) -> None:
        await self.to_client.send(frame)

    def drop(self) -> None:
        self.to_client.close()

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[GatedSocket]:
        self.to_client, self.incoming = trio.open_memory_channel[Data](10)
        self.got.append([])
        self.broken = None
        yield self


def driver_on(ws: GatedSocket, **options: Any) -> WebSocketDriver[str]:
    return WebSocketDriver(LineCore(), name="line acct", open_websocket=ws.open, **options)


async def run_until_dropped(driver: WebSocketDriver[str], inbox: Inbox, ws: GatedSocket) -> None:
    """One connection, ended by the socket going away (the supervisor would reconnect)."""
    with pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
        async with trio.open_nursery() as running:
            await running.start(driver.run, inbox.context(), "ws://localhost/")
            await trio.sleep(1)
            ws.drop()


async def test_a_posted_request_left_by_a_closed_connection_goes_again_first_on_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Same frame, same key, a fresh window; counted in ``requests_across_reconnects``."""
    ws, inbox = GatedSocket(), Inbox()
    driver = driver_on(ws, answer_within=2.0)
    settled: list[tuple[str, float, Result]] = []
    kept: list[str] = []

    def settle(key: str) -> Callable[[Result], None]:
        return lambda result: settled.append((key, trio.current_time(), result))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            async with trio.open_nursery() as first:
                first.start_soon(run_until_dropped, driver, inbox, ws)
                await trio.sleep(0.5)
                for key in ("a", "b"):
                    assert await driver.post(
                        Request(key, f"req:{key}", refused),
                        settle(key),
                        carried=functools.partial(kept.append, key),
                    )
            assert settled == [] and kept == ["a", "b"]  # kept for the next connection
            await trio.sleep(10)  # past their first window: the timer went with its connection
            assert settled == []
            reconnected = trio.current_time()
            await nursery.start(driver.run, inbox.context(), "ws://localhost/")
            assert ws.got[1] == ["hello", "req:a", "req:b"]  # before anything else
            await ws.push("ans:a")
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert [(key, type(result)) for key, _, result in settled] == [
        ("a", Answer),
        ("b", cb.connectors.AckTimeout),
    ]
    assert settled[1][1] == pytest.approx(reconnected + 2.0, abs=0.1)  # a fresh window
    assert inbox.counts["requests_across_reconnects"] == 2


async def test_what_is_carried_is_settled_disconnected_when_the_driver_stops_or_past_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws, inbox = GatedSocket(), Inbox()
    driver = driver_on(ws, answer_within=60.0)
    settled: list[Result] = []
    kept: list[None] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as first:
            first.start_soon(run_until_dropped, driver, inbox, ws)
            await trio.sleep(0.5)
            for n in range(CARRIED + 1):
                assert await driver.post(
                    Request(f"k{n}", f"req:{n}", refused),
                    settled.append,
                    carried=functools.partial(kept.append, None),
                )
        assert (
            len(settled) == 1 and len(kept) == CARRIED
        )  # past the bound: unknown at once, counted
        assert inbox.counts["posted_not_carried"] == 1
        with trio.CancelScope() as stopping:  # the connector stops while reconnecting
            stopping.cancel()
            await driver.run(inbox.context(), "ws://localhost/")
    assert len(settled) == CARRIED + 1
    assert all(isinstance(r, cb.connectors.Disconnected) and r.sent for r in settled)


async def test_a_close_while_a_posted_write_is_in_flight_carries_it_once_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws, inbox = GatedSocket(), Inbox()
    ws.gate = trio.Event()
    driver = driver_on(ws)
    settled: list[Result] = []
    posted: list[bool] = []
    kept: list[None] = []

    async def post() -> None:
        keep = functools.partial(kept.append, None)
        posted.append(
            await driver.post(Request("k", "req:k", refused), settled.append, carried=keep)
        )

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
                async with trio.open_nursery() as running:
                    await running.start(driver.run, inbox.context(), "ws://localhost/")
                    nursery.start_soon(post)  # outlives the connection, as a run's task does
                    await trio.testing.wait_all_tasks_blocked()
                    ws.drop()  # the socket goes while the write is in flight
            ws.gate.set()  # then the write returns: the frame went
            await trio.testing.wait_all_tasks_blocked()
            assert posted == [True] and settled == [] and len(kept) == 1  # for the next one
            await nursery.start(driver.run, inbox.context(), "ws://localhost/")
            await ws.push("ans:k")
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert ws.got[1] == ["hello", "req:k"]
    assert settled == [Answer("k", body={"n": 1})]


async def test_a_posted_request_answered_during_a_write_that_fails_is_reported_posted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader settled it already: post says so (True), so its poster does not also send it
    the awaited way."""
    ws = GatedSocket()
    ws.gate, ws.answer = trio.Event(), "ans:k"
    ws.fail = ConnectionClosed(CloseReason(1006, "gone"))
    driver = driver_on(ws)
    settled: list[Result] = []
    posted: list[bool] = []

    async def post() -> None:
        posted.append(await driver.post(Request("k", "req:k", refused), settled.append))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run, Inbox().context(), "ws://localhost/")
            async with trio.open_nursery() as posting:
                posting.start_soon(post)
                await trio.testing.wait_all_tasks_blocked()
                assert settled == [Answer("k", body={"n": 1})]  # read during the write
                ws.gate.set()  # then the write fails
            nursery.cancel_scope.cancel()
    assert posted == [True]
    assert len(settled) == 1  # once


async def test_a_posted_write_that_failed_once_a_frame_may_have_gone_counts_as_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Our client's write failed with the frame in it (it may have reached the peer): never
    treated as unsent (the poster would send it again), settled as unknown at the close."""
    ws, inbox = GatedSocket(), Inbox()
    ws.fail = SendFailed(CloseReason(1006, "gone"), may_have_been_sent=True)
    driver = driver_on(ws)
    settled: list[Result] = []
    with trio.fail_after(60), pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
        async with trio.open_nursery() as running:
            await running.start(driver.run, inbox.context(), "ws://localhost/")
            assert await driver.post(Request("k", "req:k", refused), settled.append)
            assert settled == []
            ws.drop()
    assert len(settled) == 1
    assert isinstance(settled[0], cb.connectors.Disconnected) and settled[0].sent


def carried_at_most(times: int, kept: list[str], key: str) -> Callable[[], None]:
    """A ``carried`` callback that records ``key`` and fails past ``times`` calls: a frame
    carried again and again (a loop without a checkpoint) ends the test instead of hanging
    it."""

    def carried() -> None:
        kept.append(key)
        if len(kept) > times:
            raise RuntimeError(f"{key} carried {len(kept)} times: a spin")

    return carried


async def carry(
    driver: WebSocketDriver[str], inbox: Inbox, ws: GatedSocket, *keys: str
) -> list[Result]:
    """Post ``keys`` on a first connection, which then drops: each is carried (limited to
    three carries, see :func:`carried_at_most`); what settles them."""
    settled: list[Result] = []
    async with trio.open_nursery() as first:
        first.start_soon(run_until_dropped, driver, inbox, ws)
        await trio.sleep(0.5)
        for key in keys:
            kept: list[str] = []
            assert await driver.post(
                Request(key, f"req:{key}", refused),
                settled.append,
                carried=carried_at_most(3, kept, key),
            )
    return settled


async def answered_on_the_next(
    driver: WebSocketDriver[str], inbox: Inbox, ws: GatedSocket, *keys: str
) -> list[Data]:
    """Connect again, answer ``keys``: what the connection wrote."""
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run, inbox.context(), "ws://localhost/")
        for key in keys:
            await ws.push(f"ans:{key}")
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return ws.got[-1]


async def test_a_carried_frame_written_as_its_new_connection_closes_is_carried_on_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The socket drops while the carried frame is in a write (which completes): the frame
    goes on to the next connection, once, and is settled there once; no spin."""
    ws, inbox = GatedSocket(), Inbox()
    driver = driver_on(ws)
    with trio.fail_after(60):
        settled = await carry(driver, inbox, ws, "a")
        ws.gate, ws.in_flight = trio.Event(), True
        with pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
            async with trio.open_nursery() as second:
                second.start_soon(driver.run, inbox.context(), "ws://localhost/")
                await trio.testing.wait_all_tasks_blocked()
                ws.drop()  # the reader learns the socket closed; the write is in flight
                await trio.testing.wait_all_tasks_blocked()
                ws.gate.set()
        assert ws.got[1] == ["hello", "req:a"] and settled == []
        ws.in_flight = False
        assert await answered_on_the_next(driver, inbox, ws, "a") == ["hello", "req:a"]
    assert settled == [Answer("a", body={"n": 1})]
    assert inbox.counts["requests_across_reconnects"] == 2  # once per connection


async def test_carried_frames_after_a_failed_write_are_carried_on_once_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first carried write fails once its frame may have gone, the second fails at once
    (the socket is broken, the reader does not know yet): both go on to the next
    connection, once each; each is settled there once; no spin."""
    ws, inbox = GatedSocket(), Inbox()
    driver = driver_on(ws)
    with trio.fail_after(60):
        settled = await carry(driver, inbox, ws, "a", "b")
        ws.fail = SendFailed(CloseReason(1006, "gone"), may_have_been_sent=True)
        with pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
            await driver.run(inbox.context(), "ws://localhost/")
        assert ws.got[1] == ["hello"] and settled == []
        ws.fail = None
        wrote = await answered_on_the_next(driver, inbox, ws, "a", "b")
    assert wrote[0] == "hello" and sorted(wrote[1:]) == ["req:a", "req:b"]
    assert len(settled) == 2  # once each, answered
    assert sorted(r.key for r in settled if isinstance(r, Answer) and not r.code) == ["a", "b"]
    assert inbox.counts["requests_across_reconnects"] == 4  # each once per connection

"""Posted requests of the WebSocket driver: their timer and a backpressured reader, a close
while their write is in flight, an answer read during a write that then fails.

The toy core, server and inbox are those of tests/test_websocket.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from test_websocket import Inbox, LineCore, held, refused, release
from trio_websocket import CloseReason, ConnectionClosed

import trio_chatbridge as cb
from trio_chatbridge.connectors import Answer, Data, Request, WebSocketDriver

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
    """A WebSocket whose frames from the server are pushed by the test and whose writes of
    ``req:`` frames wait for ``gate``, then ``fail`` if set (after ``answer`` is read)."""

    def __init__(self) -> None:
        self.to_client, self.incoming = trio.open_memory_channel[Data](10)
        self.gate = trio.Event()
        self.answer: str | None = None
        self.fail = False
        self.got: list[Data] = []

    async def get_message(self) -> Data:
        try:
            return await self.incoming.receive()
        except trio.EndOfChannel:
            raise ConnectionClosed(CloseReason(1006, "gone")) from None

    async def send_message(self, message: Data) -> None:
        if str(message).startswith("req:"):
            if self.answer is not None:
                await self.to_client.send(self.answer)
            await self.gate.wait()
            if self.fail:
                raise ConnectionClosed(CloseReason(1006, "gone"))
        self.got.append(message)

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[GatedSocket]:
        yield self


async def test_a_close_while_a_posted_write_is_in_flight_settles_it_once_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws = GatedSocket()
    driver = WebSocketDriver(LineCore(), name="line acct", open_websocket=ws.open)
    settled: list[Result] = []
    posted: list[bool] = []

    async def post() -> None:
        posted.append(await driver.post(Request("k", "req:k", refused), settled.append))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with pytest.RaisesGroup(cb.ConnectorError, flatten_subgroups=True):
                async with trio.open_nursery() as running:
                    await running.start(driver.run, Inbox().context(), "ws://localhost/")
                    nursery.start_soon(post)  # outlives the connection, as a run's task does
                    await trio.testing.wait_all_tasks_blocked()
                    ws.to_client.close()  # the socket goes while the write is in flight
            assert settled == []  # its write has not returned: nobody knows yet
            ws.gate.set()  # then it returns: the frame went
    assert posted == [True]
    assert len(settled) == 1
    assert isinstance(settled[0], cb.connectors.Disconnected) and settled[0].sent


async def test_a_posted_request_answered_during_a_write_that_fails_is_reported_posted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader settled it already: post says so (True), so its poster does not also send it
    the awaited way."""
    ws = GatedSocket()
    ws.answer, ws.fail = "ans:k", True
    driver = WebSocketDriver(LineCore(), name="line acct", open_websocket=ws.open)
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

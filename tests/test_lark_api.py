"""Lark's open API client: calls that overlap each hold a connection of their own."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark._api import API_CONNECTIONS
from trio_chatbridge.testing import HandlerTransport

REPLY = "/open-apis/im/v1/messages/om_1/reply"


class SlowServer:
    """Answers every call after ``delay`` seconds of Trio's clock; counts the calls in flight."""

    def __init__(self, delay: float = 1.0) -> None:
        self.delay = delay
        self.in_flight = 0
        self.most = 0
        self.replies = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("tenant_access_token/internal"):
            body = {"code": 0, "tenant_access_token": "t-1", "expire": 7200}
            return httpx.Response(200, content=json.dumps(body).encode())
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        self.replies += 1
        return httpx.Response(200, content=b'{"code":0,"data":{"message_id":"om_2"}}')


async def test_overlapping_calls_go_out_at_most_api_connections_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer()
    api = lark.OpenAPI("cli_a", "s3cret", transport=HandlerTransport(server.handle))
    calls = API_CONNECTIONS + 4
    try:
        with trio.fail_after(60):
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(calls):
                    nursery.start_soon(api.call, "POST", REPLY, {"msg_type": "text"})
    finally:
        await api.aclose()
    assert server.replies == calls
    assert server.most == API_CONNECTIONS  # the rest waited for one to be free...
    assert trio.current_time() - started == pytest.approx(2 * server.delay)  # ...in one turn


async def test_a_call_cancelled_while_waiting_for_a_connection_is_never_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer(delay=5.0)
    api = lark.OpenAPI("cli_a", "s3cret", transport=HandlerTransport(server.handle))
    try:
        with trio.fail_after(60):
            await api.token()
            async with trio.open_nursery() as nursery:
                for _ in range(API_CONNECTIONS):
                    nursery.start_soon(api.call, "POST", REPLY, {"msg_type": "text"})
                await trio.testing.wait_all_tasks_blocked()
                with trio.move_on_after(1.0) as waited:
                    await api.call("POST", REPLY, {"msg_type": "text"})
                assert waited.cancelled_caught
                assert server.in_flight == API_CONNECTIONS  # the cancelled one never went out
            await api.call("POST", REPLY, {"msg_type": "text"})  # its slot was given back
    finally:
        await api.aclose()
    assert server.replies == API_CONNECTIONS + 1


async def test_a_cached_token_is_returned_at_once_and_calls_waiting_share_one_fetch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fetches = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        fetches += 1
        await trio.sleep(1.0)
        body = {"code": 0, "tenant_access_token": f"t-{fetches}", "expire": 7200}
        return httpx.Response(200, content=json.dumps(body).encode())

    api = lark.OpenAPI("cli_a", "s3cret", transport=HandlerTransport(handle))
    tokens: list[str] = []

    async def token() -> None:
        tokens.append(await api.token())

    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(token)
            with trio.testing.assert_no_checkpoints():
                assert await api.token() == "t-1"
    finally:
        await api.aclose()
    assert tokens == ["t-1"] * 5 and fetches == 1


class ClosingFails(httpx.AsyncBaseTransport):
    """The server above behind a transport whose first close raises; counts the closes."""

    def __init__(self, server: SlowServer) -> None:
        self._inner = HandlerTransport(server.handle)
        self.closes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        self.closes += 1
        if self.closes == 1:
            raise OSError("close failed")


async def test_closing_the_api_closes_every_client_even_when_one_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer()
    transport = ClosingFails(server)
    api = lark.OpenAPI("cli_a", "s3cret", transport=transport)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(3):  # three overlapping calls: three clients
                nursery.start_soon(api.call, "POST", REPLY, {"msg_type": "text"})
    with pytest.raises(OSError, match="close failed"):
        await api.aclose()
    assert transport.closes == 3  # the two after the failing one were closed too

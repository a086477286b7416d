"""Lark's open API client: calls that overlap each hold a connection of their own."""

from __future__ import annotations

import json
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given
from support import json_trees

import trio_chatbridge as cb
from trio_chatbridge._http import new_client as http_client
from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark import _api, _outbound
from trio_chatbridge.platforms.lark._api import API_CONNECTIONS
from trio_chatbridge.platforms.lark._send_policy import compact_json
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


class CountingTransport(httpx.AsyncBaseTransport):
    """The server above behind a transport that counts its closes; ``fail``: the first raises."""

    def __init__(self, server: SlowServer, *, fail: bool = False) -> None:
        self._inner = HandlerTransport(server.handle)
        self.fail = fail
        self.closes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        self.closes += 1
        if self.fail and self.closes == 1:
            raise OSError("close failed")


async def overlapping_calls(api: lark.OpenAPI, n: int) -> None:
    """``n`` calls at once: ``n`` clients made."""
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(api.call, "POST", REPLY, {"msg_type": "text"})


async def test_closing_the_api_closes_the_transport_given_once_and_is_final(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer()
    transport = CountingTransport(server)
    api = lark.OpenAPI("cli_a", "s3cret", transport=transport)
    with trio.fail_after(60):
        await overlapping_calls(api, 3)
        await api.aclose()
        assert transport.closes == 1  # shared by the three clients: closed once, not thrice
        assert api.http.is_closed
        with pytest.raises(cb.FatalConnectorError, match="cli_a: this OpenAPI is closed"):
            await api.call("POST", REPLY, {"msg_type": "text"})
        await api.aclose()  # closing again closes nothing twice
    assert transport.closes == 1
    assert server.replies == 3


def counted_api(server: SlowServer) -> tuple[lark.OpenAPI, list[httpx.AsyncClient]]:
    """An OpenAPI on ``server``, and every HTTP client it makes, as it makes them."""
    made: list[httpx.AsyncClient] = []
    real_new_client = http_client

    def new_client(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        made.append(real_new_client(*args, **kwargs))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_api, "new_client", new_client)
        api = lark.OpenAPI("cli_a", "s3cret", transport=HandlerTransport(server.handle))
    return api, made


async def test_a_call_after_the_api_closed_under_another_makes_no_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer(delay=5.0)
    api, made = counted_api(server)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(api.call, "POST", REPLY, {"msg_type": "text"})
            await trio.testing.wait_all_tasks_blocked()
            assert server.in_flight == 1  # the only client made is lent
            await api.aclose()
            with pytest.raises(cb.FatalConnectorError, match="closed"):
                await api.call("POST", REPLY, {"msg_type": "text"})
    assert len(made) == 1 and made[0].is_closed  # no new client, left open


async def test_calls_waiting_for_a_client_when_the_api_closes_fail_and_make_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer(delay=5.0)
    api, made = counted_api(server)
    failures: list[BaseException] = []

    async def call() -> None:
        try:
            await api.call("POST", REPLY, {"msg_type": "text"})
        except cb.FatalConnectorError as exc:
            failures.append(exc)

    with trio.fail_after(60):
        await api.token()
        async with trio.open_nursery() as nursery:
            for _ in range(API_CONNECTIONS + 3):  # three wait for a client
                nursery.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            assert len(made) == API_CONNECTIONS and server.in_flight == API_CONNECTIONS
            await api.aclose()
    assert len(made) == API_CONNECTIONS  # none made by a call that waited through the close
    assert all(client.is_closed for client in made)
    assert len(failures) == 3  # the waiting ones; those in flight finished (their transport
    assert server.replies == API_CONNECTIONS  # is the user's, still open under them)


async def test_closing_the_api_closes_every_client_even_when_one_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = SlowServer()
    transport = CountingTransport(server, fail=True)
    api = lark.OpenAPI("cli_a", "s3cret", transport=transport)
    with trio.fail_after(60):
        await overlapping_calls(api, 3)
    with pytest.raises(OSError, match="close failed"):
        await api.aclose()
    assert transport.closes == 1
    assert api.http.is_closed


# -- what a send's answer says the message holds -------------------------------------------------


_contents = st.dictionaries(st.text(max_size=8), json_trees(), max_size=4)


@given(_contents, st.booleans(), st.sampled_from([(",", ":"), (", ", ": ")]))
def test_an_answer_holds_what_was_sent_however_the_platform_spaces_or_escapes_it(
    content: dict[str, Any], ascii_only: bool, separators: tuple[str, str]
) -> None:
    """A stream takes its message to show its text only when the send's answer holds it: the
    same JSON as sent, whatever spacing and escaping the platform answers with (a wrong
    "not the same" costs an edit; a wrong "the same" would leave other words shown)."""
    sent = compact_json(content)
    shown = json.dumps(content, ensure_ascii=ascii_only, separators=separators)
    assert _outbound._holds({"content": shown}, sent)


@given(_contents, _contents)
def test_an_answer_holding_other_content_or_saying_nothing_does_not_hold_it(
    content: dict[str, Any], other: dict[str, Any]
) -> None:
    sent = compact_json(content)
    same = json.loads(json.dumps(other)) == json.loads(sent)  # (NaN is never itself)
    assert _outbound._holds({"content": json.dumps(other)}, sent) is same
    for body in (None, {}, {"content": None}, {"content": 7}, "text", {"content": "{not json"}):
        assert not _outbound._holds(body, sent)

"""The library's own HTTP clients: encodings the bounded reader can inflate, one TLS context,
and one mapping of a call's failures to the library's errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import httpx
import pytest
import trio
import trio.testing
from support import echo

import trio_chatbridge as cb
from trio_chatbridge._http import exchange
from trio_chatbridge.platforms import lark, weixin
from trio_chatbridge.platforms.lark._api import API_TIMEOUT
from trio_chatbridge.testing import HandlerTransport, LarkEmulator, running_bridge


def seen_encodings() -> tuple[list[str], httpx.MockTransport]:
    asked: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers.get("accept-encoding", ""))
        return httpx.Response(200, json={"ret": 0, "code": 0, "msg": "ok"})

    return asked, httpx.MockTransport(handle)


async def test_every_platform_client_asks_only_for_encodings_the_reader_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx adds br and zstd where their packages are installed; read_body refuses them.
    # This machine may lack them: make httpx's default what it is where they are installed.
    monkeypatch.setattr(httpx._client, "ACCEPT_ENCODING", "gzip, deflate, br, zstd")
    asked, transport = seen_encodings()
    ilink = weixin.ILinkClient("t0ken", transport=transport)
    api = lark.OpenAPI("app", "secret", transport=transport)
    try:
        await ilink.http.get("https://ilinkai.weixin.qq.com/x")
        await api.http.get("https://open.feishu.cn/x")
    finally:
        await ilink.aclose()
        await api.aclose()
    assert asked == ["gzip, deflate", "gzip, deflate"]


def test_connectors_share_one_tls_context() -> None:
    # Each context loads the CA bundle (~850 KiB, ~30 ms): one per account stalls a process
    # with a thousand accounts. httpx keeps the context on its connection pool.
    clients = [weixin.ILinkClient("t0ken").http, lark.OpenAPI("app", "secret").http]
    contexts = {id(c._transport._pool._ssl_context) for c in clients}  # type: ignore[attr-defined]
    assert len(contexts) == 1


# -- the one mapping of an HTTP call's failures, seen through Lark's open API ----------------

INFO: Final = "/open-apis/bot/v3/info"


@asynccontextmanager
async def lark_api(
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[tuple[LarkEmulator, lark.OpenAPI]]:
    emu = LarkEmulator()
    api = lark.OpenAPI(
        emu.app_id,
        emu.app_secret,
        domain=emu.http_base,
        transport=transport or HandlerTransport(emu.handle_http),
    )
    try:
        with trio.fail_after(3600):
            yield emu, api
    finally:
        await api.aclose()


async def test_a_429_waits_at_least_its_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    async with lark_api() as (emu, api):
        limited = {"code": 99991400, "msg": "request trigger frequency limit"}
        emu.fail(INFO, 429, limited, times=2, headers={"Retry-After": "7"})
        started = trio.current_time()
        await api.call("GET", INFO, whole=True)
        # the hint is a floor under the one policy's own 0.5 and 1 s
        assert trio.current_time() - started == pytest.approx(7 + 7)
        emu.fail(INFO, 429, limited, times=1, headers={"Retry-After": "Wed, 21 Oct 2015"})
        started = trio.current_time()
        await api.call("GET", INFO, whole=True)
        assert trio.current_time() - started == pytest.approx(0.5)  # a date: no hint


async def test_a_429_past_the_retries_is_transient_with_its_hint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_api() as (emu, api):
        emu.fail(
            INFO, 429, {"code": 99991400, "msg": "slow down"}, times=5, headers={"Retry-After": "3"}
        )
        with pytest.raises(cb.ConnectorError) as limited:
            await api.call("GET", INFO, whole=True)
    assert limited.value.retry_after == 3
    assert "Lark app cli_emulator: GET /open-apis/bot/v3/info: HTTP 429" in str(limited.value)
    assert "rate limited" in str(limited.value)


async def test_a_5xx_is_transient_and_not_repeated(autojump_clock: trio.testing.MockClock) -> None:
    async with lark_api() as (emu, api):
        emu.fail(INFO, 503, b"<html>upstream down</html>", headers={"Retry-After": "30"})
        emu.fail(INFO, 500, {"code": 1000040343, "msg": "internal error"})
        with pytest.raises(cb.ConnectorError) as failed:
            await api.call("GET", INFO, whole=True)
        assert failed.value.retry_after == 30
        assert "HTTP 503" in str(failed.value) and "upstream down" in str(failed.value)
        with pytest.raises(cb.ConnectorError) as failed:
            await api.call("GET", INFO, whole=True)
        assert failed.value.retry_after is None
        assert "HTTP 500" in str(failed.value) and "server failed" in str(failed.value)
        await api.call("GET", INFO, whole=True)  # each failed once, not retried into success


async def test_a_4xx_without_the_platforms_code_is_a_permanent_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_api() as (emu, api):
        emu.fail(INFO, 404, b"<html>Not Found</html>")
        with pytest.raises(cb.PlatformError) as refused:
            await api.call("GET", INFO, whole=True)
    assert not isinstance(refused.value, cb.ConnectorError)
    assert (refused.value.platform, refused.value.code) == ("lark", 404)
    assert "cli_emulator" in str(refused.value) and "retrying cannot help" in str(refused.value)


async def test_a_garbage_body_is_a_protocol_error_naming_the_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_api() as (emu, api):
        emu.fail(INFO, 200, b"\xff{not json")
        emu.fail(INFO, 200, b"[1, 2]")
        for _ in range(2):
            with pytest.raises(cb.ProtocolError, match=r"Lark app cli_emulator: GET .*unreadable"):
                await api.call("GET", INFO, whole=True)


async def test_transport_failures_and_silence_are_transient(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def silent(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with lark_api(httpx.MockTransport(unreachable)) as (_, api):
        with pytest.raises(cb.ConnectorError, match=r"cli_emulator.*ConnectError.*transient"):
            await api.endpoint()
    async with lark_api(httpx.MockTransport(silent)) as (_, api):
        started = trio.current_time()
        with pytest.raises(cb.ConnectorError, match="no answer within 10 s"):
            await api.token()
        assert trio.current_time() - started == pytest.approx(API_TIMEOUT)


async def test_a_call_without_a_time_limit_ends_with_its_callers_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # time_limit=None (the long poll's): no deadline of the mapping's own, no TooSlowError;
    # the caller's scope ends the call, and failures are mapped as with a limit.
    async def silent(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, content=b"busy")

    async with httpx.AsyncClient(transport=httpx.MockTransport(silent)) as http:
        with trio.move_on_after(1000) as scope:
            await exchange(
                http, "GET", "http://x.invalid/", what="a poll", platform="p", time_limit=None
            )
        assert scope.cancelled_caught and trio.current_time() == pytest.approx(1000)
    async with httpx.AsyncClient(transport=httpx.MockTransport(busy)) as http:
        with pytest.raises(cb.HTTPStatusError, match="a poll"):
            await exchange(
                http, "GET", "http://x.invalid/", what="a poll", platform="p", time_limit=None
            )


async def test_a_bridge_waits_out_a_discovery_retry_after_and_a_reply_failure_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    emu.fail("/callback/ws/endpoint", 503, b"busy", headers={"Retry-After": "300"})
    bridge = cb.Bridge(
        [emu.connector(random=lambda: 0.0)], echo, store=cb.MemoryStore(), debounce=cb.Debounce(0)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        started = trio.current_time()
        async with running_bridge(bridge, fail_on_agent_error=False, start_timeout=None):
            assert trio.current_time() - started == pytest.approx(300, abs=1)  # not 1 s
            assert bridge.stats().reconnects == 1
            emu.fail("/reply", 502, b"bad gateway")
            emu.user_says("ou_ann", "hello")
            while bridge.stats().failures == 0:  # noqa: ASYNC110 (a poll)
                await trio.sleep(0.1)
            emu.user_says("ou_ann", "again")
            assert (await emu.next_sent()).text == "again"
        nursery.cancel_scope.cancel()

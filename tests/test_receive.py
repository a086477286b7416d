"""The receive-loop helpers: the WebSocket driver's backlog taken in bursts, and the lazily
re-armed watchdog."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from test_webhook import MESSAGE as WEBHOOK_MESSAGE
from test_webhook import call, signed, webhook_bridge
from test_wecom import wecom_bridge

from trio_chatbridge import MemoryStore, ProtocolError
from trio_chatbridge._receive import (
    BURST_LINGER,
    LOG_BURST,
    LOG_WINDOW,
    SKIPPED,
    WATCHDOG_SLACK,
    parse_or_skip,
    rearm,
)
from trio_chatbridge._websocket import _Backlog
from trio_chatbridge._ws_core import Inbound
from trio_chatbridge.connectors import ConnectorContext


def item(n: int) -> Inbound:
    return Inbound(None, ack=lambda taken: str(n))


def numbers(items: list[Inbound]) -> list[str | bytes]:
    return [i.ack(0.0) for i in items if i.ack is not None]


async def test_what_is_waiting_comes_in_one_piece_up_to_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backlog = _Backlog(limit=100)
    for n in range(25):
        backlog.add(item(n), trio.current_time(), BURST_LINGER, 10)
    assert numbers(await backlog.take(BURST_LINGER, 10)) == [str(n) for n in range(10)]
    assert numbers(await backlog.take(BURST_LINGER, 100)) == [str(n) for n in range(10, 25)]


async def test_items_from_a_busy_producer_arrive_in_order_in_bounded_bursts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backlog = _Backlog(limit=50)

    async def producer() -> None:
        for n in range(500):  # one item per turn, as a socket reader hands them on
            backlog.add(item(n), trio.current_time(), BURST_LINGER, 16)
            if backlog.full:
                await backlog.wait_for_room(lambda: False)  # no request waits
            await trio.lowlevel.checkpoint()

    bursts: list[list[str | bytes]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        while sum(map(len, bursts)) < 500:
            bursts.append(numbers(await backlog.take(BURST_LINGER, 16)))
    assert [n for burst in bursts for n in burst] == [str(n) for n in range(500)]
    assert max(len(burst) for burst in bursts) <= 16
    assert len(bursts) < 500  # taken in bursts, not one by one


async def test_a_lone_item_is_not_held_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backlog = _Backlog(limit=10)
    start = trio.current_time()
    backlog.add(item(1), start, BURST_LINGER, 100)
    assert numbers(await backlog.take(BURST_LINGER, 100)) == ["1"]
    assert trio.current_time() - start == BURST_LINGER  # the linger, then it goes alone


async def test_the_watchdog_fires_after_silence_never_sooner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with trio.CancelScope() as watchdog:
        for _ in range(50):  # traffic every 0.1 s for 5 s keeps it quiet
            rearm(watchdog, 10.0)
            await trio.sleep(0.1)
        rearm(watchdog, 10.0)
        last_frame = trio.current_time()
        await trio.sleep_forever()
    fired = trio.current_time() - last_frame
    assert watchdog.cancelled_caught
    assert 10.0 <= fired <= 10.0 + WATCHDOG_SLACK
    assert trio.current_time() - start > 15.0


async def test_the_watchdog_follows_a_shorter_silence_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.CancelScope() as watchdog:
        rearm(watchdog, 120.0)
        await trio.sleep(1)
        rearm(watchdog, 10.0)  # a new ping interval from the server
        changed = trio.current_time()
        await trio.sleep_forever()
    assert 10.0 <= trio.current_time() - changed <= 10.0 + WATCHDOG_SLACK


def bad_json(text: str) -> object:
    raise ProtocolError(f"not JSON: {text}")


async def test_bad_input_lines_are_limited_per_connector_and_kind_counts_are_not(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    counts: Counter[str] = Counter()
    store = MemoryStore()

    def context(account: str) -> ConnectorContext:
        async def put(messages: object) -> list[Any]:
            raise AssertionError

        return ConnectorContext(
            "lark", account, store, put, lambda n, k: counts.update({n: k}), lambda s, d: None
        )

    one, two = context("one"), context("two")
    for n in range(50):
        assert parse_or_skip(one, "frame", bad_json, str(n)) is SKIPPED
        assert parse_or_skip(two, "frame", bad_json, str(n)) is SKIPPED
        assert parse_or_skip(one, "event", bad_json, str(n)) is SKIPPED
    assert counts["protocol_errors"] == 150
    lines = [r.getMessage() for r in caplog.records]
    for who, kind in [("one", "frame"), ("two", "frame"), ("one", "event")]:
        mine = [line for line in lines if line.startswith(f"lark:{who}: bad {kind} skipped:")]
        assert [line.rsplit(" ", 1)[1] for line in mine] == [str(n) for n in range(LOG_BURST)]
    assert len(lines) == 3 * (LOG_BURST + 1)  # each: the first few, and that it holds back
    caplog.clear()
    await trio.sleep(LOG_WINDOW - 1)
    parse_or_skip(one, "frame", bad_json, "late")  # still in the window: held back
    assert caplog.records == []
    await trio.sleep(1)
    parse_or_skip(one, "frame", bad_json, "next")  # a new window: a summary, then the line
    assert [r.getMessage() for r in caplog.records] == [
        f"lark:one: {51 - LOG_BURST} more like 'bad frame skipped' in the last 60 s "
        "(not logged; counted)",
        "lark:one: bad frame skipped: not JSON: next",
    ]
    assert counts["protocol_errors"] == 152


async def test_a_wecom_peer_flooding_bad_frames_gets_a_few_log_lines_each_counted(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The WebSocket driver (WeCom's, Lark's) skips bad frames through the same limited log."""
    async with wecom_bridge() as (emu, bridge):
        for _ in range(200):
            emu.push_raw("{not json")
        emu.user_says("jack", "fine")
        assert (await emu.next_sent()).text == "fine"
        assert bridge.stats().protocol_errors == 200
    skipped = [r for r in caplog.records if "bad frame skipped:" in r.getMessage()]
    assert len(skipped) == LOG_BURST


async def test_a_wecom_webhook_flooded_with_bad_message_callbacks_logs_a_few_counts_each(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with webhook_bridge() as (emu, hook, bridge):
        for n in range(20):  # no sender: a bad message, whose callback is still answered
            bad = {"msgid": f"b{n}", "msgtype": "text", "text": {"content": "x"}}
            assert (await call(hook.asgi, "POST", *signed(emu, json.dumps(bad))))[0] == 200
        await call(hook.asgi, "POST", *signed(emu, json.dumps(WEBHOOK_MESSAGE)))
        await trio.sleep(5)
        stats = bridge.stats()
    assert stats.protocol_errors == 20 and stats.received == 1
    skipped = [r for r in caplog.records if "bad message callback" in r.getMessage()]
    assert len(skipped) == LOG_BURST + 1  # the first few, and that the rest are held back

"""The receive-loop helpers: bursts taken in one piece, and the lazily re-armed watchdog."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_chatbridge._receive import BURST_LINGER, WATCHDOG_SLACK, rearm, receive_burst


async def test_what_is_waiting_comes_in_one_piece_up_to_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[int](100)
    for i in range(25):
        send.send_nowait(i)
    assert await receive_burst(receive, 10) == list(range(10))
    assert await receive_burst(receive, 100) == list(range(10, 25))


async def test_items_from_a_busy_producer_arrive_in_order_in_bounded_bursts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[int](100)

    async def producer() -> None:
        async with send:
            for i in range(500):  # one item per turn, as a socket reader hands them on
                await send.send(i)

    bursts: list[list[int]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        while True:
            try:
                bursts.append(await receive_burst(receive, 16))
            except trio.EndOfChannel:
                break
    assert [i for burst in bursts for i in burst] == list(range(500))
    assert max(len(burst) for burst in bursts) <= 16
    assert len(bursts) < 500  # taken in bursts, not one by one


async def test_a_lone_item_is_not_held_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[str](10)
    send.send_nowait("only")
    start = trio.current_time()
    assert await receive_burst(receive, 100) == ["only"]
    assert trio.current_time() - start == BURST_LINGER  # the linger, then it goes alone


async def test_the_end_of_the_channel_ends_the_burst_then_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[int](10)
    send.send_nowait(1)
    send.send_nowait(2)
    send.close()
    assert await receive_burst(receive, 100) == [1, 2]
    with pytest.raises(trio.EndOfChannel):
        await receive_burst(receive, 100)


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

"""The bridge's lifecycle: start at once, status to wait on, open_bridge, one wall clock."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge import testing
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import lark, wecom, weixin
from trio_chatbridge.stores import journal_key
from trio_chatbridge.testing import FakeConnector


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _weixin(port: int) -> Connector:
    return weixin.LongPoll(token="t0ken", account="bot", base_url=f"http://127.0.0.1:{port}")


def _wecom(port: int) -> Connector:
    return wecom.LongConnection(bot_id="bot", secret="s3cret", url=f"ws://127.0.0.1:{port}/")


def _lark(port: int) -> Connector:
    return lark.LongConnection(
        app_id="cli_x", app_secret="s3cret", domain=f"http://127.0.0.1:{port}"
    )


@pytest.mark.parametrize("make", [_weixin, _wecom, _lark], ids=["weixin", "wecom", "lark"])
def test_start_returns_at_once_while_an_unreachable_platform_backs_off(
    make: Callable[[int], Connector],
) -> None:
    """Real loopback sockets refuse at once; the mock clock only skips the retry sleeps (it
    jumps after 50 ms of real idleness, far longer than a refused connect takes)."""
    connector = make(closed_port())

    async def main() -> None:
        bridge = cb.Bridge([connector], echo, store=cb.MemoryStore())
        async with trio.open_nursery() as nursery:
            with trio.fail_after(1):  # virtual seconds: nothing may be waited for
                await nursery.start(bridge.run)
            assert bridge.status()[connector.name].state == "starting"
            with trio.fail_after(120):
                statuses = await bridge.wait_status(lambda s: s[connector.name].state == "backoff")
            status = statuses[connector.name]
            assert status.connects == 0  # never reported running
            assert "127.0.0.1" in (status.last_error or status.detail or "")
            bridge.shutdown()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.05))


async def test_status_changes_follow_a_connector_up_down_and_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = FakeConnector()
    bridge = cb.Bridge([chat], echo, store=cb.MemoryStore(), backoff=cb.Backoff(jitter=0))
    seen: list[tuple[str, int]] = []

    async def watch(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async for statuses in bridge.status_changes():
            status = statuses["fake:bot"]
            seen.append((status.state, status.connects))
            if len(seen) == 1:
                task_status.started()  # the statuses as they were: the first step, at once
            if (status.state, status.connects) == ("backoff", 1):
                await trio.sleep(5)  # slow reader: the changes meanwhile come as one step

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        await nursery.start(bridge.run)
        await bridge.wait_status(lambda s: s["fake:bot"].state == "running")
        await trio.sleep(1)  # the watcher takes its step
        chat.crash()
        await bridge.wait_status(lambda s: s["fake:bot"].connects == 2)
        await trio.sleep(10)
        bridge.shutdown()
    assert seen == [
        ("starting", 0),
        ("running", 1),
        ("backoff", 1),
        ("running", 2),  # the "starting" in between was coalesced away
        ("stopped", 2),
    ]


async def test_waiting_on_a_status_the_bridge_never_reaches_fails_when_it_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        nursery.start_soon(_shutdown_later, bridge)
        with pytest.raises(cb.ChatBridgeError, match="fake:bot stopped"):
            await bridge.wait_status(lambda s: s["fake:bot"].state == "failed")


async def _shutdown_later(bridge: cb.Bridge) -> None:
    await trio.sleep(1)
    bridge.shutdown()


async def test_status_is_known_before_the_bridge_runs() -> None:
    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    assert bridge.status()["fake:bot"] == cb.ConnectorStatus("fake:bot", "starting")


async def test_open_bridge_owns_its_nursery_and_stops_gracefully(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = FakeConnector()
    window = cb.Debounce(window=30.0)
    async with cb.open_bridge([chat], echo, store=cb.MemoryStore(), debounce=window) as bridge:
        await chat.say("pending at exit")
    # Leaving the block flushed the pending session and let the run answer.
    assert [r.text for r in chat.sent] == ["pending at exit"]
    assert bridge.status()["fake:bot"].state == "stopped"


async def test_an_error_out_of_open_bridge_stops_it_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = FakeConnector()
    window = cb.Debounce(window=30.0)
    with pytest.raises(KeyError):
        async with cb.open_bridge([chat], echo, store=cb.MemoryStore(), debounce=window):
            await chat.say("never answered")
            raise KeyError("boom")
    assert list(chat.sent) == []


class SlowToConnect(FakeConnector):
    """Comes up 5 (virtual) seconds after it is started."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.sleep(5)
        await super().run(task_status=task_status)


async def test_only_the_testing_helper_waits_and_its_name_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two public helpers once shared the name ``open_bridge``, one waiting, one not."""
    assert not hasattr(testing, "open_bridge")
    async with cb.open_bridge([SlowToConnect()], echo, store=cb.MemoryStore()) as bridge:
        assert trio.current_time() < 5
        assert bridge.status()["fake:bot"].state == "starting"
    bridge = cb.Bridge([SlowToConnect()], echo, store=cb.MemoryStore())
    began = trio.current_time()
    async with testing.running_bridge(bridge):
        assert trio.current_time() - began >= 5
        assert bridge.status()["fake:bot"].state == "running"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_bridge_and_its_store_read_one_wall_clock(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, kind: str
) -> None:
    def clock() -> float:
        return 1_000_000.0

    chat = FakeConnector()
    store: cb.Store = (
        cb.MemoryStore() if kind == "memory" else cb.SQLiteStore(tmp_path / "s.db", threaded=False)
    )
    async with cb.open_bridge([chat], echo, store=store, wall_clock=clock) as bridge:
        message = await chat.say("hello")
        await chat.next_reply()
        entry = await store.journal_entry(journal_key(message))
    assert entry is not None and entry.received_at == 1_000_000.0
    assert bridge.wall_clock is clock and store.wall_clock is clock


async def test_without_a_clock_the_bridge_uses_the_stores() -> None:
    def clock() -> float:
        return 5.0

    store = cb.MemoryStore(wall_clock=clock)
    assert cb.Bridge([], echo, store=store).wall_clock is clock


class Refused(Connector):
    platform = "refused"
    account = "a"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            raise OSError("connect to ws://127.0.0.1:9/ refused")
        except OSError as exc:
            raise cb.ConnectorError("") from exc

    async def send(self, target: cb.Message, text: str) -> None:
        raise AssertionError("never called")


async def test_a_retry_logs_one_line_with_its_cause_and_the_traceback_only_at_debug(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_chatbridge")
    bridge = cb.Bridge([Refused()], echo, store=cb.MemoryStore())
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        status = await bridge.wait_status(lambda s: s["refused:a"].state == "backoff")
        bridge.shutdown()
    assert status["refused:a"].last_error == (
        "ConnectorError (because OSError: connect to ws://127.0.0.1:9/ refused)"
    )
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "connector refused:a failed: ConnectorError (because OSError: connect to "
        "ws://127.0.0.1:9/ refused)"
    ]
    assert warnings[0].exc_info is None
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)


async def test_wait_status_is_a_checkpoint_even_when_the_status_already_holds() -> None:
    """A Trio call that can block must always be a cancellation point: a cancelled caller
    looping on an already-true status would otherwise never see its cancellation."""
    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    with trio.CancelScope() as scope:
        scope.cancel()
        await bridge.wait_status(lambda s: True)
    assert scope.cancelled_caught

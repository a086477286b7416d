"""The one retry policy: Backoff's delays, hints as inputs to it, and a loop's Retries."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector, Retries
from trio_chatbridge.testing import running_bridge


def test_a_hint_is_a_floor_and_never_a_ceiling() -> None:
    backoff = cb.Backoff(initial=2.0, maximum=10.0, jitter=0.0)
    assert backoff.delay(1, hint=30.0) == 30.0  # the platform asks for longer: it gets it
    assert backoff.delay(1, hint=0.5) == 2.0  # shorter: the policy's own delay holds
    assert backoff.delay(5, hint=None) == 10.0


@pytest.mark.parametrize("hint", [math.inf, 1e308, math.nan, -5.0])
def test_a_nonsense_hint_is_held_to_range(hint: float) -> None:
    delay = cb.Backoff(initial=1.0, jitter=0.0).delay(1, hint)
    assert 1.0 <= delay <= 3600.0


@given(st.floats(allow_nan=True), st.integers(1, 10_000))
def test_a_delay_is_always_a_finite_wait(hint: float, failures: int) -> None:
    delay = cb.Backoff().delay(failures, hint)
    assert 0 <= delay <= 3600.0


async def test_retries_wait_growing_delays_then_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    retries = cb.Backoff(initial=0.2, maximum=2.0, jitter=0.0).retries(limit=3)
    waits = []
    while True:
        before = trio.current_time()
        if not await retries.wait():
            break
        waits.append(trio.current_time() - before)
    assert waits == pytest.approx([0.2, 0.4, 0.8])
    assert retries.spent and retries.failures == 3
    retries.reset()
    assert not retries.spent and retries.fail() == pytest.approx(0.2)


def test_unlimited_retries_are_never_spent() -> None:
    retries = Retries(cb.Backoff(jitter=0.0))
    delays = [retries.fail() for _ in range(100)]
    assert delays[:3] == [1.0, 2.0, 4.0] and delays[-1] == 60.0 and not retries.spent


class Hinting(Connector):
    """Fails each run with an error that asks for a wait of ``asked`` seconds."""

    def __init__(self, asked: float | None, own: float | None) -> None:
        self.platform = "hinting"
        self.account = "bot"
        self.asked = asked
        self.own = own
        self.runs: list[float] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs.append(trio.current_time())
        if len(self.runs) > 1:
            task_status.started()
            await trio.sleep_forever()
        error = cb.ConnectorError("the server asks us to come back later")
        error.retry_after = self.asked
        raise error

    async def send(self, target: cb.Message, text: str) -> None:
        raise AssertionError("nothing to answer")

    def restart_delay(self, failures: int) -> float | None:
        return self.own


async def no_agent(batch: cb.Batch, reply: cb.Reply) -> None:
    raise AssertionError("no messages")


@pytest.mark.parametrize(
    ("asked", "own", "expected"),
    [(None, None, 1.0), (30.0, None, 30.0), (None, 15.0, 15.0), (30.0, 15.0, 30.0)],
)
async def test_restarts_wait_for_the_longest_of_policy_and_hints(
    autojump_clock: trio.testing.MockClock, asked: float | None, own: float | None, expected: float
) -> None:
    connector = Hinting(asked, own)
    bridge = cb.Bridge(
        [connector], no_agent, store=cb.MemoryStore(), backoff=cb.Backoff(jitter=0.0)
    )
    async with running_bridge(bridge):
        assert bridge.status()["hinting:bot"].restarts == 1
    assert connector.runs[1] - connector.runs[0] == pytest.approx(expected)


class Stopping(Hinting):
    """Fails its first run (a restart is due after ``own`` seconds), then runs for good;
    records when it is told it stopped."""

    def __init__(self, own: float) -> None:
        super().__init__(None, own)
        self.stops: list[float] = []

    def stopped(self) -> None:
        self.stops.append(trio.current_time())


@pytest.mark.parametrize("waiting", [True, False])
async def test_a_connector_is_told_once_that_it_stopped_also_while_waiting_to_restart(
    autojump_clock: trio.testing.MockClock, waiting: bool
) -> None:
    """What a run left for the next one (WeCom's carried replies) is given up then: no run
    may be in progress when the bridge stops."""
    connector = Stopping(own=30.0)
    bridge = cb.Bridge(
        [connector], no_agent, store=cb.MemoryStore(), backoff=cb.Backoff(jitter=0.0)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        await trio.sleep(5.0 if waiting else 35.0)
        assert len(connector.runs) == (1 if waiting else 2) and connector.stops == []
        stopping = trio.current_time()
        bridge.shutdown()
    assert connector.stops == [stopping]

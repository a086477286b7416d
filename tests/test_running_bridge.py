"""``testing.running_bridge`` fails a test whose agent has a bug, instead of letting it wait for
a reply that never comes; ``Bridge.add_failure_listener`` is how it knows."""

from __future__ import annotations

import functools
from collections.abc import Awaitable

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.testing import (
    AgentFailed,
    ConnectorsNotUp,
    FakeConnector,
    WeComEmulator,
    running_bridge,
)


async def buggy(batch: cb.Batch, reply: cb.Reply) -> None:
    names: dict[str, str] = {}
    await reply.send(f"hello {names[batch.text]}")  # KeyError: the bug


async def test_a_failing_agent_ends_the_block_with_its_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A newcomer's first test: without this it waited in next_reply() for good, the autojump
    clock spinning."""
    chat = FakeConnector()
    bridge = cb.Bridge([chat], buggy, store=cb.MemoryStore())
    with trio.fail_after(60), pytest.raises(AgentFailed) as info:
        async with running_bridge(bridge):
            await chat.say("ann", chat="c1")
            await chat.next_reply()
    assert str(info.value) == "the agent failed on session fake:bot:c1: KeyError: 'ann'"
    assert isinstance(info.value.__cause__, KeyError)
    assert trio.current_time() < 10  # at once, not at some timeout
    assert bridge.stats().failures == 1


async def test_a_run_past_its_timeout_fails_the_block_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep_forever()

    chat = FakeConnector()
    bridge = cb.Bridge([chat], slow, store=cb.MemoryStore(), run_timeout=5)
    with trio.fail_after(60), pytest.raises(AgentFailed, match="timed out after 5"):
        async with running_bridge(bridge):
            await chat.say("hi", chat="c1")
            await trio.sleep_forever()


async def test_failures_can_be_expected_and_are_told_to_listeners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    told: list[tuple[str, str, type[BaseException] | None]] = []
    failed = [trio.Event(), trio.Event()]
    chat = FakeConnector()
    bridge = cb.Bridge([chat], buggy, store=cb.MemoryStore())

    def listener(batch: cb.Batch, error: str, exception: BaseException | None) -> None:
        told.append((batch.session, error, type(exception) if exception else None))

    def broken(batch: cb.Batch, error: str, exception: BaseException | None) -> None:
        raise RuntimeError("a listener's own bug")  # logged; the dispatcher goes on

    def counting(batch: cb.Batch, error: str, exception: BaseException | None) -> None:
        (failed[1] if failed[0].is_set() else failed[0]).set()

    remove = bridge.add_failure_listener(listener)
    bridge.add_failure_listener(broken)
    bridge.add_failure_listener(counting)
    with trio.fail_after(60):
        async with running_bridge(bridge, fail_on_agent_error=False):
            await chat.say("ann", chat="c1")
            await failed[0].wait()
            remove()
            await chat.say("bob", chat="c2")
            await failed[1].wait()
    assert told == [("fake:bot:c1", "KeyError: 'ann'", KeyError)]
    assert bridge.stats().failures == 2
    assert chat.sent == []


async def test_a_listener_that_removes_itself_when_called_leaves_the_others_called(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A one-shot listener (an alert sent once) removes itself from inside its call: the
    listener after it is still told of that failure, and removing it again does nothing."""
    told: list[str] = []
    second_told = trio.Event()
    chat = FakeConnector()
    bridge = cb.Bridge([chat], buggy, store=cb.MemoryStore())

    def once(batch: cb.Batch, error: str, exception: BaseException | None) -> None:
        told.append("once")
        remove_once()

    def always(batch: cb.Batch, error: str, exception: BaseException | None) -> None:
        told.append("always")
        second_told.set()

    remove_once = bridge.add_failure_listener(once)
    bridge.add_failure_listener(always)
    with trio.fail_after(60):
        async with running_bridge(bridge, fail_on_agent_error=False):
            await chat.say("ann", chat="c1")
            await second_told.wait()
            second_told = trio.Event()
            await chat.say("bob", chat="c2")
            await second_told.wait()
    remove_once()  # removed already: nothing to do
    assert told == ["once", "always", "always"]


def test_a_plain_function_is_refused_as_the_agent_when_the_bridge_is_built() -> None:
    """Every run of it failed ('object NoneType can't be used in await expression')."""

    def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    with pytest.raises(cb.ConfigurationError, match="write 'async def agent"):
        cb.Bridge([FakeConnector()], agent, store=cb.MemoryStore())  # type: ignore[arg-type]

    class Callable:  # an object whose __call__ is async is fine
        async def __call__(self, batch: cb.Batch, reply: cb.Reply) -> None:
            pass

    cb.Bridge([FakeConnector()], Callable(), store=cb.MemoryStore())


def test_an_agent_behind_a_decorator_or_a_partial_is_taken_a_lambda_is_refused_saying_why() -> None:
    """A decorator that wraps with functools.wraps (and returns the coroutine) is how many
    agents are logged or timed: taken. A lambda around an agent cannot be told from a plain
    function before it runs: refused, the message saying what to write."""

    async def agent(batch: cb.Batch, reply: cb.Reply, greeting: str = "hi") -> None:
        pass

    def logged(fn: cb.Agent) -> cb.Agent:
        @functools.wraps(fn)
        def wrapper(batch: cb.Batch, reply: cb.Reply) -> Awaitable[None]:
            return fn(batch, reply)

        return wrapper

    for taken in (logged(agent), functools.partial(agent, greeting="yo")):
        cb.Bridge([FakeConnector()], taken, store=cb.MemoryStore())
    with pytest.raises(cb.ConfigurationError, match="even if it returns a coroutine"):
        cb.Bridge([FakeConnector()], lambda b, r: agent(b, r), store=cb.MemoryStore())


async def test_a_connector_that_never_comes_up_fails_the_start_with_its_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A newcomer's test that forgot to start its emulator waited for good (the connector
    retrying on the virtual clock, the autojump clock spinning): now it fails at
    ``start_timeout`` naming the connector and what it last failed with."""
    emu = WeComEmulator()  # never started
    bridge = cb.Bridge([emu.connector()], buggy, store=cb.MemoryStore())
    with trio.fail_after(600), pytest.raises(ConnectorsNotUp) as info:
        async with running_bridge(bridge):
            pytest.fail("the block must not run")  # pragma: no cover
    assert trio.current_time() == pytest.approx(60)
    said = str(info.value)
    assert said.startswith("after 60 s, not every connector has come up: wecom:emulator-bot (")
    assert "start the emulator first: await nursery.start(emulator.run)" in said
    assert "start_timeout=" in said
    assert bridge.status()["wecom:emulator-bot"].connects == 0


async def test_a_start_that_takes_long_on_purpose_can_be_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        emu = WeComEmulator()

        async def start_late() -> None:
            await trio.sleep(300)
            await nursery.start(emu.run)

        nursery.start_soon(start_late)
        bridge = cb.Bridge([emu.connector()], buggy, store=cb.MemoryStore())
        with trio.fail_after(3600):
            async with running_bridge(bridge, start_timeout=None):
                assert trio.current_time() >= 300
                assert bridge.status()["wecom:emulator-bot"].connects == 1
        nursery.cancel_scope.cancel()


async def test_connectors_up_as_the_start_timeout_runs_out_are_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What counts is whether every connector is up once the time ran out, not that the wait
    was cut off: a connector that came up in that same tick failed the start with a
    ConnectorsNotUp naming none ("not every connector has come up: .")."""
    chat = FakeConnector()
    bridge = cb.Bridge([chat], buggy, store=cb.MemoryStore())
    with trio.fail_after(60):
        async with running_bridge(bridge, start_timeout=0):
            assert bridge.status()["fake:bot"].state == "running"

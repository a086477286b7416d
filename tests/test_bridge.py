from __future__ import annotations

import asyncio
import contextvars
import math
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given

import trio_chatbridge as cb
from trio_chatbridge._errors import find_error
from trio_chatbridge.connectors import Connector
from trio_chatbridge.stores import journal_key
from trio_chatbridge.testing import FakeConnector, running_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(" / ".join(m.text for m in batch.messages))


class _OwnBaseError(BaseException):
    """What a library may raise that is no Exception (asyncio.CancelledError is one)."""


def make_bridge(agent: cb.Agent = echo, *connectors: Connector, **options: object) -> cb.Bridge:
    return cb.Bridge(
        connectors=connectors or [FakeConnector()],
        agent=agent,
        store=options.pop("store", cb.MemoryStore()),  # type: ignore[arg-type]
        debounce=options.pop("debounce", cb.Debounce(window=1.0)),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


async def test_burst_becomes_one_reply(autojump_clock: trio.testing.MockClock) -> None:
    chat = FakeConnector()
    async with running_bridge(make_bridge(echo, chat)) as bridge:
        for text in ["hi", "are you", "there?"]:
            await chat.say(text)
        reply = await chat.next_reply()
        assert reply.text == "hi / are you / there?"
        assert reply.reply_to == "m3"
        stats = bridge.stats()
    assert (stats.received, stats.batches, stats.runs, stats.replies) == (3, 1, 1, 1)


async def test_streamed_reply_keeps_each_write(autojump_clock: trio.testing.MockClock) -> None:
    async def streamer(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for word in batch.text.split():
                await out.write(word.upper() + " ")

    chat = FakeConnector()
    async with running_bridge(make_bridge(streamer, chat)):
        await chat.say("one two three")
        reply = await chat.next_reply()
    assert reply.chunks == ("ONE ", "TWO ", "THREE ")
    assert reply.text == "ONE TWO THREE "


async def test_duplicate_delivery_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    chat = FakeConnector()
    async with running_bridge(make_bridge(echo, chat)) as bridge:
        message = chat.message("once", id="same")
        chat.deliver(message, message)
        await chat.next_reply()
        await trio.sleep(5)
        assert bridge.stats().duplicates == 1
    assert [r.text for r in chat.sent] == ["once"]


async def test_queue_mode_merges_batches_that_arrive_during_a_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[list[str]] = []

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.append([m.text for m in batch.messages])
        await trio.sleep(10)

    chat = FakeConnector()
    async with running_bridge(make_bridge(slow, chat, on_busy="queue")):
        await chat.say("a")
        await trio.sleep(2)  # first run has started
        await chat.say("b")
        await trio.sleep(2)
        await chat.say("c")
        await trio.sleep(30)
    assert seen == [["a"], ["b", "c"]]


async def test_interrupt_mode_reruns_with_all_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started: list[list[str]] = []

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        started.append([m.text for m in batch.messages])
        await trio.sleep(10)
        await reply.send("done: " + batch.text.replace("\n", ","))

    chat = FakeConnector()
    async with running_bridge(make_bridge(slow, chat, on_busy="interrupt")) as bridge:
        await chat.say("a")
        await trio.sleep(2)
        await chat.say("b")
        reply = await chat.next_reply()
        assert bridge.stats().interrupts == 1
    assert started == [["a"], ["a", "b"]]
    assert reply.text == "done: a,b"
    assert len(chat.sent) == 1


@pytest.mark.parametrize("on_busy", ["queue", "interrupt"])
async def test_accounts_whose_plain_keys_collide_never_share_a_run(
    on_busy: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Account ``a:b`` with chat ``c`` and account ``a`` with chat ``b:c`` would both be
    ``p:a:b:c`` joined plainly: one's batch would merge into (or interrupt) the other's run."""
    runs: list[tuple[str, set[str]]] = []

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        runs.append((batch.session, {m.account for m in batch.messages}))
        await trio.sleep(10)
        await reply.send(batch.text)

    first, second = FakeConnector("a:b", platform="p"), FakeConnector("a", platform="p")
    bridge = make_bridge(slow, first, second, on_busy=on_busy)
    with trio.fail_after(60):  # on the test's clock: a reply that never comes fails at once
        async with running_bridge(bridge):
            await first.say("from a:b", chat="c")
            await second.say("from a", chat="b:c")
            assert ((await first.next_reply()).text, (await second.next_reply()).text) == (
                "from a:b",
                "from a",
            )
            stats = bridge.stats()
    assert sorted(runs) == [("p:a%3Ab:c", {"a:b"}), ("p:a:b:c", {"a"})]
    assert (stats.runs, stats.interrupts) == (2, 0)


@pytest.mark.parametrize("error", [RuntimeError("cleanup failed"), _OwnBaseError("odd")])
async def test_an_error_raised_while_a_run_is_interrupted_never_stops_the_bridge(
    autojump_clock: trio.testing.MockClock, error: BaseException
) -> None:
    """A cleanup that fails during the interrupt reaches the dispatcher as a group of
    Cancelled and the error: it is counted and the rerun still happens. An error of the
    agent's own that is no Exception, beside the Cancelled, ended the bridge."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with trio.open_nursery() as nursery:
            if len(batch.messages) == 1:
                nursery.start_soon(_fails_when_stopped, error)
            await trio.sleep(10)
            await reply.send("done: " + batch.text.replace("\n", ","))
            nursery.cancel_scope.cancel()

    chat = FakeConnector()
    async with running_bridge(make_bridge(agent, chat, on_busy="interrupt")) as bridge:
        await chat.say("a")
        await trio.sleep(2)
        await chat.say("b")
        reply = await chat.next_reply()
        stats = bridge.stats()
    assert reply.text == "done: a,b"
    assert (stats.interrupts, stats.failures) == (1, 1)


def _cleanup_fails_on_first_call() -> tuple[cb.Agent, list[list[str]]]:
    """An agent whose first run raises from its ``finally`` when cancelled (replacing
    Trio's Cancelled with its own error); later runs answer at once."""
    seen: list[list[str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.append([m.text for m in batch.messages])
        if len(seen) == 1:
            try:
                await trio.sleep(100)
            finally:
                raise RuntimeError("cleanup failed")
        await reply.send("done: " + batch.text.replace("\n", ","))

    return agent, seen


async def test_an_interrupted_run_whose_cleanup_raises_still_reruns_with_all_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent, seen = _cleanup_fails_on_first_call()
    store = cb.MemoryStore()
    chat = FakeConnector()
    bridge = make_bridge(agent, chat, store=store, on_busy="interrupt", debounce=cb.Debounce(3.0))
    async with running_bridge(bridge):
        first = await chat.say("m1")
        await trio.sleep(4)
        await chat.say("m2")
        reply = await chat.next_reply()
        stats = bridge.stats()
    assert seen == [["m1"], ["m1", "m2"]]
    assert reply.text == "done: m1,m2"
    assert (stats.interrupts, stats.failures) == (1, 1)  # the cleanup's error is counted
    entry = await store.journal_entry(journal_key(first))
    assert entry is not None and entry.state == "done"


async def test_a_timed_out_run_whose_cleanup_raises_is_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    agent, _ = _cleanup_fails_on_first_call()
    store = cb.MemoryStore()
    chat = FakeConnector()
    async with running_bridge(
        make_bridge(agent, chat, store=store, run_timeout=30.0), fail_on_agent_error=False
    ) as bridge:
        message = await chat.say("m1")
        await trio.sleep(40)
        stats = bridge.stats()
    assert (stats.timeouts, stats.failures) == (1, 1)
    entry = await store.journal_entry(journal_key(message))
    assert entry is not None and entry.error == "agent timed out after 30.0 s"


@pytest.mark.parametrize("how", ["grace", "cancel"])
async def test_a_run_cut_off_whose_cleanup_raises_is_abandoned_and_replayed(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """Shutdown grace over, or the bridge cancelled: the run is abandoned (its messages
    pending, replayed and answered at the next start), whatever its cleanup raised."""
    agent, seen = _cleanup_fails_on_first_call()
    store = cb.MemoryStore()
    chat = FakeConnector()
    bridge = make_bridge(agent, chat, store=store, shutdown_grace=5)
    with trio.CancelScope() as scope:
        async with running_bridge(bridge):
            message = await chat.say("m1")
            await trio.sleep(2)
            if how == "cancel":
                scope.cancel()
    assert bridge.stats().abandoned == 1
    assert await store.journal_pending() == [message]
    async with running_bridge(make_bridge(agent, chat, store=store)) as again:
        reply = await chat.next_reply()
        assert again.stats().replayed == 1
    assert (seen, reply.text) == ([["m1"], ["m1"]], "done: m1")


async def test_sessions_waiting_for_a_slot_are_neither_interrupted_nor_abandoned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Stats count agent runs: a session that never got a slot was not interrupted by
    its second batch (the batches merge into its first run) nor abandoned at shutdown."""
    seen: list[list[str]] = []

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.append([m.text for m in batch.messages])
        await trio.sleep(100)

    store = cb.MemoryStore()
    chat = FakeConnector()
    bridge = make_bridge(
        slow, chat, store=store, on_busy="interrupt", concurrency=1, shutdown_grace=5
    )
    async with running_bridge(bridge):
        await chat.say("a", chat="one")
        await trio.sleep(2)
        await chat.say("b1", chat="two")
        await trio.sleep(2)
        await chat.say("b2", chat="two")
        await trio.sleep(2)
    stats = bridge.stats()
    assert (stats.runs, stats.interrupts, stats.abandoned) == (1, 0, 1)
    assert seen == [["a"]]
    assert sorted(m.text for m in await store.journal_pending()) == ["a", "b1", "b2"]


async def _fails_when_stopped(error: BaseException | None = None) -> None:
    try:
        await trio.sleep_forever()
    finally:
        raise error or RuntimeError("cleanup failed")


async def _behave(kind: str, reply: cb.Reply) -> None:
    """What the agent does for a batch whose latest message says ``kind``."""
    if kind == "boom":
        raise RuntimeError("boom")
    if kind == "fragile":  # a helper task whose cleanup fails, in or out of a cancellation
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fails_when_stopped)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    elif kind == "stream":
        async with reply.stream() as out:
            await out.write("a")
            await trio.sleep(3)
            await out.write("b")
    else:
        await trio.sleep(8 if kind == "slow" else 1)
        await reply.send(kind)


@given(
    script=st.lists(
        st.tuples(
            st.integers(0, 2),  # which chat
            st.floats(0, 6),  # seconds since the previous message
            st.sampled_from(["ok", "slow", "boom", "fragile", "stream"]),
        ),
        min_size=1,
        max_size=10,
    ),
    on_busy=st.sampled_from(["queue", "interrupt"]),
    run_timeout=st.sampled_from([None, 4.0]),
    fail_sends=st.integers(0, 2),
)
def test_whatever_agents_do_the_bridge_goes_on_and_settles_every_message(
    script: list[tuple[int, float, str]], on_busy: str, run_timeout: float | None, fail_sends: int
) -> None:
    """Errors, interrupts, timeouts, failed sends and shutdown, in any order: the bridge never
    stops, every message reaches the agent, and each ends done or failed in the journal."""
    store = cb.MemoryStore()
    chat = FakeConnector()
    seen: set[str] = set()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.update(m.id for m in batch.messages)
        await _behave(batch.latest.text, reply)

    async def main() -> None:
        bridge = make_bridge(agent, chat, store=store, on_busy=on_busy, run_timeout=run_timeout)
        chat.fail_sends(fail_sends)
        delivered = []
        async with running_bridge(bridge, fail_on_agent_error=False):
            for chat_number, gap, kind in script:
                await trio.sleep(gap)
                delivered.append(await chat.say(kind, chat=f"c{chat_number}"))
            await trio.sleep(60)  # longer than any run: everything settles
            assert bridge.stats().received == len(script)
            assert all(s.state == "running" for s in bridge.status().values())
        assert seen == {m.id for m in delivered}
        for message in delivered:
            entry = await store.journal_entry(journal_key(message))
            assert entry is not None and entry.state in ("done", "failed")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@given(
    script=st.lists(
        st.tuples(
            st.integers(0, 5),  # which chat
            st.sampled_from([0.0, 0.5, 2.0]),  # seconds since the previous message
            st.integers(0, 3),  # seconds the run on a batch ending with it takes
        ),
        min_size=1,
        max_size=30,
    ),
    concurrency=st.integers(1, 4),
    queue_size=st.integers(1, 4),
)
def test_runs_keep_the_slots_and_each_message_runs_once_in_order(
    script: list[tuple[int, float, int]], concurrency: int, queue_size: int
) -> None:
    """With on_busy="queue", whatever the timing: never more than ``concurrency`` runs at
    once, never two runs of one session at once, every message in exactly one run, a
    session's messages in the order they were said, and every one marked done."""
    store = cb.MemoryStore()
    chat = FakeConnector()
    running: set[str] = set()
    peak = 0
    handled: dict[str, list[str]] = {}

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        nonlocal peak
        assert batch.session not in running
        running.add(batch.session)
        peak = max(peak, len(running))
        handled.setdefault(batch.session, []).extend(m.id for m in batch.messages)
        await trio.sleep(int(batch.latest.text))
        running.discard(batch.session)

    async def main() -> None:
        bridge = make_bridge(
            agent,
            chat,
            store=store,
            concurrency=concurrency,
            queue_size=queue_size,
            debounce=cb.Debounce(window=0.1),
        )
        said: dict[str, list[str]] = {}
        async with running_bridge(bridge):
            for n, (chat_number, gap, seconds) in enumerate(script):
                await trio.sleep(gap)
                message = await chat.say(str(seconds), chat=f"c{chat_number}", id=f"m{n}")
                said.setdefault(f"fake:bot:c{chat_number}", []).append(message.id)
            await trio.sleep(4 * len(script))  # every run ends
        assert peak <= concurrency
        assert handled == said
        assert await store.journal_pending() == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_connector_failing_as_the_bridge_is_cancelled_is_no_error_of_the_bridge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A socket that fails while the bridge is being cancelled is the supervisor's to log:
    the cancellation goes on alone (it used to come out as an ExceptionGroup)."""

    class Brittle(FakeConnector):
        async def run(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_fails_when_stopped)
                await super().run(task_status=task_status)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(make_bridge(echo, Brittle()).run)
            scope.cancel()
    assert scope.cancelled_caught


async def test_a_connector_that_fails_to_close_does_not_keep_the_others_open(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    closed: list[str] = []

    class Closing(FakeConnector):
        async def aclose(self) -> None:
            closed.append(self.account)
            if self.account == "a":
                raise OSError("already gone")

    store = cb.SQLiteStore(tmp_path / "bridge.db", threaded=False)
    bridge = make_bridge(echo, Closing("a"), Closing("b"), store=store)
    async with running_bridge(bridge):
        pass
    assert sorted(closed) == ["a", "b"]  # closed concurrently, each whatever the other does
    with pytest.raises(cb.StoreError, match="is not open"):  # the store was closed too
        await store.get("fake", "a", "k")


async def test_concurrency_limit_holds(autojump_clock: trio.testing.MockClock) -> None:
    running = 0
    peak = 0

    async def busy(batch: cb.Batch, reply: cb.Reply) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(5)
        running -= 1

    chat = FakeConnector()
    async with running_bridge(make_bridge(busy, chat, concurrency=3)) as bridge:
        for i in range(10):
            await chat.say("hello", chat=f"c{i}")
        await trio.sleep(60)
        assert bridge.stats().runs == 10
    assert peak == 3


async def test_slots_go_first_come_first_served(autojump_clock: trio.testing.MockClock) -> None:
    """A session with more to do after its run queues behind the sessions already waiting."""
    order: list[list[str]] = []

    async def busy(batch: cb.Batch, reply: cb.Reply) -> None:
        order.append([m.text for m in batch.messages])
        await trio.sleep(10)

    chat = FakeConnector()
    async with running_bridge(make_bridge(busy, chat, concurrency=1)) as bridge:
        await chat.say("a1", chat="a")
        await trio.sleep(2)  # a runs
        await chat.say("b1", chat="b")
        await chat.say("c1", chat="c")
        await chat.say("a2", chat="a")  # a has more to do: after b and c, already waiting
        await trio.sleep(60)
        assert bridge.stats().runs == 4
    assert order == [["a1"], ["b1"], ["c1"], ["a2"]]


VISITED: contextvars.ContextVar[str] = contextvars.ContextVar("VISITED", default="")
ORIGIN: contextvars.ContextVar[str] = contextvars.ContextVar("ORIGIN", default="")


async def test_context_variables_an_agent_sets_stay_in_its_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each run starts from the bridge's context: what one run sets (a logging context,
    say) is never seen by the next, whichever run freed the slot it runs in."""
    seen: list[str] = []

    async def marking(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.append(VISITED.get())
        VISITED.set(batch.session)
        await trio.sleep(1)

    chat = FakeConnector()
    async with running_bridge(make_bridge(marking, chat, concurrency=1)) as bridge:
        for i in range(3):
            await chat.say("hi", chat=f"c{i}")
        await trio.sleep(5)
        await chat.say("again", chat="c0")
        await trio.sleep(30)
        assert bridge.stats().runs == 4
    assert seen == ["", "", "", ""]


@pytest.mark.parametrize("waits", [False, True])
async def test_runs_back_to_back_in_one_slot_each_start_from_the_bridges_context(
    autojump_clock: trio.testing.MockClock, waits: bool
) -> None:
    """Runs that follow each other in one slot (concurrency 1, sessions waiting), whether
    their agents wait or not: each starts from the context the bridge was made in (what
    the application set before is seen, what an earlier run set is not), and what a run
    sets is its own until it ends, across its waits."""
    seen: list[tuple[str, str]] = []
    ORIGIN.set("app")

    async def marking(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.append((ORIGIN.get(), VISITED.get()))
        VISITED.set(batch.session)
        ORIGIN.set(batch.session)
        if waits:
            await trio.sleep(1)
        assert (ORIGIN.get(), VISITED.get()) == (batch.session, batch.session)

    chat = FakeConnector()
    bridge = make_bridge(marking, chat, concurrency=1, debounce=cb.Debounce(window=0.5))
    async with running_bridge(bridge):
        chat.deliver(*[chat.message("hi", chat=f"c{i}") for i in range(4)])
        await trio.sleep(30)
        assert bridge.stats().runs == 4
    assert seen == [("app", "")] * 4
    assert ORIGIN.get() == "app"


async def test_tasks_an_agent_starts_inherit_its_runs_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task started in an agent's nursery sees what the run had set when it started (as a
    Trio child task does), and what it sets itself stays in it."""
    seen: list[tuple[str, str]] = []

    async def child(session: str) -> None:
        seen.append((session, VISITED.get()))
        VISITED.set("child")
        await trio.sleep(1)

    async def parent(batch: cb.Batch, reply: cb.Reply) -> None:
        VISITED.set(batch.session)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child, batch.session)
            await trio.sleep(0.5)
            nursery.start_soon(child, batch.session)
        assert VISITED.get() == batch.session

    chat = FakeConnector()
    async with running_bridge(make_bridge(parent, chat, concurrency=2)) as bridge:
        chat.deliver(*[chat.message("hi", chat=f"c{i}") for i in range(3)])
        await trio.sleep(30)
        assert bridge.stats().failures == 0
    assert sorted(seen) == sorted([(f"fake:bot:c{i}", f"fake:bot:c{i}") for i in range(3)] * 2)


async def test_a_run_whose_stepping_fails_between_steps_is_closed_in_its_context() -> None:
    """What the scheduler cannot hand the run (here: what is called when it first waits
    raises; in life a KeyboardInterrupt between two steps) closes the run, in its context,
    before it goes on: no coroutine is left suspended for the garbage collector."""
    from trio_chatbridge._dispatch import _in_context

    closed_in: list[str] = []

    async def run() -> None:
        VISITED.set("run")
        try:
            await trio.sleep(1)
        finally:
            closed_in.append(VISITED.get())

    def fails() -> None:
        raise RuntimeError("between steps")

    with pytest.raises(RuntimeError, match="between steps"):
        await _in_context(contextvars.copy_context(), run(), fails)
    assert closed_in == ["run"]
    assert VISITED.get() == ""


@pytest.mark.parametrize(
    ("error", "journaled"),
    [
        (RuntimeError("agent bug"), "RuntimeError: agent bug"),
        (_OwnBaseError("odd"), "_OwnBaseError: odd"),
        (asyncio.CancelledError("from asyncio"), "CancelledError: from asyncio"),
        # what a task group makes of one task's error: journaled as that error
        (ExceptionGroup("", [ValueError("inner")]), "ValueError: inner"),
        (
            BaseExceptionGroup("", [BaseExceptionGroup("", [_OwnBaseError("deep")])]),
            "_OwnBaseError: deep",
        ),
        (
            ExceptionGroup("two", [ValueError("a"), KeyError("b")]),
            "ExceptionGroup: two (2 sub-exceptions)",
        ),
    ],
)
async def test_a_failing_agent_does_not_stop_others(
    autojump_clock: trio.testing.MockClock, error: BaseException, journaled: str
) -> None:
    """Whatever the agent raises of its own, BaseException subclasses too (not Trio's
    Cancelled, KeyboardInterrupt or SystemExit), fails that run alone: logged, counted,
    journaled as failed. A BaseException ended the bridge, and again at every start. A
    group of one error is journaled as that error, not as the group around it."""

    async def picky(batch: cb.Batch, reply: cb.Reply) -> None:
        if batch.text == "boom":
            raise error
        await reply.send("ok")

    store = cb.MemoryStore()
    chat = FakeConnector()
    async with running_bridge(
        make_bridge(picky, chat, store=store), fail_on_agent_error=False
    ) as bridge:
        bad = await chat.say("boom", chat="x")
        await chat.say("fine", chat="y")
        assert (await chat.next_reply()).chat == "y"
        await trio.sleep(5)
        assert bridge.stats().failures == 1
    entry = await store.journal_entry(("fake", "bot", bad.id))
    assert entry is not None
    assert entry.state == "failed"
    assert entry.error == journaled


async def test_failures_and_timeouts_in_one_slot_leave_the_runs_after_them_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One slot, three sessions waiting: a run that raises before it ever waits, then one
    that times out, then one that answers. Each ends as it would alone, the one slot goes
    from run to run, and the journal records each outcome."""

    async def varied(batch: cb.Batch, reply: cb.Reply) -> None:
        if batch.text == "boom":
            raise RuntimeError("agent bug")
        if batch.text == "slow":
            await trio.sleep(10)
        await reply.send("ok")

    store = cb.MemoryStore()
    chat = FakeConnector()
    said = [chat.message(text, chat=text) for text in ("boom", "slow", "fine")]
    bridge = make_bridge(varied, chat, store=store, concurrency=1, run_timeout=2.0)
    async with running_bridge(bridge, fail_on_agent_error=False):
        chat.deliver(*said)
        assert (await chat.next_reply()).chat == "fine"
        stats = bridge.stats()
        assert (stats.runs, stats.failures, stats.timeouts) == (3, 2, 1)
    entries = [await store.journal_entry(journal_key(m)) for m in said]
    assert [(e.state, e.error) for e in entries if e is not None] == [
        ("failed", "RuntimeError: agent bug"),
        ("failed", "agent timed out after 2.0 s"),
        ("done", None),
    ]


async def test_run_timeout_cancels_and_records(autojump_clock: trio.testing.MockClock) -> None:
    async def stuck(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep_forever()

    store = cb.MemoryStore()
    chat = FakeConnector()
    async with running_bridge(
        make_bridge(stuck, chat, store=store, run_timeout=30.0), fail_on_agent_error=False
    ) as bridge:
        message = await chat.say("hello")
        await trio.sleep(40)
        assert bridge.stats().timeouts == 1
    entry = await store.journal_entry(("fake", "bot", message.id))
    assert entry is not None and entry.error == "agent timed out after 30.0 s"


async def test_shutdown_flushes_pending_sessions(autojump_clock: trio.testing.MockClock) -> None:
    store = cb.MemoryStore()
    chat = FakeConnector()
    bridge = make_bridge(echo, chat, store=store, debounce=cb.Debounce(window=600))
    async with running_bridge(bridge):
        await chat.say("a", chat="one")
        await chat.say("b", chat="two")
        await trio.sleep(1)
        assert chat.sent == []
    assert sorted(r.text for r in chat.sent) == ["a", "b"]
    assert await store.journal_pending() == []


async def test_runs_that_finished_as_the_bridge_is_cancelled_are_marked_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Done-marks are written a turn after the runs, those of a turn together: a bridge
    cancelled in between still records them, so answered messages never replay; a failure
    keeps its error, and a run cut off stays pending."""
    store = cb.MemoryStore()
    chat = FakeConnector()
    with trio.CancelScope() as scope:

        async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
            text = batch.latest.text
            if text == "slow":
                await trio.sleep_forever()
            await trio.sleep(2 if text == "last" else 1)
            if text == "last":  # the bridge cancelled as this run ends, no checkpoint between
                scope.cancel()
            elif text == "bad":
                raise ValueError("bad input")

        bridge = make_bridge(agent, chat, store=store, debounce=cb.Debounce(window=0))
        async with running_bridge(bridge, fail_on_agent_error=False):
            for text in ["slow", "ok", "bad", "last"]:
                await chat.say(text, chat=text, id=text)
            await trio.sleep_forever()
    states = {}
    for text in ["slow", "ok", "bad", "last"]:
        entry = await store.journal_entry(("fake", "bot", text))
        assert entry is not None
        states[text] = (entry.state, entry.error)
    assert states == {
        "slow": ("pending", None),
        "ok": ("done", None),
        "bad": ("failed", "ValueError: bad input"),
        "last": ("done", None),
    }
    assert bridge.stats().abandoned == 1


async def test_shutdown_grace_leaves_unfinished_runs_for_replay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(100)

    store = cb.MemoryStore()
    chat = FakeConnector()
    async with running_bridge(make_bridge(slow, chat, store=store, shutdown_grace=5)) as bridge:
        message = await chat.say("a")
        await trio.sleep(2)
    assert bridge.stats().abandoned == 1
    assert await store.journal_pending() == [message]
    assert trio.current_time() < 20


@pytest.mark.parametrize("graceful", [True, False])
async def test_a_run_that_ignores_cancellation_is_reported_and_waited_for(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, graceful: bool
) -> None:
    """An agent shielded from cancellation cannot be stopped (Trio ends no task from outside):
    the bridge waits for it, and says so, naming its session, ten seconds past the stop's
    grace (none when cancelled). The bridge used to wait in silence."""

    async def deaf(batch: cb.Batch, reply: cb.Reply) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(1000)

    store = cb.MemoryStore()
    chat = FakeConnector()
    bridge = make_bridge(deaf, chat, store=store, shutdown_grace=5)
    bridge_scope = trio.CancelScope()

    async def run_bridge(task_status: trio.TaskStatus[None]) -> None:
        with bridge_scope:
            await bridge.run(task_status=task_status)

    with trio.fail_after(2000):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bridge)
            message = await chat.say("a", chat="deaf")
            await trio.sleep(2)  # the run has started
            stopped = trio.current_time()
            if graceful:
                bridge.shutdown()
            else:
                bridge_scope.cancel()
            await trio.sleep(5 * graceful + 9.5)
            assert "ignore cancellation" not in caplog.text
            await trio.sleep(1)
            (record,) = [r for r in caplog.records if "ignore cancellation" in r.message]
            assert record.levelname == "ERROR" and "fake:bot:deaf" in record.message
        assert trio.current_time() - stopped >= 998  # waited for the run, as it must
    entry = await store.journal_entry(journal_key(message))
    assert entry is not None and entry.state == "done"  # it returned in the end: handled


async def test_keyboard_interrupt_in_an_agent_stops_the_bridge_leaving_its_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """KeyboardInterrupt out of an agent stops the bridge (it is the process's, not the
    run's): the message stays pending, to replay at the next start."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise KeyboardInterrupt

    store = cb.MemoryStore()
    chat = FakeConnector()
    with pytest.raises(KeyboardInterrupt):  # bare: `except KeyboardInterrupt` catches it
        async with running_bridge(make_bridge(agent, chat, store=store)):
            message = await chat.say("hi")
            await trio.sleep(5)
    assert await store.journal_pending() == [message]


async def test_system_exit_from_an_agent_reaches_the_caller_bare_with_its_traceback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SystemExit (or KeyboardInterrupt) raised in an agent came out of `bridge.run` and
    `open_bridge` in five nested exception groups (Trio's nurseries): `except SystemExit`
    never caught it. It now comes out as itself, its traceback down to the agent; an error
    of another kind still comes in Trio's groups."""

    async def leaves(batch: cb.Batch, reply: cb.Reply) -> None:
        raise SystemExit(3)

    store = cb.MemoryStore()
    chat = FakeConnector()
    await store.journal_add([chat.message("hi")])  # replayed at the start: the agent runs
    with pytest.raises(SystemExit) as caught:
        await make_bridge(leaves, chat, store=store).run()
    assert caught.value.code == 3
    assert caught.traceback[-1].name == "leaves"
    chat = FakeConnector()
    with pytest.raises(SystemExit):
        async with cb.open_bridge([chat], leaves, store=cb.MemoryStore()):
            await chat.say("hi")
            await trio.sleep(5)


async def test_a_latency_listener_that_raises_is_logged_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A latency listener's bug is logged once with its traceback; runs and replies go on.
    It ended the bridge at the first run (and, its message journaled, at every start)."""
    calls: list[str] = []

    def broken(kind: str, seconds: float) -> None:
        calls.append(kind)
        raise RuntimeError("metrics bug")

    chat = FakeConnector()
    bridge = make_bridge(echo, chat)
    bridge.add_latency_listener(broken)
    async with running_bridge(bridge):
        for text in ["one", "two"]:
            await chat.say(text, chat=text)
            assert (await chat.next_reply()).text == text
    assert calls == ["agent_start", "reply"] * 2
    assert bridge.stats().failures == 0
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "latency listener" in record.message and record.exc_info is not None


async def test_restart_replays_unfinished_exactly_once(tmp_path: Path) -> None:
    # SQLite works in a thread, and an autojump clock would jump while it does: this test uses
    # the real clock and never waits on it (a graceful shutdown flushes every session at once).
    db = tmp_path / "bridge.db"
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.text for m in batch.messages)
        await reply.send("ok")

    never = cb.Debounce(window=math.inf, max_delay=None)
    with trio.fail_after(10):
        # First life: two messages are accepted, then the process dies before any agent runs.
        first = FakeConnector()
        async with trio.open_nursery() as nursery:
            bridge = make_bridge(agent, first, store=cb.SQLiteStore(db), debounce=never)
            await nursery.start(bridge.run)
            await first.say("one", id="1")
            await first.say("two", id="2")
            nursery.cancel_scope.cancel()  # a hard stop: no flush, no agent
        assert handled == []

        # Second life: the journal replays both; the platform redelivers "2" (a duplicate).
        second = FakeConnector()
        bridge = make_bridge(agent, second, store=cb.SQLiteStore(db), debounce=never)
        async with running_bridge(bridge):
            second.deliver(second.message("two", id="2"))
            await second.say("three", id="3")
        assert sorted(handled) == ["one", "three", "two"]
        stats = bridge.stats()
        assert (stats.replayed, stats.duplicates, stats.received) == (2, 1, 1)

        # Third life: nothing left to replay.
        bridge = make_bridge(agent, FakeConnector(), store=cb.SQLiteStore(db), debounce=never)
        async with running_bridge(bridge):
            pass
        assert bridge.stats().replayed == 0
        assert sorted(handled) == ["one", "three", "two"]


class TimedFake(FakeConnector):
    """Records when each run starts."""

    def __init__(self) -> None:
        super().__init__()
        self.started_at: list[float] = []
        self.restarted = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at.append(trio.current_time())
        self.restarted.set()
        self.restarted = trio.Event()
        await super().run(task_status=task_status)


async def test_connector_restarts_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    chat = TimedFake()
    backoff = cb.Backoff(initial=1.0, multiplier=2.0, maximum=5.0, jitter=0.0, healthy_after=60)
    async with running_bridge(make_bridge(echo, chat, backoff=backoff)) as bridge:
        delays: list[float] = []

        async def crash_and_time_restart() -> None:
            chat.crash()
            crashed_at = trio.current_time()
            await chat.restarted.wait()
            delays.append(chat.started_at[-1] - crashed_at)

        for _ in range(5):
            await crash_and_time_restart()
        status = bridge.status()["fake:bot"]
        assert status.restarts == 5
        assert status.last_error == "ConnectionError: injected crash"
        assert bridge.stats().reconnects == 5
        # a connector that stays healthy long enough starts again from the initial delay
        await trio.sleep(61)
        await crash_and_time_restart()
        # and it still works
        await chat.say("still here")
        assert (await chat.next_reply()).text == "still here"
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 1.0]


def test_backoff_survives_endless_failures() -> None:
    assert cb.Backoff(maximum=60, jitter=0).delay(10_000) == 60


def test_backoff_jitter_stays_in_its_band() -> None:
    low = cb.Backoff(initial=10, jitter=0.2, random=lambda: 0.0)
    high = cb.Backoff(initial=10, jitter=0.2, random=lambda: 0.999999)
    assert low.delay(1) == pytest.approx(8.0)
    assert high.delay(1) == pytest.approx(12.0, rel=1e-4)


class FailingConnector(Connector):
    def __init__(self, account: str, error: Exception) -> None:
        self.platform = "broken"
        self.account = account
        self.error = error
        self.attempts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.attempts += 1
        raise self.error

    async def send(self, target: cb.Message, text: str) -> None:
        raise AssertionError("never called")


async def test_fatal_error_stops_that_connector_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broken = FailingConnector("x", cb.FatalConnectorError("bad secret for account x: fix config"))
    chat = FakeConnector()
    async with running_bridge(make_bridge(echo, broken, chat)) as bridge:
        await trio.sleep(100)
        await chat.say("hello")
        assert (await chat.next_reply()).text == "hello"
        status = bridge.status()
    assert broken.attempts == 1
    assert status["broken:x"].state == "failed"
    assert status["broken:x"].detail == "bad secret for account x: fix config"
    assert status["fake:bot"].state == "running"


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(cb.ConfigurationError, match="given twice"):
        cb.Bridge(connectors=[FakeConnector(), FakeConnector()], agent=echo, store=cb.MemoryStore())
    with pytest.raises(cb.ConfigurationError, match="on_busy"):
        cb.Bridge(connectors=[], agent=echo, store=cb.MemoryStore(), on_busy="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "value", "bound"),
    [
        # concurrency 0: no run ever started, every message waited in silence (a hang).
        ("concurrency", 0, "a whole number >= 1"),
        ("concurrency", 1.5, "a whole number >= 1"),
        ("queue_size", 0, "a whole number >= 1"),
        ("queue_size", -1, "a whole number >= 1"),
        # These failed only once running, out of a task group (or the run_timeout's scope).
        ("run_timeout", math.nan, "a number > 0"),
        ("run_timeout", -1.0, "a number > 0"),
        ("run_timeout", 0, "a number > 0"),
        ("shutdown_grace", math.nan, "a number >= 0"),
        ("shutdown_grace", -5.0, "a number >= 0"),
        ("close_timeout", math.nan, "a number >= 0"),
        ("journal_retention", math.nan, "a number >= 0"),
        ("journal_retention", -1.0, "a number >= 0"),
    ],
)
def test_absurd_settings_are_refused_when_the_bridge_is_built(
    setting: str, value: float, bound: str
) -> None:
    with pytest.raises(cb.ConfigurationError, match=f"Bridge {setting} must be {bound}, got"):
        make_bridge(echo, **{setting: value})


@pytest.mark.parametrize(
    "settings",
    [
        {"run_timeout": None},
        {"run_timeout": 0.001, "shutdown_grace": 0, "close_timeout": 0, "journal_retention": 0},
        {"shutdown_grace": math.inf, "close_timeout": math.inf, "journal_retention": math.inf},
        {"concurrency": 1, "queue_size": 1},
    ],
)
def test_edge_settings_are_accepted(settings: dict[str, object]) -> None:
    bridge = make_bridge(echo, **settings)
    assert all(getattr(bridge, name) == value for name, value in settings.items())


async def test_send_failure_is_a_failed_run_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = FakeConnector()
    async with running_bridge(make_bridge(echo, chat), fail_on_agent_error=False) as bridge:
        chat.fail_sends(1)
        await chat.say("lost")
        await trio.sleep(5)
        await chat.say("works")
        assert (await chat.next_reply()).text == "works"
        assert bridge.stats().failures == 1


@pytest.mark.parametrize("after", [0.0, 0.5])
async def test_a_bridge_cancelled_as_it_starts_stops(
    autojump_clock: trio.testing.MockClock, after: float
) -> None:
    """Cancelled before its first checkpoint (the store opened without waiting), or soon
    after, ``run`` returns: it hung, its store held open by a shielded wait."""
    with trio.fail_after(5):
        with trio.move_on_after(after) as cancelled:
            await make_bridge().run()
    assert cancelled.cancelled_caught


async def test_a_bridge_runs_once(autojump_clock: trio.testing.MockClock) -> None:
    bridge = make_bridge(echo)
    async with running_bridge(bridge):
        pass
    with pytest.raises(cb.ChatBridgeError, match="runs once"):
        await bridge.run()


async def test_a_message_of_another_account_is_refused_before_the_journal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat, store = FakeConnector(), cb.MemoryStore()
    async with running_bridge(make_bridge(echo, chat, store=store)) as bridge:
        chat.deliver(FakeConnector("other").message("for whom?"))
        await trio.sleep(5)
        status = bridge.status()["fake:bot"]
    assert status.restarts >= 1
    assert status.last_error is not None
    assert "ConfigurationError" in status.last_error
    assert "put a message of fake:other" in status.last_error
    assert "account='bot'" in status.last_error
    assert await store.journal_pending() == []  # never journaled (then lost at dispatch)
    assert chat.sent == []


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"parts": [cb.Text("hi")]}, "whose parts is a list: give a tuple (tuple(parts))"),
        ({"reply_handle": {"chat": "c"}}, "whose reply_handle is a dict: give a Handle"),
        # a chat that is no Chat stopped the whole bridge (the debouncer reads chat.id)
        ({"chat": None}, "whose chat is a NoneType: give a Chat (Chat(id))"),
        ({"chat": {"id": "c"}}, "whose chat is a dict: give a Chat (Chat(id))"),
    ],
)
async def test_a_message_whose_fields_are_not_of_their_types_is_refused_at_put(
    autojump_clock: trio.testing.MockClock, change: dict[str, Any], said: str
) -> None:
    """Checked where every message enters the bridge, before the journal; building a
    message runs no check of ours (the hot path of every connector). A chat that is no Chat
    stopped the whole bridge, every account's connector with it."""
    chat, other, store = FakeConnector(), FakeConnector("other"), cb.MemoryStore()
    wrong = msgspec.structs.replace(chat.message("hi", id="m1"), **change)
    async with running_bridge(make_bridge(echo, chat, other, store=store)) as bridge:
        chat.deliver(wrong)
        await trio.sleep(5)
        status = bridge.status()["fake:bot"]
        await other.say("still here")  # the other account's connector goes on
        assert (await other.next_reply()).text == "still here"
    assert status.last_error is not None
    assert f"ConfigurationError: connector fake:bot put message m1 {said}" in status.last_error
    assert await store.journal_pending() == []
    assert chat.sent == []


async def test_connectors_get_the_bridges_backoff(autojump_clock: trio.testing.MockClock) -> None:
    chat = FakeConnector()
    backoff = cb.Backoff(initial=3.0, jitter=0.0)
    async with running_bridge(make_bridge(echo, chat, backoff=backoff)):
        assert chat.ctx.backoff is backoff


def test_a_connector_without_platform_or_account_is_named_in_a_clear_error() -> None:
    class Nameless(Connector):
        async def run(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
        ) -> None:
            raise AssertionError("never started")

        async def send(self, target: cb.Message, text: str) -> None:
            raise AssertionError("never sends")

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise AssertionError("never runs")

    with pytest.raises(cb.ConfigurationError, match=r"Nameless must set self.platform"):
        cb.Bridge(connectors=[Nameless()], agent=agent)


class _PageFake(Connector):
    """Puts whole pages, as a long poll would; remembers which pages the inbox accepted."""

    def __init__(self, pages: list[list[cb.Message]]) -> None:
        self.platform, self.account = "fake", "bot"
        self.pages = pages
        self.accepted: list[int] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        for number, page in enumerate(self.pages):
            await self.ctx.put(page)
            self.accepted.append(number)
            await trio.sleep(0.5)
        await trio.sleep_forever()

    async def send(self, target: cb.Message, text: str) -> None:
        pass


@given(
    pages=st.lists(
        st.lists(st.integers(0, 3), min_size=1, max_size=6),  # each message's chat
        min_size=1,
        max_size=6,
    ),
    crash_at=st.floats(0, 6),
    run_seconds=st.sampled_from([0.0, 0.3, 2.0]),
    kind=st.sampled_from(["memory", "sqlite"]),
)
def test_a_crash_at_any_point_loses_nothing_and_repeats_nothing_finished(
    pages: list[list[int]], crash_at: float, run_seconds: float, kind: str
) -> None:
    """A bridge on a store that outlives it (the same MemoryStore, or the same SQLite file
    opened anew by each life), cancelled at any moment, then started again while the
    platform delivers every page again: each message's run finishes exactly once over both
    lives (a run cut off by the crash may start again, a finished one never does), and
    nothing is left pending."""
    fake = FakeConnector()
    said = [
        [fake.message(f"{p}.{n}", chat=f"c{chat}", id=f"{p}.{n}") for n, chat in enumerate(page)]
        for p, page in enumerate(pages)
    ]
    memory = cb.MemoryStore()
    directory = tempfile.TemporaryDirectory()

    def store() -> cb.Store:
        if kind == "memory":
            return memory
        return cb.SQLiteStore(Path(directory.name) / "journal.db", threaded=False)

    finished: list[str] = []
    started_again: set[str] = set()
    second_life = False

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        if second_life:
            started_again.update(m.id for m in batch.messages)
        await trio.sleep(run_seconds)
        finished.extend(m.id for m in batch.messages)

    async def main() -> None:
        nonlocal second_life
        first = _PageFake(said)
        with trio.move_on_after(crash_at):  # the crash: no flush, no grace
            await make_bridge(agent, first, store=store(), debounce=cb.Debounce(window=0.2)).run()
        finished_before = set(finished)
        second_life = True
        again = _PageFake(said)  # the platform delivers every page again
        async with running_bridge(make_bridge(agent, again, store=store())):
            await trio.sleep(0.5 * len(said) + 5)
        assert not finished_before & started_again
        assert sorted(finished) == sorted(m.id for page in said for m in page)
        async with store() as journal:
            assert await journal.journal_pending() == []

    with directory:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _Typing(FakeConnector):
    """Holds a typing indicator while its agent runs (as WeChat's connector does)."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.log: list[str] = []

    @asynccontextmanager
    async def _typing(self, batch: cb.Batch) -> AsyncIterator[None]:
        self.log.append(f"typing {batch.latest.id}")
        try:
            yield
        finally:
            self.log.append(f"stopped {batch.latest.id}")

    def running(self, batch: cb.Batch) -> AbstractAsyncContextManager[None]:
        if batch.latest.text == "quiet":  # nothing to show for this one (WeCom's single callbacks)
            return super().running(batch)
        return self._typing(batch)


async def test_a_connector_holds_its_running_context_around_each_run_and_only_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    typing, plain = _Typing("typing"), FakeConnector("plain")

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        if isinstance(reply.connector, _Typing):
            reply.connector.log.append(f"agent {batch.latest.id}")
        await reply.send("ok")

    for timeout in (None, 30.0):  # without a run_timeout, and with one
        typing.log.clear()
        async with running_bridge(make_bridge(agent, typing, plain, run_timeout=timeout)):
            await typing.say("a", id=f"t{timeout}")
            await plain.say("b", id=f"p{timeout}")
            await typing.next_reply()
            await plain.next_reply()
            await typing.say("quiet", id=f"q{timeout}")
            await typing.next_reply()
        assert typing.log == [
            f"typing t{timeout}",
            f"agent t{timeout}",
            f"stopped t{timeout}",
            f"agent q{timeout}",
        ]


class _Seeing(FakeConnector):
    """Holds a task group while its agent runs (as WeChat's typing indicator does), and logs
    how each run left it: ``failed`` (an Exception: close what the run left open) or
    ``cancelled`` (leave it: the next run or the next start answers it)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[str] = []

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                yield
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self.ends.append("cancelled" if find_error(exc, trio.Cancelled) else "failed")
            raise
        self.ends.append("returned")

    def running(self, batch: cb.Batch) -> AbstractAsyncContextManager[None]:
        return self._held()


async def test_a_connector_sees_a_timed_out_run_fail_and_an_interrupted_one_cancelled(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A run ended by run_timeout is journaled failed and never run again: the connector's
    running() context sees it fail (it closes what a failed run leaves open: a WeCom
    callback), not the Cancelled of an interrupt or a shutdown, whose messages another run
    answers. Even through a task group, the timeout is counted once, as a timeout only."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        if batch.latest.text == "answer":
            await reply.send("ok")
        else:
            await trio.sleep_forever()

    chat = _Seeing()
    bridge = make_bridge(agent, chat, on_busy="interrupt", run_timeout=30.0, shutdown_grace=5.0)
    async with running_bridge(bridge, fail_on_agent_error=False):
        await chat.say("slow", chat="a")
        await trio.sleep(40)
        assert chat.ends == ["failed"]  # timed out
        await chat.say("slow", chat="b")
        await trio.sleep(5)
        await chat.say("answer", chat="b")  # interrupts, then answers
        await chat.next_reply()
        await trio.sleep(1)  # (the run ends after its reply)
        assert chat.ends == ["failed", "cancelled", "returned"]
        await chat.say("slow", chat="c")
        await trio.sleep(5)
        stats = bridge.stats()
    assert chat.ends == ["failed", "cancelled", "returned", "cancelled"]  # shut down
    assert (stats.timeouts, stats.failures, stats.interrupts) == (1, 1, 1)
    assert not [r for r in caplog.records if r.getMessage().startswith("agent failed")]


class _Stuck(FakeConnector):
    """A connector whose ``running()`` never finishes entering ("enter") or leaving ("leave")."""

    @asynccontextmanager
    async def _held(self, batch: cb.Batch) -> AsyncIterator[None]:
        if batch.latest.text == "enter":
            await trio.sleep_forever()
        try:
            yield
        finally:
            if batch.latest.text == "leave":
                await trio.sleep_forever()

    def running(self, batch: cb.Batch) -> AbstractAsyncContextManager[None]:
        return self._held(batch)


async def test_a_running_context_stuck_entering_or_leaving_is_ended_past_run_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """run_timeout bounds a run's connector context too (10 s more to enter and leave it): a
    connector stuck in it cannot hold a chat for good."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(f"ok {batch.latest.text}")

    chat = _Stuck()
    bridge = make_bridge(agent, chat, run_timeout=30.0)
    async with running_bridge(bridge, fail_on_agent_error=False):
        await chat.say("enter", chat="a")
        await chat.say("leave", chat="b")
        assert (await chat.next_reply()).text == "ok leave"
        await trio.sleep(45)  # run_timeout, the 10 s to leave, and some
        stats = bridge.stats()
        await chat.say("again", chat="a")
        await chat.say("again", chat="b")
        first, second = await chat.next_reply(), await chat.next_reply()
        assert {(first.chat, first.text), (second.chat, second.text)} == {
            ("a", "ok again"),
            ("b", "ok again"),
        }
    assert (stats.timeouts, stats.failures) == (2, 2)


class _MarkFails(cb.MemoryStore):
    """A store whose journal_done raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def journal_done(
        self, messages: Sequence[cb.Message], *, error: str | None = None
    ) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "traced"),
    [(cb.StoreError("disk full (test)"), False), (KeyError("a bug in a custom store"), True)],
)
async def test_a_done_mark_that_fails_is_counted_and_a_bug_shows_its_traceback(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    traced: bool,
) -> None:
    """A store that cannot mark (a StoreError: it says why) is one warning line; any other
    error is a bug in a store, logged with its traceback to be found and fixed."""
    chat = FakeConnector()
    async with running_bridge(make_bridge(echo, chat, store=_MarkFails(error))) as bridge:
        await chat.say("hi")
        await chat.next_reply()
        await trio.sleep(5)
        assert bridge.stats().other["journal.unmarked"] == 1
    [record] = [r for r in caplog.records if "not marked done" in r.getMessage()]
    assert record.levelname == "WARNING"
    assert (record.exc_info is not None) is traced


class _Swallows(FakeConnector):
    """A connector whose ``running()`` swallows whatever ends the run, Cancelled included
    (a connector's bug)."""

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        with suppress(BaseException):
            yield

    def running(self, batch: cb.Batch) -> AbstractAsyncContextManager[None]:
        return self._held()


@pytest.mark.parametrize("on_busy", ["queue", "interrupt"])
async def test_a_run_cut_off_whose_cancellation_is_swallowed_is_not_marked_done(
    autojump_clock: trio.testing.MockClock, on_busy: str
) -> None:
    """A run the shutdown grace cut off stays pending (replayed, counted abandoned) even when
    the connector's running() swallows the Cancelled that came out of the agent: it was
    marked done, so its messages were never answered. An interrupted run, likewise, runs
    again with the newer batch instead of being marked done. (A run that returns without a
    Cancelled coming out of the agent is handled: see the two tests above.)"""
    seen: list[list[str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.append([m.text for m in batch.messages])
        if batch.latest.text != "answer":
            await trio.sleep_forever()
        await reply.send("ok")

    store = cb.MemoryStore()
    chat = _Swallows()
    bridge = make_bridge(agent, chat, store=store, shutdown_grace=5.0, on_busy=on_busy)
    async with running_bridge(bridge):
        await chat.say("hello", id="1")
        await trio.sleep(3)
        if on_busy == "interrupt":
            await chat.say("answer", id="2")
            assert (await chat.next_reply()).text == "ok"
            assert seen == [["hello"], ["hello", "answer"]]
            await chat.say("later", id="3")
            await trio.sleep(3)
    stats = bridge.stats()
    pending = [m.id for m in await store.journal_pending()]
    assert pending == (["3"] if on_busy == "interrupt" else ["1"])
    assert stats.abandoned == 1
    assert stats.interrupts == (1 if on_busy == "interrupt" else 0)

from __future__ import annotations

import gc
import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import attrs
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector

fake = FakeConnector()


def msg(chat: str, id: str) -> cb.Message:
    return fake.message(id, chat=chat, id=id)


@attrs.define
class Harness:
    send: trio.MemorySendChannel[tuple[cb.Message, ...]]
    debouncer: cb.Debouncer
    released: list[tuple[float, cb.Batch]] = attrs.field(factory=list)

    async def say(self, chat: str, *ids: str) -> None:
        await self.send.send(tuple(msg(chat, i) for i in ids))

    def batches(self) -> list[tuple[float, str, list[str]]]:
        return [(t, b.session.split(":")[-1], [m.id for m in b.messages]) for t, b in self.released]


@asynccontextmanager
async def debouncing(policy: cb.Debounce, **options: Any) -> AsyncIterator[Harness]:
    send_in, recv_in = trio.open_memory_channel[tuple[cb.Message, ...]](100)
    send_out, recv_out = trio.open_memory_channel[cb.Batch](100)
    debouncer = cb.Debouncer(policy, **options)
    harness = Harness(send_in, debouncer)

    async def collect() -> None:
        async for batch in recv_out:
            harness.released.append((trio.current_time(), batch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(debouncer.run, recv_in, send_out)
        nursery.start_soon(collect)
        async with send_in:
            yield harness


async def test_burst_in_one_session_becomes_one_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with debouncing(cb.Debounce(window=3.0)) as h:
        for i in range(5):
            await h.say("a", f"m{i}")
            await trio.sleep(1.0)
        await trio.sleep(10)
    assert h.batches() == [(7.0, "a", ["m0", "m1", "m2", "m3", "m4"])]


async def test_sessions_are_independent(autojump_clock: trio.testing.MockClock) -> None:
    async with debouncing(cb.Debounce(window=2.0)) as h:
        await h.say("a", "a1")
        await trio.sleep(1.0)
        await h.say("b", "b1")
        await trio.sleep(1.5)
        await h.say("b", "b2")
        await trio.sleep(10)
    assert h.batches() == [(2.0, "a", ["a1"]), (4.5, "b", ["b1", "b2"])]


async def test_each_message_rearms_the_window(autojump_clock: trio.testing.MockClock) -> None:
    async with debouncing(cb.Debounce(window=3.0, max_delay=None)) as h:
        for i in range(10):
            await h.say("a", f"m{i}")
            await trio.sleep(2.9)
        await trio.sleep(10)
    assert len(h.batches()) == 1
    assert h.batches()[0][0] == pytest.approx(9 * 2.9 + 3.0)


async def test_max_delay_caps_the_wait_from_the_first_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with debouncing(cb.Debounce(window=3.0, max_delay=5.0)) as h:
        for i in range(6):
            await h.say("a", f"m{i}")
            await trio.sleep(2.0)
        await trio.sleep(10)
    # m0..m2 arrive at 0, 2, 4: released at the cap (5); m3..m5 (6, 8, 10) at 6 + 5.
    assert h.batches() == [(5.0, "a", ["m0", "m1", "m2"]), (11.0, "a", ["m3", "m4", "m5"])]


async def test_max_messages_releases_early(autojump_clock: trio.testing.MockClock) -> None:
    async with debouncing(cb.Debounce(window=3.0, max_messages=3)) as h:
        await h.say("a", "m1", "m2")
        await trio.sleep(1)
        await h.say("a", "m3", "m4")
        await trio.sleep(10)
    assert h.batches() == [(1.0, "a", ["m1", "m2", "m3"]), (4.0, "a", ["m4"])]


async def test_end_of_input_flushes_every_pending_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with debouncing(cb.Debounce(window=60.0)) as h:
        await h.say("a", "a1")
        await h.say("b", "b1", "b2")
        await trio.sleep(1)
    # leaving the block closed the input: both sessions released at once, nothing lost
    assert sorted(h.batches()) == [(1.0, "a", ["a1"]), (1.0, "b", ["b1", "b2"])]


async def test_after_drain_late_messages_are_delivered_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with debouncing(cb.Debounce(window=60.0)) as h:
        await h.say("a", "a1")
        await trio.sleep(1)
        h.debouncer.drain()
        await trio.sleep(1)
        assert h.batches() == [(1.0, "a", ["a1"])]
        await h.say("b", "late")
        await trio.sleep(1)
        assert h.batches()[-1] == (2.0, "b", ["late"])
        assert h.debouncer.pending_sessions == 0


async def test_a_full_debouncer_still_files_messages_for_sessions_it_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Holding max_pending (1) session, a second message from that chat is filed at once, so
    # the burst stays one batch; a new chat meanwhile waits parked (counted) for the place.
    waits: list[float] = []
    full = {"max_pending": 1, "on_full": lambda: waits.append(trio.current_time())}
    async with debouncing(cb.Debounce(window=3.0), **full) as h:
        await h.say("a", "a1")
        await trio.sleep(1.0)
        await h.say("b", "b1")  # a new chat: parked
        await h.say("a", "a2")  # a chat it holds: re-arms a's window to 4.0
        await trio.sleep(10.0)
    # b took a's place at 4.0 and, quiet since 1.0, left at once
    assert h.batches() == [(4.0, "a", ["a1", "a2"]), (4.0, "b", ["b1"])]
    assert waits == [1.0]


@pytest.mark.parametrize("count", [1024, 1025, 1280])
async def test_chats_up_to_the_bound_and_its_overflow_stall_nobody(
    count: int, autojump_clock: trio.testing.MockClock
) -> None:
    # Up to 1,280 chats at once into a bridge's default bound (1,024, and 256 parked), each
    # speaking again a second later: every burst leaves whole at the end of its window
    # (before, every second message waited for the first round to leave: 2 s a round).
    chats = [f"c{n}" for n in range(count)]
    async with debouncing(cb.Debounce(window=2.0), max_pending=1024) as h:
        for round in range(2):
            for chat in chats:
                await h.say(chat, f"{chat}-{round}")
            await trio.sleep(1.0)
        await trio.sleep(10.0)
    assert sorted(h.batches()) == [
        (3.0, chat, [f"{chat}-0", f"{chat}-1"]) for chat in sorted(chats)
    ]


async def test_parked_sessions_take_free_places_oldest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    waits: list[float] = []
    full = {"max_pending": 1, "max_parked": 2, "on_full": lambda: waits.append(0)}
    async with debouncing(cb.Debounce(window=3.0, max_delay=None), **full) as h:
        await h.say("a", "a1")
        await trio.sleep(1.0)
        await h.say("b", "b1")  # parked first
        await h.say("c", "c1")  # parked second
        await trio.sleep(1.0)
        await h.say("c", "c2")  # joins c, still parked (c's window now ends at 5.0)
        await h.say("b", "b2")  # joins b (b's at 5.0 too)
        await h.say("a", "a2")  # held: a's window ends at 5.0
        await trio.sleep(10.0)
    # a leaves at 5.0; b, parked first, takes its place and, due, leaves; then c
    assert h.batches() == [
        (5.0, "a", ["a1", "a2"]),
        (5.0, "b", ["b1", "b2"]),
        (5.0, "c", ["c1", "c2"]),
    ]
    assert len(waits) == 2  # two chats parked


async def test_a_parked_session_keeps_its_own_window_once_it_has_a_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with debouncing(cb.Debounce(window=3.0, max_delay=None), max_pending=1) as h:
        await h.say("a", "a1")
        await trio.sleep(2.0)
        await h.say("b", "b1")  # parked at 2.0: its window ends at 5.0
        await trio.sleep(10.0)
    # a leaves at 3.0; b takes its place but is not due before 5.0
    assert h.batches() == [(3.0, "a", ["a1"]), (5.0, "b", ["b1"])]


async def test_a_parked_session_reaching_max_messages_leaves_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = cb.Debounce(window=3.0, max_messages=2)
    async with debouncing(policy, max_pending=1) as h:
        await h.say("a", "a1")
        await trio.sleep(1.0)
        await h.say("b", "b1", "b2", "b3")  # parked; two of them leave at once
        await trio.sleep(10.0)
    assert h.batches() == [(1.0, "b", ["b1", "b2"]), (3.0, "a", ["a1"]), (4.0, "b", ["b3"])]


async def test_with_the_overflow_full_reading_stops_at_a_new_chat_and_resumes_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    waits: list[float] = []
    full = {"max_pending": 1, "max_parked": 1, "on_full": lambda: waits.append(trio.current_time())}
    async with debouncing(cb.Debounce(window=3.0), **full) as h:
        # a held, b parked, c stops reading: a2 behind it waits, and so do later pages
        h.send.send_nowait((msg("a", "a1"), msg("b", "b1"), msg("c", "c1"), msg("a", "a2")))
        h.send.send_nowait((msg("b", "b2"),))
        await trio.sleep(1.0)
        assert h.debouncer.pending_sessions == 2
        await trio.sleep(10.0)
    # at 3.0 a leaves, b (due) takes its place and leaves; the page resumes: c held, a2
    # parked (a's new session), b2 stops reading; at 6.0 c leaves, a2 (due) takes its
    # place and leaves, and b2, read only now, starts its window
    assert h.batches() == [
        (3.0, "a", ["a1"]),
        (3.0, "b", ["b1"]),
        (6.0, "c", ["c1"]),
        (6.0, "a", ["a2"]),
        (9.0, "b", ["b2"]),
    ]
    assert waits == [0.0, 0.0, 3.0, 3.0]  # b parked, c stopped; a2 parked, b2 stopped


async def test_a_page_of_many_new_chats_resumes_flat_and_counts_each_wait_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A replay sends every pending message as one page: with more new chats than it can
    # hold and park, reading stops at nearly every chat of it. Each stop keeps the stopped
    # message and the page's own iterator (no wrapper per stop: a wrapper each time made
    # every later message pass through all of them, quadratic CPU); each chat leaves once, in
    # order, and each chat made to wait is counted once (all but the first here).
    chats = [f"c{n}" for n in range(5000)]
    waits: list[float] = []
    full = {"max_pending": 1, "max_parked": 1, "on_full": lambda: waits.append(0)}
    chains = _live_chains()
    async with debouncing(cb.Debounce(window=1.0), **full) as h:
        h.send.send_nowait(tuple(msg(chat, f"{chat}-1") for chat in chats))
        await trio.sleep(1000.5)  # half-way through the page, reading stopped
        assert _live_chains() - chains <= 1  # one page in hand, however often reading stopped
        await trio.sleep(2000.0)
    assert h.debouncer.pending_sessions == 0
    assert [(chat, ids) for _, chat, ids in h.batches()] == [(c, [f"{c}-1"]) for c in chats]
    assert len(waits) == len(chats) - 1


def _live_chains() -> int:
    return sum(isinstance(o, itertools.chain) for o in gc.get_objects())


async def test_a_chat_stopped_at_and_then_parked_is_counted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    waits: list[float] = []  # when on_full heard of a chat made to wait
    policy = cb.Debounce(window=3.0)

    def on_full() -> None:
        waits.append(trio.current_time())

    async with debouncing(policy, max_pending=1, max_parked=2, on_full=on_full) as h:
        await h.say("a", "a1")
        await trio.sleep(2.0)
        # b and c parked (their windows end at 5.0), d stops reading
        h.send.send_nowait((msg("b", "b1"), msg("c", "c1"), msg("d", "d1")))
        await trio.sleep(10.0)
    # at 3.0 a leaves and b takes its place (not due): d, read again, is parked (one place
    # in the overflow) but was counted already; at 5.0 b leaves, c (due) takes its place
    # and leaves, then d, read at 3.0, has its place until 6.0
    left = [(3.0, "a"), (5.0, "b"), (5.0, "c"), (6.0, "d")]
    assert h.batches() == [(at, chat, [f"{chat}1"]) for at, chat in left]
    assert waits == [2.0, 2.0, 2.0]  # b, c parked; d stopped (and not again when parked)


async def test_drain_releases_held_parked_and_stopped_messages_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    full = {"max_pending": 1, "max_parked": 1}
    async with debouncing(cb.Debounce(window=60.0), **full) as h:
        h.send.send_nowait((msg("a", "a1"), msg("b", "b1"), msg("c", "c1"), msg("b", "b2")))
        h.send.send_nowait((msg("a", "a2"),))
        await trio.sleep(1.0)
        assert h.batches() == []
        h.debouncer.drain()
        await trio.sleep(1.0)
        assert h.debouncer.pending_sessions == 0
        # nothing lost, nothing twice, each chat in order (b's two messages: one batch
        # each, b2 was behind the stop)
        assert h.batches() == [
            (1.0, "a", ["a1"]),
            (1.0, "b", ["b1"]),
            (1.0, "c", ["c1"]),
            (1.0, "b", ["b2"]),
            (1.0, "a", ["a2"]),
        ]


async def test_cancelled_with_parked_and_stopped_messages_it_closes_both_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Cancelled, it drops what it holds (journaled, it replays at the next start), sends
    # nothing in part, and closes both channels so neither side waits for it.
    send_in, recv_in = trio.open_memory_channel[tuple[cb.Message, ...]](10)
    send_out, recv_out = trio.open_memory_channel[cb.Batch](10)
    debouncer = cb.Debouncer(cb.Debounce(window=60.0), max_pending=1, max_parked=1)
    send_in.send_nowait((msg("a", "a1"), msg("b", "b1"), msg("c", "c1")))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(debouncer.run, recv_in, send_out)
        await trio.sleep(1.0)
        assert debouncer.pending_sessions == 2  # a held, b parked, c in hand
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.BrokenResourceError):
        send_in.send_nowait((msg("d", "d1"),))
    assert [batch async for batch in recv_out] == []


async def test_a_failing_session_key_costs_its_message_its_grouping_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ``Debounce.key`` that raises (or gives no string) for a message: that message goes
    to its chat's default session, counted and logged; the bridge and every other message go
    on. It ended the whole bridge, and the message, journaled, ended it again at every start."""

    def by_user(message: cb.Message) -> str:
        if message.text == "raise":
            raise ValueError("no user")
        if message.text == "number":
            return 7  # type: ignore[return-value]
        return message.sender.id

    handled: list[tuple[str, list[str]]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.append((batch.session, [m.text for m in batch.messages]))
        await reply.send("ok")

    chat = FakeConnector()
    store = cb.MemoryStore()
    debounce = cb.Debounce(window=1.0, key=by_user)
    async with cb.open_bridge([chat], agent, store=store, debounce=debounce) as bridge:
        for text in ["before", "raise", "number", "after"]:
            await chat.say(text, chat="room", user="ann")
        for _ in range(2):  # one batch a session
            await chat.next_reply()
        stats = bridge.stats()
    assert sorted(handled) == [("ann", ["before", "after"]), ("fake:bot:room", ["raise", "number"])]
    assert stats.other["debouncer.bad_keys"] == 2
    assert await store.journal_pending() == []


def test_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(cb.ConfigurationError, match="window"):
        cb.Debounce(window=-1)
    with pytest.raises(cb.ConfigurationError, match="max_messages"):
        cb.Debounce(max_messages=0)
    with pytest.raises(cb.ConfigurationError, match="window"):
        cb.Debounce(window=math.nan)


# -- property: the debouncer against a reference model --------------------------------------

# Arrivals happen on whole seconds and windows end on half seconds, so no release ever ties
# with an arrival and the order of the two is never up to the scheduler.
events = st.lists(
    st.tuples(st.integers(0, 4), st.sampled_from("abc"), st.integers(1, 3)), max_size=40
)


def reference(
    policy: cb.Debounce, script: Sequence[tuple[int, str, int]]
) -> list[tuple[float, str, list[str]]]:
    """What the debouncer should release, computed the obvious way, one event at a time."""
    out: list[tuple[float, str, list[str]]] = []
    open_: dict[str, tuple[float, float, list[str]]] = {}  # chat -> (first, last, ids)
    cap = math.inf if policy.max_delay is None else policy.max_delay

    def release_until(t: float) -> None:
        due = sorted(
            (min(last + policy.window, first + cap), chat)
            for chat, (first, last, _) in open_.items()
        )
        for deadline, chat in due:
            if deadline <= t:
                out.append((deadline, chat, open_.pop(chat)[2]))

    now, n = 0.0, 0
    for delay, chat, count in script:
        now += delay
        release_until(now)
        for _ in range(count):
            n += 1
            first, _, ids = open_.get(chat, (now, now, []))
            open_[chat] = (first, now, [*ids, f"m{n}"])
            if policy.max_messages is not None and len(open_[chat][2]) >= policy.max_messages:
                out.append((now, chat, open_.pop(chat)[2]))
    release_until(math.inf)
    return sorted(out)


@given(
    script=events,
    window=st.sampled_from([0.5, 1.5, 2.5]),
    max_delay=st.sampled_from([None, 0.5, 3.5, 6.5]),
    max_messages=st.sampled_from([None, 1, 2, 4]),
)
def test_debouncer_matches_reference_model(
    script: list[tuple[int, str, int]],
    window: float,
    max_delay: float | None,
    max_messages: int | None,
) -> None:
    policy = cb.Debounce(window=window, max_delay=max_delay, max_messages=max_messages)

    async def main() -> list[tuple[float, str, list[str]]]:
        async with debouncing(policy) as h:
            n = 0
            for delay, chat, count in script:
                await trio.sleep(delay)
                ids = [f"m{n + i + 1}" for i in range(count)]
                n += count
                await h.say(chat, *ids)
            await trio.sleep(100)
        return sorted(h.batches())

    actual = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert actual == reference(policy, script)


@attrs.define(eq=False)
class BoundWatch(trio.abc.Instrument):
    """Records the most sessions ``debouncer`` held (parked included) after any task step."""

    debouncer: cb.Debouncer
    most: int = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.most = max(self.most, self.debouncer.pending_sessions)


@given(
    script=st.lists(
        st.tuples(st.integers(0, 3), st.lists(st.sampled_from("abcde"), min_size=1, max_size=4)),
        max_size=25,
    ),
    window=st.sampled_from([0.5, 1.5, 2.5]),
    max_delay=st.sampled_from([None, 0.5, 3.5]),
    max_messages=st.sampled_from([None, 1, 2, 4]),
    max_pending=st.integers(1, 6),
    max_parked=st.integers(0, 2),
)
def test_a_bounded_debouncer_releases_each_message_once_in_order_within_its_bound(
    script: list[tuple[int, list[str]]],
    window: float,
    max_delay: float | None,
    max_messages: int | None,
    max_pending: int,
    max_parked: int,
) -> None:
    """Pages mixing five chats, into a debouncer holding few sessions: every message leaves
    exactly once, each chat's in the order they came, the sessions held and parked never
    exceed ``max_pending + max_parked``, and while it never filled (``on_full`` never
    called) it released what an unbounded debouncer does."""
    policy = cb.Debounce(window=window, max_delay=max_delay, max_messages=max_messages)
    waits: list[float] = []
    debouncer_options = {
        "max_pending": max_pending,
        "max_parked": max_parked,
        "on_full": lambda: waits.append(0),
    }
    sent: dict[str, list[str]] = {}
    events: list[tuple[int, str, int]] = []  # the same script, for the reference model
    n = 0
    for delay, chats in script:
        for i, chat in enumerate(chats):
            n += 1
            sent.setdefault(chat, []).append(f"m{n}")
            events.append((delay if i == 0 else 0, chat, 1))
    watch: list[BoundWatch] = []

    async def main() -> list[tuple[float, str, list[str]]]:
        with trio.fail_after(10_000):
            async with debouncing(policy, **debouncer_options) as h:
                watch.append(BoundWatch(h.debouncer))
                trio.lowlevel.add_instrument(watch[0])
                ids = iter(range(1, n + 1))
                for delay, chats in script:
                    await trio.sleep(delay)
                    await h.send.send(tuple(msg(chat, f"m{next(ids)}") for chat in chats))
                await trio.sleep(100)  # every deadline passes before the input ends
        return h.batches()

    released = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    by_chat: dict[str, list[str]] = {}
    for _, chat, ids in released:
        by_chat.setdefault(chat, []).extend(ids)
    assert by_chat == sent
    assert watch[0].most <= max_pending + max_parked
    if not waits:
        assert sorted(released) == reference(policy, events)


# -- sessions by account and chat -------------------------------------------------------------

accounts = [FakeConnector(account) for account in ("bot", "bot-2")] + [
    FakeConnector("bot", platform="other")
]


async def release_all(
    policy: cb.Debounce, pages: Sequence[tuple[cb.Message, ...]]
) -> list[cb.Batch]:
    """What a debouncer releases for ``pages``, each sent as one put, one second apart."""
    released: list[cb.Batch] = []
    send_in, recv_in = trio.open_memory_channel[tuple[cb.Message, ...]](len(pages) + 1)
    send_out, recv_out = trio.open_memory_channel[cb.Batch](math.inf)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cb.Debouncer(policy).run, recv_in, send_out)
        async with send_in:
            for page in pages:
                await send_in.send(page)
                await trio.sleep(1.0)
        async with recv_out:
            released.extend([batch async for batch in recv_out])
    return released


async def test_the_default_session_is_one_account_and_chat(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One put mixing accounts (a replay from the journal does) with one chat id in each.
    page = tuple(c.message(f"{i}", chat="same", id=f"{i}") for i, c in enumerate(accounts * 2))
    batches = await release_all(cb.Debounce(window=5.0), [page])
    assert sorted((b.session, [m.id for m in b.messages]) for b in batches) == [
        ("fake:bot-2:same", ["1", "4"]),
        ("fake:bot:same", ["0", "3"]),
        ("other:bot:same", ["2", "5"]),
    ]
    assert all(b.session == cb.session_key(m) for b in batches for m in b.messages)


async def test_a_key_of_ones_own_groups_by_it(autojump_clock: trio.testing.MockClock) -> None:
    user = accounts[0]
    pages: list[tuple[cb.Message, ...]] = [(user.message("a", chat="x", user="ann", id="1"),)]
    pages.append((user.message("b", chat="y", user="ann", id="2"), user.message(chat="y", id="3")))
    by_user = cb.Debounce(window=5.0, key=lambda m: m.sender.id)
    batches = await release_all(by_user, pages)
    assert sorted((b.session, [m.id for m in b.messages]) for b in batches) == [
        ("ann", ["1", "2"]),
        ("user", ["3"]),
    ]


@given(
    script=st.lists(
        st.lists(st.tuples(st.integers(0, 2), st.sampled_from("abc")), min_size=1, max_size=6),
        max_size=12,
    ),
    max_messages=st.sampled_from([None, 1, 3]),
)
def test_the_default_key_groups_as_session_key_does(
    script: list[list[tuple[int, str]]], max_messages: int | None
) -> None:
    """The default key's per-account maps release what a key of one's own computing the same
    string does (the general path), page for page."""
    ids = iter(range(10_000))
    pages = [
        tuple(accounts[a].message(chat=chat, id=str(next(ids))) for a, chat in page)
        for page in script
    ]

    def released(key: Callable[[cb.Message], str]) -> list[tuple[str, list[str]]]:
        policy = cb.Debounce(window=1.5, max_delay=2.5, max_messages=max_messages, key=key)
        batches = trio.run(
            release_all, policy, pages, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        return [(b.session, [m.id for m in b.messages]) for b in batches]

    assert released(cb.session_key) == released(lambda m: cb.session_key(m))


@given(platform=st.text(), account=st.text(), chat=st.text())
def test_the_default_key_decodes_back_to_its_session(
    platform: str, account: str, chat: str
) -> None:
    """The default key is injective over (platform, account, chat id): the first two colons
    split it and unquoting gives each part back, so distinct sessions never share a key."""
    message = FakeConnector(account, platform=platform).message(chat=chat)
    encoded_platform, encoded_account, chat_id = cb.session_key(message).split(":", 2)
    assert (unquote(encoded_platform), unquote(encoded_account), chat_id) == (
        platform,
        account,
        chat,
    )


def test_the_default_key_is_plain_without_separators_in_platform_and_account() -> None:
    message = FakeConnector("bot-1", platform="weixin").message(chat="room:42%")
    assert cb.session_key(message) == "weixin:bot-1:room:42%"
    escaped = FakeConnector("a%:b", platform="p:q").message(chat="c")
    assert cb.session_key(escaped) == "p%3Aq:a%25%3Ab:c"

from __future__ import annotations

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


async def test_a_full_debouncer_counts_each_wait_that_messages_sit_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Holding max_pending sessions, it reads nothing until one leaves: a message that came
    # during the wait waited too (counted as the wait ends), one waiting already is counted
    # at once, and a full debouncer nobody wrote to while it waited is no stall.
    stalls: list[float] = []
    full = {"max_pending": 1, "on_full": lambda: stalls.append(trio.current_time())}
    async with debouncing(cb.Debounce(window=3.0), **full) as h:
        await h.say("a", "1")  # full from here to 3.0, with nothing waiting
        await trio.sleep(1.0)
        await h.say("b", "2")  # comes during the wait: read at 3.0
        await trio.sleep(10.0)  # b's own wait (3.0 to 6.0): nothing came
        h.send.send_nowait((msg("c", "3"),))  # handed to the debouncer, waiting to receive
        h.send.send_nowait((msg("d", "4"),))  # buffered: waiting already as c fills it
        await trio.sleep(10.0)
    assert h.batches() == [
        (3.0, "a", ["1"]),
        (6.0, "b", ["2"]),
        (14.0, "c", ["3"]),
        (17.0, "d", ["4"]),
    ]
    assert stalls == [3.0, 11.0]


def test_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(cb.ConfigurationError, match="window"):
        cb.Debounce(window=-1)
    with pytest.raises(cb.ConfigurationError, match="max_messages"):
        cb.Debounce(max_messages=0)


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

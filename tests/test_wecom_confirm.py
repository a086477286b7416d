"""WeCom: a run ends once its final frame is written; its ACK, read by the connection's reader,
confirms it, and only then are its messages journaled done (docs/wecom.md, "Replies confirmed
after the run"). Each corner of that promise, through the bridge and the emulator, on Trio's
virtual clock."""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from support import open_lives, quick_bridge
from test_lease import LEASES, Link

import trio_chatbridge as cb
from trio_chatbridge._confirm import RUN, Confirmation, Outcome, confirmation
from trio_chatbridge._receive import MAX_HANDLERS
from trio_chatbridge._ws_core import Answer, Counted
from trio_chatbridge.platforms.wecom import LongConnection, WeComEvent
from trio_chatbridge.platforms.wecom._long import FINISH_MARGIN
from trio_chatbridge.platforms.wecom._protocol import FALLBACKS_KEPT, STREAM_WINDOW, WeComCore
from trio_chatbridge.testing import WeComEmulator, WeComFrame, running_bridge

ACCOUNT = "emulator-bot"
ACK_DELAY = 1.0  # seconds the emulator takes to acknowledge, in the tests that delay it


def key(msgid: str) -> tuple[str, str, str]:
    return ("wecom", ACCOUNT, msgid)


async def state(store: cb.MemoryStore, msgid: str) -> str | None:
    entry = await store.journal_entry(key(msgid))
    return None if entry is None else entry.state


@asynccontextmanager
async def bridge_on(
    emu: WeComEmulator, agent: cb.Agent, connector: LongConnection | None = None, **options: Any
) -> AsyncIterator[tuple[cb.Bridge, cb.MemoryStore]]:
    store = cb.MemoryStore()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        connector = emu.connector() if connector is None else connector
        bridge = quick_bridge(connector, agent, store=store, **options)
        async with running_bridge(bridge, fail_on_agent_error=False):
            with trio.fail_after(600):  # virtual seconds: a hang fails
                yield bridge, store
        nursery.cancel_scope.cancel()


def other(bridge: cb.Bridge, name: str) -> int:
    return bridge.stats().other.get(f"wecom.{name}", 0)


async def answer(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send("answer")  # returns: a refusal or timeout comes after the run


async def refused_and_sent_again(
    emu: WeComEmulator, bridge: cb.Bridge, store: cb.MemoryStore, user: str
) -> None:
    """``user`` asks; the final frame, refused, goes again proactively; the run is done."""
    emu.user_says(user, "question", msgid="m-1")
    sent = await emu.next_sent()
    await trio.sleep(1)
    assert (sent.kind, sent.text) == ("proactive", "answer")
    assert await state(store, "m-1") == "done"
    assert other(bridge, "replies_refused") == 1


async def refused_and_failed(
    emu: WeComEmulator, bridge: cb.Bridge, store: cb.MemoryStore, user: str, why: str
) -> None:
    """``user`` asks; the final frame is refused, its fallback fails too (``why``, in the
    journal): the run is failed."""
    emu.user_says(user, "question", msgid="m-1")
    await trio.sleep(10)
    entry = await store.journal_entry(key("m-1"))
    assert entry is not None and entry.state == "failed"
    assert entry.error is not None and why in entry.error
    assert other(bridge, "replies_failed") == 1


def failure_logged(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and "m-1" in r.message]
    assert failed and "journaled as failed" in failed[0].message
    return failed[0]


async def test_a_reply_returns_once_written_and_the_done_mark_waits_for_its_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    returned: list[float] = []
    ended = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        start = trio.current_time()
        await reply.send("answer")
        returned.append(trio.current_time() - start)
        ended.set()

    async with bridge_on(emu, agent) as (bridge, store):
        emu.user_says("ada", "question", msgid="m-1")
        await ended.wait()
        assert returned[0] < ACK_DELAY  # the run did not wait for the ACK
        assert await state(store, "m-1") == "pending"  # nor did the done-mark
        await trio.sleep(ACK_DELAY * 0.9)
        assert await state(store, "m-1") == "pending"
        await trio.sleep(ACK_DELAY * 0.2)
        assert await state(store, "m-1") == "done"
        assert [s.text for s in emu.sent] == ["answer"]
        assert bridge.stats().failures == 0


async def test_a_refused_final_frame_goes_again_proactively_and_the_run_is_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", 40058)
    async with bridge_on(emu, answer) as (bridge, store):
        await refused_and_sent_again(emu, bridge, store, "bea")
        assert other(bridge, "replies_failed") == 0


async def test_a_final_frame_and_its_fallback_both_refused_journal_the_run_failed(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", 40058)
    emu.fail_next("aibot_send_msg", 40058)

    async with bridge_on(emu, answer) as (bridge, store):
        await refused_and_failed(emu, bridge, store, "cy", "40058")
        assert emu.sent == []
    failure_logged(caplog)


async def test_an_unanswered_final_frame_goes_again_proactively_after_the_ack_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", -1)  # no ACK at all
    ended = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("answer")
        ended.set()

    async with bridge_on(emu, agent) as (bridge, store):
        emu.user_says("dan", "question", msgid="m-1")
        await ended.wait()
        asked = trio.current_time()
        sent = await emu.next_sent()
        assert trio.current_time() - asked == pytest.approx(emu.connector().ack_timeout)
        await trio.sleep(1)
        assert (sent.kind, sent.text) == ("proactive", "answer")
        assert await state(store, "m-1") == "done"
        assert other(bridge, "replies_refused") == 1


def answering(answer_after: float = 0.0) -> tuple[cb.Agent, trio.Event]:
    """An agent that answers "the answer", ``answer_after`` seconds on, and the event it sets
    once its final frame is written."""
    ended = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(answer_after)
        await reply.send("the answer")
        ended.set()

    return agent, ended


@asynccontextmanager
async def dropped_before_its_ack(
    emu: WeComEmulator, *, answer_after: float = 0.0, **options: Any
) -> AsyncIterator[tuple[cb.Bridge, cb.MemoryStore]]:
    """A run answers ``answer_after`` seconds after the message; the connection drops once
    the final frame is written, before its ACK is read; the bridge reconnects (1 s on)."""
    agent, ended = answering(answer_after)
    async with bridge_on(emu, agent, **options) as (bridge, store):
        emu.user_says("eve", "question", msgid="m-1")
        await ended.wait()
        await emu.drop_connection()
        yield bridge, store


async def test_a_final_frame_lost_with_its_connection_goes_again_first_on_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The frame never reached the platform: written again on the new connection, its ACK
    confirms the run; the reply shows once."""
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", -1)  # lost: neither taken nor acknowledged
    async with dropped_before_its_ack(emu) as (bridge, store):
        await emu.wait_connected()
        await trio.sleep(1)
        assert await state(store, "m-1") == "done"
        assert other(bridge, "requests_across_reconnects") == 1
        for counter in (
            "replies_unconfirmed",
            "replies_refused",
            "carried_fallbacks",
            "carried_confirmed_by_846608",
        ):
            assert other(bridge, counter) == 0, counter
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "the answer")]
    frames = emu.commands("aibot_respond_msg")
    assert [f.req_id for f in frames[1:]] == [frames[0].req_id]  # the same frame, again
    assert frames[1].body == frames[0].body


async def test_a_carried_final_frame_answered_846608_within_its_window_is_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first write arrived and finished the stream (its ACK was lost with the socket):
    the platform refuses the second as an update after finish, which, the stream being far
    from expiry, can only mean it took the first. Done, nothing sent again."""
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY  # the ACK, 1 s away, never comes on that socket
    async with dropped_before_its_ack(emu) as (bridge, store):
        await emu.wait_connected()
        await trio.sleep(ACK_DELAY + 1)
        assert await state(store, "m-1") == "done"
        assert other(bridge, "carried_confirmed_by_846608") == 1  # by the assumption: counted
        for counter in ("replies_unconfirmed", "replies_refused", "carried_fallbacks"):
            assert other(bridge, counter) == 0, counter
    refused = [a for a in emu.activity if a.kind == "refused"]
    assert [a.detail["errcode"] for a in refused] == [846608]  # the second write
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "the answer")]


async def test_a_carried_final_frame_answered_busy_then_846608_in_its_window_is_confirmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Written again, it is answered 6000 (busy); its retry gets 846608 in the window: the
    first write arrived, as above."""
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    async with dropped_before_its_ack(emu) as (bridge, store):
        emu.fail_next("aibot_respond_msg", 6000)  # the frame written again
        await emu.wait_connected()
        await trio.sleep(ACK_DELAY + 2)
        assert await state(store, "m-1") == "done"
        assert other(bridge, "busy_retries") == 1
        assert other(bridge, "carried_fallbacks") == 0
        assert other(bridge, "carried_confirmed_by_846608") == 1
    assert len(emu.commands("aibot_respond_msg")) == 3
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "the answer")]


async def test_a_carried_final_frame_answered_846608_after_its_window_goes_proactively(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Written 5 s before ``finish_by``, written again after it: 846608 may mean "expired",
    so the reply goes proactively, shown twice if the first write arrived (it did: counted)."""
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    answer_after = STREAM_WINDOW - FINISH_MARGIN - 5  # the reconnect takes longer than 5 s
    async with dropped_before_its_ack(
        emu, answer_after=answer_after, backoff=cb.Backoff(initial=10.0, jitter=0.0)
    ) as (bridge, store):
        await emu.wait_connected()
        await trio.sleep(2 * ACK_DELAY + 1)  # the refusal, then the proactive message
        assert await state(store, "m-1") == "done"
        assert other(bridge, "carried_fallbacks") == 1
        assert other(bridge, "replies_refused") == 1
        assert other(bridge, "carried_confirmed_by_846608") == 0
    assert [(s.kind, s.text) for s in emu.sent] == [
        ("stream", "the answer"),
        ("proactive", "the answer"),
    ]


@asynccontextmanager
async def written_again_after_a_lost_write(
    errcode: int,
) -> AsyncIterator[tuple[WeComEmulator, cb.Bridge]]:
    """The final frame's first write is lost (not taken, no answer) with its connection; its
    second, on the next, is answered ``errcode``; a second later the run is done."""
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", -1)
    emu.fail_next("aibot_respond_msg", errcode)
    async with dropped_before_its_ack(emu) as (bridge, store):
        await emu.wait_connected()
        await trio.sleep(1)
        assert await state(store, "m-1") == "done"
        yield emu, bridge


async def test_a_carried_final_frame_answered_846608_though_its_first_write_was_not_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The rule's failure mode, pinned: the first write did not finish the stream (here it
    was lost; a refusal whose answer went with the socket, or a window shorter than we
    count, are the same to us), yet the second gets 846608 within the window. It is taken
    as answered: done, nothing shown, and counted in ``carried_confirmed_by_846608``, the
    figure to watch if users report replies missing after reconnects (docs/wecom.md)."""
    async with written_again_after_a_lost_write(846608) as (emu, bridge):
        assert other(bridge, "carried_confirmed_by_846608") == 1
        assert other(bridge, "carried_fallbacks") == 0
    assert emu.sent == []  # the user saw nothing: what the counter is for


async def test_a_carried_final_frame_answered_846605_goes_proactively_and_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The platform does not take the old connection's req_id: the whole reply goes
    proactively (here the first write was lost: the user sees it once)."""
    async with written_again_after_a_lost_write(846605) as (emu, bridge):
        assert other(bridge, "carried_fallbacks") == 1
        assert other(bridge, "replies_unconfirmed") == 0
    assert [(s.kind, s.text) for s in emu.sent] == [("proactive", "the answer")]


async def test_a_carried_final_frame_unacknowledged_again_goes_proactively_and_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", -1, times=2)
    async with dropped_before_its_ack(emu) as (bridge, store):
        await emu.wait_connected()
        await trio.sleep(emu.connector().ack_timeout + 1)
        assert await state(store, "m-1") == "done"
        assert other(bridge, "carried_fallbacks") == 1
    assert [(s.kind, s.text) for s in emu.sent] == [("proactive", "the answer")]


async def test_a_connector_stopped_while_it_waits_to_reconnect_leaves_carried_replies_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connector stops in its backoff, before a next connection: what it carried is
    settled unknown at once (counted, the batch pending for the next start), not left for a
    graceful stop to wait on. Here it stops because the bridge is cancelled."""
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    store = cb.MemoryStore()
    agent, ended = answering()

    bridge = quick_bridge(
        emu.connector(), agent, store=store, backoff=cb.Backoff(initial=60.0, jitter=0.0)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                await inner.start(bridge.run)
                emu.user_says("eve", "question", msgid="m-1")
                await ended.wait()
                await emu.drop_connection()
                await trio.sleep(5)  # waiting to reconnect, the frame carried
                assert other(bridge, "replies_unconfirmed") == 0
                inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    assert other(bridge, "replies_unconfirmed") == 1
    assert await state(store, "m-1") == "pending"
    assert len(emu.commands("aibot_respond_msg")) == 1


async def test_a_graceful_stop_while_reconnecting_waits_for_carried_replies_within_its_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connectors stay up for their replies during a graceful stop, a carried one too: the
    connection comes back within the grace, the frame goes again and is confirmed (done)."""
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    async with dropped_before_its_ack(emu) as (bridge, store):
        stopping = trio.current_time()
        bridge.shutdown()
        await emu.wait_connected()
    assert trio.current_time() - stopping < bridge.shutdown_grace / 2
    assert await state(store, "m-1") == "done"
    assert other(bridge, "replies_unconfirmed") == 0
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "the answer")]


async def test_a_lease_lost_while_reconnecting_leaves_carried_replies_pending_and_no_stop_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connector stops in its backoff because its lease could not be renewed: what it
    carried is settled unknown then (counted, pending), so the graceful stop that follows
    does not wait its grace for a connection that will not come."""
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    shared = cb.MemoryStore()
    link = Link(shared)
    agent, ended = answering()

    backoff = cb.Backoff(initial=60.0, jitter=0.0)
    bridge = quick_bridge(emu.connector(), agent, store=link, leases=LEASES, backoff=backoff)
    name = f"wecom:{ACCOUNT}"
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        with trio.fail_after(120):
            async with trio.open_nursery() as inner:
                await inner.start(bridge.run)
                await bridge.wait_status(lambda statuses: statuses[name].state == "running")
                emu.user_says("eve", "question", msgid="m-1")
                await ended.wait()
                await emu.drop_connection()
                await trio.sleep(1)  # waiting to reconnect, the frame carried
                assert other(bridge, "replies_unconfirmed") == 0
                link.cut = True  # renewals fail: the connector stops within the lease's TTL
                await trio.sleep(2 * LEASES.ttl)
                assert bridge.status()[name].lease == "lost"
                assert other(bridge, "replies_unconfirmed") == 1
                stopping = trio.current_time()
                bridge.shutdown()
        assert trio.current_time() - stopping < bridge.shutdown_grace / 2
        nursery.cancel_scope.cancel()
    entry = await shared.journal_entry(key("m-1"))
    assert entry is not None and entry.state == "pending"
    assert len(emu.commands("aibot_respond_msg")) == 1


async def test_a_connector_failing_for_good_as_it_reconnects_leaves_carried_replies_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its reconnect refused for good (the secret changed): the carried reply is settled
    unknown at once, so a graceful stop does not wait its grace for it; the batch stays
    pending, and its replay at the next start is not answered twice (846608: answered
    before)."""
    store = cb.MemoryStore()
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    agent, ended = answering()
    secret = emu.secret

    def life() -> cb.Bridge:
        return quick_bridge(emu.connector(secret=secret), agent, store=store)

    async with open_lives(life, emu) as lives:
        with trio.fail_after(600):
            emu.user_says("eve", "question", msgid="m-1")
            await ended.wait()
            emu.secret = "rotated"
            await emu.drop_connection()
            await trio.sleep(5)
            assert lives.bridge.status()[f"wecom:{ACCOUNT}"].state == "failed"
            assert other(lives.bridge, "replies_unconfirmed") == 1
            assert await state(store, "m-1") == "pending"
            stopping = trio.current_time()
            await lives.stop()
            assert trio.current_time() - stopping < lives.bridge.shutdown_grace / 2
            emu.secret = secret
            await lives.restart(kill=False)  # replayed: WeCom says 846608, answered before
            await trio.sleep(5)
            assert other(lives.bridge, "already_answered") == 1
            assert await state(store, "m-1") == "done"
    assert [s.text for s in emu.sent] == ["the answer"]


async def test_an_interrupted_run_ignores_its_confirmation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    runs: list[list[str]] = []
    sent = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        runs.append([m.text for m in batch.messages])
        await reply.send("answer")
        sent.set()
        await trio.sleep(math.inf if len(runs) > 1 else 3)  # the rerun never ends

    async with bridge_on(emu, agent, on_busy="interrupt") as (bridge, store):
        emu.user_says("fay", "one", msgid="m-1")
        await sent.wait()
        emu.user_says("fay", "two", msgid="m-2")  # interrupts the run, its ACK still due
        await trio.sleep(2 * ACK_DELAY + 1)
        assert runs == [["one"], ["one", "two"]]
        # the first run's frame was acknowledged, but its messages went to the rerun
        assert await state(store, "m-1") == "pending"
        assert bridge.stats().interrupts == 1


@pytest.mark.parametrize("graceful", [True, False])
async def test_a_stop_with_confirmations_due(
    autojump_clock: trio.testing.MockClock, graceful: bool
) -> None:
    """A graceful shutdown waits for them within its grace (done); a cancelled bridge leaves
    their messages pending."""
    emu = WeComEmulator()
    if graceful:
        emu.ack_delay = ACK_DELAY
    else:
        emu.fail_next("aibot_respond_msg", -1)  # never acknowledged
    ended = trio.Event()
    store = cb.MemoryStore()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("answer")
        ended.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        bridge = quick_bridge(emu.connector(), agent, store=store)
        with trio.fail_after(60):
            async with trio.open_nursery() as inner:
                await inner.start(bridge.run)
                emu.user_says("gus", "question", msgid="m-1")
                await ended.wait()
                stopping = trio.current_time()
                if graceful:
                    bridge.shutdown()
                else:
                    inner.cancel_scope.cancel()
        assert trio.current_time() - stopping < bridge.shutdown_grace
        nursery.cancel_scope.cancel()
    assert await state(store, "m-1") == ("done" if graceful else "pending")


async def test_a_reply_kept_after_its_run_waits_for_its_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    kept: list[cb.Reply] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        kept.append(reply)  # answered later, outside the run

    async with bridge_on(emu, agent) as (_, store):
        emu.user_says("ivy", "question", msgid="m-1")
        await trio.sleep(5)
        assert await state(store, "m-1") == "done"
        start = trio.current_time()
        await kept[0].send("late answer")
        assert trio.current_time() - start == pytest.approx(ACK_DELAY)  # awaited, as before
        assert [s.text for s in emu.sent] == ["late answer"]


async def test_runs_confirmed_later_never_exceed_the_concurrency_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.ack_delay = ACK_DELAY
    running = most = 0

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.sleep(0.2)
        await reply.send("answer")
        running -= 1

    async with bridge_on(emu, agent, concurrency=3) as (bridge, store):
        users = [f"user-{n}" for n in range(20)]
        for n, user in enumerate(users):
            emu.user_says(user, "question", msgid=f"m-{n}")
        await trio.sleep(30)
        assert len(emu.sent) == len(users)
        assert most == 3
        assert [await state(store, f"m-{n}") for n in range(20)] == ["done"] * 20
        assert bridge.stats().failures == 0


async def test_a_refusal_while_every_event_handler_is_busy_still_goes_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The notice handlers all taken (a user's slow ``on_event``): a refused final frame is
    sent again all the same, and the run is done, never left unknown for want of a slot."""
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", 40058)
    handling = 0

    async def on_event(event: WeComEvent) -> None:
        nonlocal handling
        handling += 1
        await trio.sleep_forever()

    connector = emu.connector(on_event=on_event)
    async with bridge_on(emu, answer, connector) as (bridge, store):
        for n in range(MAX_HANDLERS):
            emu.push_event({"from": {"userid": f"u-{n}"}, "event": {"eventtype": "feedback"}})
        await trio.sleep(1)
        assert handling == MAX_HANDLERS
        await refused_and_sent_again(emu, bridge, store, "hal")
        assert other(bridge, "replies_unconfirmed") == 0
        assert handling == MAX_HANDLERS  # (none of them was cancelled for it)


async def test_a_fallback_failing_unexpectedly_fails_the_run_not_the_connection(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A fallback that raises something other than a send error (a bug, an answer we cannot
    read): the run is journaled failed, counted, logged with its traceback; the connection
    stays up and answers the next message."""
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", 40058)
    connector = emu.connector()

    async def broken(chat_id: str, text: str) -> None:
        raise RuntimeError("fault injected in the fallback")

    connector.send_proactive = broken  # type: ignore[method-assign]
    async with bridge_on(emu, answer, connector) as (bridge, store):
        await refused_and_failed(emu, bridge, store, "ian", "RuntimeError")
        emu.user_says("ian", "again", msgid="m-2")
        await trio.sleep(5)
        assert await state(store, "m-2") == "done"
        assert emu.subscribes == 1  # the same connection throughout
    logged = failure_logged(caplog)
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], RuntimeError)


async def test_a_late_ack_after_the_timeout_fallback_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An ACK that was only late: the reply went proactively too (the user sees it twice);
    its ACK is counted in ``late_acks_after_fallback``, another stray ACK is not."""
    emu = WeComEmulator()
    emu.fail_next("aibot_respond_msg", -1)  # no ACK in time...
    async with bridge_on(emu, answer) as (bridge, store):
        emu.user_says("jo", "question", msgid="m-1")
        sent = await emu.next_sent()
        assert (sent.kind, sent.text) == ("proactive", "answer")
        respond = emu.commands("aibot_respond_msg")[-1]
        emu.push_raw(WeComFrame(respond.req_id, errcode=0, errmsg="ok").encode())  # ...but late
        emu.push_raw(WeComFrame("nobody's", errcode=0, errmsg="ok").encode())
        await trio.sleep(1)
        assert other(bridge, "late_acks_after_fallback") == 1
        assert other(bridge, "stray_acks") == 2
        assert await state(store, "m-1") == "done"


def late_ack(core: WeComCore, req_id: str) -> list[object]:
    return list(core.receive(WeComFrame(req_id, errcode=0, errmsg="ok").encode(), 0.0))


def test_late_acks_are_watched_for_the_latest_fallbacks_once_each() -> None:
    core = WeComCore("bot", "secret", "life")
    for n in range(FALLBACKS_KEPT + 1):
        core.fell_back(f"r-{n}")
    assert late_ack(core, "r-0") == [Answer("r-0", 0, "ok")]  # the oldest, forgotten
    last = f"r-{FALLBACKS_KEPT}"
    assert late_ack(core, last) == [Counted("late_acks_after_fallback"), Answer(last, 0, "ok")]
    assert late_ack(core, last) == [Answer(last, 0, "ok")]  # counted once


# -- the outcome's bookkeeping, for any order of events -------------------------------------

SETTLINGS = st.sampled_from(["confirmed", "failed", "unknown", "withdraw"])


def settle(token: Confirmation | None, how: str) -> None:
    assert token is not None
    if how == "failed":
        token.failed("why")
    else:
        getattr(token, how)()


@given(
    st.lists(st.tuples(SETTLINGS, st.booleans()), max_size=6),
    st.sampled_from([None, "run failed"]),
    st.booleans(),
)
def test_a_run_is_recorded_once_when_it_ended_and_every_confirmation_settled(
    confirmations: list[tuple[str, bool]], run_failure: str | None, ignored: bool
) -> None:
    """Confirmations settled before or after the run's end (the bool), in any order: the
    outcome is recorded exactly once if the run ended (never if ignored: interrupted or cut
    off), after the last settled; failed with the run's failure or else a confirmation's; and
    left pending (``unknown``) if any was unknown."""
    contextvars.copy_context().run(check_outcome, confirmations, run_failure, ignored)


def check_outcome(
    confirmations: list[tuple[str, bool]], run_failure: str | None, ignored: bool
) -> None:
    recorded: list[Outcome] = []
    outcome = Outcome(recorded.append)
    RUN.set(outcome)
    taken = [(confirmation(), how, early) for how, early in confirmations]
    for token, how, early in taken:
        if early:
            settle(token, how)
    if ignored:
        outcome.ignore()
    else:
        late = any(not early for _, early in confirmations)
        assert outcome.end([], run_failure) == (not late)
    assert confirmation() is None  # none once the run has ended
    for token, how, early in taken:
        if not early:
            assert recorded == []  # never before the last
            settle(token, how)
            settle(token, "confirmed")  # a second settling is ignored
    assert outcome.pending == 0
    if ignored:
        assert recorded == []
        return
    assert recorded == ([outcome] if any(not early for _, early in confirmations) else [])
    failed = any(how == "failed" for how, _ in confirmations)
    assert outcome.failure == (run_failure or ("why" if failed else None))
    assert outcome.unknown == any(how == "unknown" for how, _ in confirmations)

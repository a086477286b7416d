"""The pipeline's promises under chaos, through the public Bridge API.

Several lives of a bridge on one store (a MemoryStore kept in-process, or a SQLite file): in
each, random messages in random chats (some redelivered), an agent that replies, streams,
raises, outlives ``run_timeout`` or is interrupted (``on_busy="interrupt"``), and an end that
is a graceful shutdown or a cancellation of the whole bridge at a random moment. A life that
shuts down gracefully first waits until all is quiet; a last one does, and takes whatever
the platform never saw acknowledged. Then:

- every message reached the agent at least once, and none once it was marked done (or failed);
- a session's messages reached it in the order they were said, one run per session at a time;
- never more than ``concurrency`` runs at once; after a quiet shutdown, nothing is left
  pending in the journal (an interrupted run's messages rerun, a replay is handled).
"""

from __future__ import annotations

import itertools
import tempfile
from contextlib import nullcontext
from pathlib import Path

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import given

import trio_chatbridge as cb
from trio_chatbridge.stores import journal_key
from trio_chatbridge.testing import FakeConnector

RUN_TIMEOUT = 5.0  # seconds; a "hang" outlives it
SETTLE = 100.0  # seconds a life that shuts down gracefully waits first: every run ends
KINDS = ("ok", "stream", "raise", "hang", "slow")

said = st.tuples(
    st.sampled_from([0.0, 0.3, 1.0, 4.0]),  # seconds since the previous message
    st.integers(0, 3),  # which chat
    st.sampled_from(KINDS),  # what the agent does on a batch ending with it
    st.booleans(),  # also redeliver an earlier message (a platform's duplicate)
)
life = st.tuples(
    st.lists(said, max_size=12),
    st.one_of(st.none(), st.floats(0.0, 30.0)),  # cancel the bridge after: None, shut down
)


@given(
    lives=st.lists(life, min_size=1, max_size=4),
    on_busy=st.sampled_from(["queue", "interrupt"]),
    concurrency=st.integers(1, 3),
    kind=st.sampled_from(["memory", "sqlite"]),
)
def test_every_message_reaches_the_agent_and_none_after_it_is_done(
    lives: list[tuple[list[tuple[float, int, str, bool]], float | None]],
    on_busy: cb.OnBusy,
    concurrency: int,
    kind: str,
) -> None:
    ids = itertools.count()
    calls: list[tuple[int, str, list[str]]] = []  # (life, session, message ids) per run
    running: set[str] = set()
    peak = 0
    created: dict[str, cb.Message] = {}  # every message the platform ever sent, by id
    order: dict[str, int] = {}  # id -> position in the order messages were said
    finished: dict[int, set[str]] = {}  # ids marked done or failed when a life ended
    current = 0  # the life now
    memory = cb.MemoryStore()  # kept from one life to the next, as a process would

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        nonlocal peak
        assert batch.session not in running, "two runs of one session at once"
        running.add(batch.session)
        peak = max(peak, len(running))
        try:
            calls.append((current, batch.session, [m.id for m in batch.messages]))
            what = batch.latest.text
            if what == "ok":
                await reply.send("ok")
            elif what == "stream":
                async with reply.stream() as out:
                    await out.write("a")
                    await trio.sleep(0.5)
                    await out.write("b")
            elif what == "raise":
                raise ValueError("the agent failed")
            elif what == "hang":
                await trio.sleep(10 * RUN_TIMEOUT)
            else:
                await trio.sleep(2.0)
                await reply.send("slow")
        finally:
            running.discard(batch.session)

    def store_for(directory: str) -> cb.Store:
        if kind == "memory":
            return memory
        return cb.SQLiteStore(Path(directory) / "j.db", threaded=False)

    async def one_life(
        store: cb.Store,
        script: list[tuple[float, int, str, bool]],
        cancel_after: float | None,
        unacknowledged: list[cb.Message],
    ) -> None:
        chat = FakeConnector()
        bridge = cb.Bridge(
            [chat],
            agent,
            store=store,
            debounce=cb.Debounce(window=0.5, max_delay=3.0),
            on_busy=on_busy,
            concurrency=concurrency,
            run_timeout=RUN_TIMEOUT,
            shutdown_grace=3.0,
        )
        deadline = nullcontext() if cancel_after is None else trio.move_on_after(cancel_after)
        with deadline:
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                chat.deliver(*unacknowledged)  # the platform sends again what it had no ack for
                for gap, chat_number, what, again in script:
                    await trio.sleep(gap)
                    if again and created:
                        chat.deliver(created[min(created, key=order.__getitem__)])
                    n = next(ids)
                    message = chat.message(what, chat=f"c{chat_number}", id=f"m{n}")
                    created[message.id], order[message.id] = message, n
                    chat.deliver(message)
                if cancel_after is None:
                    await trio.sleep(SETTLE)
                    bridge.shutdown()
                else:
                    await trio.sleep_forever()

    async def main() -> None:
        nonlocal current
        with tempfile.TemporaryDirectory() as directory:
            unacknowledged: list[cb.Message] = []
            plan = [*lives, ([], None)]  # the last life: nothing new, everything finishes
            for current, (script, cancel_after) in enumerate(plan):
                store = store_for(directory)
                await one_life(store, script, cancel_after, unacknowledged)
                async with store:
                    entries = {
                        i: await store.journal_entry(journal_key(m)) for i, m in created.items()
                    }
                    finished[current] = {
                        i for i, entry in entries.items() if entry and entry.state != "pending"
                    }
                    # What was never journaled was never acknowledged: the platform sends it
                    # again (to the next life). A life shut down once all was quiet journaled
                    # and finished everything.
                    unacknowledged = [created[i] for i, entry in entries.items() if not entry]
                    if cancel_after is None:
                        assert unacknowledged == []
                        assert await store.journal_pending() == []

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert peak <= concurrency
    reached = {i for _, _, batch in calls for i in batch}
    assert reached == set(created), "a message never reached the agent"
    for life_number, _, batch in calls:
        earlier = set().union(*(finished[k] for k in range(life_number)))
        assert not earlier & set(batch), "a message reached the agent after it was done"
    for life_number in finished:
        first_seen: dict[str, list[int]] = {}
        for number, session, batch in calls:
            if number == life_number:
                for i in batch:
                    seen = first_seen.setdefault(session, [])
                    if order[i] not in seen:
                        seen.append(order[i])
        for session, positions in first_seen.items():
            assert positions == sorted(positions), f"{session}: out of order"

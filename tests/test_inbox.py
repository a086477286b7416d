"""The inbox's counting: each message a put is given counts once, as received, duplicate or
set aside (undecodable)."""

from __future__ import annotations

from pathlib import Path

import trio

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector, running_bridge


async def test_a_message_set_aside_counts_as_undecodable_not_as_a_duplicate(
    tmp_path: Path,
) -> None:
    """A message the store cannot journal (a lone surrogate) is set aside: counted in
    ``undecodable``. It was counted as a duplicate too (the put calls it not new), so
    ``duplicates`` read one high for each; a real duplicate next to it still counts."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(batch.text)

    chat = FakeConnector()
    bridge = cb.Bridge(
        [chat], agent, store=cb.SQLiteStore(tmp_path / "j.db"), debounce=cb.Debounce(window=0)
    )
    with trio.fail_after(10):
        async with running_bridge(bridge) as running:
            good = chat.message("good", id="good")
            await chat.say("first", id="first")
            assert (await chat.next_reply()).text == "first"
            chat.deliver(chat.message("lone \ud800", id="bad"), chat.message("x", id="first"), good)
            assert (await chat.next_reply()).text == "good"
            stats = running.stats()
    assert (stats.received, stats.undecodable, stats.duplicates) == (2, 1, 1)

"""Every table kept per user, request or message is bounded: each driven past its bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.stores import journal_key
from trio_chatbridge.testing import FakeConnector, open_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_journal_is_pruned_while_the_bridge_runs(
    autojump_clock: trio.testing.MockClock, kind: str, tmp_path: Path
) -> None:
    """A day of messages, one a minute, with an hour of retention: what was handled more
    than an hour ago is gone while the bridge still runs, the last hour is still there."""
    store: cb.Store = (
        cb.MemoryStore(wall_clock=trio.current_time)
        if kind == "memory"
        else cb.SQLiteStore(tmp_path / "j.db", wall_clock=trio.current_time, threaded=False)
    )
    chat = FakeConnector()
    bridge = cb.Bridge(
        [chat],
        echo,
        store=store,
        debounce=cb.Debounce(window=1.0),
        journal_retention=3600.0,
        wall_clock=trio.current_time,
    )
    said = []
    async with open_bridge(bridge):
        for n in range(24 * 60):
            said.append(await chat.say(f"m{n}", chat=f"c{n % 7}"))
            await trio.sleep(60)
        kept = [await store.journal_entry(journal_key(m)) is not None for m in said]
    assert len(chat.sent) == len(said)  # every message was answered
    assert not any(kept[: 22 * 60])  # older than the retention and a pruning period: gone
    assert all(kept[-60:])  # the last hour: kept (duplicates still caught)

"""The dispatcher under an agent that raises what is not an Exception: nothing is lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import trio_chatbridge as cb
from trio_chatbridge.testing import FakeConnector


@pytest.mark.parametrize("kind", [KeyboardInterrupt, SystemExit, GeneratorExit])
async def test_an_agent_raising_a_base_exception_stops_the_bridge_with_its_message_pending(
    tmp_path: Path, kind: type[BaseException]
) -> None:
    """Not an agent's failure (which would mark the message failed, never replayed) but a
    request to stop: it goes up out of ``bridge.run``, the store is closed, and the message
    is still pending, replayed at the next start."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise kind()

    chat = FakeConnector()
    store = cb.SQLiteStore(tmp_path / "j.db")
    bridge = cb.Bridge([chat], agent, store=store, debounce=cb.Debounce(window=0))
    with trio.fail_after(10):
        with pytest.raises(BaseExceptionGroup) as caught:
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                await chat.say("hello", id="m1")
                await trio.sleep_forever()
        matched, rest = caught.value.split(kind)
        assert matched is not None and rest is None
        with pytest.raises(cb.StoreError, match="not open"):
            await store.journal_pending()  # closed by the bridge on its way out
        async with store:
            assert [m.id for m in await store.journal_pending()] == ["m1"]
    assert bridge.stats().failures == 0

"""Streamed replies' shared machinery: the final update is attempted, and its fate told."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge._connector import CoalescingStream, streaming
from trio_chatbridge._errors import find_error


class SlowFinal(CoalescingStream):
    """A platform whose last update of a stream never comes back."""

    async def update(self, text: str) -> None:
        pass

    async def final(self, text: str) -> None:
        await trio.sleep_forever()


async def test_a_final_update_not_delivered_in_time_is_a_send_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Else the run would end "done" while the end of its reply never reached the user."""
    with pytest.raises(BaseException) as caught:  # out of the pump's nursery: maybe a group
        async with streaming(SlowFinal(0.1), final_within=5) as out:
            await out.write("the whole answer")
    error = find_error(caught.value, cb.SendError)
    assert error is not None and "not delivered within 5 s" in str(error)
    assert trio.current_time() == pytest.approx(5, abs=0.1)

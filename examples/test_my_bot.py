"""Testing your own bot: a pytest file, with a WeCom emulator and a virtual clock.

Run it with ``python -m pytest examples/test_my_bot.py`` (pytest and pytest-trio installed,
``trio_mode = true`` in your pytest configuration, as in this project's pyproject.toml).

- ``WeComEmulator`` is a WeCom server in memory: ``user_says`` speaks as a user and
  ``next_sent`` waits for what the bot said. WeChat and Lark have one each.
- ``autojump_clock`` (a pytest-trio fixture) makes Trio's clock skip ahead whenever every
  task is waiting, so a second of debounce takes no real time and the test is exact about
  when things happen.
- ``running_bridge`` runs the bridge for the length of a block, then stops it gracefully.
"""

from __future__ import annotations

import trio
import trio.testing
from echo_bot import make_bridge

import trio_chatbridge as cb
from trio_chatbridge.testing import WeComEmulator, running_bridge


async def test_the_bot_answers_a_message(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        emulator = WeComEmulator()
        await nursery.start(emulator.run)
        bridge = make_bridge([emulator.connector()], store=cb.MemoryStore())
        async with running_bridge(bridge):
            emulator.user_says("alice", "hello")
            sent = await emulator.next_sent()
        nursery.cancel_scope.cancel()  # stop the emulator too
    assert (sent.to, sent.text) == ("alice", "you said: hello")


async def test_a_burst_gets_one_answer_after_a_second_of_quiet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        emulator = WeComEmulator()
        await nursery.start(emulator.run)
        bridge = make_bridge([emulator.connector()], store=cb.MemoryStore())
        async with running_bridge(bridge):
            emulator.user_says("bob", "one")
            await trio.sleep(0.5)  # virtual time: instant, and exact
            emulator.user_says("bob", "two")
            last_message_at = trio.current_time()
            # WeCom opened a reply for each message: the first is closed empty, and the one
            # answer goes under the latest message.
            closed, answer = await emulator.next_sent(), await emulator.next_sent()
            answered_after = trio.current_time() - last_message_at
        nursery.cancel_scope.cancel()
    assert closed.text == ""
    assert answer.text == "you said: one\ntwo"
    assert 1.0 <= answered_after < 1.5  # the debounce window, from the last message
    assert bridge.stats().batches == 1

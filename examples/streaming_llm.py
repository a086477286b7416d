"""A streaming "LLM" agent: the answer appears as it is generated, and a new message from
the user interrupts it.

``fake_llm`` stands in for a model's streaming API (OpenAI, Anthropic, a local model): replace
it with yours. Run it like echo_bot.py::

    python examples/streaming_llm.py
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence

import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector

DEBOUNCE = cb.Debounce(window=2.0, max_delay=15.0)
TOKEN_DELAY = 0.2  # seconds between two pieces of the fake model's answer


async def fake_llm(prompt: str) -> AsyncIterator[str]:
    """Yield an answer to ``prompt`` a few words at a time, as a model's stream does."""
    answer = f"You asked about {prompt!r}. Here is a long, thoughtful answer, word by word."
    for word in answer.split(" "):
        await trio.sleep(TOKEN_DELAY)  # the model thinking
        yield word + " "


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    """Stream the model's answer to everything the user said in this burst."""
    prompt = " / ".join(message.text for message in batch.messages)
    # reply.stream(): WeCom shows the text growing, Lark edits one message, WeChat (which
    # cannot stream) sends the whole text when the block ends.
    async with reply.stream() as out:
        async for piece in fake_llm(prompt):
            await out.write(piece)


def make_bridge(connectors: Sequence[Connector], store: cb.Store | None = None) -> cb.Bridge:
    return cb.Bridge(
        connectors,
        agent,
        debounce=DEBOUNCE,
        # The user writes again while the answer is streaming: the bridge cancels this run
        # and runs the agent again with all the messages, so the new answer takes everything
        # the user said into account. The half-written stream is closed where it stopped: its
        # partial text stays in the chat, above the new answer.
        on_busy="interrupt",
        # A run that takes longer than this is cancelled and recorded as failed.
        run_timeout=120.0,
        store=store or cb.SQLiteStore("streaming_llm.db"),
    )


if __name__ == "__main__":
    from wecom_env import from_env, serve

    # cb.serve, and one line once the bot is up; Ctrl-C: a graceful stop
    sys.exit(trio.run(serve, make_bridge(from_env()), "streaming_llm"))

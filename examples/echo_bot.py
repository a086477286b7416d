"""The smallest bot: it answers each burst of messages with what was said.

Run it (see wecom_env.py for the environment variables, or to use the emulator)::

    python examples/echo_bot.py
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector

# A user who sends three messages in a row gets one answer: the bridge waits for a second of
# quiet in that chat (at most ten seconds from the first message) before running the agent.
DEBOUNCE = cb.Debounce(window=1.0, max_delay=10.0)


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    """The agent: called once per burst, with every message of it (oldest first)."""
    await reply.send("you said: " + batch.text)  # batch.text: each message's text, one a line


def make_bridge(connectors: Sequence[Connector], store: cb.Store | None = None) -> cb.Bridge:
    """The bot's bridge; tests give it an emulator's connector and a memory store."""
    return cb.Bridge(
        connectors,
        echo,
        debounce=DEBOUNCE,
        # The journal: duplicates are dropped, and what was received but not yet answered
        # is answered after a restart.
        store=store or cb.SQLiteStore("echo_bot.db"),
    )


if __name__ == "__main__":
    from wecom_env import from_env, serve

    # cb.serve, and one line once the bot is up; Ctrl-C: a graceful stop
    sys.exit(trio.run(serve, make_bridge(from_env()), "echo_bot"))

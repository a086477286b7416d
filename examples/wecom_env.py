"""Where the examples get their connector: a WeCom AI Bot named by environment variables.

Set ``WECOM_BOT_ID`` and ``WECOM_SECRET`` for a real bot. To try an example without a WeCom
account, run the emulator in another terminal and point ``WECOM_URL`` at it::

    python -m trio_chatbridge emulate wecom      # prints ws_url, bot_id, secret, admin_url
    export WECOM_URL=ws://127.0.0.1:PORT/ WECOM_BOT_ID=emulator-bot WECOM_SECRET=emulator-secret
    python examples/echo_bot.py
    # then, in a third terminal, speak as a user and read what the bot said:
    curl -d '{"user": "alice", "text": "hi"}' http://127.0.0.1:ADMIN_PORT/admin/messages
    curl http://127.0.0.1:ADMIN_PORT/admin/sent

Each example prints one line once its bot is connected: which bot, on which server, and how
to write to it. WeChat and Lark connectors are built the same way (see docs/weixin.md and
docs/lark.md).
"""

from __future__ import annotations

import os
from typing import Final

import trio

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import wecom

SPEAK: Final = """curl -d '{"user": "alice", "text": "hi"}' ADMIN_URL/messages"""
"""How a user speaks on the emulator (ADMIN_URL: the ``admin_url`` it printed first)."""


def from_env() -> list[Connector]:
    """One WeCom long connection from ``WECOM_BOT_ID``, ``WECOM_SECRET`` and ``WECOM_URL``."""
    missing = [name for name in ("WECOM_BOT_ID", "WECOM_SECRET") if not os.environ.get(name)]
    if missing:
        raise SystemExit(f"set {' and '.join(missing)} first (see examples/wecom_env.py)")
    connection = wecom.LongConnection(
        bot_id=os.environ["WECOM_BOT_ID"],
        secret=os.environ["WECOM_SECRET"],
        # url= is the server to connect to: WeCom's own by default, the emulator's ws_url
        # when you try the bot locally.
        url=os.environ.get("WECOM_URL") or wecom.DEFAULT_URL,
    )
    return [connection]


async def say_when_up(bridge: cb.Bridge, example: str) -> None:
    """Print one line once every connector of ``bridge`` is running: which bot, where, and
    how to write to it. Returns without a word if the bridge stops first; if cancelled,
    nothing was printed."""
    try:
        await bridge.wait_status(lambda s: all(c.state == "running" for c in s.values()))
    except cb.ChatBridgeError:  # stopped before it was up: its log says why
        return
    urls = {c.name: c.url for c in bridge.connectors if isinstance(c, wecom.LongConnection)}
    bots = ", ".join(f"{name} on {url}" for name, url in urls.items())
    if set(urls.values()) == {wecom.DEFAULT_URL}:
        how = "write to the bot in WeCom"
    else:
        how = f"write to it through the emulator: {SPEAK}"
    print(f"{example} is up: {bots}; {how}. Ctrl-C stops it.", flush=True)


async def serve(bridge: cb.Bridge, example: str) -> int:
    """``cb.serve(bridge)``: until Ctrl-C or SIGTERM, a graceful stop, then the exit code; and
    the line of :func:`say_when_up` once the bot is connected."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(say_when_up, bridge, example)
        return await cb.serve(bridge)

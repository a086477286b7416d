"""Where the examples get their connector: a WeCom AI Bot named by environment variables.

Set ``WECOM_BOT_ID`` and ``WECOM_SECRET`` for a real bot. To try an example without a WeCom
account, run the emulator in another terminal and point ``WECOM_URL`` at it::

    python -m trio_chatbridge emulate wecom      # prints ws_url, bot_id, secret, admin_url
    export WECOM_URL=ws://127.0.0.1:PORT/ WECOM_BOT_ID=emulator-bot WECOM_SECRET=emulator-secret
    python examples/echo_bot.py
    # then, in a third terminal, speak as a user and read what the bot said:
    curl -d '{"user": "alice", "text": "hi"}' http://127.0.0.1:ADMIN_PORT/admin/messages
    curl http://127.0.0.1:ADMIN_PORT/admin/sent

WeChat and Lark connectors are built the same way (see docs/weixin.md and docs/lark.md).
"""

from __future__ import annotations

import os

from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import wecom


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

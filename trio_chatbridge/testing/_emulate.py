"""``python -m trio_chatbridge emulate <platform>``: an emulator on loopback for any client."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import trio

from .._errors import ConfigurationError
from ._lark import LarkEmulator
from ._wecom import WeComEmulator
from ._weixin import WeixinEmulator

EMULATORS: Final = {"weixin": WeixinEmulator, "wecom": WeComEmulator, "lark": LarkEmulator}


async def emulate(
    platform: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    out: Callable[[str], None] = print,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``platform``'s emulator until cancelled; first prints one JSON line describing it.

    The line holds its URLs, credentials and ``admin_url``, where the control API every
    emulator shares answers (docs/testing.md): ``POST {admin_url}/messages`` with ``{"user":
    ..., "text": ...}`` makes a user speak; ``enter``, ``events``, ``drop``, ``faults`` and
    ``config`` do the rest; ``GET {admin_url}/sent`` lists everything the bot did.
    ``nursery.start`` returns the emulator object.
    """
    if platform not in EMULATORS:
        raise ConfigurationError(f"no emulator for {platform!r}; choose from {sorted(EMULATORS)}")
    emulator = EMULATORS[platform]()
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve, host, port)
        out(json.dumps(emulator.describe()))
        task_status.started(emulator)

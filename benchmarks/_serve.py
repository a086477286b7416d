"""``python -m benchmarks._serve <platform> <ack_delay>``: an emulator whose acks take a while.

As ``python -m trio_chatbridge emulate <platform>`` (one JSON line, then serve until killed),
with the emulator's ``ack_delay`` set before anyone can connect: the latency of a distant server.
"""

from __future__ import annotations

import functools
import sys

import trio

from trio_chatbridge.testing._emulate import emulate


async def _serve(platform: str, ack_delay: float) -> None:
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(functools.partial(emulate, platform, out=lines.append))
        emulator.ack_delay = ack_delay
        print(lines[0], flush=True)


if __name__ == "__main__":
    trio.run(_serve, sys.argv[1], float(sys.argv[2]))

"""WeCom benchmarks: inbound callbacks through the connector, and stream reply frames.

The emulator runs in its own process (``python -m trio_chatbridge emulate wecom``).
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import httpx
import trio
import trio.lowlevel
from trio_websocket import open_websocket_url

import trio_chatbridge as cb
from trio_chatbridge.platforms import wecom

from ._util import (
    CountingStore,
    emulator_process,
    peak_rss_mib,
    post_burst,
    report,
    time_into_inbox,
    versus_raw,
)

MESSAGES = 20_000
USERS = 10_000  # two messages each: under the platform's three in flight per user
WRITES = 5_000
STREAM_DEADLINE = 120.0  # seconds for the stream row; it took under 1 s here


async def _load(info: dict[str, Any]) -> None:
    """Queue the callbacks while nobody is connected: the next subscriber gets them all."""
    burst = [{"user": f"user{i % USERS}", "text": f"message {i}"} for i in range(MESSAGES)]
    await post_burst(info, burst)


async def _raw_websocket(info: dict[str, Any], *, keep: bool = False) -> float:
    """The baseline: subscribe with trio-websocket, read and JSON-decode every callback.

    ``keep``: also build each callback's ``Message`` and keep it (the floor, see versus_raw).
    """
    kept: list[cb.Message] = []
    async with open_websocket_url(info["ws_url"], max_message_size=2**21) as ws:
        start = time.perf_counter()
        subscribe = {"bot_id": info["bot_id"], "secret": info["secret"]}
        await ws.send_message(
            json.dumps({"cmd": "aibot_subscribe", "headers": {"req_id": "s"}, "body": subscribe})
        )
        seen = 0
        while seen < MESSAGES:
            frame = json.loads(await ws.get_message())
            if frame.get("cmd") == "aibot_msg_callback":
                if keep:
                    kept.append(wecom.to_message("bot", frame["headers"]["req_id"], frame["body"]))
                seen += 1
        return time.perf_counter() - start


async def _connector_into_inbox(info: dict[str, Any]) -> float:
    """The connector: the same frames, parsed, journaled (MemoryStore) and queued."""
    connector = wecom.LongConnection(
        bot_id=info["bot_id"], secret=info["secret"], url=info["ws_url"]
    )
    return await time_into_inbox(connector, CountingStore(MESSAGES))


async def _stream_frames(info: dict[str, Any]) -> tuple[float, int]:
    """One reply streamed as WRITES pieces, frames as fast as acks allow (no pacing)."""
    result: list[tuple[float, int]] = []
    finished = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        start = time.perf_counter()
        async with reply.stream() as out:
            for i in range(WRITES):
                await out.write(f"{i} ")
                await trio.lowlevel.checkpoint()
        # the connector's stream, under the reply's check of each write
        stream: Any = getattr(out, "_out", out)
        frames = len(out.text) and stream.state.frames
        result.append((time.perf_counter() - start, frames))
        finished.set()

    connector = wecom.LongConnection(
        bot_id=info["bot_id"], secret=info["secret"], url=info["ws_url"], stream_interval=0
    )
    bridge = cb.Bridge([connector], agent, store=cb.MemoryStore(), debounce=cb.Debounce(0.0))
    with trio.fail_after(STREAM_DEADLINE):  # a failed agent never sets `finished`
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as http:
            await nursery.start(bridge.run)
            say = {"user": "streamer", "text": "go"}
            await http.post(info["admin_url"] + "/messages", json=say)
            await finished.wait()
            nursery.cancel_scope.cancel()
    return result[0]


def bench_inbound() -> None:
    rows = versus_raw(
        "wecom",
        _load,
        _raw_websocket,
        _connector_into_inbox,
        MESSAGES,
        "raw trio-websocket + json",
        floor=functools.partial(_raw_websocket, keep=True),
    )
    with emulator_process("wecom") as info:
        seconds, frames = trio.run(_stream_frames, info)
    report(
        f"wecom: {MESSAGES:,} callbacks from the loopback emulator (own process)",
        [
            *rows,
            (
                f"stream: {WRITES:,} writes, unpaced",
                f"{frames} frames in {seconds:.3f} s ({frames / seconds:,.0f} frames/s, "
                "each acked before the next)",
            ),
            ("peak RSS of this process", f"{peak_rss_mib():.0f} MiB"),
        ],
    )


BENCHMARKS = {"wecom": bench_inbound}

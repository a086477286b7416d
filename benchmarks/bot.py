"""Whole-bot benchmarks: every message answered, raw client against the bridge.

Per WebSocket platform, three clients answer the same burst from the loopback emulator (its own
process): a raw client that answers each callback or event itself, and the bridge with an agent
that answers each batch (window 0, one message per user so a batch is one message) on
``MemoryStore`` and on ``SQLiteStore``. Each runs with the emulator answering replies at once
and after 5 ms (a distant server). Reported: client CPU per message (this process's CPU time,
the machine being shared) and replies per second, medians of three, the clients taking turns,
each against a fresh emulator.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

import trio_chatbridge as cb
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import lark, wecom
from trio_chatbridge.platforms.lark import _frames as lark_frames

from ._util import REPEAT, emulator_process, post_burst, report
from .lark import raw_ack

WECOM_MESSAGES = 4_000
LARK_MESSAGES = 2_000
ACK_DELAYS = (0.0, 0.005)  # seconds the emulator takes to answer a reply
RAW_CONCURRENCY = 16  # replies a raw Lark client has in flight: the bridge's default runs

Run = Callable[[dict[str, Any], int], Awaitable[None]]
"""One client answering ``count`` messages from the emulator described by the dict."""


async def _load(info: dict[str, Any], count: int) -> None:
    await post_burst(info, [{"user": f"user{i}", "text": f"message {i}"} for i in range(count)])


async def _raw_wecom(info: dict[str, Any], count: int) -> None:
    """trio-websocket: subscribe, answer each callback with one finished stream, count acks."""
    async with open_websocket_url(info["ws_url"], max_message_size=2**21) as ws:
        subscribe = {"bot_id": info["bot_id"], "secret": info["secret"]}
        await ws.send_message(
            json.dumps({"cmd": "aibot_subscribe", "headers": {"req_id": "s"}, "body": subscribe})
        )
        acked = answered = 0
        while acked < count:
            frame = json.loads(await ws.get_message())
            if frame.get("cmd") == "aibot_msg_callback":
                answered += 1
                stream = {"id": f"s{answered}", "finish": True, "content": "ok"}
                reply = {
                    "cmd": "aibot_respond_msg",
                    "headers": {"req_id": frame["headers"]["req_id"]},
                    "body": {"msgtype": "stream", "stream": stream},
                }
                await ws.send_message(json.dumps(reply))
            elif "cmd" not in frame and frame["headers"]["req_id"] != "s":
                assert frame["errcode"] == 0, frame
                acked += 1


async def _raw_lark(info: dict[str, Any], count: int) -> None:
    """trio-websocket + httpx: decode each event, ACK it, reply over the open API."""
    domain = info["domain"]
    async with httpx.AsyncClient(base_url=domain) as http:
        found = await http.post(
            "/callback/ws/endpoint", json={"AppID": info["app_id"], "AppSecret": info["app_secret"]}
        )
        token = await http.post(
            "/open-apis/auth/v3/tenant_access_token/internal",
            json={"app_id": info["app_id"], "app_secret": info["app_secret"]},
        )
        auth = {"authorization": f"Bearer {token.json()['tenant_access_token']}"}
        limiter = trio.CapacityLimiter(RAW_CONCURRENCY)
        content = json.dumps({"text": "ok"})

        async def answer(message_id: str) -> None:
            async with limiter:
                response = await http.post(
                    f"/open-apis/im/v1/messages/{message_id}/reply",
                    json={"msg_type": "text", "content": content},
                    headers=auth,
                )
                assert response.json()["code"] == 0

        async with (
            open_websocket_url(found.json()["data"]["URL"], max_message_size=2**22) as ws,
            trio.open_nursery() as nursery,
        ):
            seen = 0
            while seen < count:
                frame = lark_frames.decode(await ws.get_message())  # type: ignore[arg-type]
                if frame.method != 1:
                    continue
                event = json.loads(frame.payload or b"{}")
                await ws.send_message(raw_ack(frame))
                nursery.start_soon(answer, event["event"]["message"]["message_id"])
                seen += 1


def _bridged(make: Callable[[dict[str, Any]], Connector], sqlite: bool) -> Run:
    """The bridge on the given store, its agent answering each batch with one reply."""

    async def run(info: dict[str, Any], count: int) -> None:
        answered = 0
        done = trio.Event()

        async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
            nonlocal answered
            await reply.send("ok")
            answered += len(batch.messages)
            if answered >= count:
                done.set()

        with tempfile.TemporaryDirectory() as tmp:
            store = cb.SQLiteStore(Path(tmp) / "bot.db") if sqlite else cb.MemoryStore()
            bridge = cb.Bridge([make(info)], agent, store=store, debounce=cb.Debounce(window=0.0))
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                await done.wait()
                nursery.cancel_scope.cancel()

    return run


def _wecom_connector(info: dict[str, Any]) -> Connector:
    return wecom.LongConnection(bot_id=info["bot_id"], secret=info["secret"], url=info["ws_url"])


def _lark_connector(info: dict[str, Any]) -> Connector:
    return lark.LongConnection(
        app_id=info["app_id"],
        app_secret=info["app_secret"],
        domain=info["domain"],
        bot_open_id=info["bot_open_id"],
    )


DEADLINE = 300.0  # seconds a run may take before the benchmark gives up (a lost reply)


async def _bounded(run: Run, info: dict[str, Any], count: int) -> None:
    with trio.fail_after(DEADLINE):
        await run(info, count)


def _measure(run: Run, info: dict[str, Any], count: int) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds for ``run``, from connecting to the end."""
    wall, cpu = time.perf_counter(), time.process_time()
    trio.run(_bounded, run, info, count)
    return time.perf_counter() - wall, time.process_time() - cpu


def _compare(platform: str, count: int, clients: dict[str, Run]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for delay in ACK_DELAYS:
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        for _ in range(REPEAT):
            for name, client in clients.items():
                with emulator_process(platform, delay) as info:
                    trio.run(_load, info, count)
                    runs[name].append(_measure(client, info, count))
        cpu = {n: statistics.median(c for _, c in r) / count for n, r in runs.items()}
        rate = {n: count / statistics.median(w for w, _ in r) for n, r in runs.items()}
        raw = next(iter(clients))
        for name in clients:
            versus = "" if name == raw else f"  CPU {cpu[name] / cpu[raw]:.2f}x raw"
            rows.append(
                (
                    f"ack {delay * 1000:.0f} ms, {name}",
                    f"{cpu[name] * 1e6:6.0f} us CPU/message{versus};  {rate[name]:7,.0f} "
                    f"replies/s ({rate[name] / rate[raw]:.2f}x raw)",
                )
            )
    return rows


def _bench(
    platform: str, count: int, what: str, raw: tuple[str, Run], make: Callable[..., Connector]
) -> Callable[[], None]:
    """A whole-bot benchmark: the raw client against the bridge on each store."""

    def bench() -> None:
        clients = {
            raw[0]: raw[1],
            "bridge, MemoryStore": _bridged(make, sqlite=False),
            "bridge, SQLiteStore": _bridged(make, sqlite=True),
        }
        report(f"{platform} whole bot: {count:,} {what}", _compare(platform, count, clients))

    return bench


BENCHMARKS = {
    "wecom-bot": _bench(
        "wecom",
        WECOM_MESSAGES,
        "callbacks, each answered with one finished stream",
        ("raw trio-websocket", _raw_wecom),
        _wecom_connector,
    ),
    "lark-bot": _bench(
        "lark",
        LARK_MESSAGES,
        "events, each ACKed and answered with one reply",
        ("raw trio-websocket + httpx", _raw_lark),
        _lark_connector,
    ),
}

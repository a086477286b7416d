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

import cProfile
import json
import pstats
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import open_websocket_url

import trio_chatbridge as cb
from trio_chatbridge._ws_core import Answer, Inbound
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms import lark, wecom
from trio_chatbridge.platforms.lark import _frames as lark_frames
from trio_chatbridge.platforms.wecom import _protocol as wecom_protocol
from trio_chatbridge.platforms.wecom._replies import new_stream_id, stream_body

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


def _floor_wecom(*, tasks: bool) -> Run:
    """The raw client plus only the work no bridge can skip per callback, in one loop.

    Each frame is read by WeCom's protocol core (a callback becomes its ``Message``, an ACK
    its ``Answer``); a callback's id goes into a dedup journal (a dict); its run sends the
    finished stream built as the connector builds it and awaits its ACK; the ACK marks it
    done in the journal. ``tasks``: each run is a task of its own that sends and waits on an
    event the reader sets (as a bridge whose runs await their ACKs must); else the reader
    sends and the ACK completes the run inline. Its CPU per message bounds what any design
    of the bridge reaches against the raw client.
    """

    async def run(info: dict[str, Any], count: int) -> None:
        core = wecom_protocol.WeComCore(info["bot_id"], info["secret"], "floor")
        journal: dict[str, bool] = {}  # message id -> done
        waiting: dict[str, tuple[cb.Message, trio.Event | None]] = {}  # req_id -> its run
        acked = 0
        async with (
            open_websocket_url(info["ws_url"], max_message_size=2**21) as ws,
            trio.open_nursery() as nursery,
        ):

            async def answer(message: cb.Message, req_id: str) -> None:
                body = stream_body(new_stream_id(), "ok", finish=True)
                request = core.command(wecom_protocol.RESPOND, req_id, body)
                answered = trio.Event() if tasks else None
                waiting[req_id] = (message, answered)
                await ws.send_message(request.data)
                if answered is not None:
                    await answered.wait()
                    journal[message.id] = True

            for handshake in core.open():
                await ws.send_message(handshake.data)
            while acked < count:
                for event in core.receive(await ws.get_message(), trio.current_time()):
                    if type(event) is Inbound and event.message is not None:
                        message = event.message
                        if message.id in journal:
                            continue
                        journal[message.id] = False
                        req_id = message.reply_handle["req_id"]
                        if tasks:
                            nursery.start_soon(answer, message, req_id)
                        else:
                            await answer(message, req_id)
                    elif type(event) is Answer and event.key in waiting:
                        assert event.code == 0, event
                        message, answered = waiting.pop(event.key)
                        if answered is None:
                            journal[message.id] = True
                        else:
                            answered.set()
                        acked += 1

    return run


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
        marked = 0
        all_marked = trio.Event()

        async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
            await reply.send("ok")

        with tempfile.TemporaryDirectory() as tmp:
            store = cb.SQLiteStore(Path(tmp) / "bot.db") if sqlite else cb.MemoryStore()
            # The finish line is every message journaled done: on WeCom a run ends when its
            # final frame is written, and its ACK (which the raw client waits for too)
            # confirms it later. The done-marks are counted as the store writes them (a
            # poll of journal_pending read and decoded every pending row each time: on
            # SQLite up to ~16 us a message of the benchmark's own CPU).
            journal_done = store.journal_done

            async def counted(messages: Sequence[cb.Message], *, error: str | None = None) -> None:
                nonlocal marked
                await journal_done(messages, error=error)
                marked += len(messages)
                if marked >= count:
                    all_marked.set()

            setattr(store, "journal_done", counted)  # noqa: B010 (mypy refuses a method assigned)
            bridge = cb.Bridge([make(info)], agent, store=store, debounce=cb.Debounce(window=0.0))
            async with trio.open_nursery() as nursery:
                await nursery.start(bridge.run)
                await all_marked.wait()
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
    platform: str,
    count: int,
    what: str,
    raw: tuple[str, Run],
    make: Callable[..., Connector],
    floors: dict[str, Run] | None = None,
) -> Callable[[], None]:
    """A whole-bot benchmark: the raw client against the bridge on each store (and against
    ``floors``: the raw client plus the bridge's unavoidable work, where one is built)."""
    floors = floors or {}

    def bench() -> None:
        clients = {
            raw[0]: raw[1],
            **floors,
            "bridge, MemoryStore": _bridged(make, sqlite=False),
            "bridge, SQLiteStore": _bridged(make, sqlite=True),
        }
        report(f"{platform} whole bot: {count:,} {what}", _compare(platform, count, clients))

    return bench


class _Steps(trio.abc.Instrument):
    """Counts Trio task steps by task name."""

    def __init__(self) -> None:
        self.by_task: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.by_task[task.name] += 1


TASKS_SHOWN = 8  # tasks listed per client, most steps first


def _short(task: str) -> str:
    """A task's name without its module path: its last two dotted parts."""
    return ".".join(task.replace("<locals>.", "").rsplit(".", 2)[-2:])


def _breakdown(platform: str, count: int, clients: dict[str, Run]) -> list[tuple[str, str]]:
    """Per client, one run each (ack 0 ms): Trio task steps per message, by task, and Python
    calls per message (cProfile's count). Figures that the machine's load does not move."""
    rows: list[tuple[str, str]] = []
    for name, client in clients.items():
        steps = _Steps()
        with emulator_process(platform) as info:
            trio.run(_load, info, count)
            trio.run(_bounded, client, info, count, instruments=[steps])
        with emulator_process(platform) as info:
            trio.run(_load, info, count)
            profile = cProfile.Profile()
            profile.runcall(trio.run, _bounded, client, info, count)
        stats: dict[Any, tuple[int, ...]] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        calls = sum(entry[1] for entry in stats.values())
        total = sum(steps.by_task.values())
        rows.append(
            (name, f"{total / count:5.2f} task steps/message;  {calls / count:5.0f} calls/message")
        )
        for task, n in steps.by_task.most_common(TASKS_SHOWN):
            if n >= count / 100:  # a task that steps once in a while is not per message
                rows.append((f"  {_short(task)}", f"{n / count:5.2f}"))
    return rows


def _bench_steps(
    platform: str,
    count: int,
    raw: tuple[str, Run],
    make: Callable[..., Connector],
    floors: dict[str, Run],
) -> Callable[[], None]:
    """Where the bridge's extra work per message goes, against the raw client and the floors."""

    def bench() -> None:
        clients = {raw[0]: raw[1], **floors, "bridge, MemoryStore": _bridged(make, sqlite=False)}
        report(
            f"{platform} whole bot, where the work goes: {count:,} messages, ack 0 ms",
            _breakdown(platform, count, clients),
        )

    return bench


_WECOM_FLOORS: dict[str, Run] = {
    "floor: raw + the bridge's unavoidable work, inline": _floor_wecom(tasks=False),
    "floor, a task per run awaiting its ACK": _floor_wecom(tasks=True),
}

BENCHMARKS = {
    "wecom-bot": _bench(
        "wecom",
        WECOM_MESSAGES,
        "callbacks, each answered with one finished stream",
        ("raw trio-websocket", _raw_wecom),
        _wecom_connector,
        _WECOM_FLOORS,
    ),
    "wecom-bot-steps": _bench_steps(
        "wecom", WECOM_MESSAGES, ("raw trio-websocket", _raw_wecom), _wecom_connector, _WECOM_FLOORS
    ),
    "lark-bot": _bench(
        "lark",
        LARK_MESSAGES,
        "events, each ACKed and answered with one reply",
        ("raw trio-websocket + httpx", _raw_lark),
        _lark_connector,
    ),
}

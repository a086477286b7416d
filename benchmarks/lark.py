"""Lark benchmarks: the frame codec against the protobuf runtime, the protocol core's receive
path, and inbound events.

The emulator runs in its own process (``python -m trio_chatbridge emulate lark``).
"""

from __future__ import annotations

import json
import time
import timeit
from typing import Any

import httpx
from trio_websocket import open_websocket_url

from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark import _frames
from trio_chatbridge.platforms.lark import _protocol as lark_protocol

from ._util import (
    REPEAT,
    CountingStore,
    peak_rss_mib,
    post_burst,
    report,
    time_into_inbox,
    versus_raw,
)

EVENTS = 5_000  # pushed at once: well inside the 3 s ACK deadline for both loops
CODEC_ROUNDS = 20_000


def bench_codec() -> None:
    """Our ``Frame`` against the bare protobuf runtime (the same message class, parsed and
    serialized) on one event frame, and an event's codec work in the connector: decode, ACK."""
    payload = json.dumps({"schema": "2.0", "event": {"message": {"content": "x" * 300}}}).encode()
    ours = _frames.Frame(
        seq_id=123456,
        log_id=654321,
        service=7,
        method=1,
        headers=(("type", "event"), ("message_id", "m-1"), ("sum", "1"), ("seq", "0")),
        payload=payload,
    )
    data = _frames.encode(ours)
    runtime = _frames._PB  # the message class our frames are

    def per_call(loop: Any) -> float:
        best = min(timeit.repeat(loop, number=CODEC_ROUNDS, repeat=REPEAT, timer=time.process_time))
        return best / CODEC_ROUNDS

    bare = per_call(lambda: runtime.FromString(runtime.FromString(data).SerializeToString()))
    used = per_call(lambda: _frames.decode(_frames.encode(ours)))
    acked = per_call(lambda: _frames.ack(data, b"{}", biz_rt=str(_frames.decode(data).seq_id)))
    report(
        "lark: one event frame (4 headers, 330-byte payload)",
        [
            ("protobuf runtime, bare", f"{bare * 1e6:.2f} us CPU per encode+decode"),
            ("our Frame (used)", f"{used * 1e6:.2f} us CPU per encode+decode"),
            ("our Frame over the bare runtime", f"{used / bare:.1f}x the CPU"),
            ("an event decoded and its ACK encoded", f"{acked * 1e6:.2f} us CPU"),
        ],
    )


RECEIVE_EVENTS = 1_000  # distinct message events, each received once per round


def _message_event(n: int) -> bytes:
    """One ``im.message.receive_v1`` event frame as Lark sends it: every header field, a sender
    with three ids, a text message (docs/protocols/lark.md#message-events)."""
    content = json.dumps({"text": f"hello there, message {n}"})
    header = {
        "event_id": f"ev{n}",
        "event_type": "im.message.receive_v1",
        "create_time": "1700000000000",
        "token": "",
        "app_id": "cli_app",
        "tenant_key": "t1",
    }
    sender = {
        "sender_id": {"open_id": f"ou_{n % 100}", "union_id": "on_1", "user_id": None},
        "sender_type": "user",
        "tenant_key": "t1",
    }
    message = {
        "message_id": f"om_{n}",
        "root_id": "",
        "parent_id": "",
        "create_time": "1700000000000",
        "chat_id": "oc_1",
        "chat_type": "p2p",
        "message_type": "text",
        "content": content,
        "mentions": None,
    }
    envelope = {"schema": "2.0", "header": header, "event": {"sender": sender, "message": message}}
    frame = _frames.Frame(
        seq_id=n,
        log_id=n,
        service=7,
        method=_frames.DATA,
        headers=(("type", "event"), ("message_id", f"m{n}"), ("sum", "1"), ("seq", "0")),
        payload=json.dumps(envelope, separators=(",", ":")).encode(),
    )
    return _frames.encode(frame)


def bench_receive() -> None:
    """CPU per message event through the protocol core (frame bytes in, a ``Message`` and its
    ACK out) against a bare loop that decodes the frame and its JSON, as the raw client does."""
    frames = [_message_event(n) for n in range(RECEIVE_EVENTS)]
    core = lark_protocol.LarkProtocol("cli_app", "ou_bot")
    core.connect("wss://lark.invalid/ws?service_id=7", lark_protocol.ClientConfig())
    (first,) = core.receive(frames[0], 0.0)
    assert isinstance(first, lark_protocol.MessageReceived)

    def bare() -> None:
        for data in frames:
            json.loads(_frames.decode(data).payload or b"{}")

    def ours() -> None:
        for data in frames:
            core.receive(data, 0.0)

    rounds = 5
    times = {
        name: min(timeit.repeat(loop, number=rounds, repeat=REPEAT, timer=time.process_time))
        / (rounds * RECEIVE_EVENTS)
        for name, loop in (("bare", bare), ("ours", ours))
    }
    report(
        "lark: one message event through the protocol core (CPU per event)",
        [
            ("bare: frame decoded, payload json.loads", f"{times['bare'] * 1e6:.2f} us"),
            (
                "LarkProtocol.receive: a Message (ACK encoded later)",
                f"{times['ours'] * 1e6:.2f} us",
            ),
            ("ours over bare", f"{times['ours'] / times['bare']:.2f}x the CPU"),
        ],
    )


async def _load(info: dict[str, Any]) -> None:
    burst = [{"user": f"ou_{i % 1000}", "text": f"event {i}"} for i in range(EVENTS)]
    await post_burst(info, burst)


def raw_ack(frame: _frames.Frame) -> bytes:
    """The ACK a bare client sends for a data frame: its ids and headers, code 200."""
    ack = _frames.Frame(
        frame.seq_id, frame.log_id, frame.service, 1, frame.headers, payload=b'{"code":200}'
    )
    return _frames.encode(ack)


async def _raw_websocket(info: dict[str, Any]) -> float:
    """The baseline: discover, connect, decode each frame and its JSON, ACK it. Nothing else."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            info["domain"] + "/callback/ws/endpoint",
            json={"AppID": info["app_id"], "AppSecret": info["app_secret"]},
        )
    url = answer.json()["data"]["URL"]
    start = time.perf_counter()
    async with open_websocket_url(url, max_message_size=2**22) as ws:
        seen = 0
        while seen < EVENTS:
            data = await ws.get_message()
            assert isinstance(data, bytes)  # Lark sends binary frames only
            frame = _frames.decode(data)
            if frame.method == 1:
                json.loads(frame.payload or b"{}")
                await ws.send_message(raw_ack(frame))
                seen += 1
    return time.perf_counter() - start


async def _connector_into_inbox(info: dict[str, Any]) -> float:
    """The connector: the same frames, decoded, parsed, journaled (MemoryStore) and ACKed."""
    connector = lark.LongConnection(
        app_id=info["app_id"],
        app_secret=info["app_secret"],
        domain=info["domain"],
        bot_open_id=info["bot_open_id"],
    )
    return await time_into_inbox(connector, CountingStore(EVENTS))


def bench_inbound() -> None:
    rows = versus_raw(
        "lark",
        _load,
        _raw_websocket,
        _connector_into_inbox,
        EVENTS,
        "raw trio-websocket: decode + ACK",
        target=0.9,
    )
    report(
        f"lark: {EVENTS:,} message events from the loopback emulator (own process)",
        [*rows, ("peak RSS of this process", f"{peak_rss_mib():.0f} MiB")],
    )


BENCHMARKS = {"lark-codec": bench_codec, "lark-receive": bench_receive, "lark": bench_inbound}

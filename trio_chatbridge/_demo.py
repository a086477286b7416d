"""``python -m trio_chatbridge demo``: a scripted conversation, printed as a transcript.

It runs on a virtual clock (Trio's MockClock with autojump), so the quiet windows of several
seconds take no real time and the transcript is the same at every run.

``demo --loopback`` plays the same script with each platform's emulator served on real
loopback sockets (WebSockets and HTTP on 127.0.0.1) instead of in memory. The clock is still
virtual, so the hour of WeChat's session pause takes no time either; it jumps ahead only once
every task has waited :data:`LOOPBACK_AUTOJUMP` seconds of real time, so that the sockets'
traffic, much quicker than that, happens first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import trio
import trio.testing

from ._bridge import Bridge
from ._debounce import Debounce
from ._messages import Batch, Message
from ._reply import Reply
from .stores import MemoryStore
from .testing import FakeConnector, running_bridge

WINDOW = 3.0  # seconds of quiet that end a batch in the demo
LOOPBACK_AUTOJUMP: Final = 0.1  # seconds of real idleness before the virtual clock jumps

# (at second, user, chat, text): alice and carol write in bursts, bob in a group.
SCRIPT = [
    (0.0, "alice", "dm:alice", "hi!"),
    (0.8, "alice", "dm:alice", "quick question"),
    (1.0, "bob", "group:team", "@bot is the deploy done?"),
    (1.6, "alice", "dm:alice", "how do I reset my password?"),
    (2.0, "carol", "dm:carol", "hello"),
    (9.0, "carol", "dm:carol", "are you still there?"),
]


class Transcript:
    """Prints lines stamped with seconds since the demo started (on Trio's clock)."""

    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._start = trio.current_time()

    def __call__(self, line: str) -> None:
        self._out(f"[{trio.current_time() - self._start:5.1f}s] {line}")


async def demo_agent(batch: Batch, reply: Reply) -> None:
    """The example agent: sums up the batch, streaming its answer word by word. If cancelled
    (the user spoke again), the stream ends where it was."""
    who = batch.latest.sender.id
    words = f"{who}, I got {len(batch.messages)} message(s) from you: " + " | ".join(
        m.text for m in batch.messages
    )
    tokens = words.split(" ")
    async with reply.stream() as out:
        for start in range(0, len(tokens), 4):
            await trio.sleep(0.3)  # as if a model were producing tokens
            await out.write(" ".join(tokens[start : start + 4]) + " ")


async def fake_platform_demo(say: Transcript) -> None:
    """The core pipeline on the test connector: bursts become batches, replies stream back.
    The demo scenes stop with their bridge and emulator if cancelled."""

    streaming: set[str] = set()

    def on_write(target: Message, text: str) -> None:
        if target.id not in streaming:  # show when a stream starts, not every piece
            streaming.add(target.id)
            say(f"  bot -> {target.chat.id:<10} streaming: {text!r} ...")

    async def show_replies() -> None:
        while True:
            sent = await chat.next_reply()
            say(f"  bot -> {sent.chat:<10} done, {len(sent.chunks)} writes: {sent.text.strip()!r}")

    async def agent(batch: Batch, reply: Reply) -> None:
        say(f"batch {batch.session.split(':', 2)[2]:<10} <- {len(batch.messages)} message(s)")
        await demo_agent(batch, reply)

    chat = FakeConnector("demo-bot", on_write=on_write)
    bridge = Bridge(
        connectors=[chat],
        agent=agent,
        debounce=Debounce(window=WINDOW, max_delay=20.0),
        store=MemoryStore(),
    )
    async with running_bridge(bridge), trio.open_nursery() as nursery:
        nursery.start_soon(show_replies)
        start = trio.current_time()
        for at, user, room, text in SCRIPT:
            await trio.sleep_until(start + at)
            say(f"{user:>5} in {room:<10} > {text}")
            await chat.say(text, chat=room, user=user)
        duplicate = chat.message("hi!", chat="dm:alice", user="alice", id="m1")
        say("platform redelivers alice's first message (same id)")
        chat.deliver(duplicate)
        await trio.sleep(15)
        nursery.cancel_scope.cancel()
    stats = bridge.stats()
    say(
        f"done: {stats.received} messages, {stats.duplicates} duplicate dropped, "
        f"{stats.batches} batches, {stats.runs} agent runs, {stats.replies} replies"
    )


def announce(say: Transcript, description: dict[str, Any]) -> None:
    """Say where a loopback emulator listens."""
    urls = ", ".join(
        v
        for k, v in description.items()
        if str(v).startswith(("http://", "ws://")) and k != "admin_url"
    )
    say(f"{description['platform']} emulator on loopback: {urls}")


async def weixin_demo(say: Transcript, loopback: bool = False) -> None:
    """WeChat on the iLink emulator: a burst, typing, an expired session, recovery. If
    cancelled, the scene stops with its bridge and emulator."""
    from .testing import WeixinEmulator, WeixinFault

    emulator = WeixinEmulator()

    async def show_sent() -> None:
        while True:
            sent = await emulator.next_sent()
            say(f"  bot -> {sent.to_user}: {sent.text!r} (context token {sent.context_token})")

    async with trio.open_nursery() as served:
        if loopback:
            await served.start(emulator.serve)
            announce(say, emulator.describe())
        bridge = Bridge(
            connectors=[emulator.connector("wx-bot")],
            agent=demo_agent,
            debounce=Debounce(window=WINDOW, max_delay=20.0),
            store=MemoryStore(),
        )
        async with running_bridge(bridge), trio.open_nursery() as nursery:
            nursery.start_soon(show_sent)
            for text in ("ni hao", "is the shop open today?"):
                say(f"wechat user dave@im.wechat > {text}")
                emulator.user_says("dave@im.wechat", text)
                await trio.sleep(1.0)
            await trio.sleep(6)
            typing = [status for _, status in emulator.typing]
            say(f"  typing indicator sent while the agent ran: {typing} (1 = typing, 2 = done)")
            say("the platform answers errcode -14 (session expired) on the next poll")
            emulator.fail("getupdates", WeixinFault.session_expired())
            await trio.sleep(36)
            say(f"  status: {bridge.status()['weixin:wx-bot'].state}; messages wait on the server")
            emulator.user_says("dave@im.wechat", "hello? anyone?")
            await trio.sleep(3600)
            say(f"  an hour later: status {bridge.status()['weixin:wx-bot'].state}")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
        served.cancel_scope.cancel()


async def wecom_demo(say: Transcript, loopback: bool = False) -> None:
    """WeCom on its emulator: a welcome, a burst, a streamed reply, a replacement. If
    cancelled, the scene stops with its bridge and emulator."""
    from .testing import WeComEmulator

    async with trio.open_nursery() as nursery:
        emulator = WeComEmulator()
        await nursery.start(emulator.serve if loopback else emulator.run)
        if loopback:
            announce(say, emulator.describe())
        bridge = Bridge(
            connectors=[emulator.connector(welcome="Hi! I am the demo bot.")],
            agent=demo_agent,
            debounce=Debounce(window=WINDOW, max_delay=20.0),
            store=MemoryStore(),
        )
        async with running_bridge(bridge):
            say("erin opens the chat (enter_chat)")
            emulator.user_enters("erin")
            sent = await emulator.next_sent()
            say(f"  bot -> erin welcome: {sent.text!r}")
            for text in ("can you help", "with my invoice?"):
                say(f"wecom user erin > {text}")
                emulator.user_says("erin", text)
                await trio.sleep(0.5)
            for _ in range(2):
                sent = await emulator.next_sent()
                if sent.text:
                    say(f"  bot -> erin streamed in {sent.frames} frames: {sent.text.strip()!r}")
                else:
                    say("  bot closes erin's earlier message (empty finished stream)")
            say("another process connects with the same bot id")
            other = Bridge([emulator.connector()], demo_agent, store=MemoryStore())
            async with running_bridge(other):
                await trio.sleep(1)
                state = bridge.status()["wecom:emulator-bot"]
                say(f"  first connection: {state.state}: {state.detail}")
        nursery.cancel_scope.cancel()


async def lark_demo(say: Transcript, loopback: bool = False) -> None:
    """Lark on its emulator: fragments, a group filter, a reply edited as it streams. If
    cancelled, the scene stops with its bridge and emulator."""
    from .testing import LarkEmulator

    async with trio.open_nursery() as nursery:
        emulator = LarkEmulator(fragment_size=200)
        await nursery.start(emulator.serve if loopback else emulator.run)
        if loopback:
            announce(say, emulator.describe())
        bridge = Bridge(
            connectors=[emulator.connector()],
            agent=demo_agent,
            debounce=Debounce(window=WINDOW, max_delay=20.0),
            store=MemoryStore(),
        )
        async with running_bridge(bridge):
            say("lark user ou_frank in group oc_ops (no @bot) > just chatting")
            emulator.user_says("ou_frank", "just chatting", chat="oc_ops", mention_bot=False)
            say("lark user ou_frank in group oc_ops > @bot what's the status?")
            emulator.user_says("ou_frank", "what's the status?", chat="oc_ops")
            sent = await emulator.next_sent()
            say(f"  bot replies to {sent.reply_to}: {sent.text!r} ...")
            await trio.sleep(5)
            text = emulator.texts[sent.message_id]
            edits = emulator.edits.get(sent.message_id, 0)
            say(f"  ... edited {edits} times to: {text.strip()!r}")
            stats = bridge.stats()
            say(
                f"  events ACKed: {emulator.acks}; group message without a mention filtered: "
                f"{stats.other.get('lark.filtered', 0)}"
            )
        nursery.cancel_scope.cancel()


async def run_demo(out: Callable[[str], None] = print, loopback: bool = False) -> None:
    """Play every demo scene, one after another (the platforms' over loopback if asked). If
    cancelled, the scene playing stops; the later ones do not run."""
    where = "over loopback sockets" if loopback else "in memory"
    say = Transcript(out)
    out(f"== the pipeline: bursts in a {WINDOW:.0f} s quiet window become one batch ==")
    await fake_platform_demo(say)
    out("")
    out(f"== WeChat (iLink long poll), the emulator {where} ==")
    await weixin_demo(Transcript(out), loopback)
    out("")
    out(f"== WeCom AI Bot (WebSocket long connection), the emulator {where} ==")
    await wecom_demo(Transcript(out), loopback)
    out("")
    out(f"== Lark/Feishu (protobuf frames, replies by open API), the emulator {where} ==")
    await lark_demo(Transcript(out), loopback)


def main(out: Callable[[str], None] = print, loopback: bool = False) -> None:
    """Play the demo on the virtual clock; ``loopback`` serves the emulators on 127.0.0.1."""
    jump = LOOPBACK_AUTOJUMP if loopback else 0
    trio.run(run_demo, out, loopback, clock=trio.testing.MockClock(autojump_threshold=jump))

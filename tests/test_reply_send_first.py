"""``connector.send_first`` and ``connector.edit`` refuse no-text content as ``reply.send``
does, on every platform, and a connector cannot skip the check by overriding them."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from support import emulator_bridge

import trio_chatbridge as cb
from trio_chatbridge import connectors
from trio_chatbridge.platforms import lark
from trio_chatbridge.testing import (
    LarkEmulator,
    WeComEmulator,
    WeixinEmulator,
    running_bridge,
)

BAD: tuple[cb.Content, ...] = (
    "bad \ud800",
    cb.Markdown("**bad** \udcff"),
    cb.Attachment(b"x", "bad\udcff.txt"),
    cb.Card({"elements": [{"tag": "markdown", "content": "bad \udfff"}]}),
)


@pytest.mark.parametrize("platform", ["weixin", "wecom", "lark"])
async def test_send_first_refuses_a_lone_surrogate_before_anything_is_sent(
    autojump_clock: trio.testing.MockClock, platform: str
) -> None:
    """Half a surrogate pair reached the wire (WeCom: as a JSON escape) or failed deep in
    the platform's encoder (a bare UnicodeEncodeError); now a SendError naming the chat, the
    connector and what to do, before anything is sent; a good message goes after it."""
    results: list[str] = []
    done = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        chat = batch.latest.chat.id
        for content in BAD:
            try:
                await reply.connector.send_first(chat, content)
                results.append("sent")
            except cb.SendError as exc:
                results.append(str(exc))
            except Exception as exc:  # what main raised: recorded, so the test says so
                results.append(f"{type(exc).__name__}: {exc}")
        await reply.connector.send_first(chat, "good \u00e9")
        done.set()

    emu: Any
    if platform == "weixin":
        emu = WeixinEmulator()
        async with running_bridge(cb.Bridge([emu.connector()], agent, store=cb.MemoryStore())):
            emu.user_says("wx-ann", "hi")
            await done.wait()
    else:
        emu = WeComEmulator() if platform == "wecom" else LarkEmulator()
        async with emulator_bridge(emu, emu.connector, agent):
            emu.user_says("ann" if platform == "wecom" else "ou_ann", "hi")
            await done.wait()
    for refusal in results:
        assert "not sent: its" in refusal and "holds a lone surrogate" in refusal, refusal
        assert "via " + platform in refusal and "replace it" in refusal
    assert len(results) == len(BAD)
    texts = [a.text for a in emu.activity if a.text]
    assert texts == ["good \u00e9"]
    assert not any(a.card or a.media for a in emu.activity)


async def test_a_connector_that_cannot_send_first_still_says_so() -> None:
    class Plain(connectors.Connector):
        platform, account = "plain", "a"

        async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            raise NotImplementedError

        async def send(self, target: cb.Message, text: str) -> None:
            raise NotImplementedError

    with pytest.raises(cb.SendError, match="cannot send a message unprompted"):
        await Plain().send_first("chat", "hello")
    with pytest.raises(cb.SendError, match="lone surrogate"):
        await Plain().send_first("chat", "\ud800")
    sent = cb.Sent("plain", "chat", "text", "m1")
    with pytest.raises(cb.SendError, match="cannot edit a sent message"):
        await Plain().edit(sent, "hello")
    with pytest.raises(cb.SendError, match=r"edit via plain:a not sent: .* lone surrogate"):
        await Plain().edit(sent, "\ud800")


@pytest.mark.parametrize(("method", "hook"), [("send_first", "_send_first"), ("edit", "_edit")])
def test_a_connector_overriding_a_checked_method_is_refused_naming_its_hook(
    method: str, hook: str
) -> None:
    """``send_first`` was the documented hook; a connector of a user's that still overrides
    it (or ``edit``) silently skipped the lone-surrogate check. Its class is now refused at
    definition, naming the hook to override instead; overriding the hook is fine."""

    async def override(self: connectors.Connector, where: Any, content: cb.Content) -> Any:
        raise NotImplementedError

    with pytest.raises(TypeError, match=f"Mine overrides Connector.{method}.* override {hook} "):
        type("Mine", (connectors.Connector,), {method: override})
    with pytest.raises(TypeError, match=f"override {hook} "):  # deeper down the tree too
        type("Mine", (lark.LongConnection,), {method: override})
    assert issubclass(type("Mine", (connectors.Connector,), {hook: override}), connectors.Connector)


async def test_connector_edit_refuses_a_lone_surrogate_before_anything_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``reply.edit`` refused half a surrogate pair, but ``connector.edit`` called directly
    (Lark) took it to the platform's encoder; it is the same SendError, nothing is edited,
    and a good edit goes after it."""
    emu = LarkEmulator()
    done = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        sent = await reply.send("first")
        for content in BAD:
            if isinstance(content, cb.Attachment):
                continue  # no platform edits an attachment in place
            with pytest.raises(cb.SendError, match=r"edit via lark:.* lone surrogate"):
                await reply.connector.edit(sent, content)
        await reply.connector.edit(sent, "second \u00e9")
        done.set()

    async with emulator_bridge(emu, emu.connector, agent):
        emu.user_says("ou_ann", "hi")
        await done.wait()
    assert list(emu.texts.values()) == ["second \u00e9"]
    assert list(emu.edits.values()) == [1]

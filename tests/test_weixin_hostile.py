"""Hostile WeChat servers and pages: what a bot loses (nothing), what it counts, what it says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.testing import WeixinEmulator, WeixinFault, running_bridge


@asynccontextmanager
async def bridged(emu: WeixinEmulator, agent: cb.Agent, **options: Any) -> AsyncIterator[cb.Bridge]:
    bridge = cb.Bridge(
        connectors=[emu.connector(**options)],
        agent=agent,
        store=cb.MemoryStore(),
        debounce=cb.Debounce(window=1.0),
    )
    async with running_bridge(bridge):
        yield bridge


@pytest.mark.parametrize(
    ("fault", "gone"),
    [
        (WeixinFault(drop=True), "may have reached"),  # cut off after the request went out
        (WeixinFault.http(502), "may have reached"),  # a gateway that lost the answer
        (WeixinFault(body=b"<html>proxy</html>"), "may have reached"),  # unreadable 200
        (WeixinFault.slow(60), "may have reached"),  # no answer within the request's 15 s
        (WeixinFault.http(403), "was not sent"),  # refused: it never went out
        (WeixinFault.declined(), "ret=-2"),  # the platform's own refusal
    ],
    ids=["dropped", "502", "unreadable", "silent", "403", "ret-2"],
)
async def test_a_failed_send_is_never_sent_again_says_what_may_have_gone_and_is_counted(
    autojump_clock: trio.testing.MockClock, fault: WeixinFault, gone: str
) -> None:
    """WeChat has no way to drop a second copy of a message (each has a new ``client_id``),
    so a send whose outcome is unknown is not repeated: the error says it may have arrived,
    promises no retry, and the bridge counts the reply that failed."""
    emu = WeixinEmulator()
    emu.fail("sendmessage", fault)
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send("once")
        except cb.SendError as exc:
            errors.append(str(exc))

    async with bridged(emu, agent) as bridge:
        emu.user_says("ann", "hello")
        await trio.sleep(120)  # the send's 15 s, and time for any retry to show
        stats = bridge.stats()
    assert len(emu.calls("sendmessage")) == 1
    [error] = errors
    assert gone in error and "retried" not in error, error
    assert stats.other["weixin.replies_failed"] == 1

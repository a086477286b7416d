"""A WeChat account whose session expired, next to one whose did not: the other goes on, and a
new QR login (into the bridge's store, from another process say) resumes the paused one."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin._connector import RELOGIN_CHECK
from trio_chatbridge.testing import WeixinEmulator, WeixinFault, running_bridge


async def test_a_new_login_resumes_a_paused_account_and_the_other_account_never_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Account ``a`` (its token from the store) meets errcode -14 and pauses; ``b`` keeps
    answering. A new login for ``a`` stores a new token: ``a`` takes it within
    ``RELOGIN_CHECK`` seconds, without waiting out the hour nor a restart, and what its users
    wrote meanwhile reaches the agent exactly once."""
    emu_a, emu_b = WeixinEmulator(token="token-a1"), WeixinEmulator(token="token-b")
    store = cb.MemoryStore()
    await store.set_many("weixin", "a", {"token": "token-a1"})
    seen: list[tuple[str, str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend((m.account, m.text) for m in batch.messages)
        await reply.send(batch.latest.text)

    bridge = cb.Bridge(
        connectors=[emu_a.connector("a", token=None), emu_b.connector("b")],
        agent=agent,
        store=store,
    )
    async with running_bridge(bridge):
        emu_a.user_says("ua", "before")
        assert (await emu_a.next_sent()).text == "before"
        emu_a.token = "token-a2"  # the old token is stale now: -14 to every call
        await trio.sleep(60)
        assert bridge.status()["weixin:a"].state == "paused"
        emu_a.user_says("ua", "during the pause")
        for n in range(3):  # b is untouched by a's pause
            emu_b.user_says("ub", f"b{n}")
            assert (await emu_b.next_sent()).text == f"b{n}"
        assert bridge.status()["weixin:b"].state == "running"
        client = weixin.ILinkClient(None, base_url=emu_a.base_url, transport=emu_a.transport())
        await weixin.login(store, "a", client=client, show=lambda line: None)
        await client.aclose()
        with trio.fail_after(RELOGIN_CHECK + 40):  # not the hour's pause
            assert (await emu_a.next_sent()).text == "during the pause"
        assert bridge.status()["weixin:a"].state == "running"
        await trio.sleep(60)
    assert seen.count(("a", "during the pause")) == 1
    assert [text for account, text in seen if account == "b"] == ["b0", "b1", "b2"]
    assert bridge.stats().other["weixin.session_expired"] == 1


@pytest.mark.parametrize("given", ["token", "same token"])
async def test_a_paused_account_resumes_only_on_a_new_stored_token(
    autojump_clock: trio.testing.MockClock, given: str
) -> None:
    """An account given ``token=`` never reads the store; one whose stored token did not
    change stays paused for the hour (the same stale token would only meet -14 again)."""
    emu = WeixinEmulator(token="t1")
    store = cb.MemoryStore()
    await store.set_many("weixin", "bot", {"token": "t1"})
    options = {"token": "t1"} if given == "token" else {"token": None}

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(batch.latest.text)

    bridge = cb.Bridge(connectors=[emu.connector(**options)], agent=agent, store=store)
    async with running_bridge(bridge):
        emu.session_valid = False
        await trio.sleep(60)
        assert bridge.status()["weixin:bot"].state == "paused"
        emu.session_valid = True
        if given == "token":
            await store.set_many("weixin", "bot", {"token": "t2"})
        polls = len(emu.calls("getupdates"))
        await trio.sleep(1800)
        assert len(emu.calls("getupdates")) == polls
        assert bridge.status()["weixin:bot"].state == "paused"


async def test_a_call_made_with_the_old_token_answered_after_a_resume_pauses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reply sent with the old token before the account paused, and answered -14 only after
    a new login resumed it, is the old login's expiry: it fails that reply (not sent) but must
    not pause the account again for an hour under its new token."""
    emu = WeixinEmulator(token="t1")
    store = cb.MemoryStore()
    await store.set_many("weixin", "bot", {"token": "t1"})
    failures: list[tuple[float, str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send(batch.latest.text)
        except cb.SendError as exc:
            failures.append((trio.current_time(), str(exc)))

    bridge = cb.Bridge(
        connectors=[emu.connector(token=None)],
        agent=agent,
        store=store,
        debounce=cb.Debounce(window=0.0),
    )
    async with running_bridge(bridge):
        start = trio.current_time()
        slow = WeixinFault(body={"errcode": -14}, delay=14.0)  # within the send's 15 s
        emu.fail("sendmessage", slow)
        emu.user_says("u1", "sent with t1, answered late")
        await trio.sleep(0.5)
        emu.token = "t2"  # t1 is stale: the next call with it meets -14
        emu.user_says("u2", "sent with t1, refused at once")
        await trio.sleep(0.5)
        assert bridge.status()["weixin:bot"].state == "paused"
        await store.set_many("weixin", "bot", {"token": "t2"})  # a new login
        await trio.sleep(RELOGIN_CHECK + 1)
        assert bridge.status()["weixin:bot"].state == "running"
        assert trio.current_time() - start < 14.0  # the first reply still awaits its answer
        await trio.sleep(5)
        assert [at - start < 2 for at, _ in failures] == [True, False]  # u2's, then u1's
        assert "was not sent" in failures[1][1] and "a new login" in failures[1][1]
        assert bridge.status()["weixin:bot"].state == "running"
        emu.user_says("u1", "after")
        assert (await emu.next_sent()).text == "after"
    assert bridge.stats().other["weixin.session_expired"] == 1

from __future__ import annotations

import base64
import itertools
import math
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import hypothesis.strategies as st
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import example, given
from support import json_trees, open_lives, quick_bridge

import trio_chatbridge as cb
from trio_chatbridge._json import MAX_JSON_BYTES
from trio_chatbridge._ranges import MAX_TIMESTAMP
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _convert as weixin_convert
from trio_chatbridge.platforms.weixin import _protocol as weixin_protocol
from trio_chatbridge.platforms.weixin import _sending as weixin_sending
from trio_chatbridge.platforms.weixin._convert import split_text
from trio_chatbridge.testing import WeixinEmulator, WeixinFault, running_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(" / ".join(m.text for m in batch.messages))


@asynccontextmanager
async def bridged(
    emu: WeixinEmulator,
    agent: cb.Agent = echo,
    *,
    store: cb.Store | None = None,
    connector: weixin.LongPoll | None = None,
    **options: object,
) -> AsyncIterator[cb.Bridge]:
    bridge = cb.Bridge(
        connectors=[connector or emu.connector()],
        agent=agent,
        store=store or cb.MemoryStore(),
        debounce=options.pop("debounce", cb.Debounce(window=1.0)),  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )
    async with running_bridge(bridge, fail_on_agent_error=False):  # (failures tested here)
        yield bridge


def status(bridge: cb.Bridge) -> cb.ConnectorStatus:
    return bridge.status()["weixin:bot"]


async def test_a_burst_is_answered_once_with_the_latest_context_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    async with bridged(emu):
        emu.user_says("alice@im.wechat", "hi")
        emu.user_says("alice@im.wechat", "how are you")
        last = emu.user_says("alice@im.wechat", "?")
        sent = await emu.next_sent()
    assert sent.text == "hi / how are you / ?"
    assert sent.to_user == "alice@im.wechat"
    assert sent.context_token == last["context_token"]
    assert emu.notifications == ["start", "stop"]


async def test_every_request_carries_the_protocol_headers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    async with bridged(emu):
        emu.user_says("u", "hello")
        await emu.next_sent()
    for request in emu.calls("getupdates") + emu.calls("sendmessage"):
        headers = request.headers
        assert headers["authorizationtype"] == "ilink_bot_token"
        assert headers["authorization"] == "Bearer emulator-bot-token"
        assert headers["ilink-app-id"] == "bot"
        assert headers["ilink-app-clientversion"] == "132102"  # 2.4.6
        uin = base64.b64decode(headers["x-wechat-uin"]).decode()
        assert uin.isdigit() and int(uin) < 2**32
        assert request.body["base_info"]["channel_version"] == "2.4.6"
    sent = emu.calls("sendmessage")[0].body["msg"]
    assert (sent["message_type"], sent["message_state"], sent["from_user_id"]) == (2, 2, "")
    assert sent["client_id"].startswith("trio-chatbridge:")


async def test_failed_polls_retry_after_2s_and_back_off_30s_after_three(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("getupdates", WeixinFault.http(500), times=2)
    emu.fail("getupdates", WeixinFault.http(524))
    emu.fail("getupdates", WeixinFault.malformed())
    emu.fail("getupdates", WeixinFault(drop=True))
    async with bridged(emu, connector=emu.connector(random=lambda: 0.5)) as bridge:  # no jitter
        start = emu.calls("getupdates")[0].at
        await trio.sleep(39)
        emu.user_says("u", "still delivered")
        assert (await emu.next_sent()).text == "still delivered"
        assert status(bridge).state == "running"
        stats = bridge.stats()
    times = [r.at - start for r in emu.calls("getupdates")[:6]]
    assert times == [0, 2, 4, 34, 36, 38]
    assert stats.other["weixin.poll_failures"] == 5
    assert stats.protocol_errors == 1


async def test_status_shows_backoff_while_polls_keep_failing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("getupdates", WeixinFault.http(502), times=3)
    async with bridged(emu) as bridge:
        await trio.sleep(5)
        assert status(bridge).state == "backoff"
        assert "HTTP 502" in (status(bridge).detail or "")
        await trio.sleep(30)
        emu.user_says("u", "hello again")  # the next poll succeeds
        await emu.next_sent()
        assert status(bridge).state == "running"


async def test_client_timeout_is_an_empty_poll_and_server_timeout_is_adopted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator(hold=10.0)
    async with bridged(emu) as bridge:
        start = emu.calls("getupdates")[0].at
        await trio.sleep(11)  # first poll: 10 s hold, answer says longpolling_timeout_ms=10000
        emu.fail("getupdates", WeixinFault.slow(100))  # the poll after next never answers in time
        await trio.sleep(30)
        times = [r.at - start for r in emu.calls("getupdates")[:4]]
        # the slow poll (at 20) is abandoned after 10 s + 5 s margin, and the next follows at
        # once: a client-side timeout is an empty poll, not a failure
        assert times == [0, 10, 20, 35]
        assert "weixin.poll_failures" not in bridge.stats().other


async def test_session_expired_pauses_for_an_hour_then_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    connector = emu.connector()
    emu.fail("getupdates", WeixinFault.session_expired())
    async with bridged(emu, connector=connector) as bridge:
        await trio.sleep(1)
        assert status(bridge).state == "paused"
        assert "weixin-login" in (status(bridge).detail or "")
        assert connector.paused
        target = weixin.to_message("bot", emu.user_message("u", []))
        assert target is not None
        with pytest.raises(weixin.SessionPausedError, match="errcode -14"):
            await connector.send(target, "hello")
        polls = len(emu.calls("getupdates"))
        await trio.sleep(3590)
        assert len(emu.calls("getupdates")) == polls  # not a single poll during the pause
        await trio.sleep(20)
        assert status(bridge).state == "running"
        emu.user_says("u", "back")
        assert (await emu.next_sent()).text == "back"
        assert bridge.stats().other["weixin.session_expired"] == 1


async def test_shutdown_during_a_pause_is_immediate(autojump_clock: trio.testing.MockClock) -> None:
    emu = WeixinEmulator()
    emu.session_valid = False
    async with bridged(emu) as bridge:
        await trio.sleep(1)
        assert status(bridge).state == "paused"
        paused_at = trio.current_time()
    assert trio.current_time() - paused_at < 60


async def test_restart_with_sqlite_keeps_cursor_and_handles_each_message_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # SQLite inline (threaded=False), so the autojump clock stays deterministic.
    db = tmp_path / "weixin.db"
    emu = WeixinEmulator()
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.text for m in batch.messages)
        await reply.send("ok")

    never = cb.Debounce(window=math.inf, max_delay=None)
    with trio.fail_after(20):
        emu.user_says("u", "one")
        emu.user_says("u", "two")
        async with trio.open_nursery() as nursery:  # first life: accepted, then killed
            bridge = cb.Bridge(
                [emu.connector()], agent, store=cb.SQLiteStore(db, threaded=False), debounce=never
            )
            await nursery.start(bridge.run)
            await emu.wait_acknowledged(2)
            nursery.cancel_scope.cancel()
        assert handled == []
        saved = emu.calls("getupdates")[-1].body["get_updates_buf"]

        emu.user_says("u", "three")
        emu.repeat_next_page()  # "three" comes twice
        bridge = cb.Bridge(
            [emu.connector()], agent, store=cb.SQLiteStore(db, threaded=False), debounce=never
        )
        polls_before = len(emu.calls("getupdates"))
        async with running_bridge(bridge):
            await emu.wait_acknowledged(3)
        first_poll = emu.calls("getupdates")[polls_before]
        assert first_poll.body["get_updates_buf"] == saved  # the cursor survived the restart
    assert sorted(handled) == ["one", "three", "two"]
    assert bridge.stats().duplicates == 1
    assert bridge.stats().replayed == 2


FAULTS = {
    "500": lambda emu: emu.fail("getupdates", WeixinFault.http(500)),
    "524": lambda emu: emu.fail("getupdates", WeixinFault.http(524)),
    "malformed": lambda emu: emu.fail("getupdates", WeixinFault.malformed()),
    "slow": lambda emu: emu.fail("getupdates", WeixinFault.slow(100)),
    "dropped": lambda emu: emu.fail("getupdates", WeixinFault(drop=True)),
    "declined": lambda emu: emu.fail("getupdates", WeixinFault.declined("unknown error")),
    "expired": lambda emu: emu.fail("getupdates", WeixinFault.session_expired()),
    "page again": lambda emu: emu.repeat_next_page(),
    "no cursor": lambda emu: emu.omit_next_cursor(),
}
steps = st.one_of(
    st.tuples(st.just("say"), st.integers(0, 2)),
    st.tuples(st.just("fault"), st.sampled_from(sorted(FAULTS))),
    st.tuples(st.just("wait"), st.integers(0, 40)),
    st.tuples(st.just("restart"), st.sampled_from(["graceful", "killed"])),
)


@pytest.mark.slow
@given(st.lists(steps, max_size=14), st.booleans())
def test_no_fault_or_restart_loses_a_message_or_handles_one_twice(
    script: list[tuple[str, Any]], sqlite: bool
) -> None:
    """Every message a user sends is handled, whatever the server does and however often the
    bridge restarts; exactly once unless a restart killed a run in the middle (then at least
    once: the journal replays what was not marked done). Each life opens the SQLite file
    anew, or shares one MemoryStore (what a restart keeps)."""
    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "bridge.db"
        memory = cb.MemoryStore()
        _run_weixin_script(script, lambda: cb.SQLiteStore(db, threaded=False) if sqlite else memory)


def _run_weixin_script(script: list[tuple[str, Any]], store: Callable[[], cb.Store]) -> None:
    emu = WeixinEmulator()
    handled: list[str] = []
    said: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(1)
        handled.extend(m.text for m in batch.messages)

    def life() -> cb.Bridge:
        return quick_bridge(emu.connector(typing=False), agent, store=store())

    async def main() -> None:
        async with open_lives(life) as lives:
            for step, arg in script:
                if step == "say":
                    said.append(f"message {len(said)}")
                    emu.user_says(f"user{arg}", said[-1])
                elif step == "fault":
                    FAULTS[arg](emu)
                elif step == "wait":
                    await trio.sleep(arg)
                else:
                    ended = lives.bridge
                    await lives.restart(kill=arg == "killed")
                    # the poll loop rides out every fault: no life ends in a connector crash
                    assert ended.stats().reconnects == 0
            pauses = sum(step == ("fault", "expired") for step in script)
            await trio.sleep(3700 * (pauses + 1))  # past every session pause (an hour each)
            assert lives.bridge.stats().reconnects == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert set(handled) == set(said)
    if ("restart", "killed") not in script:
        assert sorted(handled) == sorted(said)


async def test_context_tokens_survive_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    store = cb.MemoryStore()  # the same store object across two bridges: a restart
    emu = WeixinEmulator()
    async with bridged(emu, store=store):
        first = emu.user_says("bob@im.wechat", "hello")
        await emu.next_sent()
    connector = emu.connector()
    async with bridged(emu, store=store, connector=connector):
        # a proactive send: the target carries no token of its own
        target = cb.Message(
            platform="weixin",
            account="bot",
            id="x",
            chat=cb.Chat("bob@im.wechat"),
            sender=cb.Sender("bob@im.wechat"),
            parts=(),
            reply_handle=cb.Handle.of(to_user_id="bob@im.wechat"),
        )
        await connector.send(target, "remember me?")
        sent = await emu.next_sent()
    assert sent.context_token == first["context_token"]


async def test_typing_is_kept_alive_while_the_agent_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(12)
        await reply.send("done")

    emu = WeixinEmulator()
    async with bridged(emu, slow):
        emu.user_says("u", "think hard")
        await emu.next_sent()
        await trio.sleep(1)
    typing = emu.calls("sendtyping")
    start = typing[0].at
    assert [(r.at - start, r.body["status"]) for r in typing] == [(0, 1), (5, 1), (10, 1), (12, 2)]
    assert emu.calls("getconfig")[0].body["ilink_user_id"] == "u"


async def test_a_stream_is_sent_as_one_message_when_it_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """iLink shows nothing for GENERATING messages, so a stream is one message at the end."""
    emu = WeixinEmulator()
    sent_while_streaming: list[int] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for word in ("thinking", " about", " it"):
                await out.write(word)
                await trio.sleep(1)
                sent_while_streaming.append(len(emu.sent))
        if batch.latest.text == "fail":
            async with reply.stream() as out:
                await out.write("never shown")
                raise RuntimeError("the agent failed mid-stream")

    async with bridged(emu, agent):
        emu.user_says("u", "go")
        assert (await emu.next_sent()).text == "thinking about it"
        emu.user_says("u", "fail")
        assert (await emu.next_sent()).text == "thinking about it"
        await trio.sleep(5)
    assert sent_while_streaming == [0, 0, 0, 1, 1, 1]
    assert [m.text for m in emu.sent] == ["thinking about it"] * 2  # not the failed stream


async def test_api_errors_carry_the_codes_and_base_urls_are_normalised() -> None:
    emu = WeixinEmulator()
    client = weixin.ILinkClient(emu.token, base_url=emu.base_url, transport=emu.transport())
    emu.fail("getconfig", WeixinFault.declined("unknown error"))
    with pytest.raises(weixin.ILinkError) as info:
        await client.get_config("u", None)
    assert (info.value.ret, info.value.errcode, info.value.errmsg) == (-2, None, "unknown error")
    assert "getconfig" in str(info.value) and "ret=-2" in str(info.value)
    emu.fail("getconfig", WeixinFault.http(502))
    with pytest.raises(cb.ConnectorError, match="502"):
        await client.get_config("u", None)
    await client.aclose()
    assert emu.token not in repr(client)
    for url, normalised in [
        ("ilink.example.com/bot", "https://ilink.example.com/bot/"),
        ("http://127.0.0.1:9/", "http://127.0.0.1:9/"),
        ("", weixin.DEFAULT_BASE_URL),
    ]:
        other = weixin.ILinkClient("t", base_url=url)
        assert other.base_url == normalised
        await other.aclose()


async def test_long_text_is_split_at_4000_characters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = ("word " * 1900).strip()  # 9499 characters

    async def verbose(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(text)

    emu = WeixinEmulator()
    async with bridged(emu, verbose):
        emu.user_says("u", "talk")
        pieces = [(await emu.next_sent()).text for _ in range(3)]
    assert all(p is not None and len(p) <= 4000 for p in pieces)
    assert "".join(p or "" for p in pieces) == text


@given(st.text(alphabet=st.sampled_from("ab \n"), max_size=300), st.integers(4, 50))
def test_split_text_pieces_fit_and_join_back(text: str, limit: int) -> None:
    pieces = list(split_text(text, limit))
    assert "".join(pieces) == text
    assert all(0 < len(piece) <= limit for piece in pieces)


json_values = json_trees(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8), size=3, leaves=10
)
# Entries shaped like getupdates' messages, with every field possibly missing or mistyped.
items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([1, 2, 3, 4, 5, 11, "1", None]),
        "text_item": st.fixed_dictionaries({}, optional={"text": json_values}) | json_values,
        "image_item": json_values,
        "voice_item": json_values,
        "ref_msg": st.fixed_dictionaries({}, optional={"title": json_values}) | json_values,
    },
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "message_id": st.integers() | st.text(max_size=5) | st.none(),
        "seq": st.integers() | st.none(),
        "from_user_id": json_values,
        "group_id": json_values,
        "message_type": st.sampled_from([0, 1, 2, "1", None]),
        "message_state": st.sampled_from([0, 1, 2, "2", None]),
        "delete_time_ms": st.integers() | st.none(),
        "create_time_ms": st.integers(0, 2**45) | st.text(max_size=5),
        "context_token": json_values,
        "item_list": st.lists(items | json_values, max_size=3) | json_values,
    },
)


@given(entries | json_values)
@example({"message_type": 1, "from_user_id": 0})  # a number where a string is expected
def test_any_entry_gives_a_message_none_or_a_protocol_error(raw: Any) -> None:
    # iLink mixes up numbers and strings: read leniently (docs/protocols/weixin.md#lenient-json)
    sender = raw.get("from_user_id") if isinstance(raw, dict) else None
    sender = str(sender) if type(sender) is int else sender if isinstance(sender, str) else ""
    try:
        message = weixin.to_message("bot", raw)
    except cb.ProtocolError:
        assert not isinstance(raw, dict) or not sender  # not an object, or no one to answer
        return
    if message is not None:
        assert message.sender.id == sender
        assert msgspec.json.decode(msgspec.json.encode(message), type=cb.Message) == message


def _entry(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "message_type": 1,
        "message_state": 2,
        "from_user_id": "amy@im.wechat",
        "create_time_ms": 1_700_000_000_500,
        "item_list": list(items),
        **fields,
    }


def _text(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": 1, "text_item": {"text": text}, **extra}


CDN = {"encrypt_query_param": "q", "aes_key": "a2V5"}


@pytest.mark.parametrize(
    ("entry", "parts"),
    [
        (_entry(_text("hi")), [cb.Text("hi")]),
        (
            _entry(_text("and this?", ref_msg={"title": "the plan"})),
            [cb.Quote("the plan"), cb.Text("and this?")],
        ),
        (
            _entry(_text("yes", ref_msg={"title": "Amy", "message_item": _text("lunch?")})),
            [cb.Quote("Amy | lunch?"), cb.Text("yes")],
        ),
        (  # quoted media is offered as the media itself
            _entry(
                _text(
                    "this one", ref_msg={"message_item": {"type": 2, "image_item": {"media": CDN}}}
                )
            ),
            [cb.Image(cb.Media("image", ref=cb.Handle.of(CDN))), cb.Text("this one")],
        ),
        (  # a voice message WeChat transcribed, with nothing to download
            _entry({"type": 3, "voice_item": {"text": "call me", "playtime": 2500}}),
            [cb.Voice(cb.Media("voice"), transcript="call me", duration=2.5)],
        ),
        (  # media that cannot be fetched is left out, and so is a kind we do not know
            _entry({"type": 2, "image_item": {}}, {"type": 11}, _text("after")),
            [cb.Text("after")],
        ),
    ],
)
def test_items_become_parts(entry: dict[str, Any], parts: list[cb.Part]) -> None:
    message = weixin.to_message("bot", entry)
    assert message is not None
    assert list(message.parts) == parts
    assert message.timestamp == 1_700_000_000.5


def test_fields_of_the_wrong_type_are_read_as_missing_and_the_rest_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fast decode refuses the entry; the repair drops each bad field without running the
    # same decode again (it would refuse it again: one wasted decode per bad entry).
    class Refused:
        def decode(self, data: bytes) -> None:
            raise AssertionError("the entry was decoded again before its repair")

    monkeypatch.setattr(weixin_convert._decoder, "_decoder", Refused())
    entry = _entry(
        _text("hi"),
        {"type": 3, "voice_item": {"text": "call me", "playtime": "long"}},
        create_time_ms="soon",
        context_token={"t": 1},
        message_id=7,
    )
    message = weixin.to_message("bot", msgspec.json.encode(entry))
    assert message is not None
    assert message.parts == (cb.Text("hi"), cb.Voice(cb.Media("voice"), transcript="call me"))
    assert (message.id, message.timestamp) == ("7", 0.0)
    assert dict(message.reply_handle) == {"to_user_id": "amy@im.wechat"}  # no token


@given(st.none() | st.fixed_dictionaries({}, optional={"text": json_values}) | json_values)
@example({"text": 42})  # a number where the text is: its digits
@example({"text": ""})
@example(None)
def test_an_unknown_item_beside_a_text_changes_nothing(text_item: Any) -> None:
    # a lone text item is read by a shortcut; beside another item, by the general loop
    item = {"type": 1, "text_item": text_item}
    alone = weixin.to_message("bot", _entry(item))
    beside = weixin.to_message("bot", _entry(item, {"type": 11, "tool_item": {}}))
    assert alone is not None and beside is not None
    assert alone.parts == beside.parts and len(alone.parts) == 1


@given(st.integers(-(2**63), 2**64 - 1))
@example(0)
@example(-1)
@example(int(MAX_TIMESTAMP * 1000) + 1)
def test_the_timestamp_is_held_to_its_range(ms: int) -> None:
    message = weixin.to_message("bot", _entry(_text("x"), create_time_ms=ms))
    assert message is not None
    assert message.timestamp == min(max(ms, 0), MAX_TIMESTAMP * 1000) / 1000


@pytest.mark.parametrize(("value", "read"), [("g1", "g1"), (7, "7"), ("", None), (None, None)])
def test_ids_sent_as_numbers_are_read_as_their_digits(value: Any, read: str | None) -> None:
    fields = {"group_id": value, "context_token": value}
    message = weixin.to_message("bot", _entry(_text("x"), **fields))
    assert message is not None
    assert message.chat == (cb.Chat(read, "group") if read else cb.Chat("amy@im.wechat", "direct"))
    assert message.reply_handle.get("context_token") == read
    if read is None:  # a message from nobody: no one to answer
        with pytest.raises(cb.ProtocolError, match="no from_user_id"):
            weixin.to_message("bot", _entry(_text("x"), from_user_id=value))
    else:
        message = weixin.to_message("bot", _entry(_text("x"), from_user_id=value))
        assert message is not None and message.sender.id == read


def test_group_messages_are_one_session_and_replies_go_to_the_sender() -> None:
    message = weixin.to_message("bot", _entry(_text("hi"), group_id="g1", context_token="t"))
    assert message is not None
    assert (message.chat, message.sender.id) == (cb.Chat("g1", "group"), "amy@im.wechat")
    assert dict(message.reply_handle) == {"to_user_id": "amy@im.wechat", "context_token": "t"}


@pytest.mark.parametrize(
    "fields",
    [{"message_type": 2}, {"message_state": 1}, {"delete_time_ms": 1}],
    ids=["the bot's own", "still generating", "recalled"],
)
def test_messages_not_for_the_agent_are_filtered(fields: dict[str, Any]) -> None:
    assert weixin.to_message("bot", _entry(_text("x"), **fields)) is None


def test_the_dedup_key_follows_the_reference_order() -> None:
    def key(**fields: Any) -> str:
        message = weixin.to_message("bot", _entry(_text("x"), **fields))
        assert message is not None
        return message.id

    assert key(message_id=42, client_id="c", seq=7) == "42"
    assert key(client_id="c", seq=7) == "client:c"
    assert key(seq=7) == "seq:7"
    assert key().startswith("sha256:")
    assert key() == key()  # a replay of the same message gets the same key
    assert key() != key(create_time_ms=1)


@pytest.mark.parametrize(
    ("kind", "encoding"),
    [
        ("image", "raw"),
        ("image", "hex"),
        ("image", "image_aeskey"),
        ("file", "hex"),
        ("voice", "hex"),
        ("video", "raw"),
    ],
)
async def test_inbound_media_is_downloaded_and_decrypted(
    kind: str, encoding: str, autojump_clock: trio.testing.MockClock
) -> None:
    payload = bytes(range(256)) * 40
    got: list[bytes] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        part = batch.latest.parts[0]
        assert isinstance(part, cb.Image | cb.File | cb.Voice | cb.Video)
        assert isinstance(reply.connector, weixin.LongPoll)
        got.append(await reply.connector.download(part.media))

    emu = WeixinEmulator()
    async with bridged(emu, agent):
        emu.user_sends_media("u", payload, kind=kind, key_encoding=encoding)
        await trio.sleep(5)
    assert got == [payload]


async def test_media_over_the_cap_or_off_the_allow_list_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        part = batch.latest.parts[0]
        assert isinstance(part, cb.Image)
        assert isinstance(reply.connector, weixin.LongPoll)
        with pytest.raises(cb.MediaError) as info:
            await reply.connector.download(part.media)
        errors.append(str(info.value))

    emu = WeixinEmulator()
    connector = emu.connector(media=cb.MediaPolicy(weixin.DEFAULT_ALLOWED_HOSTS, max_bytes=1000))
    async with bridged(emu, agent, connector=connector) as bridge:
        emu.user_sends_media("u", b"x" * 5000)
        await trio.sleep(5)
        emu.user_sends_media("v", b"tiny", full_url="http://169.254.169.254/latest/meta-data")
        await trio.sleep(5)
        assert bridge.stats().other["weixin.downloads_failed"] == 2  # counted, not only raised
    assert "over the 1000-byte cap" in errors[0]
    assert "'169.254.169.254': not an allowed host" in errors[1]
    assert len(emu.calls("cdn_download")) == 1  # the refused host was never asked


async def test_malformed_and_filtered_messages_never_cost_a_good_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    batches: list[cb.Batch] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        batches.append(batch)
        await reply.send(batch.text)

    emu = WeixinEmulator()
    async with bridged(emu, agent) as bridge:
        emu.push({"seq": 1, "item_list": "nonsense"})  # no message_type: not a user's message
        emu.push("a string, not an object")
        emu.push(emu.user_message("u", [{"type": 99, "future_item": {}}]))  # unknown item type
        emu.push(
            emu.user_message("u", [{"type": 1, "text_item": {"text": "echo"}}], message_type=2)
        )  # the bot's own echo
        emu.push(
            emu.user_message("u", [{"type": 1, "text_item": {"text": "gone"}}], delete_time_ms=123)
        )  # recalled
        emu.push(
            emu.user_message("u", [{"type": 1, "text_item": {"text": "typing"}}], message_state=1)
        )  # still GENERATING
        emu.user_says("u", "good")
        sent = await emu.next_sent()
        stats = bridge.stats()
    assert sent.text == "good"
    # the unknown item type is delivered (its raw payload is there), without parts we know
    unknown, good = batches[0].messages
    assert unknown.parts == () and unknown.raw_json()["item_list"][0]["type"] == 99
    assert good.text == "good"
    assert stats.protocol_errors == 1
    assert stats.other["weixin.filtered"] == 4


async def test_a_dropped_cursor_redelivers_and_the_journal_drops_the_copy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    async with bridged(emu) as bridge:
        emu.omit_next_cursor()
        emu.user_says("u", "once")
        await emu.next_sent()
        await trio.sleep(5)
        assert bridge.stats().duplicates == 1
    assert [s.text for s in emu.sent] == ["once"]


async def test_declined_send_is_a_clear_failure_and_the_bridge_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("sendmessage", WeixinFault.declined("prepare failed"))
    failures: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send("hi")
        except cb.SendError as exc:
            failures.append(str(exc))
            raise

    async with bridged(emu, agent) as bridge:
        emu.user_says("u", "first")
        await trio.sleep(5)
        emu.user_says("u", "second")
        assert (await emu.next_sent()).text == "hi"
        assert bridge.stats().failures == 1
    assert "ret=-2" in failures[0] and "prepare failed" in failures[0] and "bursts" in failures[0]


async def test_at_most_ten_replies_per_inbound_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refused: list[int] = []

    async def chatty(batch: cb.Batch, reply: cb.Reply) -> None:
        for i in range(12):
            try:
                await reply.send(f"reply {i}")
            except cb.SendError:
                refused.append(i)

    emu = WeixinEmulator()
    async with bridged(emu, chatty):
        emu.user_says("u", "go")
        await trio.sleep(10)
    assert len(emu.sent) == 10
    assert refused == [10, 11]


async def test_a_long_reply_that_would_pass_the_quota_is_refused_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reply split into pieces is all or nothing: never a truncated message."""
    outcome: list[str] = []

    async def chatty(batch: cb.Batch, reply: cb.Reply) -> None:
        for i in range(9):
            await reply.send(f"reply {i}")
        try:
            await reply.send("x" * 9000)  # three pieces, one left of the ten
        except cb.SendError as exc:
            outcome.append(str(exc))
        await reply.send("the last one fits")

    emu = WeixinEmulator()
    async with bridged(emu, chatty):
        emu.user_says("u", "go")
        await trio.sleep(10)
    assert [m.text for m in emu.sent][-2:] == ["reply 8", "the last one fits"]
    assert len(emu.sent) == 10
    assert "needs 3 messages" in outcome[0] and "1 left" in outcome[0]


async def test_a_cancel_between_the_pieces_of_a_reply_still_sends_all_of_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = ("word " * 1900).strip()  # three pieces
    emu = WeixinEmulator()
    connector = emu.connector(rate_limit=weixin.RateLimit(burst=1, per_second=0.2))
    async with bridged(emu, connector=connector):
        target = weixin.to_message("bot", emu.user_message("u", []))
        assert target is not None
        with trio.move_on_after(2) as interrupted:  # piece 1 at 0 s; 2 and 3 due at 5 and 10 s
            await connector.send(target, text)  # completes: the cancel comes after
            assert trio.current_time() - emu.calls("sendmessage")[0].at == 10
            await trio.lowlevel.checkpoint()
        assert interrupted.cancelled_caught
        pieces = [(await emu.next_sent()).text or "" for _ in range(3)]
        assert "".join(pieces) == text


async def test_a_cancelled_reply_on_a_slow_platform_returns_within_the_shields_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = "x" * (10 * 4000)  # ten pieces: five at once, five more at 5 s apart
    emu = WeixinEmulator()
    emu.fail("sendmessage", WeixinFault.slow(14), times=10)  # each answered in 14 s of 15
    connector = emu.connector()
    async with bridged(emu, connector=connector):
        target = weixin.to_message("bot", emu.user_message("u", []))
        assert target is not None
        start = trio.current_time()
        with trio.move_on_after(1) as interrupted:
            await connector.send(target, text)
            await trio.lowlevel.checkpoint()
        took = trio.current_time() - start
        assert interrupted.cancelled_caught
    assert took <= weixin_sending.REPLY_SHIELD_MAX  # not 10 x 14 s
    assert 1 <= len(emu.calls("sendmessage")) < 10


async def test_a_cancel_before_the_first_piece_sends_nothing_and_costs_no_quota(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    connector = emu.connector(rate_limit=weixin.RateLimit(burst=1, per_second=0.2))
    async with bridged(emu, connector=connector):
        target = weixin.to_message("bot", emu.user_message("u", []))
        assert target is not None
        await connector.send(target, "first")  # spends the burst: the next waits 5 s
        with trio.move_on_after(2):
            await connector.send(target, ("word " * 1900).strip())
        assert len(emu.calls("sendmessage")) == 1
        # the cancelled reply's three pieces were given back: nine of ten are left
        await connector.send(target, "x" * (9 * 4000))
        assert len(emu.calls("sendmessage")) == 10


async def test_a_reply_whose_first_piece_is_refused_costs_no_quota(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("sendmessage", WeixinFault.declined("prepare failed"))
    connector = emu.connector()
    async with bridged(emu, connector=connector):
        target = weixin.to_message("bot", emu.user_message("u", []))
        assert target is not None
        with pytest.raises(cb.SendError, match="prepare failed"):
            await connector.send(target, "x" * (10 * 4000))  # ten pieces: the first refused
        # nothing went out, so all ten of the message's replies are left
        await connector.send(target, "x" * (10 * 4000))
        assert len(emu.calls("sendmessage")) == 11


async def test_a_reply_refused_with_a_4xx_fails_at_once_naming_the_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("sendmessage", WeixinFault.http(404))
    connector = emu.connector()
    async with bridged(emu, connector=connector):
        target = weixin.to_message("bot", emu.user_message("u", []))
        assert target is not None
        with pytest.raises(cb.SendError) as failed:
            await connector.send(target, "hi")
        assert isinstance(failed.value.__cause__, cb.HTTPRefusedError)
        assert failed.value.__cause__.code == 404
        assert "iLink ilink/bot/sendmessage: refused, HTTP 404" in str(failed.value)
        assert len(emu.calls("sendmessage")) == 1  # not retried


async def test_outbound_pacing_follows_the_rate_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def four(batch: cb.Batch, reply: cb.Reply) -> None:
        for i in range(4):
            await reply.send(str(i))

    emu = WeixinEmulator()
    connector = emu.connector(rate_limit=weixin.RateLimit(burst=2, per_second=0.5))
    async with bridged(emu, four, connector=connector):
        emu.user_says("u", "go")
        await trio.sleep(20)
    times = [r.at for r in emu.calls("sendmessage")]
    assert [t - times[0] for t in times] == [0, 0, 2, 4]


async def test_image_upload_through_reply(autojump_clock: trio.testing.MockClock) -> None:
    picture = b"\x89PNG" + bytes(range(200))

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send_media(picture, filename="chart.png")

    emu = WeixinEmulator()
    async with bridged(emu, agent):
        emu.user_says("u", "a chart please")
        sent = await emu.next_sent()
    assert sent.item["type"] == 2
    media = sent.item["image_item"]["media"]
    assert emu.uploads[media["encrypt_query_param"]] == picture
    key_hex = base64.b64decode(media["aes_key"]).decode()
    assert len(key_hex) == 32 and int(key_hex, 16) >= 0  # base64 of the hex digits
    upload = emu.calls("getuploadurl")[0].body
    assert upload["filesize"] == (len(picture) // 16 + 1) * 16
    assert upload["media_type"] == 1 and upload["no_need_thumb"] is True


async def test_cdn_upload_retries_then_reports(autojump_clock: trio.testing.MockClock) -> None:
    emu = WeixinEmulator()
    emu.fail("cdn_upload", WeixinFault.http(500), times=3)
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        with pytest.raises(cb.MediaError) as info:
            await reply.send_media(b"data", filename="a.txt")
        errors.append(str(info.value))

    async with bridged(emu, agent):
        emu.user_says("u", "file")
        await trio.sleep(5)
    assert errors[0].startswith("CDN upload failed after 3 attempts; the last: WeChat CDN upload")
    assert "HTTP 500" in errors[0] and len(emu.calls("cdn_upload")) == 3


@pytest.mark.parametrize(
    ("faults", "waits", "says"),
    [
        ([WeixinFault.http(429)], [1], None),  # rate limited: not now, never "never"
        ([WeixinFault(body={"ok": True})], [1], None),  # a 200 without x-encrypted-param
        ([WeixinFault.http(413)], [], "CDN refused the upload (HTTP 413)"),  # too big: never
        ([WeixinFault(status=302, body=b"")], [], "CDN refused the upload: WeChat CDN upload"),
        # waits between attempts: the one retry policy's own, or the server's Retry-After
        ([WeixinFault.http(500)] * 2, [1, 2], None),
        ([WeixinFault(status=429, body=b"slow", headers={"Retry-After": "7"})], [7], None),
        (
            [WeixinFault(status=503, body=b"busy", headers={"Retry-After": "600"})],
            [],
            "asked to wait 600 s",  # too long to hold a reply
        ),
    ],
)
async def test_a_cdn_upload_retries_what_may_pass_later_and_stops_at_what_never_will(
    autojump_clock: trio.testing.MockClock,
    faults: list[WeixinFault],
    waits: list[float],
    says: str | None,
) -> None:
    emu = WeixinEmulator()
    for fault in faults:
        emu.fail("cdn_upload", fault)
    outcome: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send_media(b"data", filename="a.txt")
        except cb.MediaError as exc:
            outcome.append(str(exc))
        else:
            outcome.append("sent")

    async with bridged(emu, agent):
        emu.user_says("u", "file")
        await trio.sleep(30)
    times = [call.at for call in emu.calls("cdn_upload")]
    assert [b - a for a, b in itertools.pairwise(times)] == waits
    if says is None:
        assert outcome == ["sent"]
    else:
        assert len(outcome) == 1 and says in outcome[0]


async def test_missing_token_is_fatal_with_what_to_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    connector = weixin.LongPoll(account="nobody")
    bridge = cb.Bridge([connector], echo, store=cb.MemoryStore())
    async with running_bridge(bridge):
        pass
    state = bridge.status()["weixin:nobody"]
    assert state.state == "failed"
    assert "weixin-login --account nobody" in (state.detail or "")


async def test_qr_login_stores_the_token_without_showing_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator(qr_script=("wait", "scaned", "need_verifycode", "scaned", "confirmed"))
    store = cb.MemoryStore()
    shown: list[str] = []

    async def code() -> str:
        return "1234"

    client = weixin.ILinkClient(None, base_url=emu.base_url, transport=emu.transport())
    result = await weixin.login(store, "bot", client=client, show=shown.append, ask_code=code)
    await client.aclose()
    assert result.bot_id == "emubot@im.bot"
    assert await store.get("weixin", "bot", "token") == emu.token
    assert emu.token not in "\n".join(shown)
    codes = [r.query.get("verify_code") for r in emu.calls("get_qrcode_status")]
    assert codes == [None, None, None, "1234", None]  # sent once, right after it was asked for
    # the stored login is what a token-less connector uses
    connector = emu.connector(token=None)  # base URL and token come from the store
    async with bridged(emu, store=store, connector=connector):
        emu.user_says("u", "logged in")
        assert (await emu.next_sent()).text == "logged in"


def scripted_login(*statuses: dict[str, Any]) -> tuple[weixin.ILinkClient, list[str]]:
    """A client on a server that answers the QR calls from ``statuses``; and the URLs it was
    asked (hosts included)."""
    asked: list[str] = []
    answers = iter(statuses)

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if request.url.path.endswith("get_bot_qrcode"):
            return httpx.Response(200, json={"qrcode": "q1", "qrcode_img_content": "img"})
        return httpx.Response(200, json=next(answers))

    client = weixin.ILinkClient(None, transport=httpx.MockTransport(handle))
    return client, asked


CONFIRMED = {"status": "confirmed", "bot_token": "secret-token", "ilink_bot_id": "b@im.bot"}


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "scaned_but_redirect", "redirect_host": "evil.example"},
        {"status": "scaned_but_redirect", "redirect_host": "ilinkai.weixin.qq.com@evil.example"},
        {"status": "scaned_but_redirect", "redirect_host": "weixin.qq.com.evil.example"},
        {**CONFIRMED, "baseurl": "http://ilinkai.weixin.qq.com/"},  # not https
        {**CONFIRMED, "baseurl": "https://127.0.0.1:8080/"},
        {**CONFIRMED, "baseurl": "https://[::1/"},  # not even a URL
    ],
)
async def test_login_refuses_a_server_named_host_off_wechats_domains(
    answer: dict[str, Any], autojump_clock: trio.testing.MockClock
) -> None:
    client, asked = scripted_login({"status": "wait"}, answer, {"status": "wait"})
    store = cb.MemoryStore()
    with pytest.raises(weixin.LoginError, match="refused, the bot token would go there"):
        await weixin.login(store, "bot", client=client, show=lambda line: None)
    await client.aclose()
    assert await store.get("weixin", "bot", "token") is None
    assert all(url.startswith(weixin.DEFAULT_BASE_URL) for url in asked)


async def test_login_follows_a_redirect_on_wechats_domains_or_one_the_caller_allowed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    redirect = {"status": "scaned_but_redirect", "redirect_host": "sh.ilinkai.weixin.qq.com"}
    client, asked = scripted_login(redirect, {**CONFIRMED, "baseurl": "https://a.wechat.com/x"})
    result = await weixin.login(cb.MemoryStore(), "bot", client=client, show=lambda line: None)
    await client.aclose()
    assert asked[-1].startswith("https://sh.ilinkai.weixin.qq.com/ilink/bot/get_qrcode_status")
    assert result.base_url == "https://a.wechat.com/x/"

    client, asked = scripted_login({**CONFIRMED, "baseurl": "http://127.0.0.1:8080"})
    store = cb.MemoryStore()
    result = await weixin.login(
        store, "bot", client=client, show=lambda line: None, allow_hosts=["127.0.0.1"]
    )
    await client.aclose()
    assert result.base_url == "http://127.0.0.1:8080/"
    assert await store.get("weixin", "bot", "token") == "secret-token"


async def test_end_to_end_over_loopback() -> None:
    emu = WeixinEmulator(hold=0.5)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(emu.serve)
            assert base_url.startswith("http://127.0.0.1:")
            async with bridged(emu, debounce=cb.Debounce(window=0.05)) as bridge:
                emu.user_says("u", "over a real socket")
                sent = await emu.next_sent()
                assert bridge.status()["weixin:bot"].state == "running"
            nursery.cancel_scope.cancel()
    assert sent.text == "over a real socket"


# -- hostile input: one bad message costs only itself ------------------------------------------

DEEP = b"[" * 20_000 + b"]" * 20_000  # deeper than the interpreter can recurse


class Doctored(httpx.AsyncBaseTransport):
    """The emulator's answers, with markers in getupdates pages swapped for raw bytes that
    the emulator's JSON encoder could never write (invalid UTF-8, nesting too deep)."""

    def __init__(self, emu: WeixinEmulator, swaps: dict[bytes, bytes]) -> None:
        self._inner = emu.transport()
        self._swaps = swaps

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not request.url.path.endswith("getupdates"):
            return response
        body = await response.aread()
        for marker, raw in self._swaps.items():
            body = body.replace(marker, raw)
        return httpx.Response(response.status_code, content=body)


async def test_one_bad_message_skips_only_itself_never_the_page(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    swaps = {b'"@latin1@"': b'"caf\xe9"', b'"@deep@"': DEEP}
    connector = emu.connector(transport=Doctored(emu, swaps))
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.text for m in batch.messages)

    async with bridged(emu, agent, connector=connector) as bridge:
        emu.user_says("ann", "first")
        emu.push(emu.user_message("bob", [{"type": 1, "text_item": {"text": "@latin1@"}}]))
        emu.push(emu.user_message("cid", [{"type": 1, "text_item": {"text": "@deep@"}}]))
        emu.push(emu.user_message("dan", [], item_list="not a list", create_time_ms=10**400))
        emu.push(emu.user_message("eve", [{"type": "1", "text_item": []}], message_id=[]))
        emu.push(["not", "an", "object"])
        emu.user_says("fay", "last")
        with trio.fail_after(60):
            await emu.wait_acknowledged(7)  # the page's cursor moved on: it is not served again
        await trio.sleep(5)
        assert sorted(handled) == ["", "", "first", "last"]  # dan's and eve's hold no text
        assert bridge.stats().protocol_errors == 3
        assert "weixin.poll_failures" not in bridge.stats().other


async def test_answers_are_read_with_a_cap(autojump_clock: trio.testing.MockClock) -> None:
    emu = WeixinEmulator()
    page = b'{"ret": 0, "msgs": [], "pad": "' + b" " * weixin_protocol.PAGE_MAX_BYTES + b'"}'
    emu.fail("getupdates", WeixinFault(body=page))
    emu.fail("sendmessage", WeixinFault(body=b" " * (MAX_JSON_BYTES + 1)))
    refused: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send("once")
        except cb.SendError as exc:
            refused.append(str(exc))
            await reply.send("twice")

    async with bridged(emu, agent) as bridge:
        emu.user_says("gus", "hello")
        with trio.fail_after(60):
            assert (await emu.next_sent()).text == "twice"
        assert bridge.stats().protocol_errors == 1
        assert bridge.stats().other["weixin.poll_failures"] == 1
    assert refused == [
        "weixin account bot: send failed: it may have reached the user and is not sent again "
        "(WeChat would show a second copy as well): iLink ilink/bot/sendmessage announces "
        "1048577 bytes, over the 1048576-byte cap"
    ]


async def test_the_servers_long_poll_timeout_is_held_to_its_range(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("getupdates", WeixinFault(body={"ret": 0, "longpolling_timeout_ms": 10**300}))
    emu.fail("getupdates", WeixinFault.slow(10_000))  # a server that holds the poll for ever
    async with bridged(emu):
        await trio.sleep(200)
    _, second, third = (call.at for call in emu.calls("getupdates")[:3])
    high = weixin_protocol.LONG_POLL_TIMEOUT_RANGE[1]
    assert third - second == high + weixin_protocol.LONG_POLL_MARGIN


async def test_a_peers_typing_ticket_is_fetched_once_then_cached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()

    async def fetched_for(user: str) -> int:
        emu.user_says(user, "hello")
        await emu.next_sent()
        return [r.body["ilink_user_id"] for r in emu.calls("getconfig")].count(user)

    async with bridged(emu, connector=emu.connector(random=lambda: 0.5)):
        with trio.fail_after(60):
            assert await fetched_for("amy") == 1
            assert await fetched_for("ben") == 1
            assert await fetched_for("amy") == 1  # cached: half a day is not over
        assert len(emu.calls("sendtyping")) >= 6  # typing shown, then cancelled, each time


async def test_an_upload_url_from_the_server_obeys_the_media_policy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    emu.fail("getuploadurl", WeixinFault(body={"upload_full_url": "http://169.254.169.254/up"}))
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        with pytest.raises(cb.MediaError) as info:
            await reply.send_media(b"data", filename="a.txt")
        errors.append(str(info.value))
        await reply.send_media(b"data", filename="a.txt")  # the next answer is the CDN's

    async with bridged(emu, agent):
        emu.user_says("u", "file")
        with trio.fail_after(60):
            sent = await emu.next_sent()
    assert sent.item["type"] == 4
    assert emu.calls("up") == []  # nothing was posted where the bad answer pointed
    assert errors == [
        "refusing to upload media to '169.254.169.254': not an allowed host "
        "(add it to MediaPolicy.allowed_hosts if you trust it)"
    ]

"""Rich replies on every platform: media, Markdown, cards, posts, edits, sending first."""

from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given
from support import emulator_bridge

import trio_chatbridge as cb
from trio_chatbridge import connectors
from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark import _frames as lark_frames
from trio_chatbridge.platforms.wecom._protocol import Frame
from trio_chatbridge.testing import (
    Activity,
    HandlerTransport,
    LarkEmulator,
    Record,
    WeComEmulator,
    WeixinEmulator,
    running_bridge,
)

CARD = {
    "card_type": "text_notice",
    "main_title": {"title": "Build", "desc": "green"},
    "card_action": {"type": 1, "url": "https://example.invalid/"},
    "task_id": "task-1",
}
LARK_CARD = {
    "config": {"update_multi": True},
    "elements": [{"tag": "markdown", "content": "**building**"}],
}
PICTURE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 5000  # > 1 MiB: three WeCom chunks

Script = Callable[[cb.Batch, cb.Reply], Awaitable[None]]


def agent_of(script: Script, results: Record[Any]) -> cb.Agent:
    """An agent running ``script``, keeping what it returned or the SendError it raised."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await script(batch, reply)
            results.append("ok")
        except cb.SendError as exc:
            results.append(exc)

    return agent


@asynccontextmanager
async def wecom(script: Script, results: Record[Any]) -> AsyncIterator[WeComEmulator]:
    emu = WeComEmulator()
    async with emulator_bridge(emu, emu.connector, agent_of(script, results)):
        yield emu


@asynccontextmanager
async def lark_app(
    script: Script, results: Record[Any], **options: Any
) -> AsyncIterator[LarkEmulator]:
    emu = LarkEmulator()
    async with emulator_bridge(emu, lambda: emu.connector(**options), agent_of(script, results)):
        yield emu


async def until(results: Record[Any], count: int = 1) -> None:
    with trio.fail_after(300):  # virtual seconds: a hang fails
        for _ in range(count):
            await results.next()


async def connected(emu: WeComEmulator) -> None:
    with trio.fail_after(60):
        if emu.subscribes == 0:
            await emu.wait_connected()


async def idle(batch: cb.Batch, reply: cb.Reply) -> None:
    await trio.lowlevel.checkpoint()


@asynccontextmanager
async def sender(emu: WeComEmulator | LarkEmulator) -> AsyncIterator[connectors.Connector]:
    """A running bridge on ``emu`` whose agent does nothing: the test sends first."""
    connector = emu.connector()
    async with emulator_bridge(emu, lambda: connector, idle):
        if isinstance(emu, WeComEmulator):
            await connected(emu)
        yield connector


# -- WeCom -------------------------------------------------------------------------------------


async def answered_on_wecom(*contents: cb.Content) -> WeComEmulator:
    """A WeCom user says something; the agent answers with one send of each of ``contents``."""
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        for content in contents:
            await reply.send(content)

    async with wecom(script, results) as emu:
        emu.user_says("ann", "hi")
        await until(results)
    assert results == ["ok"]
    return emu


async def test_wecom_card_reply_answers_the_callback_and_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = await answered_on_wecom(cb.Card(CARD))
    (sent,) = emu.sent
    assert (sent.kind, sent.card) == ("reply", CARD)
    assert emu.in_flight("ann") == 0
    card = [a for a in emu.activity if a.kind == "card"]
    assert card == [Activity("wecom", "card", "reply", "ann", card=CARD, id=sent.req_id)]


async def test_wecom_image_is_uploaded_in_chunks_then_sent_as_media(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = await answered_on_wecom(cb.Attachment(PICTURE, "chart.png"))
    (sent,) = emu.sent
    chunks = emu.commands("aibot_upload_media_chunk")
    assert [c.body["chunk_index"] for c in chunks] == [0, 1, 2]
    assert sent.media_id is not None
    record, data = emu.media[sent.media_id]
    assert data == PICTURE
    assert (record.kind, record.size, record.filename) == ("image", len(PICTURE), "chart.png")
    assert record.sha256 == hashlib.sha256(PICTURE).hexdigest()
    image = [a for a in emu.activity if a.kind == "image"]
    assert [(a.via, a.media) for a in image] == [("reply", record)]


async def test_wecom_after_a_card_the_text_goes_proactively(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = await answered_on_wecom(cb.Card(CARD), cb.Markdown("**and** some words"))
    assert [(a.kind, a.via) for a in emu.activity if a.kind != "refused"] == [
        ("card", "reply"),
        ("markdown", "proactive"),
    ]


async def test_wecom_stream_with_a_card_sends_the_card_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream(card=cb.Card(CARD)) as out:
            for word in ("one ", "two ", "three"):
                await out.write(word)
                await trio.sleep(1)

    async with wecom(script, results) as emu:
        emu.user_says("ann", "go")
        sent = await emu.next_sent()
    frames = emu.commands("aibot_respond_msg")
    kinds = [fr.body["msgtype"] for fr in frames]
    assert kinds[0] == "stream_with_template_card" and set(kinds[1:]) == {"stream"}
    assert (sent.text, sent.card, sent.frames) == ("one two three", CARD, len(frames))


async def test_wecom_send_first_markdown_card_and_file(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    async with sender(emu) as connector:
        await connector.send_first("dana", "good **morning**")
        await connector.send_first("group-1", cb.Card(CARD))
        sent = await connector.send_first("dana", cb.Attachment(b"a,b\n1,2\n", "data.csv"))
    assert sent == cb.Sent("wecom", "dana", "file")
    kinds = [(a.kind, a.via, a.to) for a in emu.activity if a.kind != "upload"]
    assert kinds == [
        ("markdown", "proactive", "dana"),
        ("card", "proactive", "group-1"),
        ("file", "proactive", "dana"),
    ]
    assert emu.activity[-1].media is not None and emu.activity[-1].media.size == 8


async def test_wecom_refuses_a_file_over_50_mib_before_copying_or_sending_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    big = cb.Attachment(bytes(50 * 1024 * 1024 + 1), "dump.bin")
    async with sender(emu) as connector:
        tracemalloc.start()
        try:
            with pytest.raises(cb.SendError, match="at most 52428800"):
                await connector.send_first("dana", big)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 5 * 1024 * 1024  # the chunks were never cut (they were 50 MiB of copies)
    assert emu.commands("aibot_upload_media_init") == []


def test_an_attachment_kind_is_checked_when_built() -> None:
    assert cb.Attachment(b"x", "a.bin", "voice").media_kind == "voice"
    with pytest.raises(cb.ConfigurationError, match="'image', 'file', 'video', 'voice'"):
        cb.Attachment(b"x", "a.png", cast(Any, "picture"))


async def test_wecom_card_welcome_and_card_update_after_a_click(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clicks: Record[cb.Card] = Record()
    new_card = dict(CARD, main_title={"title": "Build", "desc": "done"})

    async def on_event(event: Any) -> None:
        await connector.update_card(event, cb.Card(new_card), userids=["ann"])
        clicks.append(cb.Card(new_card))

    emu = WeComEmulator()
    connector = emu.connector(welcome=cb.Card(CARD), on_event=on_event)
    async with emulator_bridge(emu, lambda: connector, idle):
        emu.user_enters("ann")
        welcome = await emu.next_sent()
        emu.user_clicks_card("ann", event_key="approve", task_id="task-1")
        await until(clicks)
        await trio.sleep(1)
    assert (welcome.kind, welcome.card) == ("welcome", CARD)
    update = [a for a in emu.activity if a.kind == "card_update"]
    assert [(a.card, a.detail) for a in update] == [(new_card, {"userids": ["ann"]})]


async def test_wecom_emulator_refuses_what_the_platform_would() -> None:
    emu = WeComEmulator()

    def frame(cmd: str, req_id: str, body: dict[str, Any]) -> tuple[int, str]:
        errcode, errmsg, _ = emu._check(Frame(req_id, cmd, body))
        return errcode, errmsg

    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        req_id = emu.user_says("ann", "hi")
        assert emu.in_flight("ann") == 1
        bad = frame("aibot_respond_msg", req_id, {"msgtype": "image", "image": {"media_id": "x"}})
        assert bad[0] == 40007
        assert emu.in_flight("ann") == 0  # a refused answer leaves no message in flight
        assert frame("aibot_send_msg", "s1", {"chatid": "ann", "msgtype": "template_card"})[0] == (
            40058
        )
        init = {"type": "file", "filename": "a", "total_size": 3, "total_chunks": 1}
        errcode, _, answer = emu._check(Frame("u1", "aibot_upload_media_init", init))
        assert errcode == 0
        finish = {"upload_id": answer["upload_id"]}
        assert frame("aibot_upload_media_finish", "u2", finish) == (40058, "chunks missing")
        nursery.cancel_scope.cancel()
    refused = [a for a in emu.activity if a.kind == "refused"]
    assert [a.detail["errcode"] for a in refused] == [40007, 40058, 40058]


# -- Lark ----------------------------------------------------------------------------------------


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5), json_containers, max_leaves=12
)


@pytest.mark.parametrize("kind", [cb.Card, cb.Post])
def test_cards_and_posts_are_read_only_and_hashable(kind: type[cb.Card | cb.Post]) -> None:
    source: dict[str, Any] = {"elements": [{"tag": "markdown", "content": "hi"}], "n": 1}
    content = kind(source)
    source["elements"][0]["content"] = "changed"  # the caller's dict is copied, not kept
    with pytest.raises(TypeError):
        content.json["n"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        content.json["elements"][0]["content"] = "changed"
    with pytest.raises(AttributeError):
        content.json["elements"].append({})
    assert content.as_dict() == {"elements": [{"tag": "markdown", "content": "hi"}], "n": 1}
    copy = content.as_dict()
    copy["n"] = 3  # a plain copy: a bot changes it to build the next card
    assert content.as_dict()["n"] == 1
    assert json.loads(json.dumps(content.as_dict())) == content.as_dict()
    same = kind({"n": 1, "elements": [{"content": "hi", "tag": "markdown"}]})
    assert same == content and hash(same) == hash(content) and len({same, content}) == 1
    assert kind({"n": 2}) != content


@given(st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=4))
def test_a_card_gives_back_the_json_it_was_built_from(value: dict[str, Any]) -> None:
    card = cb.Card(value)
    assert card.as_dict() == value
    assert card == cb.Card(json.loads(json.dumps(value))) and hash(card) == hash(cb.Card(value))


async def test_lark_card_reply_is_updated_in_place_by_patch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: Record[Any] = Record()
    done = dict(LARK_CARD, elements=[{"tag": "markdown", "content": "**done**"}])

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        sent = await reply.send(cb.Card(LARK_CARD))
        await trio.sleep(2)
        await reply.edit(sent, cb.Card(done))

    async with lark_app(script, results) as emu:
        emu.user_says("ou_ann", "build")
        sent = await emu.next_sent()
        await until(results)
    assert results == ["ok"]
    assert (sent.msg_type, sent.content) == ("interactive", LARK_CARD)
    assert emu.messages[sent.message_id].content == done
    assert [(a.kind, a.via, a.card) for a in emu.activity] == [
        ("card", "reply", LARK_CARD),
        ("card", "patch", done),
    ]


async def test_lark_markdown_post_image_and_file(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: Record[Any] = Record()
    post = {"en_us": {"title": "Report", "content": [[{"tag": "text", "text": "all good"}]]}}

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(cb.Markdown("**bold**"))
        await reply.send(cb.Post(post))
        await reply.send_media(PICTURE, filename="chart.png")
        await reply.send(cb.Attachment(b"%PDF-1.4", "report.pdf"))

    async with lark_app(script, results) as emu:
        emu.user_says("ou_ann", "report")
        await until(results)
    assert results == ["ok"]
    sent = [(a.kind, a.text) for a in emu.activity if a.via == "reply"]
    assert sent == [("post", "**bold**"), ("post", "all good"), ("image", None), ("file", None)]
    image, file = [a.media for a in emu.activity if a.kind in ("image", "file")]
    assert image is not None and image.sha256 == hashlib.sha256(PICTURE).hexdigest()
    assert file is not None and (file.filename, file.size) == ("report.pdf", 8)


async def test_lark_send_first_to_a_chat_and_to_a_user(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    async with sender(emu) as connector:
        first = await connector.send_first("oc_team", "the build is green")
        second = await connector.send_first("ou_ann", cb.Card(LARK_CARD))
    assert (first.chat, first.kind) == ("oc_team", "text")
    assert second.message_id in emu.messages
    calls = [(s.kind, s.chat, s.msg_type) for s in emu.sent]
    assert calls == [("send", "oc_team", "text"), ("send", "ou_ann", "interactive")]


@pytest.mark.parametrize("fault", ["expired token", "rate limit"])
async def test_lark_upload_renews_an_expired_token_and_retries_a_rate_limit(
    autojump_clock: trio.testing.MockClock, fault: str
) -> None:
    emu = LarkEmulator()
    async with sender(emu) as connector:
        await connector.send_first("oc_team", "warming up: the token is fetched")
        if fault == "expired token":
            emu.expire_token()
        else:
            emu.fail_next("/im/v1/images", 429)
        sent = await connector.send_first("oc_team", cb.Attachment(PICTURE, "chart.png"))
    assert sent.kind == "image" and sent.message_id in emu.messages
    (image,) = [a.media for a in emu.activity if a.kind == "image"]
    assert image is not None and image.sha256 == hashlib.sha256(PICTURE).hexdigest()
    assert emu.token_fetches == (2 if fault == "expired token" else 1)


async def test_lark_emulator_answers_get_message_and_refuses_bad_content(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        transport = HandlerTransport(emu.handle_http)
        api = lark.OpenAPI(emu.app_id, emu.app_secret, domain=emu.http_base, transport=transport)
        message_id = emu.user_says("ou_ann", "hello")
        data = await api.call("GET", f"/open-apis/im/v1/messages/{message_id}")
        item = data["items"][0]
        assert (item["msg_type"], json.loads(item["body"]["content"])) == (
            "text",
            {"text": "hello"},
        )
        with pytest.raises(lark.LarkError) as refused:
            await api.call(
                "POST",
                f"/open-apis/im/v1/messages/{message_id}/reply",
                {"msg_type": "image", "content": json.dumps({"image_key": "made-up"})},
            )
        assert refused.value.code == 230001
        with pytest.raises(lark.LarkError) as missing:
            await api.call("GET", "/open-apis/im/v1/messages/om_nope")
        assert missing.value.code == 230002
        await api.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("budget", "most_edits"),
    [(lark.EditBudget(interval=1.0, max_edits=5), 5), (lark.EditBudget(max_edits=0), 0)],
)
async def test_lark_stream_keeps_within_its_edit_budget(
    autojump_clock: trio.testing.MockClock, budget: lark.EditBudget, most_edits: int
) -> None:
    results: Record[Any] = Record()
    words = [f"w{i} " for i in range(40)]

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for word in words:
                await out.write(word)
                await trio.sleep(1.5)

    async with lark_app(script, results, edit_budget=budget) as emu:
        emu.user_says("ou_ann", "long answer")
        sent = await emu.next_sent()
        await until(results)
    assert results == ["ok"]
    assert emu.texts[sent.message_id] == "".join(words)
    assert emu.edits.get(sent.message_id, 0) == most_edits
    if most_edits == 0:
        assert sent.text == "".join(words)  # one message, at the end


async def test_lark_default_stream_never_passes_the_platforms_twenty_edits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for i in range(60):
                await out.write(f"{i} ")
                await trio.sleep(1.1)

    async with lark_app(script, results) as emu:
        emu.user_says("ou_ann", "count")
        sent = await emu.next_sent()
        await until(results)
    assert results == ["ok"]
    assert emu.edits[sent.message_id] == 20
    assert emu.texts[sent.message_id].endswith("59 ")


def test_edit_budget_refuses_what_lark_cannot_do() -> None:
    with pytest.raises(cb.ConfigurationError, match=r"0\.\.20"):
        lark.EditBudget(max_edits=21)


# -- WeChat --------------------------------------------------------------------------------------


async def test_weixin_refuses_cards_and_markdown_with_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        for content in (cb.Card(CARD), cb.Markdown("*x*"), cb.Post({})):
            try:
                await reply.send(content)
            except cb.SendError as exc:
                results.append(str(exc))

    connector = emu.connector()
    bridge = cb.Bridge([connector], script, store=cb.MemoryStore())
    async with running_bridge(bridge):
        emu.user_says("wx-ann", "hello")
        await until(results, 3)
    assert all("cannot send" in r and "weixin" in r for r in results)
    assert emu.sent == []


async def test_weixin_image_reply_is_recorded_with_its_upload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(cb.Attachment(PICTURE[:5000], "chart.png"))
        results.append("ok")

    async with running_bridge(cb.Bridge([emu.connector()], script, store=cb.MemoryStore())):
        emu.user_says("wx-ann", "chart")
        await until(results)
    (image,) = [a for a in emu.activity if a.kind == "image"]
    assert (
        image.media is not None and image.media.sha256 == hashlib.sha256(PICTURE[:5000]).hexdigest()
    )
    assert emu.sent[-1].media == image.media


async def test_weixin_sends_first_with_the_users_stored_context_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    store = cb.MemoryStore()
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        results.append(batch.latest.reply_handle["context_token"])

    async with running_bridge(cb.Bridge([emu.connector()], script, store=store)):
        emu.user_says("wx-ann", "remind me later")
        token = await results.next()
    # a new life of the bridge: the token comes from the store
    connector = emu.connector()
    async with running_bridge(cb.Bridge([connector], script, store=store)):
        sent = await connector.send_first("wx-ann", "your reminder")
        await connector.send_first("wx-ann", cb.Attachment(b"%PDF-1.4", "notes.pdf"))
        with pytest.raises(cb.SendError, match="no context token for wx-bob"):
            await connector.send_first("wx-bob", "hello?")
        with pytest.raises(cb.SendError, match="cannot send card"):
            await connector.send_first("wx-ann", cb.Card(CARD))
    assert sent == cb.Sent("weixin", "wx-ann", "text")
    assert [(s.text, s.context_token) for s in emu.sent] == [
        ("your reminder", token),
        (None, token),
    ]
    assert emu.sent[1].media is not None and emu.sent[1].media.size == 8


async def test_weixin_emulator_refuses_a_made_up_typing_ticket_and_says_ret_minus_14(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    auth = {"authorization": f"Bearer {emu.token}"}
    async with httpx.AsyncClient(transport=emu.transport(), base_url=emu.base_url) as http:

        async def call(endpoint: str, body: dict[str, Any]) -> Any:
            return (await http.post(f"ilink/bot/{endpoint}", json=body, headers=auth)).json()

        made_up = await call("sendtyping", {"ilink_user_id": "wx-ann", "typing_ticket": "x"})
        ticket = (await call("getconfig", {"ilink_user_id": "wx-ann"}))["typing_ticket"]
        typing = {"ilink_user_id": "wx-ann", "typing_ticket": ticket, "status": 1}
        given = await call("sendtyping", typing)
        someone_elses = await call("sendtyping", dict(typing, ilink_user_id="wx-bob"))
        emu.session_valid = False
        stale_send = await call("sendmessage", {"msg": {}})
        stale_poll = await call("getupdates", {"get_updates_buf": ""})
    assert made_up == someone_elses == {"ret": -2, "errmsg": "invalid typing_ticket"}
    assert given["ret"] == 0
    assert [(a.kind, a.to, a.detail) for a in emu.activity] == [("typing", "wx-ann", {"status": 1})]
    assert (stale_send["ret"], stale_send["errcode"]) == (-14, -14)
    assert "ret" not in stale_poll and stale_poll["errcode"] == -14  # as the platform does


def test_lark_emulator_records_the_answer_an_ack_carries() -> None:
    emu = LarkEmulator()
    answer = {"toast": {"type": "success", "content": "saved"}, "card": LARK_CARD}
    payload = {"code": 200, "data": base64.b64encode(json.dumps(answer).encode()).decode()}
    for body in (payload, {"code": 200}):  # an ACK without an answer records nothing
        ack = lark_frames.Frame(
            method=1,
            headers=(("type", "event"), ("message_id", "frame-9")),
            payload=json.dumps(body).encode(),
        )
        emu._on_frame(cast(Any, None), lark_frames.encode(ack))
    assert emu.activity == [
        Activity("lark", "card_answer", "ack", id="frame-9", card=LARK_CARD, detail=answer)
    ]
    assert emu.acks == [200, 200]


# -- every platform ----------------------------------------------------------------------------


async def answered_by(platform: str, script: Script, results: Record[Any], count: int) -> Any:
    """The emulator of ``platform`` once its user said hi and ``results`` holds ``count``."""
    emu: WeixinEmulator | WeComEmulator | LarkEmulator
    if platform == "weixin":
        emu = WeixinEmulator()
        async with running_bridge(cb.Bridge([emu.connector()], script, store=cb.MemoryStore())):
            emu.user_says("wx-ann", "hi")
            await until(results, count)
        return emu
    emu = WeComEmulator() if platform == "wecom" else LarkEmulator()
    async with emulator_bridge(emu, emu.connector, script):
        emu.user_says("ann" if platform == "wecom" else "ou_ann", "hi")
        await until(results, count)
    return emu


@pytest.mark.parametrize("platform", ["weixin", "wecom", "lark"])
async def test_a_reply_holding_a_lone_surrogate_is_refused_and_the_next_one_goes(
    autojump_clock: trio.testing.MockClock, platform: str
) -> None:
    """Half a surrogate pair (``"\\ud800"``, what ``surrogateescape`` decoding or a JSON
    escape gives an agent) is no text: the platform's request raised a bare
    UnicodeEncodeError out of ``reply.send``. It is a SendError naming the problem, raised
    before anything is sent, and the agent's next reply goes."""
    results: Record[Any] = Record()
    bad: tuple[cb.Content, ...] = (
        "bad \ud800",
        cb.Attachment(b"x", "bad\udcff.txt"),
        cb.Card({"elements": [{"tag": "markdown", "content": "bad \udfff"}]}),
    )

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        for content in bad:
            with pytest.raises(cb.SendError, match="lone surrogate") as refused:
                await reply.send(content)
            results.append(str(refused.value))
        with pytest.raises(cb.SendError, match="lone surrogate"):
            await reply.edit(cb.Sent(platform, batch.latest.chat.id, "text", "om_1"), "\ud800")
        await reply.send("good \u00e9\U0001f600")
        results.append("ok")

    emu = await answered_by(platform, script, results, len(bad) + 1)
    assert results[-1] == "ok"
    assert all("\\ud8" in r or "\\udc" in r or "\\udf" in r for r in results[:-1])
    assert [a.text for a in emu.activity if a.text] == ["good \u00e9\U0001f600"]
    assert not any(a.card or a.media for a in emu.activity)  # nothing of the bad ones went


@pytest.mark.parametrize("platform", ["weixin", "wecom", "lark"])
async def test_a_streamed_write_holding_a_lone_surrogate_is_refused_and_the_stream_goes_on(
    autojump_clock: trio.testing.MockClock, platform: str
) -> None:
    """The write raised a bare UnicodeEncodeError (in an ExceptionGroup) where the platform
    encoded the text; now a SendError before it is appended, and the stream goes on."""
    results: Record[Any] = Record()

    async def script(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write("ok ")
            with pytest.raises(cb.SendError, match="streamed text holds a lone surrogate"):
                await out.write("bad \udc80")
            await out.write("end")
            assert out.text == "ok end"
        results.append("ok")

    emu = await answered_by(platform, script, results, 1)
    assert results == ["ok"]
    assert "ok end" in [a.text for a in emu.activity]

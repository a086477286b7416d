from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given
from support import (
    agent_scripts,
    echo,
    emulator_bridge,
    fickle_streamer,
    json_trees,
    on_busy_modes,
    open_lives,
    quick_bridge,
    run_timeouts,
    streamer,
)

import trio_chatbridge as cb
from trio_chatbridge._receive import MAX_HANDLERS
from trio_chatbridge._websocket import AckTimeout, _Connection
from trio_chatbridge._ws_core import Answer
from trio_chatbridge.platforms import wecom
from trio_chatbridge.platforms.wecom import _crypto
from trio_chatbridge.platforms.wecom._protocol import STREAM_LIMIT, Frame, WeComCore, parse_frame
from trio_chatbridge.testing import InFlightLimit, WeComEmulator, running_bridge


@asynccontextmanager
async def wecom_bridge(
    agent: cb.Agent = echo, emu: WeComEmulator | None = None, **options: Any
) -> AsyncIterator[tuple[WeComEmulator, cb.Bridge]]:
    emulator = emu or WeComEmulator()
    connector = options.pop("connector", None)
    connector_options = options.pop("connector_options", {})
    async with emulator_bridge(
        emulator, lambda: connector or emulator.connector(**connector_options), agent, **options
    ) as bridge:
        yield emulator, bridge


def status(bridge: cb.Bridge) -> cb.ConnectorStatus:
    return bridge.status()["wecom:emulator-bot"]


async def test_a_streamed_reply_carries_the_whole_text_in_each_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge(streamer(0.1)) as (emu, _):
        req_id = emu.user_says("alice", "one two three four five")
        sent = await emu.next_sent()
    assert sent.text == "one two three four five "
    assert sent.req_id == req_id
    frames = [fr for fr in emu.commands("aibot_respond_msg") if fr.req_id == req_id]
    contents = [fr.body["stream"]["content"] for fr in frames]
    assert all(sent.text.startswith(c) for c in contents)  # cumulative, never a delta
    assert [fr.body["stream"]["finish"] for fr in frames] == [False] * (len(frames) - 1) + [True]
    assert len({fr.body["stream"]["id"] for fr in frames}) == 1
    assert len(frames) <= 6  # coalesced: never more frames than writes + the final one


async def test_a_failing_agent_still_finishes_its_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An unfinished stream would hold one of the user's three in-flight messages."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write("half an ans")
            await trio.sleep(1)
            raise RuntimeError("the model went away")

    async with wecom_bridge(agent) as (emu, bridge):
        req_id = emu.user_says("ola", "question")
        sent = await emu.next_sent()
        await trio.sleep(1)
        assert bridge.stats().failures == 1
    assert (sent.kind, sent.req_id, sent.text) == ("stream", req_id, "half an ans")
    frames = [fr for fr in emu.commands("aibot_respond_msg") if fr.req_id == req_id]
    assert frames[-1].body["stream"]["finish"] is True


async def test_an_interrupted_stream_whose_last_frame_is_refused_is_rerun(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write(" ".join(m.text for m in batch.messages))
            await trio.sleep(10)

    async with wecom_bridge(agent, on_busy="interrupt") as (emu, bridge):
        emu.user_says("kim", "first")
        await trio.sleep(3)  # the first run is streaming
        emu.fail_next("aibot_respond_msg", 40001)  # the frame that closes it is refused
        emu.user_says("kim", "second")
        sent = await emu.next_sent()
        stats = bridge.stats()
    assert sent.text == "first second"
    # the refusal is logged, not blamed on the agent, and does not hide the interrupt
    assert (stats.interrupts, stats.failures) == (1, 0)


async def test_the_rerun_of_an_interrupted_stream_does_not_finish_its_callback_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The interrupted run finished its stream on the first callback (the partial text); the
    rerun, closing its batch's earlier callbacks, sent that one a second finished stream,
    which WeCom refuses (846608): a refused frame and a log line at every interrupt."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write(" ".join(m.text for m in batch.messages))
            await trio.sleep(10)

    async with wecom_bridge(agent, on_busy="interrupt") as (emu, bridge):
        first = emu.user_says("kim", "first")
        await trio.sleep(3)  # the first run is streaming
        second = emu.user_says("kim", "second")
        while (await emu.next_sent()).req_id != second:
            pass
        stats = bridge.stats()
    finishes = [
        fr.req_id for fr in emu.commands("aibot_respond_msg") if fr.body["stream"]["finish"]
    ]
    assert finishes == [first, second]  # each callback finished once
    assert [a for a in emu.activity if a.kind == "refused"] == []
    assert stats.interrupts == 1


async def test_a_burst_of_callbacks_is_journaled_in_one_put(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sizes: list[int] = []

    class RecordingStore(cb.MemoryStore):
        async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
            sizes.append(len(messages))
            return await super().journal_add(messages)

    async with wecom_bridge(store=RecordingStore()) as (emu, bridge):
        for i in range(30):
            emu.user_says(f"user{i}", f"hello {i}")
        await trio.sleep(0.5)  # far less than the debounce window: no agent has run
        assert bridge.stats().received == 30
    assert sizes == [30]


async def test_subscribe_then_a_heartbeat_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, _):
        await trio.sleep(95)
        subscribe = emu.commands("aibot_subscribe")[0]
    assert subscribe.body == {"bot_id": "emulator-bot", "secret": "emulator-secret"}
    assert len(emu.commands("ping")) == 3  # at 30, 60 and 90 s


async def test_a_burst_answers_the_latest_and_closes_the_earlier_callbacks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, _):
        first = emu.user_says("bob", "hi")
        second = emu.user_says("bob", "how are you")
        replies = [await emu.next_sent(), await emu.next_sent()]
        assert emu.in_flight("bob") == 0
    assert (replies[0].req_id, replies[0].text) == (first, "")
    assert (replies[1].req_id, replies[1].text) == (second, "hi\nhow are you")


async def test_a_batchs_earlier_callbacks_are_closed_concurrently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    emu.ack_delay = 2.0  # each close takes an ack round trip of 2 s
    started: list[float] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        started.append(trio.current_time())
        await reply.send(batch.text)

    async with wecom_bridge(agent, emu=emu):
        said = trio.current_time()
        for text in ("a", "b", "c"):
            emu.user_says("dave", text)
        replies = [await emu.next_sent() for _ in range(3)]
        assert emu.in_flight("dave") == 0
    assert sorted(r.text for r in replies) == ["", "", "a\nb\nc"]
    # 1 s window, then both earlier callbacks closed in one 2 s round trip (one after the
    # other, the agent would have started 5 s after the burst).
    assert started[0] - said == pytest.approx(3.0, abs=0.1)


async def test_the_emulated_user_can_only_have_three_messages_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, _):
        for text in ("a", "b", "c"):
            emu.user_says("carol", text)
        with pytest.raises(InFlightLimit):
            emu.user_says("carol", "d")
        await emu.next_sent()
        await trio.sleep(1)
        emu.user_says("carol", "now there is room")  # the batch closed all three


async def test_wrong_secret_is_fatal_with_what_to_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    async with wecom_bridge(emu=emu, connector_options={"secret": "wrong"}) as (_, bridge):
        await trio.sleep(10)
        state = status(bridge)
    assert state.state == "failed"
    assert "errcode 40001" in (state.detail or "") and "bot id and secret" in (state.detail or "")
    assert emu.subscribes == 0
    assert len(emu.commands("aibot_subscribe")) == 1  # not retried


async def test_missing_ping_acks_end_the_connection_and_it_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, bridge):
        emu.ignore_pings = True
        await trio.sleep(41)  # ping at 30 s, no ack within the 10 s grace
        assert bridge.stats().reconnects == 1
        emu.ignore_pings = False
        await emu.wait_connected()
        assert emu.subscribes == 2
        emu.user_says("dan", "still there?")
        assert (await emu.next_sent()).text == "still there?"
    assert "not acknowledged" in (status(bridge).last_error or "")


async def test_a_dropped_socket_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    async with wecom_bridge() as (emu, bridge):
        await emu.drop_connection()
        await emu.wait_connected()
        emu.user_says("erin", "hello again")
        assert (await emu.next_sent()).text == "hello again"
        assert bridge.stats().reconnects == 1


async def test_callbacks_off_the_socket_are_journaled_when_the_connection_drops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(m.text for m in batch.messages)

    class SlowStore(cb.MemoryStore):
        """Journal writes take a while: the connection drops in the middle of one."""

        async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
            await trio.sleep(1)
            return await super().journal_add(messages)

    async with wecom_bridge(agent, store=SlowStore()) as (emu, bridge):
        emu.user_says("gina", "do not lose me")
        await trio.sleep(0.5)  # the callback is in the put worker's journal write
        await emu.drop_connection()
        await emu.wait_connected()
        await trio.sleep(5)
        assert bridge.stats().reconnects == 1
    assert seen == ["do not lose me"]  # a WeCom callback is not delivered again


async def test_command_conflict_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    async with wecom_bridge() as (emu, bridge):
        emu.fail_next("aibot_respond_msg", 6000, times=2)
        emu.user_says("finn", "conflict?")
        assert (await emu.next_sent()).text == "conflict?"
        assert bridge.stats().other["wecom.busy_retries"] == 2


async def test_disconnected_event_stops_the_replaced_connection_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, bridge):
        other = cb.Bridge([emu.connector()], echo, store=cb.MemoryStore())
        async with running_bridge(other):
            await trio.sleep(100)
            assert status(other).state == "running"
        state = status(bridge)
    assert state.state == "failed"
    assert "replaced by a newer connection" in (state.detail or "")
    assert emu.subscribes == 2  # the old one did not come back to kick the new one


async def test_enter_chat_gets_a_welcome_within_five_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[wecom.WeComEvent] = []

    async def welcome(event: wecom.WeComEvent) -> str:
        return f"welcome, {event.user_id}"

    async def on_event(event: wecom.WeComEvent) -> None:
        events.append(event)

    options = {"welcome": welcome, "on_event": on_event}
    async with wecom_bridge(connector_options=options) as (emu, _):
        emu.user_enters("gina")
        sent = await emu.next_sent()
        assert trio.current_time() < 5
        emu._push(emu._event_frame("feedback_event", "gina", "")[1])
        await trio.sleep(1)
    assert (sent.kind, sent.text) == ("welcome", "welcome, gina")
    assert [e.eventtype for e in events] == ["feedback_event"]


async def test_group_mentions_are_stripped(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[cb.Message] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(batch.messages)
        await reply.send("ok")

    async with wecom_bridge(agent, connector_options={"bot_name": "emulator-bot"}) as (emu, _):
        emu.user_says("hank", "status please", chat="team-chat")
        sent = await emu.next_sent()
    message = seen[0]
    assert message.text == "status please"
    assert message.chat == cb.Chat("team-chat", "group")
    assert cb.Mention("emulator-bot", "emulator-bot") in message.parts
    assert sent.to == "team-chat"


wecom_steps = st.one_of(
    st.tuples(st.just("say"), st.integers(0, 2)),
    st.tuples(st.just("say again"), st.integers(0, 2)),  # the same msgid delivered twice
    st.tuples(st.just("drop"), st.just(0)),
    st.tuples(st.just("no ping acks"), st.integers(1, 60)),
    st.tuples(st.just("refuse"), st.sampled_from([6000, 40001, -1])),  # -1: never acked
    st.tuples(st.just("garbage"), st.sampled_from(["{not json", "[]", "x" * 600_000])),
    st.tuples(st.just("wait"), st.integers(0, 30)),
    st.tuples(st.just("restart"), st.sampled_from(["graceful", "killed"])),
)


@pytest.mark.slow
@given(st.lists(wecom_steps, max_size=12))
def test_no_fault_stops_the_connection_or_handles_a_message_twice(
    script: list[tuple[str, Any]],
) -> None:
    """Drops, lost heartbeats, refused and unanswered commands, garbage frames and restarts,
    in any order: the connector always comes back, no message is handled twice (unless a
    restart killed a run in the middle), bad frames are counted, and a message after the storm
    is answered."""
    handled: list[str] = []
    store = cb.MemoryStore()  # the same store across lives: what a restart keeps
    killed = ("restart", "killed") in script

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.id for m in batch.messages)
        await reply.send("ok")

    async def main() -> None:
        emu = WeComEmulator()

        def life() -> cb.Bridge:
            return quick_bridge(emu.connector(), agent, store=store)

        async with open_lives(life, emu) as lives:
            said: list[str] = []
            protocol_errors = 0
            for step, arg in script:
                if step in ("say", "say again"):
                    msgid = said[-1] if step == "say again" and said else f"msg-{len(said)}"
                    try:
                        emu.user_says(f"user{arg}", "hello", msgid=msgid)
                    except InFlightLimit:
                        continue  # the platform refuses a fourth message in flight
                    said.append(msgid)
                elif step == "drop":
                    await emu.drop_connection()
                elif step == "no ping acks":
                    emu.ignore_pings = True
                    await trio.sleep(arg)
                    emu.ignore_pings = False
                elif step == "refuse":
                    emu.fail_next("aibot_respond_msg", arg)
                elif step == "garbage":
                    emu.push_raw(arg)
                elif step == "restart":
                    protocol_errors += lives.bridge.stats().protocol_errors
                    await lives.restart(kill=arg == "killed")
                else:
                    await trio.sleep(arg)
            await trio.sleep(120)  # every reconnect and backoff is over
            bridge = lives.bridge
            assert status(bridge).state == "running"
            # Refusals still queued refuse the next replies: ask until one is answered.
            answered = False
            for attempt in range(sum(step == "refuse" for step, _ in script) + 1):
                emu.user_says(f"last{attempt}", "anyone there?")
                with trio.move_on_after(30):
                    while (await emu.next_sent()).to != f"last{attempt}":
                        pass
                    answered = True
                    break
            assert answered
            garbage = sum(step == "garbage" for step, _ in script)
            assert protocol_errors + bridge.stats().protocol_errors <= garbage
        if not killed:
            assert len(handled) == len(set(handled))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.slow
@given(script=agent_scripts, on_busy=on_busy_modes, run_timeout=run_timeouts)
def test_no_callback_is_left_open_whatever_the_agent_does(
    script: list[tuple[int, str, float]], on_busy: str, run_timeout: float | None
) -> None:
    """WeCom lets a user have three messages in flight: every callback must be finished,
    whether its batch was answered, merged into a later one, interrupted, timed out, or its
    agent raised mid-stream."""
    agent = fickle_streamer([])

    async def main() -> None:
        async with wecom_bridge(agent, on_busy=on_busy, run_timeout=run_timeout) as (emu, bridge):
            for user, text, gap in script:
                with suppress(InFlightLimit):  # WeCom refuses a fourth: so do we
                    emu.user_says(f"user{user}", text)
                await trio.sleep(gap)
            await trio.sleep(60)
            assert [emu.in_flight(f"user{user}") for user in range(3)] == [0, 0, 0]
            assert status(bridge).state == "running"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def _callback(msgtype: str, **payload: Any) -> dict[str, Any]:
    return {
        "msgid": "m1",
        "aibotid": "bot",
        "chattype": "single",
        "from": {"userid": "zoe"},
        "create_time": 1700000000,
        "msgtype": msgtype,
        **payload,
    }


MEDIA = {"url": "https://example.invalid/x", "aeskey": "k"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_callback("text", text={"content": "hi"}), [cb.Text("hi")]),
        (_callback("voice", voice={"content": "spoken"}), [cb.Voice(cb.Media("voice"), "spoken")]),
        (_callback("image", image=MEDIA), [cb.Image(cb.Media("image", ref=cb.Handle.of(MEDIA)))]),
        (_callback("file", file=MEDIA), [cb.File(cb.Media("file", ref=cb.Handle.of(MEDIA)))]),
        (_callback("video", video=MEDIA), [cb.Video(cb.Media("video", ref=cb.Handle.of(MEDIA)))]),
        (
            _callback(
                "mixed",
                mixed={
                    "msg_item": [
                        {"msgtype": "text", "text": {"content": "look"}},
                        {"msgtype": "image", "image": MEDIA},
                        "not an item",
                    ]
                },
            ),
            [cb.Text("look"), cb.Image(cb.Media("image", ref=cb.Handle.of(MEDIA)))],
        ),
        (
            _callback(
                "text",
                text={"content": "and this?"},
                quote={"msgtype": "text", "text": {"content": "the plan"}},
            ),
            [cb.Quote("the plan"), cb.Text("and this?")],
        ),
        (
            _callback("text", text={"content": "this"}, quote={"msgtype": "image", "image": MEDIA}),
            [cb.Quote("[image]"), cb.Text("this")],
        ),
    ],
)
def test_every_message_type_becomes_its_parts(
    body: dict[str, Any], expected: list[cb.Part]
) -> None:
    message = wecom.to_message("bot", "req-1", body)
    assert list(message.parts) == expected
    assert (message.id, message.chat, message.sender.id) == ("m1", cb.Chat("zoe", "direct"), "zoe")
    assert dict(message.reply_handle) == {"req_id": "req-1", "chatid": "zoe"}
    assert message.timestamp == 1700000000.0


def test_a_callback_without_a_sender_is_a_protocol_error() -> None:
    with pytest.raises(cb.ProtocolError, match=r"from\.userid"):
        wecom.to_message("bot", "req-1", {"msgtype": "text", "text": {"content": "hi"}})
    with pytest.raises(cb.ProtocolError, match="chatid"):
        wecom.to_message("bot", "req-1", {**_callback("text"), "chattype": "group"})


async def test_duplicate_msgid_is_handled_once(autojump_clock: trio.testing.MockClock) -> None:
    async with wecom_bridge() as (emu, bridge):
        emu.user_says("ivy", "once", msgid="same-id")
        emu.user_says("ivy", "once", msgid="same-id")
        await trio.sleep(5)
        assert bridge.stats().duplicates == 1
        assert bridge.stats().runs == 1


async def test_malformed_and_oversized_frames_are_counted_and_survived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, bridge):
        emu.push_raw("{not json")
        emu.push_raw(json.dumps({"cmd": "aibot_msg_callback"}))  # no req_id
        emu.push_raw(
            json.dumps(
                {
                    "headers": {"req_id": "x"},
                    "cmd": "aibot_msg_callback",
                    "body": {"msgtype": "text"},
                }
            )
        )  # no sender
        emu.push_raw("[" + "1," * 300_000 + "1]")  # over the 512 KiB cap
        emu.user_says("jack", "fine")
        assert (await emu.next_sent()).text == "fine"
        assert bridge.stats().protocol_errors == 4
        assert bridge.stats().reconnects == 0


async def test_long_replies_respect_the_byte_limit_and_overflow_proactively(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = "数据" * 5000  # 30000 bytes of UTF-8

    async def verbose(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(text)

    async with wecom_bridge(verbose) as (emu, _):
        emu.user_says("kim", "long please")
        first, rest = await emu.next_sent(), await emu.next_sent()
    assert len(first.text.encode()) <= STREAM_LIMIT
    assert (rest.kind, rest.to) == ("proactive", "kim")
    assert first.text + rest.text == text


async def test_a_stale_req_id_falls_back_to_a_proactive_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, bridge):
        connector = bridge.connectors[0]
        stale = cb.Message(
            platform="wecom",
            account="emulator-bot",
            id="old",
            chat=cb.Chat("lee"),
            sender=cb.Sender("lee"),
            parts=(cb.Text("from before a restart"),),
            reply_handle=cb.Handle.of(req_id="gone-req-id", chatid="lee"),
        )
        await connector.send(stale, "better late than never")
        sent = await emu.next_sent()
    assert (sent.kind, sent.to, sent.text) == ("proactive", "lee", "better late than never")


async def test_inbound_media_is_decrypted_and_guarded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    payload = bytes(range(256)) * 33
    results: list[bytes | str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        part = batch.latest.parts[0]
        assert isinstance(part, cb.Image | cb.File)
        assert isinstance(reply.connector, wecom.LongConnection)
        try:
            results.append(await reply.connector.download(part.media))
        except cb.MediaError as exc:
            results.append(str(exc))
        await reply.send("ok")

    async with wecom_bridge(agent) as (emu, bridge):
        emu.user_sends_media("mia", payload)
        await emu.next_sent()
        emu.send_callback(
            "mia",
            {
                "msgtype": "file",
                "file": {
                    "url": "http://10.0.0.1/secret",
                    "aeskey": base64.b64encode(b"k" * 32).decode(),
                },
            },
        )
        await emu.next_sent()
        assert bridge.stats().other["wecom.downloads_failed"] == 1  # the refused one
    assert results[0] == payload
    assert "'10.0.0.1': not an allowed host" in str(results[1])


CORE = WeComCore("bot", "secret", "life")


async def test_commands_on_one_req_id_wait_for_each_others_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Acks carry only the req_id, so two commands on one req_id must not overlap."""

    class QuietServer:
        def __init__(self) -> None:
            self.sent: list[Frame] = []

        async def send_message(self, data: str) -> None:
            self.sent.append(parse_frame(data))

    server = QuietServer()
    link = _Connection(server)  # type: ignore[arg-type]

    async def command(req_id: str, n: int) -> None:
        await link.request(CORE.command("aibot_respond_msg", req_id, {"n": n}), 5.0)

    async with trio.open_nursery() as nursery:
        for n in range(2):
            nursery.start_soon(command, "cb-1", n)
        nursery.start_soon(command, "cb-2", 9)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(frame.req_id for frame in server.sent) == ["cb-1", "cb-2"]
        for frame in list(server.sent):
            assert link.deliver(Answer(frame.req_id))
        await trio.testing.wait_all_tasks_blocked()
        assert [frame.req_id for frame in server.sent[2:]] == ["cb-1"]  # its turn now
        assert {frame.body["n"] for frame in server.sent if frame.req_id == "cb-1"} == {0, 1}
        assert link.deliver(Answer("cb-1"))
    assert not link.slots
    assert not link.deliver(Answer("cb-1"))  # nobody waits: a stray ack


@pytest.mark.slow
async def test_a_hundred_thousand_commands_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class InstantServer:
        """Stands in for the socket: acks each command at once (or not, or with 6000)."""

        def __init__(self) -> None:
            self.link: _Connection | None = None
            self.count = 0

        async def send_message(self, data: str) -> None:
            self.count += 1
            assert self.link is not None
            if self.count % 1000 == 0:
                return  # never acked: that command times out
            errcode = 6000 if self.count % 777 == 0 else 0
            ack = Frame(parse_frame(data).req_id, errcode=errcode, errmsg="ok").encode()
            (answer,) = CORE.receive(ack, 0.0)
            assert isinstance(answer, Answer) and self.link.deliver(answer)

    server = InstantServer()
    link = _Connection(server)  # type: ignore[arg-type]
    server.link = link
    timeouts = 0
    with trio.fail_after(10_000):
        for i in range(100_000):
            req_id = f"callback-{i // 3}"  # three replies share each callback's req_id
            try:
                await link.request(CORE.command("aibot_respond_msg", req_id, {"n": i}), 5.0)
            except AckTimeout:
                timeouts += 1
            assert not link.slots
    assert timeouts == 100  # one in a thousand was left unacknowledged
    assert server.count > 100_000  # the 6000s were retried


async def test_webhook_conversation_with_stream_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    hook = wecom.Webhook(bot_id=emu.bot_id, token=emu.token, encoding_aes_key=emu.encoding_aes_key)
    bridge = cb.Bridge(
        [hook], streamer(0.1), store=cb.MemoryStore(), debounce=cb.Debounce(window=1)
    )
    async with running_bridge(bridge):
        verify = await emu.webhook_verify(hook.asgi, "echo-me")
        assert (verify.status_code, verify.text) == (200, "echo-me")
        sent = await emu.webhook_user_says(hook.asgi, "nina", "stream this over polls")
        welcome = await emu.webhook_user_enters(hook.asgi, "nina")
    assert sent.text == "stream this over polls "
    assert sent.frames >= 2  # WeCom polled more than once before finish
    assert welcome == "Hello! Send me a message and I will answer."


@pytest.mark.slow
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),  # which user
            st.floats(0, 3),  # seconds after the previous message
            st.booleans(),  # WeCom also delivers it a second time (same msgid)
            st.sampled_from([0.5, 1.0, 3.0]),  # how often WeCom polls the stream
        ),
        min_size=1,
        max_size=8,
    )
)
def test_every_webhook_stream_finishes_and_a_retry_gets_the_same_stream(
    script: list[tuple[int, float, bool, float]],
) -> None:
    """Concurrent users, bursts that become one batch, redelivered callbacks and polls at any
    pace: every message's stream finishes, a redelivery polls the same stream, and the agent
    sees each message once."""
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.id for m in batch.messages)
        async with reply.stream() as out:
            for word in ("one", "two", "three"):
                await out.write(word + " ")
                await trio.sleep(0.7)

    async def main() -> None:
        emu = WeComEmulator()
        hook = wecom.Webhook(
            bot_id=emu.bot_id, token=emu.token, encoding_aes_key=emu.encoding_aes_key
        )
        bridge = cb.Bridge([hook], agent, store=cb.MemoryStore(), debounce=cb.Debounce(1.0))
        streams: dict[str, set[str]] = {}

        async def say(user: int, msgid: str, refresh: float) -> None:
            sent = await emu.webhook_user_says(
                hook.asgi, f"user{user}", "hi", msgid=msgid, refresh=refresh
            )
            assert sent.frames < 360 / refresh  # it finished before WeCom gave up polling
            streams.setdefault(msgid, set()).add(sent.req_id)

        async with running_bridge(bridge), trio.open_nursery() as nursery:
            for n, (user, gap, again, refresh) in enumerate(script):
                await trio.sleep(gap)
                nursery.start_soon(say, user, f"m{n}", refresh)
                if again:
                    nursery.start_soon(say, user, f"m{n}", refresh)
        assert sorted(handled) == sorted(streams)  # each message once
        assert all(len(ids) == 1 for ids in streams.values())  # one stream per message

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_webhook_refuses_bad_signatures_stale_and_garbage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    hook = wecom.Webhook(bot_id=emu.bot_id, token=emu.token, encoding_aes_key=emu.encoding_aes_key)
    bridge = cb.Bridge([hook], echo, store=cb.MemoryStore())
    body = {"msgid": "m1", "from": {"userid": "u"}, "msgtype": "text", "text": {"content": "x"}}
    async with running_bridge(bridge):
        stale = await emu.webhook_post(hook.asgi, body, timestamp=str(int(time.time()) - 3600))
        forged = WeComEmulator(token="someone-else")
        bad_signature = await forged.webhook_post(hook.asgi, body)
        async with emu._webhook_client(hook.asgi) as http:
            garbage = await http.post(
                "",
                params={"msg_signature": "x", "timestamp": "1", "nonce": "n"},
                content=b"not json",
            )
        unverified = await forged.webhook_verify(hook.asgi)
    assert (stale.status_code, bad_signature.status_code, garbage.status_code) == (403, 403, 400)
    assert unverified.status_code == 403
    assert bridge.stats().received == 0
    assert bridge.stats().other["wecom.refused_requests"] == 4


async def test_long_connection_end_to_end_over_loopback() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            emu = await nursery.start(WeComEmulator().serve)
            assert emu.ws_url.startswith("ws://127.0.0.1:")
            bridge = cb.Bridge(
                [emu.connector()], echo, store=cb.MemoryStore(), debounce=cb.Debounce(window=0.05)
            )
            async with running_bridge(bridge):
                emu.user_says("olga", "over a real socket")
                sent = await emu.next_sent()
            nursery.cancel_scope.cancel()
    assert sent.text == "over a real socket"


async def test_webhook_served_by_hypercorn_end_to_end() -> None:
    emu = WeComEmulator()
    hook = wecom.Webhook(bot_id=emu.bot_id, token=emu.token, encoding_aes_key=emu.encoding_aes_key)
    bridge = cb.Bridge([hook], echo, store=cb.MemoryStore(), debounce=cb.Debounce(window=0.05))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(wecom.serve, hook, "127.0.0.1", 0)
            async with running_bridge(bridge):
                sent = await emu.webhook_user_says(binds[0], "pete", "hello", refresh=0.05)
            nursery.cancel_scope.cancel()
    assert sent.text == "hello"


# -- properties: crypto and frames --------------------------------------------------------------


@given(st.text(max_size=500), st.binary(min_size=16, max_size=16))
def test_webhook_crypto_round_trips(message: str, random16: bytes) -> None:
    crypto = wecom.WebhookCrypto("token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
    encrypted = crypto.encrypt(message, random16)
    assert crypto.decrypt(encrypted) == message
    assert crypto.verify(crypto.signature("1", "n", encrypted), "1", "n", encrypted)


@given(st.binary(max_size=2000), st.binary(min_size=32, max_size=32))
def test_media_crypto_round_trips(data: bytes, key: bytes) -> None:
    encrypted = _crypto.encrypt_media_with_key(key, data)
    assert len(encrypted) % 32 == 0
    assert (
        _crypto.decrypt_media(base64.urlsafe_b64encode(key).decode().rstrip("="), encrypted) == data
    )


@given(st.binary(max_size=300))
def test_decrypting_garbage_only_raises_protocol_error(data: bytes) -> None:
    crypto = wecom.WebhookCrypto("token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
    with pytest.raises(cb.ProtocolError):
        crypto.decrypt(base64.b64encode(data).decode() + "!")
    try:  # random ciphertext: a ProtocolError, or (rarely) some text; never anything else
        assert isinstance(crypto.decrypt(base64.b64encode(data).decode()), str)
    except cb.ProtocolError:
        return


json_values = json_trees(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), json_values.map(json.dumps)))
def test_frame_parser_raises_only_protocol_errors(data: str | bytes) -> None:
    try:
        frame = parse_frame(data)
    except cb.ProtocolError:
        return
    assert isinstance(frame.req_id, str) and frame.req_id
    assert parse_frame(frame.encode()) == frame


@given(st.text(max_size=50), st.one_of(st.none(), st.text(max_size=10)), json_values)
def test_frames_round_trip(req_id: str, cmd: str | None, body: object) -> None:
    if not req_id:
        return
    frame = Frame(req_id, cmd, body if isinstance(body, dict) else {})
    assert parse_frame(frame.encode()) == frame


# -- hostile input: nothing lost, the link kept ------------------------------------------------

DEEP = "[" * 20_000 + "]" * 20_000  # deeper than the interpreter can recurse


async def test_the_good_callback_right_after_a_deeply_nested_frame_is_delivered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with wecom_bridge() as (emu, bridge):
        emu.push_raw('{"headers": {"req_id": "deep"}, "body": {"x": ' + DEEP + "}}")
        emu.user_says("lena", "right after")  # WeCom never delivers a callback again
        with trio.fail_after(60):
            assert (await emu.next_sent()).text == "right after"
        assert bridge.stats().protocol_errors == 1
        assert bridge.stats().reconnects == 0


async def test_a_callback_with_wrong_types_costs_only_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nested: dict[str, Any] = {"msgtype": "text", "text": {"content": "inner"}}
    for _ in range(400):  # quotes of quotes, as deep as JSON decodes: one level is read
        nested = {"msgtype": "text", "text": {"content": "q"}, "quote": nested}

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(" / ".join(m.text for m in batch.messages))

    async with wecom_bridge(agent) as (emu, bridge):
        emu.send_callback(
            "milo", {"msgtype": "text", "text": {"content": "a"}, "create_time": 1e400}
        )
        emu.send_callback(
            "nora", {"msgtype": "text", "text": {"content": "b"}, "create_time": 10**400}
        )
        emu.send_callback("omar", nested)
        emu.send_callback("pia", {"msgtype": "text", "text": {"content": "fine"}, "from": 7})
        emu.user_says("pia", "good")
        with trio.fail_after(60):
            texts = sorted([(await emu.next_sent()).text for _ in range(4)])
        assert texts == ["a", "b", "good", "q"]
        assert bridge.stats().protocol_errors == 1  # the callback without a sender
        assert bridge.stats().reconnects == 0


# -- replies across reconnects and the six-minute window ---------------------------------------


class FlakyNetwork:
    """The emulator's WebSocket, unreachable while ``down``."""

    def __init__(self, emu: WeComEmulator) -> None:
        self.emu = emu
        self.down = False

    def open_websocket(self, url: str) -> Any:
        if self.down:
            raise OSError("network unreachable")
        return self.emu.open_websocket(url)


async def test_a_reply_during_a_reconnect_waits_and_goes_out_on_the_new_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    go = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await go.wait()
        await reply.send("answered after all")

    emu = WeComEmulator()
    network = FlakyNetwork(emu)
    options = {"open_websocket": network.open_websocket}
    async with wecom_bridge(agent, emu, connector_options=options) as (_, bridge):
        asked = emu.user_says("rex", "question")
        await trio.sleep(2)  # the agent is running
        network.down = True
        await emu.drop_connection()
        go.set()  # the reply is attempted while the link is down
        await trio.sleep(20)
        assert emu.sent == []
        network.down = False
        with trio.fail_after(60):
            sent = await emu.next_sent()
        assert (sent.kind, sent.req_id, sent.text) == ("stream", asked, "answered after all")
        assert bridge.stats().failures == 0
        assert bridge.stats().reconnects >= 2


async def test_a_reply_waits_for_a_reconnect_only_so_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    failed: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(5)
        try:
            await reply.send("lost")
        except cb.SendError as exc:
            failed.append(str(exc))

    emu = WeComEmulator()
    network = FlakyNetwork(emu)
    options = {"open_websocket": network.open_websocket, "reconnect_wait": 30}
    async with wecom_bridge(agent, emu, connector_options=options):
        emu.user_says("sam", "question")
        await trio.sleep(2)
        network.down = True
        await emu.drop_connection()
        await trio.sleep(40)
        assert failed and "no connection came back in 30 s" in failed[0]
        network.down = False


async def test_a_stream_that_would_outlive_its_window_is_finished_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for n in range(15):  # seven and a half minutes
                await out.write(f"part {n}. ")
                await trio.sleep(30)

    async with wecom_bridge(agent) as (emu, bridge):
        asked = emu.user_says("tia", "take your time")
        with trio.fail_after(600):
            streamed, rest = await emu.next_sent(), await emu.next_sent()
        assert (streamed.kind, streamed.req_id) == ("stream", asked)
        assert rest.kind == "proactive"
        assert streamed.text + rest.text == "".join(f"part {n}. " for n in range(15))
        assert emu.in_flight("tia") == 0  # the callback was closed, not left to expire
        assert bridge.stats().failures == 0


async def test_a_reply_after_the_window_goes_out_proactively(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(400)
        await reply.send("late but there")

    async with wecom_bridge(agent) as (emu, bridge):
        emu.user_says("uma", "question")
        with trio.fail_after(600):
            sent = await emu.next_sent()
        assert (sent.kind, sent.text) == ("proactive", "late but there")
        assert bridge.stats().failures == 0


async def test_a_message_answered_before_its_run_was_killed_ends_done_when_replayed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = cb.MemoryStore()
    emu = WeComEmulator()
    answered = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("the answer")
        if not answered.is_set():
            answered.set()
            await trio.sleep(100)  # killed here, before its messages are marked done

    def life() -> cb.Bridge:
        return quick_bridge(emu.connector(), agent, store=store)

    async with open_lives(life, emu) as lives:
        emu.user_says("val", "question", msgid="m-1")
        await answered.wait()
        await lives.restart(kill=True)  # the message is replayed; its callback answered
        await trio.sleep(5)
        assert lives.bridge.stats().failures == 0
        assert lives.bridge.stats().other["wecom.already_answered"] == 1
        entry = await store.journal_entry(("wecom", "emulator-bot", "m-1"))
        assert entry is not None and entry.state == "done"
    assert [s.text for s in emu.sent] == ["the answer"]


async def test_event_handlers_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async def welcome(event: wecom.WeComEvent) -> str:
        await trio.sleep(10)  # past the 5 s: no welcome goes out
        return "too late"

    async with wecom_bridge(connector_options={"welcome": welcome}) as (emu, bridge):
        for n in range(MAX_HANDLERS + 5):
            emu.user_enters(f"user-{n}")
        emu.user_says("quinn", "still answered")
        with trio.fail_after(60):
            assert (await emu.next_sent()).text == "still answered"
        await trio.sleep(6)
        assert bridge.stats().other["wecom.events_dropped"] == 5
        assert bridge.stats().other["wecom.late_welcomes"] == MAX_HANDLERS


@pytest.mark.parametrize("at", [0.5, 2.5, 4.5])
async def test_a_stream_whose_connection_drops_goes_on_on_the_next_and_shows_once(
    autojump_clock: trio.testing.MockClock, at: float
) -> None:
    """A reply being streamed when the connection drops (after its first frame, mid-way, at
    its final frame): the rest goes on the new connection, on the same stream; the user's
    answer is the whole text, once, and the run does not fail."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            for word in ("one ", "two ", "three ", "four ", "five"):
                await out.write(word)
                await trio.sleep(1.0)

    async with wecom_bridge(agent) as (emu, bridge):
        asked = emu.user_says("rex", "q")
        await trio.sleep(at)
        await emu.drop_connection()
        await trio.sleep(60)
        assert [(s.kind, s.req_id, s.text) for s in emu.sent] == [
            ("stream", asked, "one two three four five")
        ]
        assert (bridge.stats().failures, bridge.stats().replies) == (0, 1)
        assert bridge.stats().reconnects >= 1

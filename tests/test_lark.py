from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

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
    lark_message_event,
    on_busy_modes,
    open_lives,
    quick_bridge,
    run_timeouts,
    streamer,
)

import trio_chatbridge as cb
from trio_chatbridge._receive import MAX_HANDLERS
from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark import _frames as lark_frames
from trio_chatbridge.platforms.lark import _protocol as lark_protocol
from trio_chatbridge.testing import HandlerTransport, LarkEmulator, running_bridge

T = TypeVar("T")


@asynccontextmanager
async def lark_bridge(
    agent: cb.Agent = echo, emu: LarkEmulator | None = None, **options: Any
) -> AsyncIterator[tuple[LarkEmulator, cb.Bridge]]:
    emulator = emu or LarkEmulator()
    connector_options = {"random": lambda: 0.0, **options.pop("connector_options", {})}
    async with emulator_bridge(
        emulator, lambda: emulator.connector(**connector_options), agent, **options
    ) as bridge:
        yield emulator, bridge


def status(bridge: cb.Bridge) -> cb.ConnectorStatus:
    return bridge.status()["lark:cli_emulator"]


# -- the connection ----------------------------------------------------------------------------


async def test_a_streamed_reply_is_one_message_edited_as_it_grows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge(streamer(0.6)) as (emu, _):
        asked = emu.user_says("ou_alice", "one two three four")
        sent = await emu.next_sent()
        await trio.sleep(10)
    assert (sent.kind, sent.reply_to) == ("reply", asked)
    assert emu.texts[sent.message_id] == "one two three four "
    assert 1 <= emu.edits[sent.message_id] <= 3  # throttled to one edit a second, plus the last
    assert len(emu.sent) == 1


async def test_fragments_are_reassembled_and_acked_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge(emu=LarkEmulator(fragment_size=40)) as (emu, _):
        emu.user_says("ou_bob", "a message long enough to need several fragments")
        sent = await emu.next_sent()
        await trio.sleep(5)
    assert sent.text == "a message long enough to need several fragments"
    assert emu.acks == [200]


class SlowStore(cb.MemoryStore):
    """The first journal write takes longer than Lark's 3 s: the ACK is late."""

    slow = True

    async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
        if SlowStore.slow:
            SlowStore.slow = False
            await trio.sleep(4)
        return await super().journal_add(messages)


async def test_an_event_redelivered_after_a_late_ack_is_handled_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        runs.extend(m.text for m in batch.messages)

    SlowStore.slow = True
    async with lark_bridge(agent, store=SlowStore()) as (emu, bridge):
        emu.user_says("ou_carol", "just once")
        await trio.sleep(20)
        assert bridge.stats().duplicates == 1
    assert runs == ["just once"]
    assert emu.acks == [200, 200]


async def test_a_burst_of_events_is_journaled_in_one_put_and_acked_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    puts: list[tuple[int, int]] = []  # (messages in the put, ACKs the emulator had by then)

    class RecordingStore(cb.MemoryStore):
        async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
            puts.append((len(messages), len(emu.acks)))
            return await super().journal_add(messages)

    async with lark_bridge(emu=emu, store=RecordingStore()) as (_, bridge):
        for i in range(30):
            emu.user_says(f"ou_{i}", f"hello {i}")
        await trio.sleep(0.5)  # far less than the debounce window: no agent has run
        assert bridge.stats().received == 30
    assert puts == [(30, 0)]
    assert emu.acks == [200] * 30


async def test_groups_need_a_mention_and_the_mention_leaves_the_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[cb.Message] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(batch.messages)
        await reply.send("ok")

    async with lark_bridge(agent) as (emu, bridge):
        emu.user_says("ou_dan", "chatter", chat="oc_team", mention_bot=False)
        emu.user_says("ou_dan", "status?", chat="oc_team")
        await emu.next_sent()
        await trio.sleep(3)
        assert bridge.stats().other["lark.filtered"] == 1
    assert [m.text for m in seen] == ["status?"]
    assert cb.Mention("ou_bot", "Bot") in seen[0].parts
    assert seen[0].chat == cb.Chat("oc_team", "group")


async def test_all_group_messages_when_configured(autojump_clock: trio.testing.MockClock) -> None:
    async with lark_bridge(connector_options={"group_messages": "all"}) as (emu, _):
        emu.user_says("ou_erin", "no mention needed", chat="oc_team", mention_bot=False)
        assert (await emu.next_sent()).text == "no mention needed"


async def test_the_bots_own_messages_and_other_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events: list[str] = []

    async def on_event(envelope: Any) -> None:
        events.append(envelope["header"]["event_type"])

    async with lark_bridge(connector_options={"on_event": on_event}) as (emu, bridge):
        own = lark_message_event(
            "me",
            mention_bot=False,
            sender="ou_bot",
            sender_type="app",
            message_id="om_x",
            chat="oc_p2p",
            chat_type="p2p",
        )
        emu.push_event(own)
        emu.push_event(
            {
                "schema": "2.0",
                "header": {"event_id": "e2", "event_type": "im.chat.member.bot.added_v1"},
            }
        )
        emu.push_event(  # pushed again, as after a lost ACK: on_event runs once
            {
                "schema": "2.0",
                "header": {"event_id": "e2", "event_type": "im.chat.member.bot.added_v1"},
            }
        )
        await trio.sleep(5)
        assert bridge.stats().runs == 0
        assert bridge.stats().other["lark.duplicate_events"] == 1
    assert events == ["im.chat.member.bot.added_v1"]
    assert emu.acks == [200, 200, 200]


async def test_pings_start_at_once_and_pong_config_applies_live(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator(ping_interval=100)
    emu.pong_config = {"PingInterval": 10}
    async with lark_bridge(emu=emu) as (_, bridge):
        await trio.sleep(35)
        assert bridge.connectors[0].config.ping_interval == 10  # type: ignore[attr-defined]
    assert emu.pings == 4  # at 0 (then 10 s, from the first pong on), 10, 20, 30


async def test_a_silent_link_is_dropped_and_reconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator(ping_interval=10)
    async with lark_bridge(emu=emu, connector_options={"ping_grace": 5}) as (_, bridge):
        emu.silent = True
        await trio.sleep(20)  # 10 s interval + 5 s grace without a frame
        emu.silent = False
        await trio.sleep(5)
        assert emu.connections == 2
        assert "no frame for 15 s" in (status(bridge).last_error or "")
        emu.user_says("ou_finn", "back")
        assert (await emu.next_sent()).text == "back"


async def test_the_connection_limit_is_fatal(autojump_clock: trio.testing.MockClock) -> None:
    async with lark_bridge(emu=LarkEmulator(connection_limit=1)) as (emu, _):
        second = cb.Bridge([emu.connector()], echo, store=cb.MemoryStore())
        async with running_bridge(second):
            pass
        state = second.status()["lark:cli_emulator"]
    assert state.state == "failed"
    assert "maximum of connections" in (state.detail or "")


async def test_bad_credentials_are_fatal_and_busy_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    emu.fail("/callback/ws/endpoint", 200, {"code": 1, "msg": "system busy"}, times=2)
    async with lark_bridge(emu=emu, start_timeout=None) as (_, bridge):  # two backoffs
        assert bridge.stats().reconnects == 2
        wrong = cb.Bridge([emu.connector(app_secret="nope")], echo, store=cb.MemoryStore())
        async with running_bridge(wrong):
            pass
    detail = wrong.status()["lark:cli_emulator"].detail or ""
    assert "endpoint discovery refused" in detail and "app id and secret" in detail


async def test_expired_token_and_rate_limits_are_handled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge() as (emu, _):
        emu.user_says("ou_gina", "first")
        await emu.next_sent()
        emu.expire_token()
        emu.fail("/reply", 429, {"code": 99991400, "msg": "too many requests"}, times=2)
        emu.user_says("ou_gina", "second")
        assert (await emu.next_sent()).text == "second"


@asynccontextmanager
async def emulated_api() -> AsyncIterator[tuple[LarkEmulator, lark.OpenAPI]]:
    """A running emulator and an open API on it, closed after."""
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        api = lark.OpenAPI(
            emu.app_id,
            emu.app_secret,
            domain=emu.http_base,
            transport=HandlerTransport(emu.handle_http),
        )
        yield emu, api
        await api.aclose()
        nursery.cancel_scope.cancel()


async def test_rate_limits_are_retried_four_times_under_the_one_policy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with emulated_api() as (emu, api):
        emu.fail_next("/open-apis/bot/v3/info", 429, times=4)
        started = trio.current_time()
        await api.call("GET", "/open-apis/bot/v3/info", whole=True)  # the fifth try goes through
        assert trio.current_time() - started == pytest.approx(0.5 + 1 + 2 + 4)
        emu.fail_next("/open-apis/bot/v3/info", 429, times=5)
        with pytest.raises(cb.ConnectorError, match=r"HTTP 429.*99991400.*rate limited"):
            await api.call("GET", "/open-apis/bot/v3/info", whole=True)
        emu.fail("/open-apis/bot/v3/info", 200, {"code": 99991400, "msg": "limit"}, times=5)
        with pytest.raises(lark.LarkError) as refused:  # the code in a 200: the platform's word
            await api.call("GET", "/open-apis/bot/v3/info", whole=True)
        assert refused.value.code == 99991400


@pytest.mark.parametrize("status", [429, 400, 200])
async def test_a_rate_limit_waits_the_reset_lark_names_and_no_reply_is_doubled(
    autojump_clock: trio.testing.MockClock, status: int
) -> None:
    """Lark says how long a rate limit lasts in ``x-ogw-ratelimit-reset`` (seconds; no
    ``Retry-After``), on HTTP 429, or 400 from older APIs: the retries waited 0.5, 1, 2 and
    4 s whatever it said, so a limit of 10 s failed the reply. The wait is at least the reset
    (a minute at most), the reply is sent once, and a reset of hours fails it at once rather
    than holding the run."""
    async with emulated_api() as (emu, api):
        limited = {"code": 99991400, "msg": "request trigger frequency limit"}
        reset = {"x-ogw-ratelimit-limit": "100", "x-ogw-ratelimit-reset": "10"}
        emu.fail("/open-apis/im/v1/messages", status, limited, times=2, headers=reset)
        started = trio.current_time()
        body = {"receive_id": "oc_1", "msg_type": "text", "content": '{"text":"once"}'}
        await api.call("POST", "/open-apis/im/v1/messages?receive_id_type=chat_id", body)
        assert trio.current_time() - started == pytest.approx(10 + 10)
        assert [s.text for s in emu.sent] == ["once"]
        emu.fail(
            "/open-apis/bot/v3/info", status, limited, headers={"x-ogw-ratelimit-reset": "7200"}
        )
        started = trio.current_time()
        with pytest.raises(cb.ChatBridgeError, match="99991400"):
            await api.call("GET", "/open-apis/bot/v3/info", whole=True)
        assert trio.current_time() == started


async def test_malformed_frames_are_counted_and_survived(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge() as (emu, bridge):
        await trio.sleep(1)
        emu.push_raw(b"\xff\xff\xff")
        emu.push_raw(
            lark_frames.encode(
                lark_frames.Frame(method=1, headers=(("type", "event"),), payload=b"{not json")
            )
        )
        emu.push_raw("a text frame")
        emu.user_says("ou_hank", "fine")
        assert (await emu.next_sent()).text == "fine"
        assert bridge.stats().protocol_errors == 2
        assert bridge.stats().other["lark.text_frames_ignored"] == 1
        assert bridge.stats().reconnects == 0


lark_steps = st.one_of(
    st.tuples(st.just("say"), st.integers(0, 2)),
    st.tuples(st.just("drop"), st.just(0)),
    st.tuples(st.just("silent"), st.integers(1, 40)),
    st.tuples(st.just("fragments"), st.sampled_from([0, 7, 60])),
    st.tuples(st.just("token expires"), st.just(0)),
    st.tuples(st.just("replies fail"), st.sampled_from([429, 500])),
    st.tuples(st.just("garbage"), st.sampled_from([b"\xff\xff", "a text frame"])),
    st.tuples(st.just("wait"), st.integers(0, 10)),
    st.tuples(st.just("restart"), st.sampled_from(["graceful", "killed"])),
)


@pytest.mark.slow
@given(st.lists(lark_steps, max_size=12))
def test_every_event_is_handled_once_whatever_the_link_does(
    script: list[tuple[str, Any]],
) -> None:
    """Lark pushes an event again until it is ACKed (four pushes in all), and the journal
    outlives restarts: with at most two drops or restarts every message is handled, beyond
    that none is invented; never twice, unless a restart killed a run in the middle. The link
    always comes back."""
    handled: list[str] = []
    store = cb.MemoryStore()  # the same store across lives: what a restart keeps
    interruptions = sum(step in ("drop", "restart") for step, _ in script)
    killed = ("restart", "killed") in script

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.id for m in batch.messages)
        await reply.send("ok")

    async def main() -> None:
        emu = LarkEmulator(ping_interval=10)

        def life() -> cb.Bridge:
            connector = emu.connector(random=lambda: 0.0, ping_grace=5)
            return quick_bridge(connector, agent, store=store)

        async with open_lives(life, emu) as lives:
            said: list[str] = []
            for step, arg in script:
                if step == "say":
                    said.append(emu.user_says(f"ou_user{arg}", "hello"))
                elif step == "drop":
                    await emu.drop_connections()
                elif step == "silent":
                    emu.silent = True
                    await trio.sleep(arg)
                    emu.silent = False
                elif step == "fragments":
                    emu.fragment_size = arg
                elif step == "token expires":
                    emu.expire_token()
                elif step == "replies fail":
                    emu.fail("/reply", arg, {"code": 1, "msg": "injected"})
                elif step == "garbage":
                    emu.push_raw(arg)
                elif step == "restart":
                    await lives.restart(kill=arg == "killed")
                else:
                    await trio.sleep(arg)
            # Past the watchdog (15 s) and Lark's reconnect schedule (120 s between attempts),
            # then the re-pushes of what was not ACKed.
            await trio.sleep(20)
            with trio.fail_after(1200):
                while status(lives.bridge).state != "running":  # noqa: ASYNC110 (a poll)
                    await trio.sleep(1)
            await trio.sleep(30)
        assert set(handled) <= set(said)
        if not killed:
            assert len(handled) == len(set(handled))
        if interruptions <= 2:
            assert set(handled) == set(said)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.slow
@given(script=agent_scripts, on_busy=on_busy_modes, run_timeout=run_timeouts)
def test_every_edited_reply_ends_showing_all_its_agent_wrote(
    script: list[tuple[int, str, float]], on_busy: str, run_timeout: float | None
) -> None:
    """A streamed reply is one message edited as it grows; whether the run finished, raised,
    was interrupted or timed out, its last edit shows everything the agent wrote."""
    written: list[str] = []
    agent = fickle_streamer(written)

    async def main() -> None:
        options: dict[str, Any] = {"on_busy": on_busy, "run_timeout": run_timeout}
        async with lark_bridge(agent, **options) as (emu, bridge):
            for user, text, gap in script:
                emu.user_says(f"ou_user{user}", text)
                await trio.sleep(gap)
            await trio.sleep(60)
            assert sorted(emu.texts.values()) == sorted(written)
            assert status(bridge).state == "running"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_end_to_end_over_loopback() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            emu = await nursery.start(LarkEmulator().serve)
            bridge = cb.Bridge(
                [emu.connector()], echo, store=cb.MemoryStore(), debounce=cb.Debounce(window=0.05)
            )
            async with running_bridge(bridge):
                emu.user_says("ou_ivy", "over real sockets")
                sent = await emu.next_sent()
            nursery.cancel_scope.cancel()
    assert sent.text == "over real sockets"


def test_handshake_classification() -> None:
    def rejected(status: int, **headers: str) -> Exception:
        lowered = {k.replace("_", "-").lower(): v for k, v in headers.items()}
        return lark_protocol.handshake_error("cli_1", status, lowered)

    limit = rejected(514, Handshake_Status="514", Handshake_Autherrcode="1000040350")
    assert isinstance(limit, cb.FatalConnectorError)
    assert "cli_1" in str(limit) and "maximum of connections" in str(limit)
    assert isinstance(rejected(403, Handshake_Status="403"), cb.FatalConnectorError)
    transient = rejected(514, Handshake_Status="514", Handshake_Autherrcode="123")
    assert type(transient) is cb.ConnectorError
    assert type(rejected(502)) is cb.ConnectorError
    # the header wins over the HTTP status, as both SDKs read it
    assert isinstance(rejected(200, Handshake_Status="403"), cb.FatalConnectorError)


async def test_the_tenant_token_is_cached_until_shortly_before_it_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge() as (emu, bridge):
        for text in ("one", "two"):
            emu.user_says("ou_jo", text)
            await emu.next_sent()
            await trio.sleep(5)
        assert emu.token_fetches == 1  # one token for the bot info and both replies
        api = bridge.connectors[0].api  # type: ignore[attr-defined]
        first = await api.token()
        await trio.sleep(7200 - 60 - 20)
        assert await api.token() == first  # still cached
        emu.expire_token()
        await trio.sleep(30)  # now within a minute of the 2 h expiry: fetched anew
        assert await api.token() != first


async def test_each_event_goes_to_one_of_several_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: dict[str, list[str]] = {"a": [], "b": []}

    def agent_for(name: str) -> cb.Agent:
        async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
            handled[name].extend(m.text for m in batch.messages)

        return agent

    async with lark_bridge(agent_for("a")) as (emu, _):
        other = cb.Bridge(
            [emu.connector()],
            agent_for("b"),
            store=cb.MemoryStore(),
            debounce=cb.Debounce(window=1.0),
        )
        async with running_bridge(other):
            for i in range(6):
                emu.user_says(f"ou_user{i}", f"event {i}")
            await trio.sleep(10)
    assert sorted(handled["a"] + handled["b"]) == [f"event {i}" for i in range(6)]
    assert handled["a"] and handled["b"]  # both connections got some, none got all
    assert emu.acks == [200] * 6


async def test_reconnects_follow_the_servers_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator(ping_interval=1000)
    options = {"random": lambda: 0.5}
    async with lark_bridge(emu=emu, connector_options=options) as (_, bridge):
        connector = bridge.connectors[0]
        assert isinstance(connector, lark.LongConnection)
        connector.config = lark.ClientConfig(
            reconnect_nonce=30, reconnect_interval=120, reconnect_count=2
        )
        emu.fail("/callback/ws/endpoint", 503, {}, times=3)
        dropped_at = trio.current_time()
        await emu.drop_connections()
        await trio.sleep(200)
        state = status(bridge)
    # first retry after 0.5 * 30 s, the second 120 s later; a third is not allowed
    assert state.state == "failed"
    assert "gave up after 2 reconnect attempts" in (state.detail or "")
    assert trio.current_time() - dropped_at >= 135


async def test_a_dropped_socket_reconnects(autojump_clock: trio.testing.MockClock) -> None:
    async with lark_bridge() as (emu, bridge):
        await emu.drop_connections()
        await trio.sleep(2)  # the nonce's 0 s is a hint: the bridge's backoff waits 1 s
        assert emu.connections == 2
        emu.user_says("ou_lou", "after the drop")
        assert (await emu.next_sent()).text == "after the drop"
        assert bridge.stats().reconnects == 1


async def test_incomplete_fragments_expire_without_an_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge() as (emu, bridge):
        await trio.sleep(1)
        part = lark_frames.Frame(
            seq_id=1,
            log_id=1,
            service=7,
            method=1,
            headers=(("type", "event"), ("message_id", "half"), ("sum", "2"), ("seq", "0")),
            payload=b'{"schema": ',
        )
        emu.push_raw(lark_frames.encode(part))
        await trio.sleep(10)
        emu.user_says("ou_max", "later")  # the next frame sweeps the expired partial
        await emu.next_sent()
        assert bridge.stats().other["lark.fragments_expired"] == 1
    assert emu.acks == [200]  # only the complete event was acknowledged


# -- hostile input: nothing lost, the link kept ------------------------------------------------

DEEP = b"[" * 20_000 + b"]" * 20_000  # deeper than the interpreter can recurse


def control(kind: str, payload: bytes) -> bytes:
    return lark_frames.encode(
        lark_frames.Frame(service=7, headers=(("type", kind),), payload=payload)
    )


def event_frame(message_id: str, payload: bytes, *, seq: int = 0, total: int = 1) -> bytes:
    headers = (("type", "event"), ("message_id", message_id), ("sum", str(total)))
    return lark_frames.encode(
        lark_frames.Frame(method=1, headers=(*headers, ("seq", str(seq))), payload=payload)
    )


async def test_a_deeply_nested_event_in_a_burst_spoils_nothing_around_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    said = [f"message {n}" for n in range(20)]
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.text for m in batch.messages)

    async with lark_bridge(agent) as (emu, bridge):
        await trio.sleep(1)
        for n, text in enumerate(said):
            emu.user_says(f"ou_{n}", text)
            if n == 9:
                emu.push_raw(event_frame("deep", b'{"header": ' + DEEP + b"}"))
        await trio.sleep(10)
        assert sorted(handled) == sorted(said)
        assert bridge.stats().protocol_errors == 1
        assert bridge.stats().reconnects == 0
    assert emu.acks == [200] * 21  # the bad event too: a re-push would bring the same bytes


async def test_a_bad_pong_is_counted_and_the_link_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge() as (emu, bridge):
        await trio.sleep(1)
        emu.push_raw(control("pong", b'{"PingInterval": ' + DEEP + b"}"))
        emu.push_raw(control("pong", b"\xff\xfe not json"))
        emu.user_says("ou_nia", "still here")
        assert (await emu.next_sent()).text == "still here"
        assert bridge.stats().protocol_errors == 2
        assert bridge.stats().reconnects == 0
        assert bridge.connectors[0].config.ping_interval == 120  # type: ignore[attr-defined]


async def test_server_timings_are_held_to_their_documented_ranges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with lark_bridge() as (emu, bridge):
        await trio.sleep(1)
        emu.push_raw(control("pong", b'{"PingInterval": 0.001, "ReconnectInterval": 1e308}'))
        await trio.sleep(20)
        assert emu.pings <= 6  # one every 5 s at most, not one a millisecond
        emu.push_raw(control("pong", b'{"PingInterval": 1e308, "ReconnectNonce": 1e300}'))
        await trio.sleep(1)
        config = bridge.connectors[0].config  # type: ignore[attr-defined]
        assert (config.ping_interval, config.reconnect_interval) == (600, 600)
        assert config.reconnect_nonce == 600
        emu.silent = True  # the watchdog still fires: 600 s interval + 30 s grace
        await trio.sleep(640)
        emu.silent = False
        await trio.sleep(5)
        assert emu.connections == 2
        assert "no frame for 630 s" in (status(bridge).last_error or "")


def test_client_config_ranges() -> None:
    config = lark.ClientConfig.merge(
        lark.ClientConfig(),
        {
            "PingInterval": "5",
            "ReconnectInterval": float("nan"),
            "ReconnectNonce": -3,
            "ReconnectCount": 10**400,
        },
    )
    assert config == lark.ClientConfig(reconnect_nonce=0, reconnect_count=1000)


async def test_fragments_waiting_are_bounded_in_number_and_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    big = b"x" * (3 * 1024 * 1024)
    async with lark_bridge() as (emu, bridge):
        await trio.sleep(1)
        for n in range(lark_protocol.MAX_PARTIALS + 1):  # one set more than may wait
            emu.push_raw(event_frame(f"set-{n}", b"{", total=2))
        await trio.sleep(1)
        assert bridge.stats().other["lark.fragments_dropped"] == 1
        await trio.sleep(lark_protocol.FRAGMENT_TTL)  # the next frame sweeps those away
        for n in range(6):  # 18 MiB in waiting sets: over the 16 MiB all may hold
            emu.push_raw(event_frame(f"big-{n}", big, total=3))
        await trio.sleep(1)
        assert bridge.stats().other["lark.fragments_dropped"] == 2
        assert bridge.stats().other["lark.fragments_expired"] == lark_protocol.MAX_PARTIALS
        emu.push_raw(event_frame("huge", big, total=3))  # one event over 4 MiB
        emu.push_raw(event_frame("huge", big, seq=1, total=3))
        emu.user_says("ou_ola", "through")
        assert (await emu.next_sent()).text == "through"
        assert bridge.stats().protocol_errors == 1
        assert bridge.stats().reconnects == 0


async def test_handlers_of_other_events_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started: list[str] = []

    async def on_event(envelope: Any) -> None:
        started.append(envelope["header"]["event_id"])
        await trio.sleep_forever()  # a handler that never ends

    async with lark_bridge(connector_options={"on_event": on_event}) as (emu, bridge):
        for n in range(MAX_HANDLERS + 5):
            emu.push_event({"header": {"event_id": f"e{n}", "event_type": "im.chat.updated"}})
        emu.user_says("ou_pat", "still answered")
        with trio.fail_after(60):
            assert (await emu.next_sent()).text == "still answered"
        assert len(started) == MAX_HANDLERS
        assert bridge.stats().other["lark.events_dropped"] == 5


async def test_a_refused_upgrade_says_why_from_its_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    emu.refuse_connections(502, b"upstream connect error")
    emu.refuse_connections(403, b"app disabled by the tenant admin " + b"x" * 5000)
    async with lark_bridge(emu=emu) as (_, bridge):
        pass
    state = status(bridge)
    assert bridge.stats().reconnects == 1  # the 502 was retried, the 403 is fatal
    assert state.state == "failed"
    assert "app disabled by the tenant admin" in (state.detail or "")
    assert len(state.detail or "") < 1000  # the body is cut short


async def _crashed_then_replayed(
    path: Path,
    first: cb.Agent,
    reached: Callable[[LarkEmulator], Awaitable[T]],
    second: cb.Agent,
    finished: trio.Event,
) -> tuple[LarkEmulator, T]:
    """A bridge on the SQLite file ``path`` runs ``first`` for a user's "hello" until
    ``reached(emulator)`` returns, then crashes (cancelled: the run never ends, its message
    stays pending); a second bridge on the file replays it to ``second`` until ``finished``.
    Returns the emulator and what ``reached`` returned. (The real clock, no waits: SQLite's
    open runs in a thread, which an autojump clock would take for idleness.)"""
    now = cb.Debounce(window=0.0)
    emu = LarkEmulator()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(emu.run)
            with trio.CancelScope() as crash:
                bridge = quick_bridge(
                    emu.connector(), first, store=cb.SQLiteStore(path), debounce=now
                )
                async with running_bridge(bridge):
                    emu.user_says("ou_alice", "hello")
                    seen = await reached(emu)
                    crash.cancel()  # the run never ends: its message stays pending
            bridge = quick_bridge(emu.connector(), second, store=cb.SQLiteStore(path), debounce=now)
            async with running_bridge(bridge):
                await finished.wait()
            nursery.cancel_scope.cancel()
    return emu, seen


async def test_a_reply_sent_before_a_crash_shows_once_when_its_run_is_replayed(
    tmp_path: Path,
) -> None:
    """A run that replied and was then cut (a crash, a kill) stays pending and is replayed at
    the next start: its reply went again and the user saw two. Each plain send carries a
    ``uuid`` derived from its target and its number, which Lark sends once an hour: the
    replay's reply is answered with the first life's message. Two sends of one run are two."""
    replied = trio.Event()

    async def replies_then_hangs(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("the answer")
        replied.set()
        await trio.sleep_forever()

    ran_again = trio.Event()

    async def replies_twice(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("the answer")
        await reply.send("and more")
        ran_again.set()

    async def answered(emu: LarkEmulator) -> None:
        await replied.wait()

    emu, _ = await _crashed_then_replayed(
        tmp_path / "bridge.db", replies_then_hangs, answered, replies_twice, ran_again
    )
    assert [sent.text for sent in emu.sent] == ["the answer", "and more"]


async def test_a_streamed_reply_begun_before_a_crash_is_one_message_when_its_run_is_replayed(
    tmp_path: Path,
) -> None:
    """A streamed reply's message carried a random ``uuid``: a run cut after its stream's
    first send (a crash, a kill) was replayed at the next start and its stream made a second
    message. The stream's message now carries the ``uuid`` a plain send would (its target's,
    and its number among the sends to it), so the replay's stream is answered with the first
    life's message, showing the first life's words, and edits it to its own text."""

    async def streams_then_hangs(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write("the first ")
            await trio.sleep_forever()

    finished = trio.Event()

    async def streams_in_full(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write("the answer, ")
            await out.write("in full")
        finished.set()  # the final text shown

    async def first_message(emu: LarkEmulator) -> str:
        sent = await emu.next_sent()
        assert emu.texts[sent.message_id] == "the first "
        return sent.message_id

    emu, first = await _crashed_then_replayed(
        tmp_path / "bridge.db", streams_then_hangs, first_message, streams_in_full, finished
    )
    assert [sent.message_id for sent in emu.sent] == [first]
    assert emu.texts[first] == "the answer, in full"

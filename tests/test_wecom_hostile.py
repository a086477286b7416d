"""WeCom against a hostile server: bad frames between good callbacks, odd acks, closes at bad
moments, and a webhook whose user code fails. Each test goes through the public connector (a
bridge, or the webhook's ASGI app) and an in-memory server speaking raw WebSocket frames."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import trio
import trio.testing
from support import echo, quick_bridge
from test_webhook import call, signed, webhook_bridge
from test_ws_client import Peer, frame
from wsproto.events import CloseConnection, Event, TextMessage

import trio_chatbridge as cb
from trio_chatbridge._ws_client import WebSocketClient, upgrade
from trio_chatbridge.platforms import wecom
from trio_chatbridge.platforms.wecom import _webhook
from trio_chatbridge.testing import WeComEmulator, running_bridge

BOT, SECRET = "hostile-bot", "hostile-secret-0123456789"
Script = Callable[["Server"], Awaitable[None]]


class Server:
    """The server's end of one connection: frames read with wsproto, raw bytes written."""

    def __init__(self, peer: Peer, n: int) -> None:
        self.peer = peer
        self.n = n
        """Which connection this is (0: the first)."""
        self.texts: list[str] = []
        self._events: deque[Event] = deque()

    async def read_text(self) -> dict[str, Any]:
        """The client's next text frame, decoded (a close from the client: EOFError)."""
        while True:
            while not self._events:
                self._events.extend(await self.peer.feed())
            event = self._events.popleft()
            if isinstance(event, TextMessage):
                decoded: dict[str, Any] = json.loads(event.data)
                return decoded
            if isinstance(event, CloseConnection):
                raise EOFError

    async def write(self, *raw: bytes) -> None:
        await self.peer.stream.send_all(b"".join(raw))

    async def ack(self, req_id: str, errcode: Any = 0, **extra: Any) -> None:
        body = {"headers": {"req_id": req_id}, "errcode": errcode, "errmsg": "ok", **extra}
        await self.write(text(json.dumps(body)))

    async def subscribed(self) -> None:
        """Accept the upgrade and the subscribe."""
        await self.peer.accept()
        first = await self.read_text()
        assert first["cmd"] == "aibot_subscribe"
        await self.ack(first["headers"]["req_id"])

    async def answer_commands(self, answer: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Every command after the subscribe goes to ``answer`` until the client closes."""
        try:
            while True:
                command = await self.read_text()
                self.texts.append(command["cmd"])
                await answer(command)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def text(payload: str) -> bytes:
    """One unmasked text frame of any length."""
    data = payload.encode()
    if len(data) < 2**16:
        return frame(0x1, data)
    return bytes([0x81, 127]) + len(data).to_bytes(8, "big") + data


def callback(user: str, words: str, n: int) -> str:
    body = {
        "msgid": f"m-{user}-{n}",
        "aibotid": BOT,
        "chattype": "single",
        "from": {"userid": user},
        "msgtype": "text",
        "text": {"content": words},
    }
    return json.dumps({"cmd": "aibot_msg_callback", "headers": {"req_id": f"cb-{n}"}, "body": body})


@asynccontextmanager
async def hostile(
    script: Script, pair: Callable[[], tuple[Any, Any]] = trio.testing.memory_stream_pair
) -> AsyncIterator[list[Server]]:
    """An opener for ``wecom.LongConnection`` whose every connection runs ``script`` on an
    in-memory server (streams made by ``pair``); yields the servers made so far."""
    servers: list[Server] = []
    async with trio.open_nursery() as nursery:

        @asynccontextmanager
        async def opener(url: str) -> AsyncIterator[WebSocketClient]:
            ours, theirs = pair()
            server = Server(Peer(theirs), len(servers))
            servers.append(server)
            nursery.start_soon(script, server)
            client = await upgrade(ours, url)
            try:
                yield client
            finally:
                await client.aclose()

        hostile.opener = opener  # type: ignore[attr-defined]
        yield servers
        nursery.cancel_scope.cancel()


def connector(opener: Any) -> wecom.LongConnection:
    return wecom.LongConnection(bot_id=BOT, secret=SECRET, open_websocket=opener)


async def acking(server: Server) -> None:
    """Ack every command (pings and replies alike)."""

    async def answer(command: dict[str, Any]) -> None:
        await server.ack(command["headers"]["req_id"])

    await server.answer_commands(answer)


def streaming(runs: list[str]) -> cb.Agent:
    """An agent that records each batch's text in ``runs`` and streams three words back, a
    second apart."""

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        runs.append(batch.text)
        async with reply.stream() as out:
            for word in ("one ", "two ", "three "):
                await out.write(word)
                await trio.sleep(1)

    return agent


# -- frames ------------------------------------------------------------------------------------


async def test_good_callbacks_between_hostile_frames_are_each_answered_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Between good callbacks: frames that are not JSON, not objects, of wrong types, without
    req_id or cmd, of unknown cmds, past the frame cap, binary, fragmented 10,000 ways, a
    flood of pings, acks for req_ids never sent, acks twice, acks with odd errcodes. Each good
    callback reaches the agent once, each bad frame is counted, the connection stays up."""
    got: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        got.append(batch.text)
        await reply.send("ok " + batch.text)

    good = [callback(f"u{n}", f"good {n}", n) for n in range(6)]
    fragmented = good[4].encode()
    pieces = [fragmented[i : i + 1] for i in range(len(fragmented))]
    pieces += [b""] * (10_000 - len(pieces))

    async def script(server: Server) -> None:
        await server.subscribed()
        bad = [
            "not json",
            "[1, 2]",
            '"a string"',
            '{"cmd": 5, "headers": {"req_id": "x"}}',
            '{"cmd": "aibot_msg_callback", "body": {}}',
            '{"cmd": "aibot_msg_callback", "headers": {"req_id": ""}, "body": []}',
            '{"headers": {"req_id": "never-sent"}, "errcode": 0}',
            '{"headers": {"req_id": "never-sent-2"}, "errcode": "zero"}',
            '{"headers": {"req_id": "x"}, "errcode": true}',
            '{"cmd": "aibot_unheard_of", "headers": {"req_id": "u"}, "body": {}}',
            '{"cmd": "aibot_msg_callback", "headers": {"req_id": "cb-x"}, "body": {"x": 1}}',
            json.dumps({"cmd": "x", "headers": {"req_id": "big"}, "pad": "x" * 600_000}),
        ]
        await server.write(text(good[0]))
        await server.write(*[text(b) for b in bad[:6]])
        await server.write(text(good[1]))
        await server.write(*[text(b) for b in bad[6:]])
        await server.write(frame(0x2, good[2].encode()))  # binary where text is expected
        await server.write(*[frame(0x9, b"p") for _ in range(5_000)])  # a ping flood
        await server.write(text(good[3]))
        fragments = [frame(0x1 if i == 0 else 0x0, p, fin=False) for i, p in enumerate(pieces)]
        fragments[1::1000] = [frame(0x9, b"mid") + f for f in fragments[1::1000]]  # pings among
        await server.write(*fragments, frame(0x0, b""))
        acked: set[str] = set()

        async def answer(command: dict[str, Any]) -> None:
            req_id = command["headers"]["req_id"]
            if command["cmd"] == "aibot_respond_msg" and req_id not in acked:
                acked.add(req_id)
                await server.ack(req_id)
                await server.ack(req_id)  # twice
                await server.ack(req_id, errcode=99999)  # and once more, refused
            else:
                await server.ack(req_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.answer_commands, answer)
            await trio.sleep(5)
            await server.write(text(good[5]))

    async with hostile(script) as servers:
        bridge = quick_bridge(connector(hostile.opener), agent)  # type: ignore[attr-defined]
        async with running_bridge(bridge):
            await trio.sleep(60)  # (the mock clock's) past every ack window: all is settled
            stats = bridge.stats()
    assert sorted(got) == [f"good {n}" for n in range(6)]
    assert servers[0].texts.count("aibot_respond_msg") == 6  # each answered once
    assert len(servers) == 1  # the connection never dropped
    assert (stats.received, stats.runs, stats.replies, stats.reconnects) == (6, 6, 6, 0)
    assert stats.protocol_errors == 10
    assert stats.other["wecom.stray_acks"] == 1 + 6 * 2  # never sent; twice more each


async def test_a_server_that_stops_reading_and_writing_is_left_within_the_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Half-open: after the subscribe the server neither reads nor writes (every write of ours
    blocks: no buffer between us). The connection is given up within the silence (a ping
    interval and two graces) plus the close's own bound, and the next one serves a callback."""
    got: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        got.append(batch.text)
        await reply.send("ok")

    async def script(server: Server) -> None:
        await server.subscribed()
        if server.n == 0:
            await trio.sleep_forever()
        await server.write(text(callback("u", "after", 0)))
        await acking(server)

    async with hostile(script, trio.testing.lockstep_stream_pair) as servers:
        bridge = quick_bridge(connector(hostile.opener), agent)  # type: ignore[attr-defined]
        async with running_bridge(bridge):
            await trio.sleep(30 + 2 * 10 + 1)  # the silence, its slack
            await trio.sleep(5 + 1 + 1)  # the close's bound, the backoff, the reply
            stats = bridge.stats()
    assert len(servers) == 2
    assert got == ["after"]
    assert (stats.reconnects, stats.replies) == (1, 1)


async def test_a_subscribe_refused_as_busy_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """errcode -1 (WeCom's "system busy, retry later") or 6000 to the subscribe is the
    server's state, not the credentials: the connector reconnects and serves (a wrong secret
    still stops it for good: tests/test_wecom.py)."""
    got: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        got.append(batch.text)
        await reply.send("ok")

    async def script(server: Server) -> None:
        await server.peer.accept()
        first = await server.read_text()
        refusal = {0: -1, 1: 6000}.get(server.n, 0)
        await server.ack(first["headers"]["req_id"], errcode=refusal)
        if refusal == 0:
            await server.write(text(callback("u", "served", 0)))
            await acking(server)

    async with hostile(script) as servers:
        bridge = quick_bridge(connector(hostile.opener), agent)  # type: ignore[attr-defined]
        async with running_bridge(bridge, start_timeout=None):  # up after two refusals: 123 s
            await trio.sleep(30)
            stats, state = bridge.stats(), bridge.status()[f"wecom:{BOT}"]
    assert len(servers) == 3
    assert got == ["served"]
    assert (stats.reconnects, stats.replies, state.state) == (2, 1, "running")


async def test_a_refusal_that_quotes_the_secret_does_not_show_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server whose refusal of the subscribe quotes the secret back: the connector's error
    (its status, the supervisor's log) shows the refusal without it."""

    async def script(server: Server) -> None:
        await server.peer.accept()
        first = await server.read_text()
        refusal = {"headers": first["headers"], "errcode": 40001, "errmsg": f"bad {SECRET}!"}
        await server.write(text(json.dumps(refusal)))

    async with hostile(script):
        bridge = quick_bridge(connector(hostile.opener), echo)  # type: ignore[attr-defined]
        # failed only at 60 s: after the refusal, our close handshake waits out the opener's
        # disconnect timeout (upgrade's default, 60 s; the connector's own opener uses 5 s),
        # this server never answering it
        async with running_bridge(bridge, start_timeout=None):
            await trio.sleep(10)
            state = bridge.status()[f"wecom:{BOT}"]
    assert state.state == "failed"
    assert "errcode 40001" in (state.detail or "") and "'bad ***!'" in (state.detail or "")
    assert SECRET not in (state.detail or "") + (state.last_error or "")


async def test_a_url_password_is_not_shown_when_the_connection_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A URL with a user part (a proxy's ``user:password@``): an error connecting to it
    names the URL, not the password, in the connector's status."""

    @asynccontextmanager
    async def unreachable(url: str) -> AsyncIterator[WebSocketClient]:
        raise OSError("connection refused (test)")
        yield  # (unreachable: an async generator)

    url = "wss://proxy-user:hunter2-secret@127.0.0.1:9/ws?key=also-secret"
    bot = wecom.LongConnection(bot_id=BOT, secret=SECRET, url=url, open_websocket=unreachable)
    async with cb.open_bridge([bot], echo, store=cb.MemoryStore()) as bridge:
        await trio.sleep(3)  # (it never comes up: running_bridge would wait for it)
        state = bridge.status()[f"wecom:{BOT}"]
    shown = state.last_error or ""
    assert "cannot connect to wss://proxy-user:***@127.0.0.1:9/ws" in shown
    assert "hunter2" not in shown and "also-secret" not in shown


# -- closes at bad moments ---------------------------------------------------------------------


async def test_closes_at_every_step_lose_nothing_and_double_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The server closes right after accepting, then during the subscribe handshake (with a
    close code no endpoint may send), then in the middle of a streamed reply. The connector
    reconnects each time; the callback's run happens once, and its stream is finished once,
    first thing on the connection after the one that broke it."""
    runs: list[str] = []

    finals: list[tuple[int, str, str]] = []  # (connection, req_id, content) of finished frames

    async def script(server: Server) -> None:
        if server.n == 0:  # right after accepting
            await server.peer.accept()
            await server.peer.stream.aclose()
            return
        if server.n == 1:  # during the subscribe handshake, with a reserved close code
            await server.peer.accept()
            await server.read_text()
            await server.write(frame(0x8, (1005).to_bytes(2, "big")))
            await server.peer.stream.aclose()
            return
        await server.subscribed()
        if server.n == 2:
            await server.write(text(callback("u", "stream me", 0)))

        async def answer(command: dict[str, Any]) -> None:
            req_id = command["headers"]["req_id"]
            stream = command.get("body", {}).get("stream", {})
            if stream.get("finish"):
                finals.append((server.n, req_id, stream["content"]))
            if server.n == 2 and command["cmd"] == "aibot_respond_msg":
                await server.peer.stream.aclose()  # mid-stream: the socket ends
                raise EOFError
            await server.ack(req_id)

        await server.answer_commands(answer)

    async with hostile(script) as servers:
        bridge = quick_bridge(connector(hostile.opener), streaming(runs))  # type: ignore[attr-defined]
        async with running_bridge(bridge):
            await trio.sleep(120)  # (the mock clock's) three reconnects and the reply
            stats = bridge.stats()
    assert runs == ["stream me"]
    assert finals == [(3, "cb-0", "one two three ")]
    assert len(servers) == 4
    assert stats.replies == 1


# -- webhook mode ------------------------------------------------------------------------------


ENTER = {"msgid": "e1", "from": {"userid": "u"}, "msgtype": "event", "event": {}}
ENTER["event"] = {"eventtype": "enter_chat"}


async def test_a_webhook_welcome_that_fails_or_hangs_is_counted_and_answered_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A welcome function that raises, or takes longer than WeCom's 5 s, costs only its
    welcome: the request is answered ``success`` (no 500, within the 5 s), the failure counted
    as on the long connection, and the webhook goes on."""

    async def failing(event: wecom.WeComEvent) -> str:
        raise RuntimeError("welcome broke (test)")

    async def hanging(event: wecom.WeComEvent) -> str:
        await trio.sleep(60)
        return "too late"

    async with webhook_bridge(welcome=failing) as (emu, hook, bridge):
        status, body = await call(hook.asgi, "POST", *signed(emu, json.dumps(ENTER)))
        assert (status, body) == (200, b"success")
        assert bridge.stats().other["wecom.event_failures"] == 1
    async with webhook_bridge(welcome=hanging) as (emu, hook, bridge):
        started = trio.current_time()
        status, body = await call(hook.asgi, "POST", *signed(emu, json.dumps(ENTER)))
        assert (status, body) == (200, b"success")
        assert trio.current_time() - started <= 5
        assert bridge.stats().other["wecom.late_welcomes"] == 1
        good = await call(hook.asgi, "POST", *signed(emu, json.dumps({**ENTER, "msgid": "e2"})))
        assert good[0] == 200


MESSAGE = {"msgid": "m1", "from": {"userid": "u"}, "msgtype": "text", "text": {"content": "hi"}}


async def test_a_retry_during_a_put_that_fails_is_put_itself_and_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """WeCom delivers a message again (same msgid) while the first delivery's put is still
    under way, and that put then fails: the retry must not have been given the first one's
    stream (no run would ever fill it: the user's message lost behind a 200). It waits for
    the first put, then puts the message itself; its stream is answered by the agent."""
    release = trio.Event()

    class SlowThenFails(cb.MemoryStore):
        calls = 0

        async def journal_add(self, messages: Any) -> list[bool]:
            self.calls += 1
            if self.calls == 1:
                await release.wait()
                raise cb.StoreError("disk full (test)")
            return await super().journal_add(messages)

    answers: list[tuple[int, bytes]] = []

    async def deliver() -> None:
        try:
            answers.append(await call(hook.asgi, "POST", *signed(emu, json.dumps(MESSAGE))))
        except cb.StoreError:
            answers.append((500, b""))

    with trio.fail_after(60):
        async with webhook_bridge(store=SlowThenFails()) as (emu, hook, bridge):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                await trio.sleep(1)
                nursery.start_soon(deliver)  # WeCom's retry, the first still unanswered
                await trio.sleep(1)
                release.set()
            assert sorted(status for status, _ in answers) == [200, 500]
            stream = opened(emu, next(body for status, body in answers if status == 200))
            while not stream["finish"]:
                await trio.sleep(1)
                poll = {"msgtype": "stream", "stream": {"id": stream["id"]}}
                stream = opened(
                    emu, (await call(hook.asgi, "POST", *signed(emu, json.dumps(poll))))[1]
                )
    assert stream["content"] == "hi"
    assert bridge.stats().runs == 1


def opened(emu: WeComEmulator, body: bytes) -> dict[str, Any]:
    """The stream of a webhook's encrypted answer."""
    stream: dict[str, Any] = emu.webhook_open(httpx.Response(200, content=body))["stream"]
    return stream


async def test_a_body_that_never_ends_is_refused_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that sends part of a body and then nothing (a slow-body attack on a public
    webhook) gets a 408 within the body's time limit, counted; the webhook goes on."""
    async with webhook_bridge() as (emu, hook, bridge):
        sent: list[MutableMapping[str, Any]] = []
        pieces = [{"type": "http.request", "body": b'{"encr', "more_body": True}]

        async def receive() -> dict[str, Any]:
            if pieces:
                return pieces.pop()
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "query_string": b"", "headers": []}
        with trio.fail_after(_webhook.BODY_WITHIN + 1):
            await hook.asgi(scope, receive, send)
        assert sent[0]["status"] == 408
        assert bridge.stats().other["wecom.refused_requests"] == 1
        good = await call(hook.asgi, "POST", *signed(emu, json.dumps(MESSAGE)))
        assert good[0] == 200


# -- what a failing agent leaves ---------------------------------------------------------------


async def failing(batch: cb.Batch, reply: cb.Reply) -> None:
    raise RuntimeError("the agent broke before answering (test)")


async def test_a_callback_whose_agent_failed_before_answering_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On the long connection a callback left open holds one of the user's three messages in
    flight: a run that raised before answering closes it (an empty finished stream, as the
    earlier callbacks of a batch get), and the user can go on."""
    emu = WeComEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        async with running_bridge(
            quick_bridge(emu.connector(), failing), fail_on_agent_error=False
        ) as bridge:
            for n in range(4):  # a fourth message in flight would be refused (InFlightLimit)
                emu.user_says("ivy", f"try {n}")
                await trio.sleep(5)
                assert emu.in_flight("ivy") == 0
            failures = bridge.stats().failures
        nursery.cancel_scope.cancel()
    assert failures == 4
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "")] * 4


async def stuck(batch: cb.Batch, reply: cb.Reply) -> None:
    await trio.sleep_forever()


async def test_a_callback_whose_run_timed_out_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A run ended by ``run_timeout`` is journaled failed and never runs again: its callback
    is closed as a raised run's is, or it would hold one of the user's three in flight."""
    emu = WeComEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        bridge = quick_bridge(emu.connector(), stuck, run_timeout=30.0)
        async with running_bridge(bridge, fail_on_agent_error=False):
            for n in range(4):  # a fourth message in flight would be refused (InFlightLimit)
                emu.user_says("ivy", f"try {n}")
                await trio.sleep(35)
                assert emu.in_flight("ivy") == 0
            stats = bridge.stats()
        nursery.cancel_scope.cancel()
    assert (stats.timeouts, stats.failures) == (4, 4)
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "")] * 4


async def test_a_callback_answered_before_its_agent_failed_gets_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An agent that answered, then raised: its answer stands (no empty frame after it)."""

    async def answers_then_fails(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("the answer")
        raise RuntimeError("broke after answering (test)")

    emu = WeComEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        async with running_bridge(
            quick_bridge(emu.connector(), answers_then_fails), fail_on_agent_error=False
        ) as bridge:
            emu.user_says("ivy", "hi")
            await trio.sleep(10)
            failures = bridge.stats().failures
        nursery.cancel_scope.cancel()
    assert failures == 1
    assert len(emu.commands("aibot_respond_msg")) == 1
    assert [(s.kind, s.text) for s in emu.sent] == [("stream", "the answer")]


async def test_a_webhook_stream_whose_agent_failed_before_answering_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In webhook mode WeCom would poll a stream nobody fills for six minutes: a run that
    raised before answering finishes it (empty), so the next poll ends it."""
    async with webhook_bridge(time.time, agent=failing) as (emu, hook, bridge):
        sent = await emu.webhook_user_says(hook.asgi, "u", "hi")
    assert (sent.text, sent.frames) == ("", 2)
    assert bridge.stats().failures == 1


async def test_a_webhook_stream_whose_run_timed_out_finishes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A run ended by ``run_timeout`` finishes its stream (empty) as a raised run does:
    WeCom would otherwise poll it for six minutes."""
    bridge_options = {"run_timeout": 30.0}
    async with webhook_bridge(time.time, agent=stuck, bridge_options=bridge_options) as (
        emu,
        hook,
        bridge,
    ):
        sent = await emu.webhook_user_says(hook.asgi, "u", "hi")
    # polled each second: finished once the run timed out (1 s debounce + 30 s), not after
    # the six minutes WeCom polls a stream nobody finishes
    assert sent.text == ""
    assert 30 <= sent.frames <= 33
    assert (bridge.stats().timeouts, bridge.stats().failures) == (1, 1)


async def test_a_webhook_answer_past_the_stream_limit_is_cut_and_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Webhook mode has no proactive message for the rest of a long answer: the stream shows
    its first 20,480 bytes, and the cut is counted and logged, not silent."""
    long_text = "答" * 10_000  # 30,000 bytes of UTF-8

    async def long_answer(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(long_text)

    async def long_stream(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write(long_text[:5000])
            await out.write(long_text[5000:])

    for agent in (long_answer, long_stream):
        async with webhook_bridge(time.time, agent=agent) as (emu, hook, bridge):
            sent = await emu.webhook_user_says(hook.asgi, "u", "hi")
            assert sent.text == long_text[: 20480 // 3]
            assert bridge.stats().other["wecom.replies_cut"] == 1


async def test_a_redelivered_callback_is_closed_and_the_first_keeps_the_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A callback whose msgid was journaled already, on another req_id, was dropped as a
    duplicate and left open: it held one of the user's three messages in flight for WeCom's
    six minutes. It is closed at once (empty) and counted; the first delivery, still being
    answered, gets the answer; the same frame twice closes nothing."""
    answered = trio.Event()

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(20)
        await reply.send("the answer")
        answered.set()

    emu = WeComEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        async with running_bridge(
            quick_bridge(emu.connector(), slow), fail_on_agent_error=False
        ) as bridge:
            first = emu.user_says("ivy", "once", msgid="m1")
            await trio.sleep(5)
            again = emu.user_says("ivy", "once", msgid="m1")  # WeCom delivers it again
            await trio.sleep(5)
            assert emu.in_flight("ivy") == 1  # the redelivery is closed; the first runs
            emu.user_says("ivy", "once more", msgid="m1")
            await answered.wait()
            await trio.sleep(5)
            stats = bridge.stats()
        nursery.cancel_scope.cancel()
    assert emu.in_flight("ivy") == 0
    assert stats.runs == 1 and stats.duplicates == 2
    assert stats.other["wecom.duplicate_callbacks_closed"] == 2
    streams = {s.req_id: s.text for s in emu.sent if s.kind == "stream"}
    assert streams[first] == "the answer" and streams[again] == ""
    assert len(streams) == 3


async def test_the_same_callback_frame_twice_closes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same frame pushed twice (one req_id): the second is a journal duplicate, but its
    req_id is the one the answer goes on, so it is not closed empty."""
    emu = WeComEmulator()
    body: dict[str, Any] = {"msgid": "m1", "aibotid": emu.bot_id, "chattype": "single"}
    body |= {"msgtype": "text", "from": {"userid": "ivy"}, "text": {"content": "hi"}}
    frame_text = json.dumps(
        {"cmd": "aibot_msg_callback", "headers": {"req_id": "r1"}, "body": body}
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        async with running_bridge(quick_bridge(emu.connector(), echo)) as bridge:
            emu.push_raw(frame_text)
            emu.push_raw(frame_text)
            await trio.sleep(10)
            stats = bridge.stats()
        nursery.cancel_scope.cancel()
    assert stats.duplicates == 1 and stats.runs == 1
    assert "wecom.duplicate_callbacks_closed" not in stats.other
    on_r1 = [c.body for c in emu.commands("aibot_respond_msg") if c.req_id == "r1"]
    assert on_r1 and all(b["stream"]["content"] == "hi" for b in on_r1)


@asynccontextmanager
async def started(bridge: cb.Bridge) -> AsyncIterator[cb.Bridge]:
    """``bridge`` running, not waiting for its connector to come up (it may never)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge.run)
        yield bridge
        nursery.cancel_scope.cancel()


async def test_a_subscribe_never_answered_is_given_up_and_retried_under_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server that accepts the upgrade and reads the subscribe, then says nothing: the
    subscribe times out (the ack timeout, 5 s), the connection closes and the connector
    reconnects under the bridge's backoff, never hanging in "starting" nor spinning."""

    async def script(server: Server) -> None:
        await server.peer.accept()
        await server.read_text()
        await trio.sleep_forever()

    async with hostile(script) as servers:
        bridge = quick_bridge(connector(hostile.opener), echo)  # type: ignore[attr-defined]
        async with started(bridge):
            await trio.sleep(600)
            status = bridge.status()[f"wecom:{BOT}"]
    assert 3 <= len(servers) <= 20  # each try: 5 s, the close's bound (60 s here), the backoff
    assert status.restarts == len(servers) - 1 and status.connects == 0
    assert status.last_error is not None and "aibot_subscribe" in status.last_error
    assert "not acknowledged within 5 s" in status.last_error


async def test_a_server_that_closes_right_after_the_subscribe_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Accept, answer the subscribe, close at once (code 1000), forever: the reconnects back
    off (the bridge's Backoff: 1 s doubling to 60 s) instead of looping at full speed."""
    close = bytes([0x88, 2]) + (1000).to_bytes(2, "big")

    async def script(server: Server) -> None:
        await server.subscribed()
        await server.write(close)
        await trio.sleep_forever()

    async with hostile(script) as servers:
        bridge = quick_bridge(connector(hostile.opener), echo, backoff=cb.Backoff(jitter=0.0))  # type: ignore[attr-defined]
        async with started(bridge):
            await trio.sleep(60)
            first_minute = len(servers)
            await trio.sleep(540)
    assert 3 <= first_minute <= 8
    assert len(servers) - first_minute <= 12  # about one a minute once backed off


async def test_a_final_frame_carried_to_a_new_connection_and_acked_twice_is_one_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first connection closes on a streamed reply's final frame, unacknowledged; the
    next connection gets the same final frame (once) and acks it, refuses it and acks it
    again: the reply counts once, the extra answers as stray acks, the agent runs once."""
    runs: list[str] = []
    finals: list[tuple[int, str]] = []

    async def script(server: Server) -> None:
        await server.subscribed()
        if server.n == 0:
            await server.write(text(callback("u", "hi", 0)))

        async def answer(command: dict[str, Any]) -> None:
            req_id = command["headers"]["req_id"]
            stream = command["body"].get("stream", {}) if "body" in command else {}
            if stream.get("finish"):
                finals.append((server.n, stream["content"]))
                if server.n == 0:
                    await server.peer.stream.aclose()  # gone before its ack
                    return
                await server.ack(req_id)
                await server.ack(req_id, errcode=846608)
            await server.ack(req_id)

        await server.answer_commands(answer)

    async with hostile(script) as servers:
        bridge = quick_bridge(connector(hostile.opener), streaming(runs))  # type: ignore[attr-defined]
        async with running_bridge(bridge):
            await trio.sleep(60)
            stats = bridge.stats()
    assert runs == ["hi"] and len(servers) == 2
    assert finals == [(0, "one two three "), (1, "one two three ")]
    assert (stats.replies, stats.failures, stats.reconnects) == (1, 0, 1)
    assert stats.other["wecom.stray_acks"] == 2
    assert stats.other["wecom.requests_across_reconnects"] == 1

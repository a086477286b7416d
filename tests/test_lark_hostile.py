"""A hostile Lark server: events, frames and answers no real one should send, and what a user
keeps when one does (every good message handled once, the bad one counted, the link alive)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from support import echo, emulator_bridge, lark_message_event, streamer
from trio_websocket import CloseReason, ConnectionClosed

import trio_chatbridge as cb
from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark import _frames as lark_frames
from trio_chatbridge.platforms.lark import _protocol as lark_protocol
from trio_chatbridge.testing import HandlerTransport, LarkEmulator, LarkSent

# -- text that is no text ----------------------------------------------------------------------

LONE_SURROGATE = b"\\ud800"  # a JSON escape Python's decoder takes and UTF-8 cannot encode


def _event_frame(envelope: dict[str, Any] | bytes) -> bytes:
    payload = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    frame = lark_frames.Frame(method=1, headers=(("type", "event"),), payload=payload)
    return lark_frames.encode(frame)


def _with_lone_surrogate(where: str) -> bytes:
    """A direct message event whose ``where`` holds a lone surrogate escape."""
    envelope = lark_message_event("hi", mention_bot=False, chat_type="p2p")
    message = envelope["event"]["message"]
    if where == "text":  # in the message's content (JSON in a string)
        message["content"] = json.dumps({"text": "bad PLACEHOLDER"})
    elif where == "post":
        message["message_type"] = "post"
        post = {"title": "t", "content": [[{"tag": "text", "text": "PLACEHOLDER"}]]}
        message["content"] = json.dumps(post)
    elif where == "sender":  # in the event's own JSON
        envelope["event"]["sender"]["sender_id"]["open_id"] = "ou_PLACEHOLDER"
    elif where == "repaired":  # in the event's JSON, read by the repair of a wrong-typed field
        envelope["event"]["sender"]["sender_id"]["open_id"] = "ou_PLACEHOLDER"
        message["chat_type"] = 5
    data = json.dumps(envelope).encode()
    if where in ("text", "post"):  # the escape inside a JSON string in JSON: its \\ escaped
        return data.replace(b"PLACEHOLDER", b"\\" + LONE_SURROGATE)
    return data.replace(b"PLACEHOLDER", LONE_SURROGATE)


@pytest.mark.parametrize("where", ["text", "post", "sender", "repaired"])
def test_a_message_with_a_lone_surrogate_escape_is_malformed_and_acked(where: str) -> None:
    """Python's JSON decoder reads ``\\ud800`` into a string no store can write (UTF-8 has no
    lone surrogates): such a message went to the inbox and failed the journal's write, with
    every good message of its burst, and ended the connection, at each of its pushes. It is
    a bad event now: counted, ACKed (a push again brings the same bytes), never put."""
    protocol = lark_protocol.LarkProtocol("cli_1", "ou_bot")
    (event,) = protocol.receive(_event_frame(_with_lone_surrogate(where)), 0.0)
    assert isinstance(event, lark_protocol.Malformed)
    assert isinstance(event.error, cb.ProtocolError)
    assert "surrogate" in str(event.error)
    assert event.ack is not None


@pytest.mark.parametrize("repaired", [False, True])
def test_an_escaped_pair_of_surrogates_is_one_character(repaired: bool) -> None:
    """A valid escaped pair (an emoji, as an ASCII-only encoder writes it) is text, also in
    an event read by the repair of a wrong-typed field."""
    envelope = lark_message_event("x", mention_bot=False, chat_type="p2p")
    envelope["event"]["message"]["content"] = '{"text": "smile \\ud83d\\ude00"}'
    envelope["event"]["sender"]["sender_id"]["union_id"] = "on_\U0001f600"
    if repaired:
        envelope["event"]["message"]["chat_type"] = 5
    protocol = lark_protocol.LarkProtocol("cli_1", "ou_bot")
    (event,) = protocol.receive(_event_frame(envelope), 0.0)
    assert isinstance(event, lark_protocol.MessageReceived)
    assert event.message.text == "smile \U0001f600"


async def test_a_lone_surrogate_spoils_no_good_message_and_keeps_the_link(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    emu = LarkEmulator()
    store = cb.SQLiteStore(str(tmp_path / "journal.db"))
    connector = lambda: emu.connector(random=lambda: 0.0)  # noqa: E731
    async with emulator_bridge(emu, connector, agent, store=store) as bridge:
        await trio.sleep(1)
        bad = json.loads(_with_lone_surrogate("text"))
        bad["event"]["message"]["message_id"] = "om_bad"
        emu.push_event(bad)  # pushed again until ACKed, as the platform does
        emu.user_says("ou_ann", "good")
        await trio.sleep(30)
        stats = bridge.stats()
    assert handled == ["good"]
    assert (stats.protocol_errors, stats.reconnects) == (1, 0)  # ACKed: never pushed again
    assert emu.acks == [200, 200]


# -- endpoint discovery --------------------------------------------------------------------------

TICKET = "ticket=SEKRIT"


def _discovered(url: str) -> dict[str, Any]:
    return {"code": 0, "data": {"URL": url, "ClientConfig": {"PingInterval": 10}}}


@pytest.mark.parametrize(
    "url",
    [
        f"https://msg-frontier.example/ws/v2?{TICKET}",  # not a WebSocket's
        f"msg-frontier.example/ws/v2?{TICKET}",  # no scheme
        f"wss:///ws/v2?{TICKET}",  # no host
        f"wss://msg-frontier.example:99999/ws/v2?{TICKET}",  # no such port
        f"wss://[::1/ws/v2?{TICKET}",  # not a URL
        f"ws://user:SEKRIT@msg-frontier.example/ws/v2?{TICKET}",  # plain text from https
    ],
)
def test_a_discovered_url_that_is_no_websocket_is_a_retried_error_without_its_ticket(
    url: str,
) -> None:
    """The URL is checked where it is read: a bad one was a ValueError of the WebSocket client
    (``Port out of range``, ``Invalid IPv6 URL``) that named no app, or, for ``ws://`` from an
    ``https`` API, a connection that sent the ticket in plain text."""
    with pytest.raises(cb.ConnectorError) as refused:
        lark_protocol.read_endpoint("cli_1", 200, _discovered(url), secure=True)
    assert type(refused.value) is cb.ConnectorError  # retried: the next answer may be good
    text = str(refused.value)
    assert "cli_1" in text and "endpoint discovery" in text
    assert "SEKRIT" not in text


def test_a_plain_websocket_is_taken_from_a_plain_api() -> None:
    url = f"ws://127.0.0.1:8080/ws?{TICKET}"
    assert lark_protocol.read_endpoint("cli_1", 200, _discovered(url))[0] == url
    secure = f"wss://msg-frontier.example/ws/v2?{TICKET}"
    assert lark_protocol.read_endpoint("cli_1", 200, _discovered(secure), secure=True)[0] == secure


async def test_a_bad_discovered_url_is_reported_and_the_next_one_taken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    emu = LarkEmulator()
    emu.fail("/callback/ws/endpoint", 200, _discovered(f"https://elsewhere.example/?{TICKET}"))
    connector = lambda: emu.connector(random=lambda: 0.0)  # noqa: E731
    async with emulator_bridge(emu, connector, agent) as bridge:
        await trio.sleep(5)
        status = bridge.status()["lark:cli_emulator"]
        emu.user_says("ou_ann", "after a bad URL")
        await trio.sleep(5)
    assert status.state == "running" and status.restarts == 1
    assert status.last_error is not None and "not a WebSocket" in status.last_error
    assert "SEKRIT" not in status.last_error
    assert handled == ["after a bad URL"]


@pytest.mark.parametrize(
    "answer", [{}, {"error": "gateway timeout"}, {"code": None}, {"code": "0"}, {"code": 1.5}]
)
def test_a_discovery_answer_without_a_numeric_code_is_retried_not_fatal(
    answer: dict[str, Any],
) -> None:
    """Only the platform's refusal (a numeric code) stops the connector for good: an answer
    without one (a proxy's JSON, say) stopped it as "refused (code=None)...: check the app id
    and secret"."""
    with pytest.raises(cb.ConnectorError) as failed:
        lark_protocol.read_endpoint("cli_1", 200, answer)
    assert type(failed.value) is cb.ConnectorError
    assert "cli_1" in str(failed.value) and "no code" in str(failed.value)


async def test_a_connector_outlives_a_discovery_answer_without_a_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    emu.fail("/callback/ws/endpoint", 200, {"error": "upstream timeout"})
    connector = lambda: emu.connector(random=lambda: 0.0)  # noqa: E731
    with trio.fail_after(120):
        async with emulator_bridge(emu, connector, echo) as bridge:
            emu.user_says("ou_ann", "still there")
            assert (await emu.next_sent()).text == "still there"
            assert bridge.status()["lark:cli_emulator"].restarts == 1


# -- replies whose answer is lost ----------------------------------------------------------------


def _answer_lost_after_the_first(emu: LarkEmulator, path_part: str) -> HandlerTransport:
    """The emulator, except that the first call to ``path_part`` is done but its answer lost:
    a gateway's 502 after the platform sent the message."""
    lost = [True]

    async def handler(request: httpx.Request) -> httpx.Response:
        response = await emu.handle_http(request)
        if path_part in request.url.path and lost and response.status_code == 200:
            lost.clear()
            return httpx.Response(502, content=b"bad gateway")
        return response

    return HandlerTransport(handler)


async def _streamed_with_its_first_answer_lost(
    text: str, pause: float, **options: Any
) -> tuple[LarkEmulator, LarkSent]:
    """The emulator and the one message after ``streamer(pause)`` streamed ``text`` back
    through a connector (with ``options``) whose first reply was done but its answer lost."""
    emu = LarkEmulator()
    transport = _answer_lost_after_the_first(emu, "/reply")
    connector = lambda: emu.connector(random=lambda: 0.0, transport=transport, **options)  # noqa: E731
    async with emulator_bridge(emu, connector, streamer(pause)):
        emu.user_says("ou_ann", text)
        await trio.sleep(20)
    (sent,) = emu.sent
    assert sent.kind == "reply"
    return emu, sent


async def test_a_streamed_reply_whose_first_answer_was_lost_is_still_one_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A streamed reply is sent at the first update, then edited. When that send was done but
    its answer lost, the next update sent the message again: the user saw two. Each send of
    the stream's message carries the same ``uuid``, which the platform sends once an hour."""
    emu, sent = await _streamed_with_its_first_answer_lost("one two three four five six", 0.6)
    assert emu.texts[sent.message_id] == "one two three four five six "


async def test_a_streamed_reply_whose_only_send_answer_was_lost_ends_with_the_full_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first update's send was done (the message shows its text) but its answer lost; the
    agent finished before the next update, so the final text went by a send with the same
    ``uuid``, which the platform answers with the first message: the stream took that for
    the full text and stopped, and the user saw the first words for good. A send that
    follows a failed try now edits the message to its text."""
    emu, sent = await _streamed_with_its_first_answer_lost("one two three", 0.2)
    assert sent.text == "one "  # the first update's text, as the platform made it
    assert emu.texts[sent.message_id] == "one two three "
    assert emu.edits[sent.message_id] == 1


async def test_a_lost_send_answer_spends_no_edit_the_budget_keeps_for_the_final_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With one edit allowed, the edit a repeated send may need is the final one: the updates
    after it show nothing, the final edit shows the whole text, and no second edit is tried."""
    budget = lark.EditBudget(interval=1.0, max_edits=1)
    text = "one two three four five six"
    emu, sent = await _streamed_with_its_first_answer_lost(text, 0.6, edit_budget=budget)
    assert emu.texts[sent.message_id] == text + " "
    assert emu.edits[sent.message_id] == 1


async def test_a_send_answer_that_does_not_say_what_the_message_holds_is_edited_to_its_text(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream takes its message to hold what it sent only when the send's answer says so
    (its ``body.content``): an answer without it may be of a message an earlier try made, so
    the stream edits the message to its text rather than leave it unknown."""
    emu = LarkEmulator()

    async def handler(request: httpx.Request) -> httpx.Response:
        response = await emu.handle_http(request)
        if "/reply" in request.url.path and response.status_code == 200:
            answer = json.loads(response.content)
            answer["data"].pop("body")
            return httpx.Response(200, json=answer)
        return response

    transport = HandlerTransport(handler)
    connector = lambda: emu.connector(random=lambda: 0.0, transport=transport)  # noqa: E731
    async with emulator_bridge(emu, connector, streamer(0.2)):
        emu.user_says("ou_ann", "one")
        await trio.sleep(20)
    (sent,) = emu.sent
    assert emu.texts[sent.message_id] == "one "
    assert emu.edits[sent.message_id] == 1  # the text it sent, shown for sure


async def test_sends_with_one_uuid_are_one_message_and_each_uuid_its_own() -> None:
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        api = emu.connector().api  # the emulator's, in memory
        asked = emu.user_says("ou_ann", "hi")
        path = f"/open-apis/im/v1/messages/{asked}/reply"
        text = json.dumps({"text": "once"})
        first = await api.call("POST", path, {"msg_type": "text", "content": text, "uuid": "u1"})
        again = await api.call("POST", path, {"msg_type": "text", "content": text, "uuid": "u1"})
        other = await api.call("POST", path, {"msg_type": "text", "content": text, "uuid": "u2"})
        await api.aclose()
        nursery.cancel_scope.cancel()
    assert first["message_id"] == again["message_id"] != other["message_id"]
    assert len(emu.sent) == 2


# -- secrets -----------------------------------------------------------------------------------


def test_fragments_waiting_show_no_payload_in_a_repr() -> None:
    """A fragment's payload is part of an event: the user's text and the app's verification
    token. The protocol's repr showed every waiting fragment's bytes (an ACK's never did)."""
    protocol = lark_protocol.LarkProtocol("cli_1", "ou_bot")
    headers = (("type", "event"), ("message_id", "m1"), ("sum", "2"), ("seq", "0"))
    part = b'{"header": {"token": "VERIFY-SEKRIT"}, "event": {"text": "private"'
    frame = lark_frames.Frame(method=1, headers=headers, payload=part)
    assert protocol.receive(lark_frames.encode(frame), 0.0) == []
    for shown in (repr(protocol), repr(lark_protocol.LarkCore(protocol, 30.0))):
        assert "SEKRIT" not in shown and "private" not in shown
        assert "1 missing" in shown or "missing=1" in shown


@pytest.mark.parametrize(
    ("query", "service"),
    [("service_id=2147483647", 2**31 - 1), ("service_id=-2147483648", -(2**31))]
    + [(f"service_id={value}", 0) for value in ("2147483648", "99999999999", "-2147483649")],
)
def test_a_service_id_beyond_int32_is_none_and_pings_still_go(query: str, service: int) -> None:
    """Every frame carries the URL's ``service_id`` in an int32 field: one beyond that range
    made every ping fail to encode (a ``ValueError`` naming no app, at each connection, for
    good). Like one that is no number, it is taken as none (0)."""
    protocol = lark_protocol.LarkProtocol("cli_1")
    protocol.connect(f"wss://msg-frontier.example/ws/v2?{query}", lark_protocol.ClientConfig())
    assert protocol.service == service
    assert lark_frames.decode(protocol.ping()).service == service


# -- open API answers of the wrong shape -----------------------------------------------------------


async def _reply_failure(status: int, answer: dict[str, Any]) -> BaseException:
    """What ``reply.send`` raised when the platform answered the reply so."""
    failures: list[BaseException] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send("hello")
        except Exception as exc:
            failures.append(exc)

    emu = LarkEmulator()
    connector = lambda: emu.connector(random=lambda: 0.0)  # noqa: E731
    async with emulator_bridge(emu, connector, agent):
        emu.fail("/reply", status, answer)
        emu.user_says("ou_ann", "hi")
        await trio.sleep(10)
    (failure,) = failures
    return failure


@pytest.mark.parametrize("data", [[1], "om_1", 5])
async def test_an_answer_whose_data_is_no_object_fails_the_send_as_a_send_error(
    data: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """A ``data`` that is no object was an ``AttributeError`` out of ``reply.send`` (and, in
    a streamed reply, out of the stream, which lets only the library's errors by)."""
    failure = await _reply_failure(200, {"code": 0, "msg": "ok", "data": data})
    assert isinstance(failure, cb.SendError), failure
    assert "cli_emulator" in str(failure) and "not an object" in str(failure)


@pytest.mark.parametrize("data", [{}, {"message_id": ""}, {"message_id": 5}])
async def test_a_reply_answered_without_a_message_id_fails_as_a_send_error(
    data: dict[str, Any], autojump_clock: trio.testing.MockClock
) -> None:
    """An answer of success without the new message's id gave a ``Sent`` whose id was ``""``
    (or ``"5"``): an edit of it failed later with a misleading error. It is a bad answer."""
    failure = await _reply_failure(200, {"code": 0, "msg": "ok", "data": data})
    assert isinstance(failure, cb.SendError), failure
    assert isinstance(failure.__cause__, cb.ProtocolError)
    assert "cli_emulator" in str(failure) and "message_id" in str(failure)


async def test_a_refusal_quotes_200_characters_of_the_servers_msg_and_keeps_it_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A refusal's text quoted the server's ``msg`` whole: a hostile server's megabyte went
    into every log line and the connector's status. It is cut to 200 characters (saying so);
    ``LarkError.msg`` keeps it whole."""
    said = "no" + "x" * 1_000_000
    failure = await _reply_failure(400, {"code": 230001, "msg": said})
    assert isinstance(failure, cb.SendError), failure
    refusal = failure.__cause__
    assert isinstance(refusal, lark.LarkError) and refusal.code == 230001
    assert refusal.msg == said
    for text in (str(failure), str(refusal)):
        assert "cli_emulator" in text and "'no" + "x" * 198 + "'" in text
        assert "x" * 199 not in text and len(text) < 500 and "1000002" in text


def test_refusals_of_the_long_connection_quote_200_characters_of_what_the_server_said() -> None:
    """Endpoint discovery's refusal quoted its ``msg`` whole, a refused upgrade its
    ``handshake-msg`` header whole."""
    said = "y" * 100_000
    refusals = [
        lark_protocol.handshake_error("cli_1", 403, {"handshake-msg": said}),
        lark_protocol.handshake_error("cli_1", 500, {"handshake-msg": said}),
    ]
    with pytest.raises(cb.FatalConnectorError) as refused:
        lark_protocol.read_endpoint("cli_1", 200, {"code": 10003, "msg": said})
    for error in [*refusals, refused.value]:
        assert "cli_1" in str(error) and "y" * 200 in str(error)
        assert "y" * 201 not in str(error) and "100000" in str(error)


async def test_an_answer_without_data_is_an_empty_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        api = emu.connector().api
        for answer in ({"code": 0, "msg": "ok"}, {"code": 0, "msg": "ok", "data": None}):
            emu.fail("/open-apis/bot/v3/info", 200, answer)
            assert await api.call("GET", "/open-apis/bot/v3/info") == {}
        await api.aclose()
        nursery.cancel_scope.cancel()


async def test_an_edit_whose_answer_was_lost_still_counts_and_the_final_text_shows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Lark refuses a message's 21st edit, and the stream keeps its last edit for the final
    text. An edit done but whose answer was lost went uncounted: the final edit was then the
    21st, refused, and the message ended short of what the agent wrote."""
    emu = LarkEmulator()
    transport = _answer_lost_after_the_first(emu, "/open-apis/im/v1/messages/om_bot")
    connector = lambda: emu.connector(random=lambda: 0.0, transport=transport)  # noqa: E731
    words = [f"w{n}" for n in range(40)]
    async with emulator_bridge(emu, connector, streamer(1.2)):
        emu.user_says("ou_ann", " ".join(words))
        await trio.sleep(120)
    (sent,) = emu.sent
    assert emu.texts[sent.message_id] == " ".join(words) + " "
    assert emu.edits[sent.message_id] <= 20


# -- a connection closed with 1009 (message too big) ------------------------------------------


async def test_an_oversized_frame_from_the_server_is_a_protocol_error_with_what_to_do(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A message over the WebSocket's limit (16 MiB) closes the connection with 1009 (the
    client's own close): it was counted as a plain reconnect, a server that keeps sending
    it invisible in the stats. It is a protocol error now, logged with its cause and what
    to do; the next connection carries on."""
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    emu = LarkEmulator()
    connector = lambda: emu.connector(random=lambda: 0.0)  # noqa: E731
    async with emulator_bridge(emu, connector, agent) as bridge:
        await trio.sleep(1)
        emu.push_raw(b"\0" * (lark_frames.MAX_MESSAGE_BYTES + 1))
        await trio.sleep(5)
        emu.user_says("ou_ann", "after the big frame")
        await trio.sleep(5)
        stats = bridge.stats()
    assert handled == ["after the big frame"]
    assert stats.protocol_errors == 1
    assert stats.other["lark.frames_too_big"] == 1
    (record,) = [r for r in caplog.records if r.name == "trio_chatbridge.lark"]
    assert "cli_emulator" in record.getMessage()
    assert "report" in record.getMessage()  # what to do


async def test_an_event_frame_over_the_cap_is_acked_and_dropped_and_the_link_kept(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An event frame over 4 MiB closed the link with 1009, unACKed: Lark pushed it again on
    the next connection, which closed again, and the messages pushed meanwhile waited for
    the reconnect schedule (120 s a time). It is read, ACKed (so it is not pushed again),
    dropped, counted and logged; the link stays up and the messages around it are handled."""
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    emu = LarkEmulator()
    big = lark_message_event("x" * lark_frames.MAX_FRAME_BYTES, mention_bot=False)
    connector = lambda: emu.connector(random=lambda: 0.0)  # noqa: E731
    async with emulator_bridge(emu, connector, agent) as bridge:
        await trio.sleep(1)
        emu.user_says("ou_ann", "before")
        emu.push_event(big)
        emu.user_says("ou_ann", "after")
        await trio.sleep(10)
        stats = bridge.stats()
    assert sorted(handled) == ["after", "before"]
    assert emu.connections == 1 and emu.acks == [200] * 3
    assert stats.other["lark.frames_too_big"] == 1 and stats.protocol_errors == 1
    (record,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "4194304" in record.getMessage() and "report" in record.getMessage()


class _ClosedTooBig:
    """A socket whose server closes it with 1009 at once: it refused a frame of ours."""

    async def get_message(self) -> bytes:
        await trio.lowlevel.checkpoint()
        raise ConnectionClosed(CloseReason(1009, "frame too large"))

    async def send_message(self, message: bytes | str) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_server_closing_with_1009_is_a_protocol_error_each_time(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    closes = 0

    @asynccontextmanager
    async def refusing(url: str) -> AsyncIterator[_ClosedTooBig]:
        nonlocal closes
        closes += 1
        yield _ClosedTooBig()

    emu = LarkEmulator()
    connector = lambda: emu.connector(random=lambda: 0.0, open_websocket=refusing)  # noqa: E731
    async with emulator_bridge(emu, connector, echo) as bridge:
        await trio.sleep(30)
        stats = bridge.stats()
        status = bridge.status()["lark:cli_emulator"]
    assert closes >= 2 and stats.protocol_errors == closes
    assert stats.other["lark.frames_too_big"] == closes
    assert status.last_error is not None and "1009" in status.last_error
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_chatbridge.lark"]
    assert len(messages) == closes and "frame too large" in messages[0]


# -- an upload answered without its key ------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "path", "key"),
    [("chart.png", "/im/v1/images", "image_key"), ("notes.txt", "/im/v1/files", "file_key")],
)
async def test_an_upload_answered_without_its_key_is_a_bad_answer_not_a_refusal(
    autojump_clock: trio.testing.MockClock, filename: str, path: str, key: str
) -> None:
    """Success without the key was ``LarkError(code=-1)``, a refusal with a made-up code: it
    is a bad answer (a :class:`ProtocolError`), still a ``LarkError`` (what callers catch),
    and without a code, since the platform gave none."""
    failures: list[BaseException] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send(cb.Attachment(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, filename))
        except cb.SendError as exc:
            failures.append(exc)
        await reply.send("after the failed upload")

    emu = LarkEmulator()
    emu.fail(path, 200, {"code": 0, "msg": "success", "data": {"elsewhere": "k"}})
    async with emulator_bridge(emu, emu.connector, agent):
        emu.user_says("ou_ann", "send me the file")
        assert (await emu.next_sent()).text == "after the failed upload"
    (failure,) = failures
    cause = failure.__cause__
    assert isinstance(cause, lark.LarkAnswerError)
    assert isinstance(cause, lark.LarkError) and isinstance(cause, cb.ProtocolError)
    assert cause.code is None
    assert key in str(cause) and "cli_emulator" in str(cause) and key in str(failure)


# -- attachments the platform cannot take ------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "size", "said"),
    [
        ("photo.png", 10 * 1024 * 1024 + 1, "10 MiB"),
        ("report.pdf", 30 * 1024 * 1024 + 1, "30 MiB"),
        ("clip.mp4", 30 * 1024 * 1024 + 1, "30 MiB"),
        ("empty.txt", 0, "empty"),
        ("empty.png", 0, "empty"),
    ],
)
async def test_an_attachment_over_larks_limits_is_refused_before_any_upload(
    autojump_clock: trio.testing.MockClock, filename: str, size: int, said: str
) -> None:
    """Lark takes images up to 10 MB and files up to 30 MB, none empty: such an upload went
    out whole (tens of megabytes, into the 10 s call limit) for a refusal or a timeout that
    said nothing of the size. It is refused before anything is sent, saying why."""
    failures: list[cb.SendError] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send(cb.Attachment(b"\0" * size, filename))
        except cb.SendError as exc:
            failures.append(exc)
        await reply.send("after the refused file")

    emu = LarkEmulator()
    async with emulator_bridge(emu, emu.connector, agent):
        emu.user_says("ou_ann", "send me the file")
        with trio.fail_after(5):  # no 10 s call that times out first
            assert (await emu.next_sent()).text == "after the refused file"
    (failure,) = failures
    assert said in str(failure) and filename in str(failure) and "cli_emulator" in str(failure)
    assert [a for a in emu.activity if a.kind == "upload"] == []


@pytest.mark.parametrize(("filename", "size"), [("photo.png", 10 * 1024 * 1024), ("a.pdf", 1)])
async def test_an_attachment_at_larks_limits_is_uploaded(
    autojump_clock: trio.testing.MockClock, filename: str, size: int
) -> None:
    emu = LarkEmulator()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(cb.Attachment(b"\1" * size, filename))

    async with emulator_bridge(emu, emu.connector, agent):
        emu.user_says("ou_ann", "send me the file")
        sent = await emu.next_sent()
    key = str(sent.content.get("image_key") or sent.content.get("file_key"))
    assert emu.media[key][0].size == size


# -- the tenant token ---------------------------------------------------------------------------


async def _api_on(emu: LarkEmulator, nursery: trio.Nursery) -> lark.OpenAPI:
    """An open API on ``emu`` whose n-th message call is answered n x 10 ms late (a burst's
    answers come back one after another, not at once)."""
    await nursery.start(emu.run)
    calls = 0

    async def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if "/im/v1/messages" in request.url.path:
            calls += 1
            await trio.sleep(0.01 * calls)
        return await emu.handle_http(request)

    transport = HandlerTransport(handle)
    return lark.OpenAPI(emu.app_id, emu.app_secret, domain=emu.http_base, transport=transport)


async def _send(api: lark.OpenAPI, text: str) -> None:
    body = {"receive_id": "oc_team", "msg_type": "text", "content": json.dumps({"text": text})}
    await api.call("POST", "/open-apis/im/v1/messages?receive_id_type=chat_id", body)


async def _bad_answer_then_a_good_one(path: str, answer: dict[str, Any]) -> lark.LarkAnswerError:
    """The error of a send whose call to ``path`` is answered ``answer``; the next send is
    checked to go through (nothing of the bad answer is kept)."""
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        api = await _api_on(emu, nursery)
        emu.fail(path, 200, answer)
        with pytest.raises(lark.LarkAnswerError) as bad:
            await _send(api, "first")
        await _send(api, "second")
        await api.aclose()
        nursery.cancel_scope.cancel()
    assert [s.text for s in emu.sent] == ["second"]
    return bad.value


async def test_a_token_expiring_under_a_burst_is_fetched_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every call of a burst told "token expired" dropped the token and fetched its own: the
    first fetched a new one, the next dropped that new one, and so on (16 calls, 16 fetches).
    A call drops only the token it was refused with."""
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        api = await _api_on(emu, nursery)
        await _send(api, "warming up")
        emu.expire_token()
        async with trio.open_nursery() as burst:
            for n in range(16):
                burst.start_soon(_send, api, f"burst {n}")
        await api.aclose()
        nursery.cancel_scope.cancel()
    assert emu.token_fetches == 2
    assert sorted(s.text for s in emu.sent) == sorted(
        ["warming up"] + [f"burst {n}" for n in range(16)]
    )


@pytest.mark.parametrize(
    ("code", "renewed"),
    [
        (99991663, True),  # tenant access token invalid
        (99991664, True),  # app access token invalid
        (99991671, True),  # access token invalid (format): the official SDKs renew on it
        (99991661, False),  # no token in the request: a bug of ours, not an expiry
        (99991668, False),  # a user access token invalid: never ours
    ],
)
async def test_the_token_invalid_codes_renew_the_token_once_and_retry(
    autojump_clock: trio.testing.MockClock, code: int, renewed: bool
) -> None:
    """A send refused with a code that means "token invalid or expired" fetches a new token
    and goes through (99991671 failed the send: the token was never renewed, every call
    failed until it expired); any other code is the refusal it says, nothing fetched."""
    emu = LarkEmulator()
    async with trio.open_nursery() as nursery:
        api = await _api_on(emu, nursery)
        await _send(api, "warming up")
        emu.fail_next("/open-apis/im/v1/messages", code)
        if renewed:
            await _send(api, "after")
        else:
            with pytest.raises(lark.LarkError) as refused:
                await _send(api, "after")
            assert refused.value.code == code
        await api.aclose()
        nursery.cancel_scope.cancel()
    assert emu.token_fetches == (2 if renewed else 1)
    assert [s.text for s in emu.sent] == ["warming up"] + (["after"] if renewed else [])


@pytest.mark.parametrize(
    "answer",
    [
        {"code": 0, "msg": "ok", "expire": 7200},
        {"code": 0, "msg": "ok", "tenant_access_token": "", "expire": 7200},
        {"code": 0, "msg": "ok", "tenant_access_token": 7, "expire": 7200},
    ],
)
async def test_a_token_answer_without_a_token_is_a_bad_answer(
    autojump_clock: trio.testing.MockClock, answer: dict[str, Any]
) -> None:
    """Success without a token was ``LarkError(code=0)`` ("failed: code=0 msg='ok'"), or,
    for an empty one, calls sent with ``Bearer `` and refused; it is a bad answer, and the
    next call fetches again."""
    bad = await _bad_answer_then_a_good_one("tenant_access_token", answer)
    assert bad.code is None and "tenant_access_token" in str(bad)


# -- settings no connection can run with ------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        {"card_answer_within": -1.0},
        {"card_answer_within": float("nan")},
        {"card_answer_within": float("inf")},
        {"ping_grace": -5.0},
        {"ping_grace": float("nan")},
        {"stream_interval": -1.0},
        {"stream_interval": float("nan")},
    ],
)
def test_a_setting_no_connection_can_run_with_is_refused_when_built(
    option: dict[str, Any],
) -> None:
    """``card_answer_within=-1`` was taken, then raised ValueError in the handler of every
    card action, which ended the connection each time (and the action, un-ACKed, came back
    to do it again); a NaN grace raised in the watchdog's rearm, ending every connection.
    Refused when built."""
    (name,) = option
    with pytest.raises(cb.ConfigurationError, match=name):
        lark.LongConnection(app_id="cli_1", app_secret="s", **option)


def test_the_settings_edges_are_taken() -> None:
    connector = lark.LongConnection(
        app_id="cli_1", app_secret="s", card_answer_within=0.0, ping_grace=0.0, stream_interval=0.0
    )
    assert connector.card_answer_within == connector.ping_grace == 0.0


# -- card actions no real client sends --------------------------------------------------------


def _card_action(event_id: str, event: Any) -> dict[str, Any]:
    header = {"event_id": event_id, "event_type": "card.action.trigger"}
    return {"schema": "2.0", "header": header, "event": event}


async def test_hostile_card_actions_beside_messages_lose_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Card actions with no token, a huge value, wrong types, for a message the bot never
    sent, nested past the reader's depth, a handler that raises on some and overruns the
    platform's 3 s on others: each is ACKed in time (plain when there is no answer), the
    failures counted, and the messages between them each handled once."""
    handled: list[str] = []
    seen: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    async def on_card_action(envelope: Any) -> lark.CardAnswer | None:
        event_id = envelope["header"]["event_id"]
        seen.append(event_id)
        action = envelope["event"]["action"]  # raises on the wrong types
        if event_id == "ev-slow":
            await trio.sleep(60)
        return lark.CardAnswer(f"ok {len(str(action.get('value')))}")

    good = {"operator": {"open_id": "ou_ann"}, "action": {"value": {"ok": 1}}}
    actions = [
        _card_action("ev-good", good),
        _card_action("ev-no-token", {"action": {"value": {}}, "open_message_id": "om_never"}),
        _card_action("ev-huge", {"action": {"value": {"v": "x" * 1_000_000}}}),
        _card_action("ev-list", []),
        _card_action("ev-str-action", {"action": "press"}),
        _card_action("ev-slow", good),
    ]
    deep = b'{"schema":"2.0","header":{"event_id":"ev-deep","event_type":"card.action.trigger"},'
    deep += b'"event":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    emu = LarkEmulator()
    connector = lambda: emu.connector(random=lambda: 0.0, on_card_action=on_card_action)  # noqa: E731
    async with emulator_bridge(emu, connector, agent) as bridge:
        await trio.sleep(1)
        for n, action in enumerate(actions):
            emu.push_event(action)
            emu.user_says("ou_bob", f"message {n}")
        emu.push_raw(_event_frame(deep))
        emu.user_says("ou_bob", "last")
        await trio.sleep(10)
        stats = bridge.stats()
    assert sorted(handled) == sorted([f"message {n}" for n in range(6)] + ["last"])
    assert sorted(seen) == sorted(a["header"]["event_id"] for a in actions)
    assert stats.other["lark.card_answer_failures"] == 2  # the list and the string
    assert stats.other["lark.card_answers_late"] == 1
    assert stats.protocol_errors == 1  # the one nested too deeply
    assert len(emu.acks) == 7 + 7 and set(emu.acks) == {200}
    toasts = [a.detail["toast"]["content"] for a in emu.activity if a.kind == "card_answer"]
    assert sorted(toasts) == ["ok 1000009", "ok 2", "ok 9"]


async def test_a_failing_token_fetch_fails_the_calls_that_waited_for_it_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A burst of calls finding no token waits for one fetch; when that fetch failed (no
    answer in 10 s), each waiting call made its own after it, in turn: the 16th call of a
    burst failed after 160 s. The calls that waited for a fetch share its failure (each an
    error of its own, caused by the fetch's); the next call fetches again."""
    emu = LarkEmulator()
    token_down = True

    async def handle(request: httpx.Request) -> httpx.Response:
        if token_down and request.url.path.endswith("/tenant_access_token/internal"):
            await trio.sleep(3600)  # no answer: the call's 10 s run out
        return await emu.handle_http(request)

    failed_at: list[float] = []
    errors: list[BaseException] = []

    async def send(n: int) -> None:
        with pytest.raises(cb.ConnectorError, match="no answer") as failed:
            await _send(api, f"burst {n}")
        failed_at.append(trio.current_time())
        errors.append(failed.value)

    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        transport = HandlerTransport(handle)
        api = lark.OpenAPI(emu.app_id, emu.app_secret, domain=emu.http_base, transport=transport)
        start = trio.current_time()
        async with trio.open_nursery() as burst:
            for n in range(16):
                burst.start_soon(send, n)
        token_down = False
        await _send(api, "after")
        await api.aclose()
        nursery.cancel_scope.cancel()
    assert len(failed_at) == 16 and max(failed_at) - start < 11
    assert [s.text for s in emu.sent] == ["after"] and emu.token_fetches == 1
    # each waiting call raised an error of its own (one object raised in 15 tasks grew one
    # traceback), of the fetch's class and message, caused by the fetch's
    fetched = [e for e in errors if e.__cause__ is None or e.__cause__ not in errors]
    assert len(fetched) == 1 and len({id(e) for e in errors}) == 16
    waited = [e for e in errors if e is not fetched[0]]
    assert all(e.__cause__ is fetched[0] and str(e) == str(fetched[0]) for e in waited)
    assert {type(e) for e in errors} == {type(fetched[0])}


@pytest.mark.parametrize(
    ("expire", "kept"),
    [(0, 60.0), (-100, 60.0), (30, 60.0), (1e308, 7140.0), ("7200", 7140.0), (None, 7140.0)],
)
async def test_a_token_answers_expire_is_held_to_a_minute_to_two_hours(
    autojump_clock: trio.testing.MockClock, expire: Any, kept: float
) -> None:
    """An ``expire`` of 0 or less is not a token fetched before every call, nor a huge one a
    token trusted past the platform's two hours: the token is kept for ``kept`` seconds."""
    emu = LarkEmulator()
    answer = {"code": 0, "msg": "ok", "tenant_access_token": "t-given", "expire": expire}
    async with trio.open_nursery() as nursery:
        await nursery.start(emu.run)
        transport = HandlerTransport(emu.handle_http)
        api = lark.OpenAPI(emu.app_id, emu.app_secret, domain=emu.http_base, transport=transport)
        emu.fail("tenant_access_token", 200, answer)
        start = trio.current_time()
        assert await api.token() == "t-given"
        await trio.sleep_until(start + kept - 0.5)
        assert await api.token() == "t-given"
        await trio.sleep_until(start + kept + 0.5)
        assert await api.token() != "t-given"  # the emulator's own, fetched anew
        await api.aclose()
        nursery.cancel_scope.cancel()
    assert emu.token_fetches == 1  # the first answer was the fault, not counted


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/im/v1/messages", {"error": "upstream timeout"}),
        ("/im/v1/messages", {"code": "0", "data": {"message_id": "om_1"}}),
        ("/im/v1/messages", {"code": True, "msg": "ok"}),
        ("tenant_access_token", {"error": "upstream timeout"}),
        ("tenant_access_token", {"code": None, "tenant_access_token": "t-1"}),
    ],
)
async def test_an_answer_without_a_numeric_code_is_a_bad_answer_not_a_refusal(
    autojump_clock: trio.testing.MockClock, path: str, answer: dict[str, Any]
) -> None:
    """A JSON answer without Lark's numeric ``code`` (a proxy's, say) was a refusal with the
    made-up ``code=-1``; it is a bad answer, as an upload without its key is."""
    bad = await _bad_answer_then_a_good_one(path, answer)
    assert bad.code is None and "numeric code" in str(bad)


# -- events of other shapes between good messages ------------------------------------------


SCHEMA_1 = {  # the older envelope: no header, the type inside "event", a token at the top
    "uuid": "u-1",
    "token": "verification-token",
    "ts": "1700000000.0",
    "type": "event_callback",
    "event": {"type": "message", "chat_type": "private", "text": "old shape"},
}
UNKNOWN = {
    "schema": "2.0",
    "header": {"event_id": "ev-unknown", "event_type": "some.future.event_v9"},
    "event": {"anything": [1, {"deep": None}]},
}


async def test_schema_1_and_unknown_events_between_messages_reach_on_event_not_the_agent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A probe (found nothing to fix): an old-schema event and an event type nobody knows,
    pushed between two good messages, are ACKed once, counted, handed to ``on_event``
    whole, and never become messages; both messages are handled once."""
    handled: list[str] = []
    events: list[Any] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    async def on_event(envelope: Any) -> None:
        events.append(dict(envelope))

    emu = LarkEmulator()
    connector = lambda: emu.connector(random=lambda: 0.0, on_event=on_event)  # noqa: E731
    async with emulator_bridge(emu, connector, agent) as bridge:
        await trio.sleep(1)
        emu.user_says("ou_ann", "before")
        emu.push_event(SCHEMA_1)
        emu.push_event(UNKNOWN)
        emu.push_event(UNKNOWN)  # a re-push after its ACK was lost: not handed over twice
        emu.user_says("ou_ann", "after")
        await trio.sleep(10)
        stats = bridge.stats()
    assert sorted(handled) == ["after", "before"]
    assert events == [SCHEMA_1, UNKNOWN]
    assert emu.acks == [200] * 5
    assert stats.other["lark.other_events"] == 2 and stats.other["lark.duplicate_events"] == 1
    assert stats.protocol_errors == 0

"""Lark's sans-I/O protocol core: raw bytes in, events out, our frames out as bytes.

The frames here are assembled by hand, field by field, from the ``pbbp2.Frame`` schema in
docs/protocols/lark.md#frames (the layout of lark-oapi's ``lark_oapi/ws/pb/pbbp2_pb2.py``), not
by our encoder: a fault shared by our codec and our emulator cannot hide behind a round trip.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import hypothesis.strategies as st
import pytest
from hypothesis import given
from support import modules_a_core_runs

import trio_chatbridge as cb
from trio_chatbridge.connectors import Bad, Counted, Inbound, Notice, Retimed, Send
from trio_chatbridge.platforms.lark import _frames as lark_frames
from trio_chatbridge.platforms.lark import _protocol as lp

# -- hand assembly: protobuf keys are (field << 3 | wire type); lengths are varints --------------


def length(n: int) -> bytes:
    """A length as a varint: seven bits a byte, low bits first, the top bit set on all but
    the last byte (3 MiB is ``80 80 c0 01``)."""
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes([*out, n])


def header(key: str, value: str) -> bytes:
    """Field 5 (``0x2a``): a ``Header``, key as field 1 (``0x0a``), value as field 2 (``0x12``)."""
    k, v = key.encode(), value.encode()
    body = b"\x0a" + length(len(k)) + k + b"\x12" + length(len(v)) + v
    return b"\x2a" + length(len(body)) + body


def data_frame(headers: list[tuple[str, str]], payload: bytes, seq_id: int = 5) -> bytes:
    """SeqID (``0x08``), LogID 9 (``0x10``), service 7 (``0x18``), method 1 (``0x20``), the
    headers, then the payload as field 8 (``0x42``)."""
    head = bytes([0x08, seq_id, 0x10, 0x09, 0x18, 0x07, 0x20, 0x01])
    return (
        head + b"".join(header(k, v) for k, v in headers) + b"\x42" + length(len(payload)) + payload
    )


def event_headers(message_id: str = "m1", total: int = 1, seq: int = 0) -> list[tuple[str, str]]:
    return [("type", "event"), ("message_id", message_id), ("sum", str(total)), ("seq", str(seq))]


URL = "wss://msg-frontier.feishu.cn/ws/v2?device_id=d1&service_id=7"

# A ping as lark-oapi's Go client writes it (fields 6, 7 and 9 present but empty), and as we
# write it (fields 1 to 4, then the header only).
GO_PING = bytes.fromhex("08001000180720002a0c0a0474797065120470696e6732003a004a00")
OUR_PING = bytes.fromhex(
    "0800"  # SeqID 0
    "1000"  # LogID 0
    "1807"  # service 7
    "2000"  # method 0: control
    "2a0c"
    "0a04"
    "74797065"
    "1204"
    "70696e67"  # header type = ping
)


def protocol(**options: Any) -> lp.LarkProtocol:
    core = lp.LarkProtocol("cli_app", "ou_bot", **options)
    core.connect(URL, lp.ClientConfig())
    return core


def message_event(text: str, *, chat_type: str = "p2p", event_id: str = "ev1") -> bytes:
    envelope = {
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "im.message.receive_v1"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_ann"}, "sender_type": "user"},
            "message": {
                "message_id": "om_1",
                "chat_id": "oc_1",
                "chat_type": chat_type,
                "message_type": "text",
                "content": json.dumps({"text": text}),
            },
        },
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def other_event(event_id: str, event_type: str = "im.chat.updated_v1") -> bytes:
    return json.dumps({"header": {"event_id": event_id, "event_type": event_type}}).encode()


# -- our frames ----------------------------------------------------------------------------------


def test_our_ping_is_fields_one_to_four_and_the_type_header() -> None:
    assert protocol().ping() == OUR_PING
    assert GO_PING.startswith(OUR_PING)  # the same frame, less the Go client's empty fields


def test_a_server_ping_is_answered_with_a_pong_of_the_same_ids() -> None:
    (event,) = protocol().receive(GO_PING, 0.0)
    assert event == lp.PingReceived(
        bytes.fromhex("08001000180720002a0c0a0474797065120470" + "6f6e67")
    )


def test_a_message_event_comes_with_its_ack_as_lark_oapi_writes_it() -> None:
    payload = message_event("hello")
    frame = data_frame([*event_headers(), ("trace_id", "t1")], payload)
    (event,) = protocol().receive(frame, 0.0)
    assert isinstance(event, lp.MessageReceived)
    assert (event.message.text, event.message.id, event.message.chat) == (
        "hello",
        "om_1",
        cb.Chat("oc_1", "direct"),
    )
    # the frame sent back: same ids and headers, plus biz_rt in ms, payload {"code":200}
    expected = (
        bytes.fromhex("0805" "1009" "1807" "2001")
        + header("type", "event")
        + header("message_id", "m1")
        + header("sum", "1")
        + header("seq", "0")
        + header("trace_id", "t1")
        + bytes.fromhex("2a0d" "0a06") + b"biz_rt" + bytes.fromhex("1203") + b"250"
        + bytes.fromhex("420c") + b'{"code":200}'
    )  # fmt: skip
    assert event.ack.encode(0.25) == expected


def test_a_pong_config_is_applied_and_held_to_its_ranges() -> None:
    core = protocol()
    pong = bytes.fromhex("08001000180720002a0c0a04747970651204706f6e67")
    config = b'{"PingInterval": 0.001, "ReconnectInterval": 1e308, "ReconnectCount": 3}'
    (event,) = core.receive(pong + b"\x42" + length(len(config)) + config, 0.0)
    expected = lp.ClientConfig(ping_interval=5.0, reconnect_interval=600.0, reconnect_count=3)
    assert event == lp.PongReceived(expected)
    assert core.config == expected
    huge = b'{"PingInterval": 1e308}'
    (event,) = core.receive(pong + b"\x42" + length(len(huge)) + huge, 0.0)
    assert core.config.ping_interval == 600.0
    assert core.receive(pong, 0.0) == [lp.PongReceived(None)]  # no payload: nothing changes
    (bad,) = core.receive(pong + b"\x42\x03" + b"\xff\xfe{", 0.0)
    assert isinstance(bad, lp.Malformed) and bad.what == "pong" and bad.ack is None
    assert core.config.ping_interval == 600.0


# -- events --------------------------------------------------------------------------------------


def test_other_events_are_deduplicated_by_event_id_and_a_card_action_can_be_given_back() -> None:
    core = protocol()
    first = core.receive(data_frame(event_headers(), other_event("e1")), 0.0)
    assert [type(e) for e in first] == [lp.EventReceived]
    (again,) = core.receive(data_frame(event_headers(), other_event("e1")), 0.0)
    assert isinstance(again, lp.Dropped) and again.counter == "duplicate_events"
    assert again.ack is not None  # ACKed all the same, so the platform stops pushing it

    card = data_frame(event_headers(), other_event("c1", "card.action.trigger"))
    (action,) = core.receive(card, 0.0)
    assert isinstance(action, lp.CardActionReceived) and action.event_id == "c1"
    core.forget(action)  # left un-ACKed: its re-push is a new card action, not a duplicate
    assert [type(e) for e in core.receive(card, 0.0)] == [lp.CardActionReceived]
    assert [type(e) for e in core.receive(card, 0.0)] == [lp.Dropped]


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xed\xa0\x80"])  # no UTF-8
def test_an_event_that_fails_to_read_does_not_make_its_id_a_duplicate(bad: bytes) -> None:
    core = protocol()
    # the envelope skips "event.chat" (it reads a message's fields only); the full read refuses it
    broken = b'{"header": {"event_id": "e1", "event_type": "im.chat.updated_v1"}, '
    broken += b'"event": {"chat": "' + bad + b'"}}'
    (event,) = core.receive(data_frame(event_headers(), broken), 0.0)
    assert isinstance(event, lp.Malformed) and event.ack is not None
    (again,) = core.receive(data_frame(event_headers(), other_event("e1")), 0.0)
    assert isinstance(again, lp.EventReceived)  # the good re-push is handled


def test_group_messages_need_a_mention_unless_all_are_wanted() -> None:
    frame = data_frame(event_headers(), message_event("chatter", chat_type="group"))
    (event,) = protocol().receive(frame, 0.0)
    assert isinstance(event, lp.Dropped) and event.counter == "filtered" and event.ack
    (event,) = protocol(group_messages="all").receive(frame, 0.0)
    assert isinstance(event, lp.MessageReceived)


def test_bad_input_in_a_good_frame_is_an_event_and_a_bad_event_is_still_acked() -> None:
    core = protocol()
    (event,) = core.receive(data_frame(event_headers(), b"{not json"), 0.0)
    assert isinstance(event, lp.Malformed) and event.what == "event" and event.ack is not None
    assert isinstance(event.error, cb.ProtocolError)
    deep = b'{"header": ' + b"[" * 8_000 + b"]" * 8_000 + b"}"
    (event,) = core.receive(data_frame(event_headers(), deep), 0.0)
    assert isinstance(event, lp.Malformed) and event.ack is not None
    assert core.receive("a text frame", 0.0) == [lp.Dropped("text_frames_ignored")]
    (card,) = core.receive(data_frame([("type", "card")], b"{}"), 0.0)
    assert isinstance(card, lp.Dropped) and card.counter == "data_frames_ignored" and card.ack
    with pytest.raises(cb.ProtocolError):
        core.receive(b"\xff\xff\xff", 0.0)


# -- fragments -----------------------------------------------------------------------------------


def fragments(payload: bytes, n: int, message_id: str = "m1") -> list[bytes]:
    size = -(-len(payload) // n)
    pieces = [payload[i * size : (i + 1) * size] for i in range(n)]
    return [data_frame(event_headers(message_id, n, i), p, seq_id=i) for i, p in enumerate(pieces)]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_fragments_in_any_order_make_one_event_acked_as_the_last_one(order: list[int]) -> None:
    core = protocol()
    parts = fragments(message_event("split in three"), 3)
    got = [core.receive(parts[i], float(n)) for n, i in enumerate(order)]
    assert got[:2] == [[], []]
    (event,) = got[2]
    assert isinstance(event, lp.MessageReceived) and event.message.text == "split in three"
    assert lark_frames.decode(event.ack.frame).seq_id == order[-1]  # the set's last answers it


def test_a_duplicate_fragment_replaces_its_twin_and_completes_nothing() -> None:
    core = protocol()
    parts = fragments(message_event("twice"), 2)
    assert core.receive(parts[0], 0.0) == []
    assert core.receive(parts[0], 1.0) == []
    (event,) = core.receive(parts[1], 2.0)
    assert isinstance(event, lp.MessageReceived) and event.message.text == "twice"
    assert core.receive(parts[1], 3.0) == []  # a late duplicate starts a set that never ends
    assert core.receive(GO_PING, 3.0 + lp.FRAGMENT_TTL)[0] == lp.Dropped("fragments_expired")


def test_an_empty_fragment_counts_as_arrived() -> None:
    core = protocol()
    payload = other_event("e-empty")
    assert core.receive(data_frame(event_headers("m", 2, 1), b""), 0.0) == []
    (event,) = core.receive(data_frame(event_headers("m", 2, 0), payload), 0.0)
    assert isinstance(event, lp.EventReceived)


def test_fragments_expire_after_their_ttl_from_the_latest_one() -> None:
    core = protocol()
    parts = fragments(message_event("slow"), 3)
    core.receive(parts[0], 0.0)
    core.receive(parts[1], 4.0)  # re-arms the set's clock
    (event,) = core.receive(parts[2], 4.0 + lp.FRAGMENT_TTL - 0.1)
    assert isinstance(event, lp.MessageReceived)
    core.receive(parts[0], 10.0)
    assert core.receive(parts[1], 10.0 + lp.FRAGMENT_TTL) == [lp.Dropped("fragments_expired")]


def test_fragments_waiting_are_bounded_in_sets_and_bytes() -> None:
    core = protocol()
    for n in range(lp.MAX_PARTIALS):
        assert core.receive(data_frame(event_headers(f"s{n}", 2), b"{"), 0.0) == []
    overflow = core.receive(data_frame(event_headers("one-more", 2), b"{"), 0.0)
    assert overflow == [lp.Dropped("fragments_dropped")]
    # the oldest set went: its second fragment now starts a new set instead of completing it
    assert core.receive(data_frame(event_headers("s0", 2, 1), b"}"), 0.0) == [
        lp.Dropped("fragments_dropped")
    ]


def test_a_set_completed_by_a_fragment_over_the_byte_bound_is_not_evicted() -> None:
    core = protocol()
    big = b" " * (3 * 1024 * 1024)
    assert length(len(big)) == bytes.fromhex("8080c001")
    assert core.receive(data_frame(event_headers("first", 2, 0), b"{"), 0.0) == []
    for n in range(5):  # 15 MiB more waiting: under the 16 MiB bound
        assert core.receive(data_frame(event_headers(f"big-{n}", 2, 0), big), 0.0) == []
    # the oldest set's last fragment takes it over the bound: that set is joined, not dropped
    (event,) = core.receive(data_frame(event_headers("first", 2, 1), big + b"}"), 0.0)
    assert isinstance(event, lp.EventReceived) and event.envelope == {}


def test_an_event_over_the_cap_in_fragments_is_acked_once_dropped_and_spoils_nothing_else() -> None:
    """An event over 4 MiB once joined is dropped, counted and ACKed by the fragment that took
    it over (un-ACKed, Lark pushed it again at every reconnect); the fragments of it still to
    come are swallowed, held nowhere, until :data:`FRAGMENT_TTL` after the latest."""
    core = protocol()
    big = b"x" * (3 * 1024 * 1024)
    assert core.receive(data_frame(event_headers("huge", 4, 0), big), 0.0) == []
    over = data_frame(event_headers("huge", 4, 1), big, seq_id=1)
    counted, error = core.receive(over, 0.0)
    assert counted == lp.Dropped("frames_too_big")
    assert isinstance(error, lp.Malformed) and error.what == "fragment"
    assert error.ack == lp.Ack(over) and "over 4194304 bytes" in str(error.error)
    assert core.receive(data_frame(event_headers("huge", 4, 2), big), 1.0) == []
    (event,) = core.receive(data_frame(event_headers("ok"), other_event("after")), 1.0)
    assert isinstance(event, lp.EventReceived)
    # the set's last fragment, later: swallowed too (no set of it waits, nothing to expire)
    assert (
        core.receive(data_frame(event_headers("huge", 4, 3), b"y"), 1.0 + lp.FRAGMENT_TTL / 2) == []
    )
    (ping,) = core.receive(GO_PING, 1.0 + 2 * lp.FRAGMENT_TTL)  # no "fragments_expired"
    assert isinstance(ping, lp.PingReceived)


@pytest.mark.parametrize(
    "headers",
    [
        event_headers("m", 2, 2),  # seq past the end
        [("type", "event"), ("message_id", "m"), ("sum", "two"), ("seq", "0")],
        [("type", "event"), ("message_id", "m"), ("sum", "2"), ("seq", "-1")],
        event_headers("m", lp.MAX_FRAGMENTS + 1, 0),
        [("type", "event"), ("message_id", "m"), ("sum", "9" * 5000), ("seq", "0")],
    ],
)
def test_fragment_headers_out_of_range_are_malformed(headers: list[tuple[str, str]]) -> None:
    (event,) = protocol().receive(data_frame(headers, b"{}"), 0.0)
    assert isinstance(event, lp.Malformed) and event.what == "fragment"


def test_a_fragment_disagreeing_with_its_set_is_malformed() -> None:
    core = protocol()
    assert core.receive(data_frame(event_headers("m", 2, 0), b"{"), 0.0) == []
    (event,) = core.receive(data_frame(event_headers("m", 3, 1), b"}"), 0.0)
    assert isinstance(event, lp.Malformed)


# -- properties ----------------------------------------------------------------------------------


@given(st.binary(max_size=400))
def test_arbitrary_bytes_give_events_or_a_protocol_error(data: bytes) -> None:
    try:
        events = protocol().receive(data, 0.0)
    except cb.ProtocolError:
        return
    assert all(isinstance(e, get_args(lp.Event)) for e in events)


header_values = st.sampled_from(["0", "1", "2", "3", "-1", "x", "", "1000", "1001"])
frames = st.builds(
    lambda kind, mid, total, seq, payload: data_frame(
        [("type", kind), ("message_id", mid), ("sum", total), ("seq", seq)], payload
    ),
    st.sampled_from(["event", "card", "ping", "pong"]),
    st.sampled_from(["a", "b", "c"]),
    header_values,
    header_values,
    st.binary(max_size=40) | st.sampled_from([b"{", b"}", other_event("e"), message_event("m")]),
)


@given(st.lists(st.tuples(frames, st.floats(0, 20)), max_size=30))
def test_any_frames_in_any_order_never_raise_and_every_whole_event_is_acked(
    script: list[tuple[bytes, float]],
) -> None:
    core = protocol()
    now = 0.0
    for data, step in script:
        now += step
        events = core.receive(data, now)
        acked = [e for e in events if getattr(e, "ack", None) is not None]
        assert len(acked) <= 1  # one frame completes at most one event
        assert len(core._fragments._waiting) <= lp.MAX_PARTIALS


# -- as the WebSocket driver's core -------------------------------------------------------------


def driven(**options: Any) -> lp.LarkCore:
    return lp.LarkCore(protocol(), 30.0, **options)


def test_the_driver_core_pings_first_and_at_the_servers_interval() -> None:
    core = driven()
    assert core.open() == [Send(OUR_PING)] and core.heartbeat() == Send(OUR_PING)
    assert (core.heartbeat_interval, core.silence) == (120.0, 150.0)
    pong = bytes.fromhex("08001000180720002a0c0a04747970651204706f6e67")
    config = b'{"PingInterval": 10}'
    assert core.receive(pong + b"\x42" + length(len(config)) + config, 0.0) == [Retimed()]
    assert (core.heartbeat_interval, core.silence) == (10.0, 40.0)
    assert core.receive(pong, 0.0) == []  # a pong without config changes nothing
    assert core.receive(GO_PING, 0.0) == [
        Send(bytes.fromhex("08001000180720002a0c0a04747970651204706f6e67"))
    ]


def test_the_driver_core_puts_messages_and_acks_everything_else_in_turn() -> None:
    core = driven()
    frame = data_frame(event_headers(), message_event("hi"))
    (inbound,) = core.receive(frame, 0.0)
    assert isinstance(inbound, Inbound) and inbound.message is not None
    assert inbound.message.text == "hi" and inbound.ack is not None
    assert inbound.ack(0.25) == lp.Ack(frame).encode(0.25)
    assert repr(lp.Ack(frame)) == f"Ack(frame=<{len(frame)} bytes>)"  # the event stays out
    assert "hi" not in repr(inbound.ack)
    counted, acked = core.receive(data_frame(event_headers(), other_event("e1")), 0.0)
    assert counted == Counted("other_events")  # no on_event: nothing to hand over
    assert isinstance(acked, Inbound) and acked.message is None and acked.ack is not None
    bad, acked = core.receive(data_frame(event_headers(), b"{not json"), 0.0)
    assert isinstance(bad, Bad) and bad.what == "Lark event"
    assert isinstance(acked, Inbound) and acked.ack is not None
    assert core.receive("text", 0.0) == [Counted("text_frames_ignored")]
    assert core.rejected(403, {}, b"").__class__ is cb.FatalConnectorError


def test_the_driver_core_hands_over_events_and_gives_back_a_card_action_it_cannot_answer() -> None:
    core = driven(events_wanted=True, cards_answered=True)
    _, notice, _ = core.receive(data_frame(event_headers(), other_event("e1")), 0.0)
    assert isinstance(notice, Notice) and isinstance(notice.item, lp.EventReceived)
    assert notice.busy is None  # no handler free: dropped (counted by the driver)
    card = data_frame(event_headers(), other_event("c1", "card.action.trigger"))
    counted, notice = core.receive(card, 0.0)  # no ACK: the handler sends it with the answer
    assert counted == Counted("other_events")
    assert isinstance(notice, Notice) and isinstance(notice.item, lp.CardActionReceived)
    assert notice.busy is not None and notice.busy() == Counted("card_actions_deferred")
    _, again = core.receive(card, 0.0)  # the re-push is answered, not taken for a duplicate
    assert isinstance(again, Notice)
    duplicate, acked = core.receive(card, 0.0)
    assert duplicate == Counted("duplicate_events") and isinstance(acked, Inbound)


# -- refusals, from plain data -------------------------------------------------------------------


def test_endpoint_discovery_answers_are_classified() -> None:
    url, config = lp.read_endpoint(
        "cli_1",
        200,
        {"code": 0, "data": {"URL": URL, "ClientConfig": {"PingInterval": 0, "ReconnectNonce": 5}}},
    )
    assert (url, config) == (URL, lp.ClientConfig(ping_interval=5.0, reconnect_nonce=5.0))
    assert lp.service_id(url) == 7 and lp.service_id("wss://x/ws?service_id=x") == 0
    with pytest.raises(cb.FatalConnectorError, match=r"cli_1.*app id and secret"):
        lp.read_endpoint("cli_1", 200, {"code": 10003, "msg": "invalid app_secret"})
    for status, data in [
        (502, {}),
        (200, {"code": 1}),
        (200, {"code": 1000040343}),
        (200, {"code": 0}),
    ]:
        with pytest.raises(cb.ConnectorError):
            lp.read_endpoint("cli_1", status, data)


def test_a_rejected_upgrade_is_classified_from_status_headers_and_body() -> None:
    limit = {"handshake-status": "514", "handshake-autherrcode": "1000040350"}
    assert isinstance(lp.handshake_error("cli_1", 514, limit), cb.FatalConnectorError)
    forbidden = lp.handshake_error("cli_1", 403, {}, b"app disabled")
    assert isinstance(forbidden, cb.FatalConnectorError) and "app disabled" in str(forbidden)
    other = lp.handshake_error("cli_1", 514, {"handshake-autherrcode": "1"})
    assert type(other) is cb.ConnectorError and "cli_1" in str(other)


def test_the_core_imports_no_io_library_directly_or_through_ours() -> None:
    seen = modules_a_core_runs("trio_chatbridge.platforms.lark._protocol")
    assert {"_frames", "_convert"} <= {name.rpartition(".")[2] for name in seen}
    assert "trio_chatbridge._json" in seen and "trio_chatbridge._ranges" in seen


def test_a_message_keeps_its_events_bytes_as_they_came() -> None:
    # spaced and ordered as a server may send them: raw is those bytes, never a re-encoding
    payload = json.dumps(json.loads(message_event("hi")), indent=1, sort_keys=True).encode()
    (event,) = protocol().receive(data_frame(event_headers(), payload), 0.0)
    assert isinstance(event, lp.MessageReceived)
    assert event.message.raw == payload
    assert event.message.reply_handle["event_id"] == "ev1"
    assert event.message.raw_json()["event"]["message"]["message_id"] == "om_1"


@pytest.mark.parametrize("over", [0, 1])
def test_a_data_frame_over_the_cap_is_counted_and_acked_unread(over: int) -> None:
    """A data frame up to 4 MiB is an event; one byte more is dropped unread, counted, and
    still ACKed 200 (un-ACKed, the platform would push it again), with its ids."""
    protocol = lp.LarkProtocol("cli_app", "ou_bot")
    size = lark_frames.MAX_FRAME_BYTES + over

    def frame_of(pad: int) -> bytes:
        frame = lark_frames.Frame(seq_id=7, method=1, headers=(("type", "event"),))
        return lark_frames.encode(frame.replace(payload=b" " * pad))

    data = frame_of(size)
    data = frame_of(size - (len(data) - size))  # the payload's length prefix is 4 bytes
    assert len(data) == size
    events = protocol.receive(data, 0.0)
    if not over:
        (event,) = events
        assert isinstance(event, lp.Malformed) and event.what == "event"  # read: blank JSON
        return
    dropped, bad = events
    assert dropped == lp.Dropped("frames_too_big")
    assert isinstance(bad, lp.Malformed) and bad.ack is not None
    ack = lark_frames.decode(bad.ack.encode(0.0))
    assert ack.seq_id == 7 and json.loads(ack.payload or b"") == {"code": 200}

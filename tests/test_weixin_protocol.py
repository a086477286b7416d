"""WeChat's long-poll protocol core, without I/O: known answers on raw bytes, and properties.

The pages below are written by hand from the fields docs/protocols/weixin.md#getupdates and
#messages describe (after the reference plugin's ``docs/protocol.md``), never produced by our
emulator, so a bug shared by the core and the emulator cannot hide behind a round trip.
"""

from __future__ import annotations

import base64
import functools
import json
import string
from typing import Any, Final

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import example, given
from support import modules_a_core_runs

import trio_chatbridge as cb
from trio_chatbridge._ranges import MAX_TIMESTAMP
from trio_chatbridge.connectors import HTTPRequest, Page, Paused, RetryLater
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _crypto as weixin_crypto
from trio_chatbridge.platforms.weixin import _protocol as p

BASE = "https://ilinkai.weixin.qq.com/"


def poller(**options: Any) -> p.Poller:
    return p.Poller("tok-1", BASE, functools.partial(weixin.to_message, "bot"), **options)


def page_of(event: object) -> Page:
    assert isinstance(event, Page), event
    return event


# Two user messages as the server sends them (docs/protocols/weixin.md#messages).
PAGE = (
    b'{"ret":0,"msgs":['
    b'{"seq":1,"message_id":7001,"from_user_id":"alice@im.wechat","to_user_id":"b@im.bot",'
    b'"create_time_ms":1700000000000,"message_type":1,"message_state":2,'
    b'"context_token":"ctx-a1","item_list":[{"type":1,"text_item":{"text":"hi"}}]},'
    b'{"seq":2,"message_id":7002,"from_user_id":"alice@im.wechat","to_user_id":"b@im.bot",'
    b'"create_time_ms":1700000001000,"message_type":1,"message_state":2,'
    b'"context_token":"ctx-a2","item_list":[{"type":1,"text_item":{"text":"caf\xc3\xa9"}}]}'
    b'],"get_updates_buf":"Y3Vyc29yLTI=","longpolling_timeout_ms":35000}'
)


def test_the_first_request_is_the_documented_getupdates() -> None:
    request = poller().request()
    assert isinstance(request, HTTPRequest)
    assert (request.method, request.url) == ("POST", BASE + "ilink/bot/getupdates")
    assert request.body == (  # compact, as the reference client's JSON.stringify writes it
        b'{"get_updates_buf":"","base_info":'
        b'{"channel_version":"2.4.6","bot_agent":"trio_chatbridge/0.1"}}'
    )
    headers = request.headers
    assert headers["Authorization"] == "Bearer tok-1"
    assert headers["AuthorizationType"] == "ilink_bot_token"
    assert headers["iLink-App-Id"] == "bot"
    assert headers["iLink-App-ClientVersion"] == "132102"  # 2 << 16 | 4 << 8 | 6
    assert headers["Content-Type"] == "application/json"
    assert request.timeout == 35 + 5  # the default hold, plus the margin
    assert request.max_bytes == p.PAGE_MAX_BYTES
    assert "tok-1" not in repr(request)


def test_a_page_gives_its_messages_context_tokens_and_cursor_moved_only_on_commit() -> None:
    core = poller()
    page = page_of(core.receive(PAGE, now=0.0))
    assert [(m.id, m.text) for m in page.messages] == [("7001", "hi"), ("7002", "café")]
    assert page.cursor == "Y3Vyc29yLTI="
    assert page.values == {"context_token:alice@im.wechat": "ctx-a2"}  # the newest wins
    assert list(page.skipped) == [] and page.filtered == 0
    assert json.loads(core.request().body)["get_updates_buf"] == ""  # not durable yet
    core.commit(page)
    assert json.loads(core.request().body)["get_updates_buf"] == "Y3Vyc29yLTI="
    again = page_of(core.receive(PAGE, now=1.0))
    assert again.cursor is None  # the same cursor again: nothing new to save


def test_each_message_is_converted_from_its_own_bytes_as_they_came() -> None:
    # two entries written with the spacing and key order a server might use: each message's
    # raw is exactly its entry's bytes, never a re-encoding (docs/protocols/weixin.md#getupdates)
    first = (
        b'{ "message_id" : 7001, "from_user_id":"alice@im.wechat", "message_type":1,\n'
        b'  "item_list":[{"type":1,"text_item":{"text":"caf\\u00e9"}}], "context_token":"c1" }'
    )
    second = b'{"message_type":1,"from_user_id":"bob","seq":3,"extra":[1,{"x":null}]}'
    body = b'{"msgs": [ ' + first + b" ,\n" + second + b' ], "get_updates_buf": "c"}'
    given: list[Any] = []

    def convert(raw: Any) -> cb.Message | None:
        given.append(raw)
        return weixin.to_message("bot", raw)

    page = page_of(p.Poller("t", BASE, convert).receive(body, now=0.0))
    assert given == [first, second] and all(type(raw) is bytes for raw in given)
    assert [m.raw for m in page.messages] == [first, second]
    assert [(m.id, m.text) for m in page.messages] == [("7001", "café"), ("seq:3", "")]
    assert page.messages[1].raw_json()["extra"] == [1, {"x": None}]


def test_a_page_only_pythons_decoder_reads_still_gives_its_messages() -> None:
    # NaN is no JSON, but Python's decoder (and so the reference clients') takes it
    body = (
        b'{"msgs":['
        + good(1)
        + b',{"message_type":1,"from_user_id":"u","seq":NaN}],"get_updates_buf":"c"}'
    )
    page = page_of(poller().receive(body, now=0.0))
    assert [m.text for m in page.messages] == ["m1", ""]
    assert page.messages[0].raw_json()["message_id"] == 1 and page.cursor == "c"


@pytest.mark.parametrize(
    ("body", "cursor"),
    [
        (b"", None),  # an empty answer: nothing new
        (b'{"ret":0}', None),
        (b'{"ret":0,"msgs":[],"get_updates_buf":""}', None),  # empty keeps the old one
        (b'{"msgs":[],"sync_buf":"old-style"}', "old-style"),  # the deprecated field
        (b'{"msgs":"not a list","get_updates_buf":"c2"}', "c2"),
    ],
)
def test_pages_without_messages(body: bytes, cursor: str | None) -> None:
    page = page_of(poller().receive(body, now=0.0))
    assert (list(page.messages), page.cursor) == ([], cursor)


@pytest.mark.parametrize(
    ("field", "hold"),
    [
        (b"10000", 10.0),
        (b'"20000"', 20.0),  # a number as a string, as some fields come
        (b"1", 5.0),  # held to the documented range
        (b"-3", 5.0),
        (b"1" + b"0" * 400, 120.0),
        (b"1e300", 35.0),  # not an integer: ignored
        (b"0", 35.0),
        (b"null", 35.0),
    ],
)
def test_the_servers_hold_time_is_clamped_even_on_an_error_answer(
    field: bytes, hold: float
) -> None:
    core = poller()
    event = core.receive(b'{"ret":-2,"longpolling_timeout_ms":' + field + b"}", now=0.0)
    assert isinstance(event, RetryLater)
    assert core.request().timeout == hold + p.LONG_POLL_MARGIN


@pytest.mark.parametrize(
    "body",
    [
        b'{"errcode":-14,"errmsg":"session timeout"}',  # getupdates leaves ret out (#69)
        b'{"ret":-14}',
        b'{"ret":"-14","errcode":-14}',
    ],
)
def test_errcode_minus_14_pauses_for_an_hour_from_the_time_given(body: bytes) -> None:
    core = poller()
    event = core.receive(body, now=1000.0)
    assert isinstance(event, Paused)
    assert event.until == 1000.0 + 3600
    assert event.counter == "session_expired"
    assert "weixin-login" in event.detail
    still = core.paused(4000.0)
    assert still is not None and "resumes in 10 min" in still.detail
    assert core.paused(4600.0) is None
    assert core.paused(1000.0) is None  # an ended pause is forgotten


def test_a_minus_14_during_the_pause_keeps_it_and_is_not_counted_again() -> None:
    """A second -14 before the pause ends (a poll in flight when a send met one) is the
    same expiry: the pause still ends an hour after the first, and the event counts nothing."""
    core = poller()
    first = core.receive(b'{"errcode":-14}', now=1000.0)
    again = core.receive(b'{"errcode":-14}', now=1009.0)
    assert isinstance(first, Paused) and first.counter == "session_expired"
    assert isinstance(again, Paused) and again.counter is None
    assert again.until == first.until == 4600.0
    assert core.paused(4600.0) is None
    after = core.receive(b'{"errcode":-14}', now=4600.0)  # a new expiry after the pause
    assert isinstance(after, Paused) and after.counter == "session_expired"
    assert after.until == 8200.0


def test_other_error_codes_are_retried_with_the_servers_words() -> None:
    event = poller().receive(b'{"ret":-2,"errmsg":"prepare failed"}', now=0.0)
    assert isinstance(event, RetryLater)
    assert isinstance(event.error, weixin.ILinkError)
    assert event.error.code == -2
    assert "prepare failed" in str(event.error)


def test_every_third_failure_in_a_row_hints_the_reference_clients_30_s() -> None:
    core = poller()
    assert [core.retry_hint(n) for n in range(1, 8)] == [None, None, 30, None, None, 30, None]


@pytest.mark.parametrize(
    "body",
    [b"<html>502</html>", b"[1, 2]", b'{"ret":0,"msgs":[', b"\xff\xfe", b"[" * 100_000],
)
def test_an_unreadable_answer_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(cb.ProtocolError, match="iLink getupdates"):
        poller().receive(body, now=0.0)


def good(n: int) -> bytes:
    return (
        b'{"message_id":%d,"from_user_id":"u%d@im.wechat","message_type":1,'
        b'"context_token":"t%d","item_list":[{"type":1,"text_item":{"text":"m%d"}}]}'
    ) % (n, n, n, n)


@pytest.mark.parametrize(
    "bad",
    [
        b'{"message_id":9,"item_list":[{"type":1,"text_item":{"text":"caf\xe9"}}]}',  # not UTF-8
        b'{"message_id":9,"item_list":' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # too deep
        b'["not", "an", "object"]',
    ],
)
def test_one_bad_message_is_skipped_alone(bad: bytes) -> None:
    body = (
        b'{"ret":0,"msgs":[' + good(1) + b"," + bad + b"," + good(2) + b'],"get_updates_buf":"c"}'
    )
    page = page_of(poller().receive(body, now=0.0))
    assert [m.text for m in page.messages] == ["m1", "m2"]
    assert len(page.skipped) == 1 and isinstance(page.skipped[0], cb.ProtocolError)
    assert page.cursor == "c"  # the page moves on: the bad message never blocks it


def test_messages_not_for_the_agent_are_counted_as_filtered() -> None:
    own = b'{"message_id":5,"message_type":2,"item_list":[{"type":1,"text_item":{"text":"x"}}]}'
    page = page_of(poller().receive(b'{"msgs":[' + own + b"," + good(1) + b"]}", now=0.0))
    assert ([m.text for m in page.messages], page.filtered) == (["m1"], 1)


def test_a_converter_that_fails_costs_only_its_message() -> None:
    def convert(raw: bytes) -> cb.Message | None:
        if b'"message_id":2,' in raw:
            raise KeyError("a bug")
        return weixin.to_message("bot", raw)

    core = p.Poller("t", BASE, convert)
    page = page_of(core.receive(b'{"msgs":[' + good(1) + b"," + good(2) + b"]}", now=0.0))
    assert [m.text for m in page.messages] == ["m1"]
    assert "KeyError" in str(page.skipped[0])


def test_a_page_with_a_failing_entry_is_read_as_a_page_without_one() -> None:
    # The page is converted in one pass; an entry whose conversion raises sends it through
    # one entry at a time: the same messages, tokens and filtered count, the bad one skipped.
    own = b'{"message_id":5,"message_type":2,"item_list":[{"type":1,"text_item":{"text":"x"}}]}'
    bad = b'{"message_id":9,"message_type":1,"bug":1}'
    calls: list[bytes] = []

    def convert(raw: bytes) -> cb.Message | None:
        calls.append(raw)
        if raw == bad:
            raise KeyError("a bug")
        return weixin.to_message("bot", raw)

    def read(*entries: bytes) -> Page:
        body = b'{"msgs":[' + b",".join(entries) + b"]}"
        return page_of(p.Poller("t", BASE, convert).receive(body, now=0.0))

    clean, with_bad = read(good(1), own, good(2)), read(good(1), own, bad, good(2))
    assert [m.text for m in with_bad.messages] == [m.text for m in clean.messages] == ["m1", "m2"]
    assert (with_bad.filtered, with_bad.values) == (clean.filtered, clean.values)
    assert clean.filtered == 1 and len(clean.values) == 2
    assert (len(clean.skipped), len(with_bad.skipped)) == (0, 1)
    assert calls.count(good(1)) == 3  # once in the clean page, twice in the other


handle_names = st.sampled_from(["to_user_id", "context_token", "other"])
handle_values = st.none() | st.sampled_from(["", "u1", "u2", "t1", "t2"])


@given(st.lists(st.lists(st.tuples(handle_names, handle_values), max_size=4), max_size=6))
@example([[("to_user_id", "u1"), ("context_token", "t1")]])  # the handle to_message builds
@example([[("context_token", "t1"), ("to_user_id", "u1")]])
@example([[("to_user_id", "u1"), ("context_token", "t1"), ("to_user_id", "u2")]])
@example([[("to_user_id", "u1"), ("context_token", "")], [("to_user_id", "u1")]])
def test_a_pages_tokens_are_each_handles_peer_and_token_the_newest_winning(
    handles: list[list[tuple[str, Any]]],
) -> None:
    # to_message's handle is read in place; any other shape (a converter's own) by name.
    replies = iter(handles)

    def convert(raw: bytes) -> cb.Message | None:
        message = weixin.to_message("bot", raw)
        assert message is not None
        return msgspec.structs.replace(message, reply_handle=cb.Handle(tuple(next(replies))))

    body = b'{"msgs":[' + b",".join(good(n) for n in range(len(handles))) + b"]}"
    page = page_of(p.Poller("t", BASE, convert).receive(body, now=0.0))
    expected: dict[str, Any] = {}
    for entries in handles:
        handle = cb.Handle(tuple(entries))
        peer, token = handle.get("to_user_id"), handle.get("context_token")
        if peer and token:
            expected[p.CONTEXT_TOKEN_PREFIX + peer] = token
    assert page.values == expected


@given(st.binary(max_size=300))
@example(b'{"msgs":[{"message_id":1,"item_list":[{"type":1,"text_item":{"text":"\xff"}}]}]}')
@example(b'{"longpolling_timeout_ms":1e999}')
def test_any_bytes_give_an_event_or_a_protocol_error(body: bytes) -> None:
    try:
        event = poller().receive(body, now=0.0)
    except cb.ProtocolError:
        return
    assert isinstance(event, Page | RetryLater | Paused)


junk = st.one_of(
    st.binary(max_size=40).map(lambda b: json.dumps(b.decode("latin-1")).encode()),
    st.sampled_from(
        [b"null", b"[]", b"{}", b'{"item_list":7}', b'"\xff"', b"[" * 3000 + b"]" * 3000]
    ),
)


@given(
    st.lists(
        st.one_of(
            st.integers(1, 10**6).map(lambda n: (good(n), f"m{n}")),
            junk.map(lambda raw: (raw, None)),
        ),
        max_size=8,
    )
)
def test_every_good_message_of_a_page_survives_whatever_is_beside_it(
    entries: list[tuple[bytes, str | None]],
) -> None:
    body = b'{"ret":0,"msgs":[' + b",".join(raw for raw, _ in entries) + b"]}"
    page = page_of(poller().receive(body, now=0.0))
    wanted = [text for _, text in entries if text is not None]
    assert [m.text for m in page.messages if m.text in wanted] == wanted


# -- sans-I/O, checked -------------------------------------------------------------------------


@pytest.mark.parametrize("core", ["trio_chatbridge.platforms.weixin._protocol"])
def test_the_protocol_core_imports_no_io_library_directly_or_through_ours(core: str) -> None:
    seen = modules_a_core_runs(core)
    assert "trio_chatbridge._poll_events" in seen and "trio_chatbridge._json" in seen


@given(
    texts=st.lists(st.text(max_size=20), min_size=1, max_size=6),
    at=st.integers(0, 6),
    half=st.sampled_from([b"\\ud800", b"\\udfff"]),
    wrong=st.booleans(),
)
def test_a_lone_surrogate_spoils_only_its_entry_of_a_page(
    texts: list[str], at: int, half: bytes, wrong: bool
) -> None:
    """A page with a lone surrogate escape in one entry (msgspec refuses the page, Python's
    decoder takes it): that entry is a ProtocolError, every other comes out with its text,
    whether the entries are read from the page decoded or from their own bytes (the repair)."""
    good = [
        {"message_id": n + 1, "from_user_id": "u", "message_type": 1, "seq": "x" if wrong else n}
        | {"item_list": [{"type": 1, "text_item": {"text": text}}]}
        for n, text in enumerate(texts)
    ]
    at = min(at, len(good))
    bad = {"message_id": 99, "from_user_id": "u", "message_type": 1, "context_token": "HALF"}
    entries = [*good[:at], bad, *good[at:]]
    page = json.dumps({"ret": 0, "msgs": entries}).encode().replace(b"HALF", half)
    _, decoded, whole = p.read_answer(page)
    bytes_each = [json.dumps(e).encode().replace(b"HALF", half) for e in entries]
    assert not whole
    for read in (decoded, bytes_each):
        out: list[object] = []
        for entry in read:
            try:
                message = weixin.to_message("bot", entry)
            except cb.ProtocolError as exc:
                out.append("surrogate" in str(exc))
            else:
                out.append(message and message.text)
        assert out == [*texts[:at], True, *texts[at:]]


def from_alice(message_id: int, at_ms: int, token: str) -> bytes:
    return (
        b'{"message_id":%d,"from_user_id":"alice@im.wechat","create_time_ms":%d,'
        b'"message_type":1,"context_token":"%s","item_list":[{"type":1,"text_item":'
        b'{"text":"hi"}}]}' % (message_id, at_ms, token.encode())
    )


def test_an_older_message_redelivered_later_does_not_replace_the_peers_newer_token() -> None:
    """WeChat redelivers messages, up to half an hour later (docs/protocols/weixin.md#getupdates):
    the journal drops the duplicate, but its context token, older than the one stored, would
    become the peer's "latest", and replies would carry a token past its life or quota."""
    core = poller()
    first = page_of(core.receive(b'{"msgs":[%s]}' % from_alice(2, 2_000_000, "new"), now=0.0))
    core.commit(first)
    assert first.values == {p.CONTEXT_TOKEN_PREFIX + "alice@im.wechat": "new"}
    late = page_of(core.receive(b'{"msgs":[%s]}' % from_alice(1, 1_000_000, "old"), now=1.0))
    core.commit(late)
    assert [m.id for m in late.messages] == ["1"]  # still delivered (the journal decides)
    assert late.values == {}
    # in one page too: the newest by time wins, not the last in the page
    both = b'{"msgs":[%s,%s]}' % (from_alice(4, 4_000_000, "t4"), from_alice(3, 3_000_000, "t3"))
    assert page_of(poller().receive(both, now=0.0)).values == {
        p.CONTEXT_TOKEN_PREFIX + "alice@im.wechat": "t4"
    }
    # the same page served again (not yet committed, say) gives its tokens again
    again = page_of(core.receive(b'{"msgs":[%s]}' % from_alice(2, 2_000_000, "new"), now=2.0))
    assert again.values == first.values


def test_a_message_dated_in_the_future_holds_its_peers_tokens_back_a_day_at_most() -> None:
    core = poller()
    year_9999 = int(MAX_TIMESTAMP * 1000)
    core.commit(page_of(core.receive(b'{"msgs":[%s]}' % from_alice(1, year_9999, "odd"), 0.0)))
    now_ms = 1_700_000_000_000
    page = page_of(core.receive(b'{"msgs":[%s]}' % from_alice(2, now_ms, "real"), now=1.0))
    assert page.values == {p.CONTEXT_TOKEN_PREFIX + "alice@im.wechat": "real"}
    hour = 3_600_000
    late = page_of(core.receive(b'{"msgs":[%s]}' % from_alice(3, now_ms - hour, "old"), 2.0))
    assert late.values == {}  # a redelivery an hour late, behind the real one


# FIPS-197, appendix C.1 (AES-128): the first block of our ECB ciphertext; the second is the
# PKCS#7 block of sixteen 0x10 bytes.
FIPS_KEY: Final = bytes(range(16))
FIPS_PLAIN: Final = bytes.fromhex("00112233445566778899aabbccddeeff")
FIPS_CIPHER: Final = bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")


def test_cdn_encryption_matches_the_aes_128_known_answer() -> None:
    ciphertext = weixin_crypto.encrypt(FIPS_KEY, FIPS_PLAIN)
    assert len(ciphertext) == 32 and ciphertext[:16] == FIPS_CIPHER
    assert weixin_crypto.decrypt(FIPS_KEY, ciphertext) == FIPS_PLAIN
    # both encodings of a media key (docs/protocols/weixin.md#media-download)
    assert weixin_crypto.parse_aes_key(base64.b64encode(FIPS_KEY).decode()) == FIPS_KEY
    hex_digits = base64.b64encode(FIPS_KEY.hex().encode()).decode()
    assert weixin_crypto.parse_aes_key(hex_digits) == FIPS_KEY
    assert weixin_crypto.parse_hex_key(FIPS_KEY.hex()) == FIPS_KEY


@given(key=st.binary(min_size=16, max_size=16), data=st.binary(max_size=100))
def test_cdn_encryption_round_trips_and_damage_is_a_protocol_error(key: bytes, data: bytes) -> None:
    ciphertext = weixin_crypto.encrypt(key, data)
    assert len(ciphertext) % 16 == 0 and len(ciphertext) > len(data)
    assert weixin_crypto.decrypt(key, ciphertext) == data
    for damaged in (ciphertext[:-1], ciphertext + b"x", b""):
        with pytest.raises(cb.ProtocolError, match="not whole AES blocks"):
            weixin_crypto.decrypt(key, damaged)
    with pytest.raises(cb.ProtocolError, match="bad PKCS#7 padding"):  # cut after a zero block
        weixin_crypto.decrypt(key, weixin_crypto.encrypt(key, bytes(16))[:16])


@given(raw=st.binary(max_size=40))
def test_a_media_key_of_any_other_length_is_a_protocol_error(raw: bytes) -> None:
    encoded = base64.b64encode(raw).decode()
    hex_key = len(raw) == 32 and all(chr(c) in string.hexdigits for c in raw)
    if len(raw) == 16 or hex_key:
        assert len(weixin_crypto.parse_aes_key(encoded)) == 16
    else:
        with pytest.raises(cb.ProtocolError):
            weixin_crypto.parse_aes_key(encoded)
    if len(raw) != 16:
        with pytest.raises(cb.ProtocolError, match="has 16 bytes"):
            weixin_crypto.decrypt(raw, bytes(16))

"""The platforms' typed decoders (``to_message`` given a payload's bytes): anything gives a
message, None or a ProtocolError; bytes and the same payload already decoded give the same
message; what a connector keeps costs the garbage collector at most one object a message."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import example, given
from support import json_trees, lark_message_event

import trio_chatbridge as cb
from trio_chatbridge.platforms import lark, wecom, weixin

pytestmark = pytest.mark.fuzz

json_values = json_trees()

WEIXIN: dict[str, Any] = {
    "seq": 1,
    "message_id": 7,
    "client_id": "c1",
    "from_user_id": "u@im.wechat",
    "create_time_ms": 1_700_000_000_000,
    "group_id": "g",
    "message_type": 1,
    "message_state": 2,
    "context_token": "ctx",
    "item_list": [
        {"type": 1, "text_item": {"text": "hi"}},
        {"type": 2, "image_item": {"media": {"encrypt_query_param": "q"}, "aeskey": "0f" * 16}},
        {"type": 3, "voice_item": {"text": "spoken", "playtime": 1500}},
        {"type": 4, "file_item": {"media": {"full_url": "https://x/f"}, "len": "12"}},
        {"type": 5, "video_item": {"media": {"encrypt_query_param": "v"}, "play_length": 3}},
        {"type": 1, "text_item": {"text": "re"}, "ref_msg": {"title": "t", "message_item": {}}},
        {"type": 11},
    ],
}
WECOM: dict[str, Any] = {
    "msgid": "m1",
    "chattype": "group",
    "chatid": "c1",
    "from": {"userid": "u1"},
    "create_time": 1_700_000_000,
    "msgtype": "mixed",
    "text": {"content": "@bot hi"},
    "mixed": {"msg_item": [{"msgtype": "text", "text": {"content": "a"}}, {"msgtype": "image"}]},
    "quote": {"msgtype": "file", "file": {"url": "https://x/f", "filename": "f.txt"}},
}
LARK: dict[str, Any] = lark_message_event(created="1700000000000")

Convert = Callable[[Any], cb.Message | None]
CONVERTERS: dict[str, tuple[Convert, dict[str, Any]]] = {
    "weixin": (lambda data: weixin.to_message("bot", data), WEIXIN),
    "wecom": (lambda data: wecom.to_message("bot", "req-1", data, bot_name="bot"), WECOM),
    "lark": (lambda data: lark.to_message("app", data, "ou_bot"), LARK),
}


def variants(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    """``base`` with any of its fields (or its inner objects' fields) set to anything."""

    def change(value: Any) -> st.SearchStrategy[Any]:
        if isinstance(value, dict) and value:
            return st.dictionaries(st.sampled_from(sorted(value)), json_values).flatmap(
                lambda top: st.just({**value, **top})
            )
        return json_values

    return st.fixed_dictionaries({k: st.just(v) | change(v) for k, v in base.items()})


def as_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def payloads(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        json_values.map(as_bytes),
        variants(base).map(as_bytes),
        variants(base).map(as_bytes).map(lambda b: b[: len(b) // 2]),
    )


@pytest.mark.parametrize("platform", sorted(CONVERTERS))
@given(data=st.data())
@example(data=None)
def test_any_bytes_give_a_message_none_or_a_protocol_error(platform: str, data: Any) -> None:
    convert, base = CONVERTERS[platform]
    payload = as_bytes(base) if data is None else data.draw(payloads(base))
    try:
        message = convert(payload)
    except cb.ProtocolError:
        return
    if message is not None:
        assert message.raw == payload and message.id


@pytest.mark.parametrize(
    "payload",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"\xff"],
    ids=["deep", "deep inside", "not utf-8"],
)
@pytest.mark.parametrize("platform", sorted(CONVERTERS))
def test_nasty_bytes_are_a_protocol_error(platform: str, payload: bytes) -> None:
    with pytest.raises(cb.ProtocolError):
        CONVERTERS[platform][0](payload)


@pytest.mark.parametrize("platform", sorted(CONVERTERS))
@given(data=st.data())
def test_bytes_and_the_decoded_payload_give_the_same_message(platform: str, data: Any) -> None:
    convert, base = CONVERTERS[platform]
    payload = data.draw(variants(base))
    outcomes: list[object] = []
    for given_as in (payload, as_bytes(payload)):
        try:
            message = convert(given_as)
        except cb.ProtocolError:
            outcomes.append("ProtocolError")
        else:
            outcomes.append(message and msgspec.structs.replace(message, raw=b""))
    assert outcomes[0] == outcomes[1]


def test_known_payloads_give_known_messages() -> None:
    """Answers written out by hand, one per platform, every part kind the payloads carry."""
    message = weixin.to_message("bot", as_bytes(WEIXIN))
    assert message is not None
    assert (message.id, message.chat, message.timestamp) == ("7", cb.Chat("g", "group"), 1.7e9)
    assert dict(message.reply_handle) == {"to_user_id": "u@im.wechat", "context_token": "ctx"}
    image = cb.Handle.of(encrypt_query_param="q", image_aeskey="0f" * 16)
    assert message.parts == (
        cb.Text("hi"),
        cb.Image(cb.Media("image", ref=image)),
        cb.Voice(cb.Media("voice"), transcript="spoken", duration=1.5),
        cb.File(cb.Media("file", size=12, ref=cb.Handle.of(full_url="https://x/f"))),
        cb.Video(cb.Media("video", ref=cb.Handle.of(encrypt_query_param="v")), duration=3.0),
        cb.Quote("t"),
        cb.Text("re"),
    )
    message = wecom.to_message("bot", "req-1", as_bytes(WECOM), bot_name="bot")
    assert message.parts == (cb.Quote("[file]"), cb.Text("a"), cb.Image(cb.Media("image")))
    assert (message.chat, message.sender, message.timestamp) == (
        cb.Chat("c1", "group"),
        cb.Sender("u1"),
        1.7e9,
    )
    message = lark.to_message("app", as_bytes(LARK), "ou_bot")
    assert message is not None
    assert message.parts == (cb.Mention("ou_bot", "Bot"), cb.Text("hi"))
    assert message.reply_handle["addressed"] is True and message.raw_json() == LARK


@pytest.mark.parametrize("platform", sorted(CONVERTERS))
def test_a_kept_message_is_at_most_one_tracked_object(platform: str) -> None:
    convert, base = CONVERTERS[platform]
    payloads = [as_bytes({**base, "msgid": f"m{n}", "message_id": n + 1}) for n in range(300)]
    gc.collect()
    before = len(gc.get_objects())
    kept = [convert(payload) for payload in payloads]
    gc.collect()
    assert all(m is not None and not gc.is_tracked(m) for m in kept)
    assert (len(gc.get_objects()) - before - 1) / len(kept) <= 1  # - 1: the list itself


LONE_HALVES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every string in ``value`` (keys and indexes from the top)."""
    if isinstance(value, str):
        return [path]
    if not isinstance(value, dict | list):
        return []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    return [p for key, inner in items for p in string_paths(inner, (*path, key))]


def with_string(value: Any, path: tuple[Any, ...], text: str) -> Any:
    """A copy of ``value`` whose string at ``path`` is ``text``."""
    if not path:
        return text
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = with_string(value[path[0]], path[1:], text)
    return copy


@pytest.mark.parametrize("platform", sorted(CONVERTERS))
@given(data=st.data(), half=LONE_HALVES)
def test_a_lone_surrogate_in_any_string_is_a_protocol_error(
    platform: str, data: Any, half: str
) -> None:
    """Half a surrogate pair is no text: no store can journal it. msgspec refuses its escape,
    so the payload goes to the repair (Python's decoder takes it): the repair refuses it too,
    as bytes and as the payload already decoded, never a message and never another error."""
    convert, base = CONVERTERS[platform]
    path = data.draw(st.sampled_from(string_paths(base)))
    payload = with_string(base, path, f"a{half}b")
    for given_as in (as_bytes(payload), payload):
        with pytest.raises(cb.ProtocolError):
            convert(given_as)


@pytest.mark.parametrize("platform", ["weixin", "wecom"])
@pytest.mark.parametrize(
    "text",
    ["\\ud800", "\U0001f600", "\u00e9"],
    ids=["an escaped backslash", "a pair", "one escape"],
)
def test_text_with_escapes_is_kept_through_the_repair(platform: str, text: str) -> None:
    """An escaped backslash before ``ud800`` is six characters of text, and a pair of halves
    is one character: both are text, also through the repair of a wrong-typed field."""
    convert, base = CONVERTERS[platform]
    if platform == "weixin":
        payload = with_string(base, ("item_list", 0, "text_item", "text"), text)
        payload["item_list"] = payload["item_list"][:1]
        payload["seq"] = "not a number"
    else:
        payload = {**base, "msgtype": "text", "chattype": "single", "text": {"content": text}}
        payload["create_time"] = "not a number"
    message = convert(as_bytes(payload))
    assert message is not None and message.text == text


@pytest.mark.parametrize("platform", ["weixin", "wecom"])
def test_a_byte_order_mark_is_no_reason_to_lose_a_message(platform: str) -> None:
    """msgspec refuses a UTF-8 byte order mark, so such an entry goes to the repair, which
    takes it, as Python's decoder of bytes does."""
    convert, base = CONVERTERS[platform]
    message, plain = convert(b"\xef\xbb\xbf" + as_bytes(base)), convert(as_bytes(base))
    assert message is not None and plain is not None
    assert (message.id, message.chat, message.sender, message.parts) == (
        plain.id,
        plain.chat,
        plain.sender,
        plain.parts,
    )


@pytest.mark.parametrize("platform", ["weixin", "wecom"])
@pytest.mark.parametrize("where", ["text", "a number"])
def test_a_lone_surrogate_says_so_in_its_error(platform: str, where: str) -> None:
    """Where text goes and where a number goes (msgspec's conversion met it as a bare
    UnicodeEncodeError), and encoded in UTF-8 bytes as no valid UTF-8 has it."""
    convert, base = CONVERTERS[platform]
    field: tuple[Any, ...] = ("seq",) if platform == "weixin" else ("create_time",)
    if where == "text":
        field = ("item_list", 0, "text_item", "text") if platform == "weixin" else ("msgid",)
    payload = with_string(base, field, "PLACEHOLDER")
    data = as_bytes(payload)
    for half in (b"\\udfff", "\udfff".encode(errors="surrogatepass")):
        with pytest.raises(cb.ProtocolError, match=r"surrogate|can.t decode"):
            convert(data.replace(b"PLACEHOLDER", half))

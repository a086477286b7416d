"""WeCom's reply policy without I/O: known-answer frames and pieces, the refusals read, the
splitter's properties; and the frame reader's compiled path against its general one.

Expected bytes below are written by hand after docs/protocols/wecom.md#stream-replies, not
produced by our encoder.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import json_trees, modules_a_core_runs

import trio_chatbridge as cb
from trio_chatbridge.platforms.wecom._protocol import (
    INVALID_REQ_ID,
    STREAM_EXPIRED,
    STREAM_LIMIT,
    WeComCore,
    _read_general,
    read_frame,
)
from trio_chatbridge.platforms.wecom._replies import (
    StreamState,
    Then,
    after_refusal,
    markdown_bodies,
    stream_body,
    utf8_pieces,
    utf8_prefix,
)

CORE = WeComCore("bot-1", "s3cret", "this-life")


def test_the_reply_policy_runs_without_io() -> None:
    seen = modules_a_core_runs("trio_chatbridge.platforms.wecom._replies")
    assert "trio_chatbridge.platforms.wecom._protocol" in seen


# -- splitting -------------------------------------------------------------------------------


def test_pieces_are_cut_between_characters_known_answer() -> None:
    # 1 + 2 + 3 + 4 bytes: "a" U+00E9 U+4E2D U+1F600
    text = "a\u00e9\u4e2d\U0001f600"
    assert text.encode() == b"a\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80"
    assert utf8_pieces(text, 4) == ["a\u00e9", "\u4e2d", "\U0001f600"]
    assert utf8_pieces(text, 5) == ["a\u00e9", "\u4e2d", "\U0001f600"]
    assert utf8_pieces(text, 6) == ["a\u00e9\u4e2d", "\U0001f600"]
    assert utf8_pieces(text, 9) == ["a\u00e9\u4e2d", "\U0001f600"]
    assert utf8_pieces(text, 10) == [text]
    assert utf8_pieces("", 4) == []
    assert utf8_prefix("\u4e2d\u4e2d", 5) == "\u4e2d"
    assert utf8_prefix("\u4e2d\u4e2d", 6) == "\u4e2d\u4e2d"
    with pytest.raises(ValueError, match="at least one character"):
        utf8_pieces("abc", 3)


def test_a_long_text_is_pushed_in_pieces_at_the_byte_limit() -> None:
    # 20479 ASCII bytes then a 3-byte character: it cannot straddle the 20480-byte limit
    text = "x" * (STREAM_LIMIT - 1) + "\u4e2d" + "tail"
    first, second = markdown_bodies("chat-9", text)
    assert first == {
        "chatid": "chat-9",
        "msgtype": "markdown",
        "markdown": {"content": "x" * (STREAM_LIMIT - 1)},
    }
    assert second["markdown"]["content"] == "\u4e2dtail"
    assert markdown_bodies("chat-9", "") == []


@given(st.text(), st.integers(min_value=4, max_value=64))
def test_pieces_never_split_a_character_nor_pass_the_limit(text: str, limit: int) -> None:
    pieces = utf8_pieces(text, limit)
    assert "".join(pieces) == text
    for piece, following in itertools.pairwise([*pieces, ""]):
        assert piece  # and each piece is whole characters: a str cannot hold half of one
        assert len(piece.encode()) <= limit
        if following:  # as long as it can be: the next character would not fit
            assert len((piece + following[0]).encode()) > limit
    assert utf8_prefix(text, limit) == (pieces[0] if pieces else "")


# -- frames ------------------------------------------------------------------------------------


def test_a_finished_stream_frame_known_answer() -> None:
    body = stream_body("stream_ab", "hi \u4e2d", finish=True)
    request = CORE.command("aibot_respond_msg", "REQ-A", body)
    assert request.data == (
        '{"headers":{"req_id":"REQ-A"},"cmd":"aibot_respond_msg","body":{"msgtype":"stream",'
        '"stream":{"id":"stream_ab","finish":true,"content":"hi \u4e2d"}}}'
    )


def test_a_card_rides_on_the_first_frame_only() -> None:
    card = cb.Card({"card_type": "text_notice", "main_title": {"title": "T"}})
    state = StreamState("REQ-A", finish_by=100.0, card=card)
    first = state.update("hel")
    assert first == {
        "msgtype": "stream_with_template_card",
        "stream": {"id": state.stream_id, "finish": False, "content": "hel"},
        "template_card": {"card_type": "text_notice", "main_title": {"title": "T"}},
    }
    state.took(first)
    assert state.update("hel") is None  # nothing new to show
    second = state.finish("hello", now=50.0)
    assert second == {
        "msgtype": "stream",
        "stream": {"id": state.stream_id, "finish": True, "content": "hello"},
    }
    assert state.stream_id.startswith("stream_") and len(state.stream_id) == 23


def test_a_stream_refuses_itself_without_req_id_or_past_its_window() -> None:
    orphan = StreamState(None, finish_by=None)  # no callback: only proactive messages
    assert orphan.update("x") is None and orphan.finish_now("x") is None
    assert orphan.finish("x", now=0.0) == INVALID_REQ_ID
    late = StreamState("REQ-A", finish_by=100.0)
    assert isinstance(late.finish("x", now=99.0), dict)
    assert late.finish("x", now=100.0) == STREAM_EXPIRED
    done = StreamState("REQ-A", finish_by=None)
    assert (done.finish_now("abc") or {})["stream"] == {
        "id": done.stream_id,
        "finish": True,
        "content": "abc",
    }
    assert done.finish("abcdef", now=0.0) == STREAM_EXPIRED


@pytest.mark.parametrize(
    ("errcode", "replayed", "frames", "then"),
    [
        (40001, False, 0, Then.RAISE),
        (6000, True, 0, Then.RAISE),
        (STREAM_EXPIRED, True, 0, Then.DONE),  # an earlier process answered it
        (STREAM_EXPIRED, True, 1, Then.REST_PROACTIVELY),
        (STREAM_EXPIRED, False, 0, Then.ALL_PROACTIVELY),
        (STREAM_EXPIRED, False, 2, Then.REST_PROACTIVELY),
        (INVALID_REQ_ID, False, 2, Then.ALL_PROACTIVELY),  # an old connection's req_id
        (INVALID_REQ_ID, True, 0, Then.ALL_PROACTIVELY),
    ],
)
def test_what_a_refusal_means(errcode: int, replayed: bool, frames: int, then: Then) -> None:
    assert after_refusal(errcode, replayed=replayed, frames_shown=frames) is then


def test_what_goes_proactively_after_a_refusal() -> None:
    state = StreamState("REQ-A", finish_by=100.0)
    state.took(state.frame("hello", finish=False))
    assert state.unshown("hello world", Then.REST_PROACTIVELY) == " world"
    assert state.unshown("hello world", Then.ALL_PROACTIVELY) == "hello world"
    assert state.unshown("hello world", Then.DONE) == ""


# -- reading frames --------------------------------------------------------------------------


def test_a_callbacks_body_reaches_the_message_as_it_came() -> None:
    body = '{ "msgid" : "M-1", "from": {"userid": "u1"}, "msgtype":"text", "text":{"content":"hi"}}'
    frame = '{"cmd":"aibot_msg_callback","headers":{"req_id":"R-1"},"body":' + body + "}"
    assert read_frame(frame).body == body.encode()
    (inbound,) = CORE.receive(frame.encode(), 0.0)
    assert inbound.message.raw == body.encode()  # type: ignore[union-attr]
    assert inbound.message.text == "hi"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ('{"headers":{"req_id":"r"},"body":[1]}', "body is not an object"),
        ('{"headers":{"req_id":"r"},"body":"x"}', "body is not an object"),
        ('{"headers":{},"cmd":"ping"}', "no headers.req_id"),
        ('{"headers":{"req_id":"r"},"cmd":5}', "cmd is not a string"),
        ('{"headers":{"req_id":"r"},"errcode":true}', "errcode is not an integer"),
        ('{"headers":{"req_id":"r"},"body":{"a":NaN},"cmd":[]}', "cmd is not a string"),
    ],
)
def test_bad_frames_are_protocol_errors_either_way(frame: str, error: str) -> None:
    with pytest.raises(cb.ProtocolError, match=error):
        read_frame(frame)


def test_a_number_past_a_float_reads_as_pythons_reader_reads_it() -> None:
    ack = '{"headers":{"req_id":"u"},"errcode":0,"body":{"size":1e999,"n":123456789012345678901}}'
    assert read_frame(ack).body_object() == {"size": math.inf, "n": 123456789012345678901}
    assert _outcome(read_frame, ack) == _outcome(_read_general, ack)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)
json_values = json_trees(json_scalars, size=3, leaves=12)
frames = st.fixed_dictionaries(
    {},
    optional={
        "headers": st.one_of(json_values, st.fixed_dictionaries({"req_id": json_values})),
        "cmd": json_values,
        "body": json_values,
        "errcode": json_values,
        "errmsg": json_values,
    },
)


def _outcome(read: Any, data: str) -> object:
    try:
        got = read(data)
    except cb.ProtocolError:
        return "refused"
    return (got.req_id, got.cmd, got.body_object(), got.errcode, got.errmsg)


@given(frames, st.booleans())
def test_the_compiled_reader_agrees_with_the_general_one(
    frame: dict[str, Any], ascii: bool
) -> None:
    data = json.dumps(frame, ensure_ascii=ascii)
    assert _outcome(read_frame, data) == _outcome(_read_general, data)

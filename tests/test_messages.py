from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
from hypothesis import given

import trio_chatbridge as cb

text = st.text(max_size=20)
optional_text = st.none() | text
media = st.builds(
    cb.Media,
    kind=st.sampled_from(["image", "file", "voice", "video"]),
    name=optional_text,
    size=st.none() | st.integers(0, 2**40),
    ref=st.dictionaries(text, text, max_size=3),
)
parts = st.one_of(
    st.builds(cb.Text, text),
    st.builds(cb.Image, media),
    st.builds(cb.File, media),
    st.builds(cb.Voice, media, optional_text, st.none() | st.floats(0, 1e4)),
    st.builds(cb.Video, media, st.none() | st.floats(0, 1e4)),
    st.builds(cb.Quote, text, optional_text),
    st.builds(cb.Mention, text, optional_text),
)
messages = st.builds(
    cb.Message,
    platform=text,
    account=text,
    id=text,
    chat=st.builds(cb.Chat, text, st.sampled_from(["direct", "group"]), optional_text),
    sender=st.builds(cb.Sender, text, optional_text, st.booleans()),
    parts=st.lists(parts, max_size=4),
    timestamp=st.floats(0, 2e9),
    reply_handle=st.dictionaries(text, text | st.integers(), max_size=3),
    raw=st.dictionaries(text, text | st.integers() | st.booleans(), max_size=3),
)


@given(messages)
def test_message_round_trips_through_json(message: cb.Message) -> None:
    again = cb.Message.from_json(json.loads(json.dumps(message.to_json())))
    assert again == message


def test_secrets_stay_out_of_repr() -> None:
    message = cb.Message(
        platform="weixin",
        account="bot",
        id="1",
        chat=cb.Chat("u1"),
        sender=cb.Sender("u1"),
        parts=[cb.Image(cb.Media("image", ref={"aes_key": "SECRETKEY"}))],
        reply_handle={"context_token": "SECRETTOKEN"},
        raw={"context_token": "SECRETTOKEN"},
    )
    assert "SECRET" not in repr(message)


def test_text_joins_text_parts_and_transcripts() -> None:
    message = cb.Message(
        platform="p",
        account="a",
        id="1",
        chat=cb.Chat("c"),
        sender=cb.Sender("u"),
        parts=[cb.Text("hello"), cb.Voice(cb.Media("voice"), transcript="spoken"), cb.Mention("x")],
    )
    assert message.text == "hello\nspoken"


@given(st.dictionaries(text, text | st.integers()))
def test_from_json_rejects_garbage_with_protocol_error(data: dict[str, object]) -> None:
    with pytest.raises(cb.ProtocolError):
        cb.Message.from_json(data)

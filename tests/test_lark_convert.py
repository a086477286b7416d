"""``lark.to_message`` on each kind of message event, with answers written out by hand."""

from __future__ import annotations

import json
from typing import Any

import pytest

import trio_chatbridge as cb
from trio_chatbridge.platforms import lark

# An event as it arrives in a frame's payload (content and mentions filled in per test).
EVENT = """
{"schema": "2.0", "header": {"event_id": "ev_1", "event_type": "im.message.receive_v1"},
 "event": {"sender": {"sender_id": {"open_id": "ou_amy"}, "sender_type": "user"},
           "message": {"message_id": "om_1", "chat_id": "oc_team", "chat_type": "group",
                       "create_time": "1700000000123"}}}
"""


def envelope(message_type: str, content: dict[str, Any], **message: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EVENT)
    fields = {"message_type": message_type, "content": json.dumps(content), **message}
    data["event"]["message"].update(fields)
    return data


def test_mentions_resolve_longest_placeholder_first_and_the_bots_leaves_the_text() -> None:
    mentions = [
        {"key": "@_user_1", "id": {"open_id": "ou_bot"}, "name": "Bot"},
        {"key": "@_user_10", "id": {"open_id": "ou_ten"}, "name": "Ten"},
    ]
    text = {"text": "@_user_1 ask @_user_10 please"}
    message = lark.to_message("app", envelope("text", text, mentions=mentions), "ou_bot")
    assert message is not None
    assert message.parts == (
        cb.Mention("ou_ten", "Ten"),
        cb.Mention("ou_bot", "Bot"),
        cb.Text("ask @Ten please"),
    )
    assert message.reply_handle["addressed"] is True
    assert (message.sender.id, message.chat) == ("ou_amy", cb.Chat("oc_team", "group"))
    assert message.timestamp == 1700000000.123


def test_each_placeholder_is_resolved_once_in_the_text_as_it_came() -> None:
    """Names were put in place one mention after the other, each replace reading what the one
    before wrote: an empty key, or a name holding a later mention's key, multiplied the text
    (ten mentions of an event of a few hundred bytes asked for more memory than there is)."""
    a_lot = [{"key": "a", "id": {"open_id": "ou_a"}, "name": "a" * 50}] * 10
    empty = [{"key": "", "id": {"open_id": "ou_e"}, "name": "Empty"}]
    empty_bot = [{"key": "", "id": {"open_id": "ou_bot"}, "name": "Bot"}]
    chained = [
        {"key": "@_user_1", "id": {"open_id": "ou_1"}, "name": "_user_2 and @_user_2"},
        {"key": "@_user_2", "id": {"open_id": "ou_2"}, "name": "Two"},
    ]
    for mentions, text, shown in [
        (a_lot, "a b a", "@" + "a" * 50 + " b @" + "a" * 50),
        (empty, "hello world", "hello world"),
        (empty_bot, "hello world", "hello world"),
        (chained, "@_user_1 then @_user_2", "@_user_2 and @_user_2 then @Two"),
    ]:
        event = envelope("text", {"text": text}, mentions=mentions)
        message = lark.to_message("app", event, "ou_bot")
        assert message is not None
        assert message.text == shown


def test_a_post_is_flattened_to_its_title_and_lines() -> None:
    post = {"zh_cn": {"title": "T", "content": [[{"tag": "text", "text": "line one"}]]}}
    message = lark.to_message("app", envelope("post", post), None)
    assert message is not None
    assert message.parts == (cb.Text("T\nline one"),)
    assert message.reply_handle["addressed"] is False


@pytest.mark.parametrize("paragraphs", [7, {"a": [1]}, "text", None, [7, ["x"], [None]]])
def test_a_post_whose_paragraphs_are_of_the_wrong_shape_keeps_its_title(paragraphs: Any) -> None:
    """A post's ``content`` that is not a list of lists is read as no lines (a number there
    raised a TypeError, and the message was lost as an error of ours, with a traceback)."""
    post = {"zh_cn": {"title": "T", "content": paragraphs}}
    message = lark.to_message("app", envelope("post", post), None)
    assert message is not None
    assert message.parts == (cb.Text("T"),)


def ref(key: str) -> cb.Handle:
    return cb.Handle.of(message_id="om_1", key=key)


@pytest.mark.parametrize(
    ("message_type", "content", "part"),
    [
        ("image", {"image_key": "i"}, cb.Image(cb.Media("image", ref=ref("i")))),
        (
            "file",
            {"file_key": "f", "file_name": "a.pdf"},
            cb.File(cb.Media("file", "a.pdf", ref=ref("f"))),
        ),
        ("audio", {"file_key": "v"}, cb.Voice(cb.Media("voice", ref=ref("v")))),
    ],
)
def test_media_messages_give_one_media_part(
    message_type: str, content: dict[str, Any], part: cb.Part
) -> None:
    message = lark.to_message("app", envelope(message_type, content), None)
    assert message is not None
    assert message.parts == (part,)


def test_other_types_have_no_parts_and_a_missing_sender_is_a_protocol_error() -> None:
    message = lark.to_message("app", envelope("sticker", {"file_key": "s"}), None)
    assert message is not None and message.parts == ()
    bad = envelope("text", {"text": "hi"})
    bad["event"]["sender"] = {"sender_id": {}}
    with pytest.raises(cb.ProtocolError, match="sender id"):
        lark.to_message("app", bad, None)

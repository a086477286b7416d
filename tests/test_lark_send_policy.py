"""Lark's send rules, decided without I/O: bodies, receive id types, uploads, the reply
fallback and the edit budget, on answers written out by hand (docs/protocols/lark.md#open-api)."""

from __future__ import annotations

import pytest
from support import modules_a_core_runs

import trio_chatbridge as cb
from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark import _send_policy as policy


def test_the_send_rules_import_no_io_library() -> None:
    seen = modules_a_core_runs("trio_chatbridge.platforms.lark._send_policy")
    assert "trio_chatbridge.platforms.lark._send_policy" in seen


@pytest.mark.parametrize(
    ("code", "to_the_chat"),
    [
        (230011, True),  # the message was recalled
        (230019, True),
        (230050, True),
        (230071, True),
        (230072, True),
        (230111, True),
        (230020, False),  # a rate limit: retried, never sent elsewhere
        (99991663, False),  # an expired token: renewed
        (230002, False),  # the bot is not in the chat: a new message would fail too
        (None, False),
    ],
)
def test_only_an_impossible_reply_goes_to_the_chat(code: int | None, to_the_chat: bool) -> None:
    assert policy.falls_back(code) is to_the_chat


def test_bodies_are_compact_json_in_json_with_text_unescaped() -> None:
    assert policy.body("app", 'héllo "x"') == ("text", '{"text":"héllo \\"x\\""}')
    assert policy.body("app", cb.Markdown("**b**")) == (
        "post",
        '{"zh_cn":{"content":[[{"tag":"md","text":"**b**"}]]}}',
    )
    photo = cb.Attachment(b"\x89PNG", "a.png")
    assert policy.body("app", photo, "img_v2_1") == ("image", '{"image_key":"img_v2_1"}')
    clip = cb.Attachment(b"...", "a.mp4")
    assert policy.body("app", clip, "file_v2_1") == ("media", '{"file_key":"file_v2_1"}')
    with pytest.raises(cb.SendError, match="lark"):
        policy.body("app", photo)  # not uploaded: no key to send


def test_uploads_go_where_their_kind_says() -> None:
    image = policy.upload_of(cb.Attachment(b"\x89PNG", "a.png"))
    assert image == policy.Upload(
        "/open-apis/im/v1/images",
        {"image_type": "message"},
        "image",
        "image_key",
        policy.MAX_IMAGE_BYTES,
    )
    voice = policy.upload_of(cb.Attachment(b"OggS", "v.opus"))
    assert (voice.path, voice.form, voice.field) == (
        "/open-apis/im/v1/files",
        {"file_type": "opus", "file_name": "v.opus"},
        "file",
    )
    other = policy.upload_of(cb.Attachment(b"%PDF", "r.pdf"))
    assert other.form == {"file_type": "stream", "file_name": "r.pdf"}
    assert voice.most == other.most == policy.MAX_FILE_BYTES == 30 * 2**20
    assert policy.MAX_IMAGE_BYTES == 10 * 2**20


def test_receive_id_types_follow_the_prefix() -> None:
    assert [policy.receive_id_type(i) for i in ("oc_1", "ou_1", "on_1", "x")] == [
        "chat_id",
        "open_id",
        "union_id",
        "chat_id",
    ]


def test_the_edit_budget_keeps_the_last_edit_for_the_final_text() -> None:
    budget = lark.EditBudget(interval=1.0, max_edits=3)
    assert budget.shows_now(sent=False, edits=0)  # the first write sends the message
    assert [budget.shows_now(sent=True, edits=n) for n in range(4)] == [True, True, False, False]
    silent = lark.EditBudget(max_edits=0)
    assert not silent.shows_now(sent=False, edits=0)  # one message, at the end
    one = lark.EditBudget(max_edits=1)
    assert one.shows_now(sent=False, edits=0) and not one.shows_now(sent=True, edits=0)
    with pytest.raises(cb.ConfigurationError, match=r"0\.\.20"):
        lark.EditBudget(max_edits=policy.MAX_EDITS + 1)

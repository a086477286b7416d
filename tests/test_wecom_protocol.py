"""WeCom's protocol core without I/O: known-answer frames in, events out; commands out as text.

The frames below are written by hand after the shapes in docs/protocols/wecom.md (and the
official Node SDK's frames it cites), not produced by our encoder.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import json_trees, modules_a_core_runs

import trio_chatbridge as cb
from trio_chatbridge._ws_core import Answer, Close, Inbound, Notice, Request
from trio_chatbridge.platforms.wecom import WeComError, WeComEvent
from trio_chatbridge.platforms.wecom._protocol import WeComCore

CORE = WeComCore("bot-1", "s3cret", "this-life", heartbeat_interval=30, heartbeat_grace=10)
IO_LIBRARIES = {"trio", "httpx", "trio_websocket", "anyio", "socket", "asyncio"}


@pytest.mark.parametrize(
    "path", ["trio_chatbridge/platforms/wecom/_protocol.py", "trio_chatbridge/_ws_core.py"]
)
def test_the_core_imports_no_io_library(path: str) -> None:
    tree = ast.parse(Path(path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported, "the scan found the imports"
    assert not imported & IO_LIBRARIES


def test_the_core_imports_no_io_library_through_ours_either() -> None:
    seen = modules_a_core_runs("trio_chatbridge.platforms.wecom._protocol")
    assert "trio_chatbridge.platforms.wecom._convert" in seen
    assert "trio_chatbridge._ranges" in seen and "trio_chatbridge._receive" not in seen


def test_subscribe_is_the_handshake_and_carries_the_credentials() -> None:
    (subscribe,) = CORE.open()
    assert isinstance(subscribe, Request) and subscribe.busy_retries == 0
    frame = json.loads(subscribe.data)
    assert frame == {
        "cmd": "aibot_subscribe",
        "headers": {"req_id": subscribe.key},
        "body": {"bot_id": "bot-1", "secret": "s3cret"},
    }
    assert subscribe.key.startswith("aibot_subscribe_")
    assert "s3cret" not in repr(subscribe) and "s3cret" not in repr(CORE)
    refused = subscribe.refused(Answer(subscribe.key, 40001, "invalid secret"))
    assert isinstance(refused, cb.FatalConnectorError)
    assert "40001" in str(refused) and "bot id and secret" in str(refused)


def test_a_ping_must_be_acked_within_the_grace() -> None:
    ping = CORE.heartbeat()
    assert isinstance(ping, Request) and ping.within == 10
    assert json.loads(ping.data) == {"cmd": "ping", "headers": {"req_id": ping.key}}
    assert CORE.silence == 50  # one interval and two graces
    assert isinstance(ping.refused(Answer(ping.key, 1, "no")), cb.ConnectorError)


def test_acks_become_answers_and_6000_is_busy() -> None:
    ok = '{"headers":{"req_id":"aibot_respond_msg_1"},"errcode":0,"errmsg":"ok"}'
    busy = '{"headers":{"req_id":"r-2"},"errcode":6000,"errmsg":"conflict"}'
    upload = '{"headers":{"req_id":"u"},"errcode":0,"errmsg":"ok","body":{"upload_id":"up-1"}}'
    assert CORE.receive(ok, 0.0) == [Answer("aibot_respond_msg_1", 0, "ok")]
    assert CORE.receive(busy, 0.0) == [Answer("r-2", 6000, "conflict", busy=True)]
    (answer,) = CORE.receive(upload.encode(), 0.0)
    assert isinstance(answer, Answer) and answer.body == {"upload_id": "up-1"}


def test_a_command_is_refused_with_a_wecom_error() -> None:
    command = CORE.command("aibot_respond_msg", "cb-1", {"msgtype": "stream"})
    assert json.loads(command.data) == {
        "cmd": "aibot_respond_msg",
        "headers": {"req_id": "cb-1"},
        "body": {"msgtype": "stream"},
    }
    assert command.busy_retries == 3
    error = command.refused(Answer("cb-1", 846608, "stream expired"))
    assert isinstance(error, WeComError) and isinstance(error, cb.SendError)
    assert (error.errcode, error.cmd) == (846608, "aibot_respond_msg")


TEXT_CALLBACK = (
    '{"cmd":"aibot_msg_callback","headers":{"req_id":"REQ-A"},"body":{"msgid":"MSG-1",'
    '"aibotid":"bot-1","chattype":"single","from":{"userid":"zhangsan"},"msgtype":"text",'
    '"text":{"content":"hello"}}}'
)


def test_a_message_callback_is_a_message_answerable_for_six_minutes() -> None:
    (inbound,) = CORE.receive(TEXT_CALLBACK, 100.0)
    assert isinstance(inbound, Inbound) and inbound.ack is None  # WeCom wants no ack
    message = inbound.message
    assert message is not None
    assert (message.id, message.text, message.sender.id) == ("MSG-1", "hello", "zhangsan")
    assert message.reply_handle["req_id"] == "REQ-A"
    assert message.reply_handle["answer_by"] == 460.0
    assert message.reply_handle["life"] == "this-life"


def test_events_become_notices_and_a_disconnect_closes_for_good() -> None:
    enter = (
        '{"cmd":"aibot_event_callback","headers":{"req_id":"EV-1"},"body":{"msgtype":"event",'
        '"chatid":"g1","from":{"userid":"lisi"},"event":{"eventtype":"enter_chat"}}}'
    )
    (notice,) = CORE.receive(enter, 0.0)
    assert isinstance(notice, Notice) and isinstance(notice.item, WeComEvent)
    assert (notice.item.eventtype, notice.item.req_id, notice.item.user_id) == (
        "enter_chat",
        "EV-1",
        "lisi",
    )
    assert notice.item.chat_id == "g1"
    gone = (
        '{"cmd":"aibot_event_callback","headers":{"req_id":"EV-2"},'
        '"body":{"msgtype":"event","event":{"eventtype":"disconnected_event"}}}'
    )
    (close,) = CORE.receive(gone, 0.0)
    assert isinstance(close, Close) and close.fatal and "one connection per bot" in close.reason


def test_an_unknown_command_brings_nothing() -> None:
    assert CORE.receive('{"cmd":"aibot_future","headers":{"req_id":"x"}}', 0.0) == []


json_values = json_trees(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    size=3,
    leaves=15,
)
frames = st.fixed_dictionaries(
    {"headers": st.fixed_dictionaries({"req_id": st.text(max_size=6)})},
    optional={
        "cmd": st.sampled_from(["aibot_msg_callback", "aibot_event_callback", "ping"]),
        "body": json_values,
        "errcode": json_values,
        "errmsg": json_values,
    },
)


@given(st.one_of(frames.map(json.dumps), st.text(max_size=100), st.binary(max_size=100)))
def test_the_core_raises_only_protocol_errors(data: str | bytes) -> None:
    try:
        events = CORE.receive(data, 0.0)
    except cb.ProtocolError:
        return
    assert len(events) <= 1
    for event in events:
        assert isinstance(event, Answer | Inbound | Notice | Close)

"""WeCom AI Bot long-connection frames: one JSON object per text frame
(docs/protocols/wecom.md#frames).

Every frame is ``{cmd?, headers: {req_id}, body?, errcode?, errmsg?}``. Requests and pushes
carry ``cmd``; acknowledgements carry none and echo the request's ``req_id``. Parsing accepts
anything JSON can say and raises only :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final, final

import attrs

from ..._errors import ProtocolError
from ..._json import json_object
from ..._supervise import Backoff

DEFAULT_URL: Final = "wss://openws.work.weixin.qq.com"
HEARTBEAT_INTERVAL: Final = 30.0  # seconds (docs/protocols/wecom.md#subscribe-and-heartbeat)
HEARTBEAT_GRACE: Final = 10.0  # seconds a ping ack may take before the link counts as dead
ACK_TIMEOUT: Final = 5.0  # seconds (docs/protocols/wecom.md#acks-and-ordering)
CONFLICT_RETRIES: Final = 3  # errcode 6000 (docs/protocols/wecom.md#error-codes)
# waits between them: 0.2 s, 0.4 s, 0.8 s
CONFLICT_BACKOFF: Final = Backoff(initial=0.2, maximum=2.0, jitter=0.0)
# seconds to answer enter_chat (docs/protocols/wecom.md#event-callbacks)
WELCOME_DEADLINE: Final = 5.0
# seconds a callback's stream may be updated, from its arrival: the webhook's six minutes,
# assumed for the long connection too (docs/protocols/wecom.md#unconfirmed)
STREAM_WINDOW: Final = 360.0
# bytes of UTF-8 in a stream's content (docs/protocols/wecom.md#stream-replies)
STREAM_LIMIT: Final = 20480
MAX_FRAME_BYTES: Final = 512 * 1024  # a frame larger than this is refused, not parsed
WS_MESSAGE_LIMIT: Final = 4 * MAX_FRAME_BYTES  # beyond this the WebSocket layer drops the link

# errcodes (docs/protocols/wecom.md#error-codes)
COMMAND_CONFLICT: Final = 6000
INVALID_REQ_ID: Final = 846605
STREAM_EXPIRED: Final = 846608

# commands (docs/protocols/wecom.md#commands)
SUBSCRIBE: Final = "aibot_subscribe"
PING: Final = "ping"
MSG_CALLBACK: Final = "aibot_msg_callback"
EVENT_CALLBACK: Final = "aibot_event_callback"
RESPOND: Final = "aibot_respond_msg"
RESPOND_WELCOME: Final = "aibot_respond_welcome_msg"
SEND: Final = "aibot_send_msg"


def new_req_id(cmd: str) -> str:
    """A fresh ``req_id`` in the official SDK's shape, ``{cmd}_{epoch_ms}_{8 hex}``."""
    return f"{cmd}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


@final
@attrs.frozen
class Frame:
    """One frame, either way."""

    req_id: str
    cmd: str | None = None
    body: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    errcode: int | None = None
    errmsg: str | None = None

    def encode(self) -> str:
        frame: dict[str, Any] = {"headers": {"req_id": self.req_id}}
        if self.cmd is not None:
            frame["cmd"] = self.cmd
        if self.body:
            frame["body"] = dict(self.body)
        if self.errcode is not None:
            frame["errcode"] = self.errcode
            frame["errmsg"] = self.errmsg or ""
        return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))

    @property
    def is_ack(self) -> bool:
        return self.cmd is None


def parse_frame(data: str | bytes) -> Frame:
    """Decode one frame; anything that is not a well-formed frame is a :class:`ProtocolError`."""
    frame = json_object(data, "WeCom frame", max_bytes=MAX_FRAME_BYTES)
    headers = frame.get("headers")
    req_id = headers.get("req_id") if isinstance(headers, dict) else None
    if not isinstance(req_id, str) or not req_id:
        raise ProtocolError("frame has no headers.req_id")
    cmd = frame.get("cmd")
    if cmd is not None and not isinstance(cmd, str):
        raise ProtocolError("frame's cmd is not a string")
    body = frame.get("body", {})
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ProtocolError("frame's body is not an object")
    errcode = frame.get("errcode")
    if errcode is not None and (not isinstance(errcode, int) or isinstance(errcode, bool)):
        raise ProtocolError("frame's errcode is not an integer")
    errmsg = frame.get("errmsg")
    return Frame(req_id, cmd, body, errcode, errmsg if isinstance(errmsg, str) else None)

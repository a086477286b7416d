"""Every parser against anything the network may send, and known answers computed without our
code. The default suite replays a fixed set of examples (the "ci" profile); ``nox -s fuzz``
runs the same properties with many more, at random (docs/reliability.md says how many).

Each parser may answer or raise :class:`ProtocolError`, nothing else; each emulator's admin
API answers a 4xx to a body it cannot use, never a 5xx or an exception.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
import trio
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import example, given
from support import json_trees, lark_message_event

import trio_chatbridge as cb
from trio_chatbridge._json import json_object, read_body
from trio_chatbridge.connectors import Page, Paused, RetryLater
from trio_chatbridge.platforms import lark, wecom, weixin
from trio_chatbridge.platforms.lark import _frames as lark_frames
from trio_chatbridge.platforms.wecom import _crypto
from trio_chatbridge.platforms.wecom import _protocol as wecom_protocol
from trio_chatbridge.platforms.weixin import _protocol as weixin_protocol
from trio_chatbridge.testing import LarkEmulator, WeComEmulator, WeixinEmulator

pytestmark = pytest.mark.fuzz

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters: 32 bytes


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# JSON as a platform might send it: any values, nested a little, with the odd float.
json_values = json_trees(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    size=5,
    leaves=30,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=8)
# Bytes as they come off a socket: anything, JSON text, or nasty special cases. The special
# cases are drawn by name (a failing example's repr stays short) and looked up in NASTY.
NASTY = {
    "deep": deep(100_000).encode(),
    "deep inside": b'{"a": ' + deep(50_000).encode() + b"}",
    "not utf-8": b'{"a": "\xff"}',
    "nan": b'{"a": NaN}',
    "lone surrogate": b'{"a": "\\ud800"}',
    "bom": b"\xef\xbb\xbf{}",
    "many objects": b"{}" * 1000,
}
raw_bytes = st.one_of(
    st.binary(max_size=500),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(sorted(NASTY)),
)


def raw(data: bytes | str) -> bytes:
    """The bytes a ``raw_bytes`` example stands for."""
    return NASTY[data] if isinstance(data, str) else data


def with_fields(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` (a payload the platform does send) with any of its fields set to anything."""
    return st.dictionaries(st.sampled_from(sorted(base)), json_values).map(
        lambda changes: {**base, **changes}
    )


# -- JSON --------------------------------------------------------------------------------------


@given(raw_bytes)
def test_the_json_reader_answers_an_object_or_a_protocol_error(data: bytes | str) -> None:
    with contextlib.suppress(cb.ProtocolError):
        assert isinstance(json_object(raw(data), "fuzz"), dict)


# Compressed answers: valid gzip/deflate of anything (inflating up to 100 times the cap), or
# anything at all, in any Content-Encoding header, in chunks of any size.
compressed_bodies = st.one_of(
    st.tuples(st.just("gzip"), raw_bytes.map(lambda d: gzip.compress(raw(d), mtime=0))),
    st.tuples(st.just("deflate"), raw_bytes.map(lambda d: zlib.compress(raw(d)))),
    st.tuples(
        st.sampled_from(["gzip", "deflate", "x-gzip", "gzip, deflate", "identity", "br", ""]),
        st.binary(max_size=300),
    ),
)


# A body refused half-way leaves httpx's inner iterator to the garbage collector (httpx's).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@given(compressed_bodies, st.integers(1, 64), st.integers(1, 200))
def test_a_compressed_answer_is_read_within_its_cap_or_raises_protocol_error(
    encoded: tuple[str, bytes], chunk: int, max_bytes: int
) -> None:
    encoding, body = encoded

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(body), chunk):
            yield body[at : at + chunk]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-encoding": encoding}, content=chunks())

    async def main() -> None:
        async with (
            httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
            http.stream("GET", "http://127.0.0.1/") as response,
        ):
            with contextlib.suppress(cb.ProtocolError):
                assert len(await read_body(response, "fuzz", max_bytes=max_bytes)) <= max_bytes

    trio.run(main)


# -- WeCom -------------------------------------------------------------------------------------

WECOM_MESSAGE = {
    "msgid": "m1",
    "aibotid": "bot",
    "chattype": "group",
    "chatid": "c1",
    "from": {"userid": "u1"},
    "msgtype": "text",
    "text": {"content": "@bot hi"},
    "image": {"url": "https://wework.qpic.cn/x", "aeskey": "k"},
    "mixed": {"msg_item": [{"msgtype": "text", "text": {"content": "a"}}]},
    "quote": {"msgtype": "text", "text": {"content": "q"}},
}


@given(raw_bytes, st.booleans())
def test_wecom_frames_parse_or_raise_protocol_error(data: bytes | str, as_text: bool) -> None:
    try:
        frame = wecom_protocol.parse_frame(
            raw(data).decode(errors="replace") if as_text else raw(data)
        )
    except cb.ProtocolError:
        return
    assert wecom_protocol.parse_frame(frame.encode()) == frame


@given(json_objects | with_fields(WECOM_MESSAGE), st.none() | st.text(max_size=5))
def test_wecom_callbacks_convert_or_raise_protocol_error(
    body: dict[str, Any], bot_name: str | None
) -> None:
    try:
        message = wecom.to_message("bot", "req-1", body, bot_name=bot_name)
    except cb.ProtocolError:
        return
    assert message.account == "bot" and message.id


@given(st.binary(max_size=400), st.booleans())
def test_wecom_ciphertexts_decrypt_or_raise_protocol_error(data: bytes, media: bool) -> None:
    crypto = wecom.WebhookCrypto("token", AES_KEY)
    try:
        if media:
            _crypto.decrypt_media(base64.b64encode(bytes(range(32))).decode(), data)
        else:
            crypto.decrypt(base64.b64encode(data).decode())
    except cb.ProtocolError:
        pass


# -- Lark --------------------------------------------------------------------------------------

LARK_EVENT: dict[str, Any] = lark_message_event()
LARK_INNER: dict[str, Any] = LARK_EVENT["event"]
LARK_MESSAGE: dict[str, Any] = LARK_INNER["message"]


@given(raw_bytes)
def test_lark_frames_decode_or_raise_protocol_error(data: bytes | str) -> None:
    """A frame read is written back and read again the same."""
    try:
        frame = lark_frames.decode(raw(data))
    except cb.ProtocolError:
        return
    assert lark_frames.decode(lark_frames.encode(frame)) == frame


@given(
    st.one_of(
        json_objects,
        with_fields(LARK_EVENT),
        with_fields(LARK_INNER).map(lambda event: {**LARK_EVENT, "event": event}),
        with_fields(LARK_INNER["message"]).map(
            lambda m: {**LARK_EVENT, "event": {**LARK_INNER, "message": m}}
        ),
    )
)
@example({**LARK_EVENT, "event": {**LARK_INNER, "message": {**LARK_MESSAGE, "mentions": 1}}})
def test_lark_events_convert_or_raise_protocol_error(envelope: dict[str, Any]) -> None:
    try:
        message = lark.to_message("app", envelope, "ou_bot")
    except cb.ProtocolError:
        return
    assert message is None or message.id


# -- WeChat ------------------------------------------------------------------------------------

WEIXIN_MESSAGE = {
    "seq": 1,
    "message_id": 7,
    "from_user_id": "u@im.wechat",
    "to_user_id": "bot@im.bot",
    "create_time_ms": 1_700_000_000_000,
    "session_id": "s",
    "group_id": "g",
    "message_type": 1,
    "message_state": 2,
    "context_token": "ctx",
    "item_list": [
        {"type": 1, "text_item": {"text": "hi"}},
        {"type": 2, "image_item": {"media": {"encrypt_query_param": "q", "aes_key": "k"}}},
        {"type": 1, "ref_msg": {"message_item": {"type": 1, "text_item": {"text": "q"}}}},
    ],
}


WEIXIN_PAGE = {"ret": 0, "msgs": [WEIXIN_MESSAGE], "get_updates_buf": "c", "errcode": 0}


@given(json_values | with_fields(WEIXIN_PAGE))
def test_weixin_pages_parse_or_raise_protocol_error(data: Any) -> None:
    poller = weixin_protocol.Poller("t", weixin.DEFAULT_BASE_URL, lambda raw: None)
    try:
        event = poller.receive(json.dumps(data).encode(), 0.0)
    except cb.ProtocolError:
        return
    assert isinstance(event, Page | Paused | RetryLater)


@given(json_values | with_fields(WEIXIN_MESSAGE))
def test_weixin_messages_convert_or_raise_protocol_error(raw: Any) -> None:
    try:
        message = weixin.to_message("bot", raw)
    except cb.ProtocolError:
        return
    assert message is None or message.id


# -- the emulators' admin APIs -----------------------------------------------------------------


@given(
    st.sampled_from(["weixin", "wecom", "lark"]),
    st.sampled_from(["POST", "GET", "PUT"]),
    st.sampled_from(["/admin/messages", "/admin/sent", "/admin/", "/admin/x"]),
    raw_bytes | json_values.map(lambda v: json.dumps({"user": v, "text": v}).encode()),
)
def test_emulator_admin_apis_refuse_bad_bodies_with_a_4xx(
    platform: str, method: str, path: str, body: bytes | str
) -> None:
    async def main() -> int:
        if platform == "weixin":
            weixin_emulator = WeixinEmulator()
            url = weixin_emulator.base_url + path.removeprefix("/")
            answer = await weixin_emulator.handle(httpx.Request(method, url, content=raw(body)))
        else:
            emulator = WeComEmulator() if platform == "wecom" else LarkEmulator()
            request = httpx.Request(method, f"http://emulator{path}", content=raw(body))
            answer = await emulator.handle_http(request)
        return answer.status_code

    assert trio.run(main) < 500


# -- known answers, computed without our code --------------------------------------------------
#
# The ciphertexts below come from the openssl command line (``openssl enc -aes-256-cbc -K <key
# hex> -iv <first 16 key bytes hex> -nopad`` on the padded plaintext written out in hex), the
# signatures from ``sha1sum``; the test also recomputes them from the ``cryptography`` and
# ``hashlib`` primitives, step by step.

KEY = bytes.fromhex("69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051")
RANDOM16 = b"0123456789abcdef"
WEBHOOK_VECTORS = [
    # (message, receive id, PKCS#7 to 32 bytes written out, openssl's ciphertext)
    ("hello", "wwcorp", b"\x01", "Q3stYC6hdFzMh9T8HCvyDHPgJBp1hNiGJRGfxoOyXGI="),
    (
        "hello world!",
        "",
        b"\x20" * 32,  # already 32 bytes: a whole block of padding
        "Q3stYC6hdFzMh9T8HCvyDEMyRh7TnVLGFASzWaJ4Fjs54MZhv/yrfUtGsATJYM37xF9jRRNDXNQJHMnV+9VYOw==",
    ),
]


@pytest.mark.parametrize(("message", "receive_id", "padding", "expected"), WEBHOOK_VECTORS)
def test_webhook_encryption_matches_openssl(
    message: str, receive_id: str, padding: bytes, expected: str
) -> None:
    assert base64.b64decode(AES_KEY + "=") == KEY
    plaintext = RANDOM16 + struct.pack(">I", len(message)) + message.encode() + receive_id.encode()
    assert (len(plaintext) + len(padding)) % 32 == 0
    encryptor = Cipher(algorithms.AES(KEY), modes.CBC(KEY[:16])).encryptor()
    by_hand = encryptor.update(plaintext + padding) + encryptor.finalize()
    assert base64.b64encode(by_hand).decode() == expected

    crypto = wecom.WebhookCrypto("emulator-token", AES_KEY, receive_id)
    assert crypto.encrypt(message, RANDOM16) == expected
    assert crypto.decrypt(expected) == message


def test_webhook_signature_matches_sha1sum() -> None:
    token, timestamp, nonce = "emulator-token", "1409304348", "nonce"
    encrypt = WEBHOOK_VECTORS[0][3]
    joined = "".join(sorted([token, timestamp, nonce, encrypt]))
    assert joined == "1409304348" + encrypt + "emulator-tokennonce"
    expected = "b0e2f8eb10e3756d1ffbcd449469116bb72434c0"  # sha1sum of that string
    assert hashlib.sha1(joined.encode()).hexdigest() == expected
    crypto = wecom.WebhookCrypto(token, AES_KEY)
    assert crypto.signature(timestamp, nonce, encrypt) == expected
    assert crypto.verify(expected, timestamp, nonce, encrypt)


def test_media_decryption_matches_the_primitives() -> None:
    data = b"an image, 31 bytes of it......."
    encryptor = Cipher(algorithms.AES(KEY), modes.CBC(KEY[:16])).encryptor()
    encrypted = encryptor.update(data + b"\x01") + encryptor.finalize()
    aeskey = base64.b64encode(KEY).decode()
    assert _crypto.decrypt_media(aeskey, encrypted) == data
    assert _crypto.encrypt_media_with_key(KEY, data) == encrypted


def test_wecom_frames_match_the_documented_shape() -> None:
    """docs/protocols/wecom.md: ``{cmd?, headers: {req_id}, body?, errcode?, errmsg?}``."""
    subscribe = wecom_protocol.Frame(
        "aibot_subscribe_1", "aibot_subscribe", {"bot_id": "b", "secret": "s"}
    )
    assert json.loads(subscribe.encode()) == {
        "cmd": "aibot_subscribe",
        "headers": {"req_id": "aibot_subscribe_1"},
        "body": {"bot_id": "b", "secret": "s"},
    }
    ack = wecom_protocol.parse_frame('{"headers":{"req_id":"r-9"},"errcode":0,"errmsg":"ok"}')
    assert (ack.req_id, ack.cmd, ack.errcode, ack.errmsg) == ("r-9", None, 0, "ok")


LARK_VECTOR = (
    b"\x08\xac\x02"  # field 1 (SeqID), varint 300: 0b10_0101100 -> ac 02
    b"\x10\x02"  # field 2 (LogID), varint 2
    b"\x18\x03"  # field 3 (service), varint 3
    b"\x20\x01"  # field 4 (method), varint 1: a data frame
    b"\x2a\x0d"  # field 5 (headers), 13 bytes:
    b"\x0a\x04type"  # .key, 4 bytes
    b"\x12\x05event"  # .value, 5 bytes
    b"\x42\x02{}"  # field 8 (payload), 2 bytes
)


def test_lark_frames_match_hand_encoded_protobuf() -> None:
    frame = lark_frames.Frame(
        seq_id=300, log_id=2, service=3, method=1, headers=(("type", "event"),), payload=b"{}"
    )
    assert lark_frames.encode(frame) == LARK_VECTOR
    assert lark_frames.decode(LARK_VECTOR) == frame

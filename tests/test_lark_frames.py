"""Lark's frame codec: known-answer vectors, round trips, and the documented schema as an oracle.

The oracle is ``pbbp2.Frame`` as docs/protocols/lark.md#frames writes it (headers as the nested
``Header`` message, strings as strings), built by the protobuf runtime from its own descriptor:
what our codec writes, the documented schema reads the same, and the other way round.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from hypothesis import given

import trio_chatbridge as cb
from trio_chatbridge.platforms.lark import _frames as lark_frames

GO_PING = bytes.fromhex("08001000180720002a0c0a0474797065120470696e6732003a004a00")


def test_codec_reads_the_go_sdk_ping_and_writes_the_python_one() -> None:
    frame = lark_frames.decode(GO_PING)
    assert (frame.service, frame.method, frame.headers) == (7, 0, (("type", "ping"),))
    assert lark_frames.encode(frame) == GO_PING  # what was read goes back as it came
    ours = lark_frames.Frame(service=7, headers=(("type", "ping"),))
    assert ours == frame  # the empty strings the Go SDK writes are the unset ones
    assert lark_frames.encode(ours) == GO_PING[: -len(bytes.fromhex("32003a004a00"))]


def test_codec_reads_headers_in_any_field_order_and_refuses_incomplete_ones() -> None:
    head = bytes.fromhex("0801100218032001")  # SeqID 1, LogID 2, service 3, method 1
    reversed_header = (
        bytes.fromhex("2a0a") + bytes.fromhex("1203") + b"abc" + bytes.fromhex("0a03") + b"key"
    )
    long_value = "v" * 200  # a two-byte length
    decode = lark_frames.decode
    assert decode(head + reversed_header).headers == (("key", "abc"),)
    frame = lark_frames.Frame(method=1, headers=(("k", long_value),))
    assert decode(lark_frames.encode(frame)) == frame
    with pytest.raises(cb.ProtocolError, match="key or value"):
        decode(head + bytes.fromhex("2a05") + bytes.fromhex("0a03") + b"key")
    with pytest.raises(cb.ProtocolError, match="header key is not UTF-8"):
        decode(head + bytes.fromhex("2a060a01ff120161"))


frames = st.builds(
    lark_frames.Frame,
    seq_id=st.integers(0, 2**64 - 1),
    log_id=st.integers(0, 2**64 - 1),
    service=st.integers(-(2**31), 2**31 - 1),
    method=st.integers(0, 1),
    headers=st.lists(
        st.tuples(st.text(max_size=10), st.text(max_size=20) | st.text(min_size=64, max_size=90)),
        max_size=5,
    ).map(tuple),
    payload_encoding=st.text(max_size=5),
    payload_type=st.text(max_size=5),
    payload=st.none() | st.binary(max_size=200),
    log_id_new=st.text(max_size=10),
)


@given(frames)
def test_codec_round_trips(frame: lark_frames.Frame) -> None:
    assert lark_frames.decode(lark_frames.encode(frame)) == frame


@given(st.binary(max_size=300))
def test_codec_raises_only_protocol_errors_on_arbitrary_bytes(data: bytes) -> None:
    try:
        frame = lark_frames.decode(data)
    except cb.ProtocolError:
        return
    assert lark_frames.decode(lark_frames.encode(frame)) == frame


SCHEMA = """
name: "oracle/pbbp2.proto"  package: "pbbp2"
message_type {
  name: "Header"
  field { name: "key"  number: 1  label: LABEL_REQUIRED  type: TYPE_STRING }
  field { name: "value"  number: 2  label: LABEL_REQUIRED  type: TYPE_STRING }
}
message_type {
  name: "Frame"
  field { name: "SeqID"  number: 1  label: LABEL_REQUIRED  type: TYPE_UINT64 }
  field { name: "LogID"  number: 2  label: LABEL_REQUIRED  type: TYPE_UINT64 }
  field { name: "service"  number: 3  label: LABEL_REQUIRED  type: TYPE_INT32 }
  field { name: "method"  number: 4  label: LABEL_REQUIRED  type: TYPE_INT32 }
  field {
    name: "headers"  number: 5  label: LABEL_REPEATED  type: TYPE_MESSAGE
    type_name: ".pbbp2.Header"
  }
  field { name: "payload_encoding"  number: 6  label: LABEL_OPTIONAL  type: TYPE_STRING }
  field { name: "payload_type"  number: 7  label: LABEL_OPTIONAL  type: TYPE_STRING }
  field { name: "payload"  number: 8  label: LABEL_OPTIONAL  type: TYPE_BYTES }
  field { name: "LogIDNew"  number: 9  label: LABEL_OPTIONAL  type: TYPE_STRING }
}
"""
"""``pbbp2.proto`` as docs/protocols/lark.md#frames gives it, in protobuf's text format."""


def _documented_schema() -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(text_format.Parse(SCHEMA, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pbbp2.Frame"))


DOCUMENTED = _documented_schema()


@given(frames)
def test_the_documented_schema_reads_our_frames_and_we_read_its(frame: lark_frames.Frame) -> None:
    theirs = DOCUMENTED.FromString(lark_frames.encode(frame))
    assert (theirs.SeqID, theirs.LogID, theirs.service, theirs.method) == (
        frame.seq_id,
        frame.log_id,
        frame.service,
        frame.method,
    )
    assert tuple((h.key, h.value) for h in theirs.headers) == frame.headers
    assert (theirs.payload_encoding, theirs.payload_type, theirs.LogIDNew) == (
        frame.payload_encoding,
        frame.payload_type,
        frame.log_id_new,
    )
    assert (theirs.payload if theirs.HasField("payload") else None) == frame.payload
    assert lark_frames.decode(theirs.SerializeToString()) == frame


EVENT = (
    b"\x08\xac\x02\x10\x02\x18\x03\x20\x01"  # SeqID 300, LogID 2, service 3, method 1
    b"\x2a\x0d\x0a\x04type\x12\x05event"  # header type=event
    b"\x42\x02{}"  # payload {}
    b"\x50\x07"  # field 10, varint 7: unknown to the schema
)


def test_an_ack_is_the_event_with_its_handling_time_and_new_payload() -> None:
    ack = lark_frames.ack(EVENT, b'{"code":200}', biz_rt="12")
    assert ack == (
        b"\x08\xac\x02\x10\x02\x18\x03\x20\x01"
        b"\x2a\x0d\x0a\x04type\x12\x05event"
        b"\x2a\x0c\x0a\x06biz_rt\x12\x0212"  # the handling time, after the event's headers
        b'\x42\x0c{"code":200}'  # the new payload in the old one's place
        b"\x50\x07"  # what the schema does not know goes back as it came, as the SDKs' ACKs do
    )
    assert lark_frames.decode(ack).headers == (("type", "event"), ("biz_rt", "12"))


def test_optional_strings_that_are_not_utf8_are_read_leniently() -> None:
    frame = lark_frames.decode(EVENT[:9] + b"\x3a\x02\xff\x61")  # payload_type b"\xffa"
    assert frame.payload_type == "\ufffda"
    assert lark_frames.encode(frame) == EVENT[:9] + b"\x3a\x02\xff\x61"  # echoed as it came


def test_frames_are_values() -> None:
    frame = lark_frames.decode(EVENT)
    same = lark_frames.Frame(300, 2, 3, 1, (("type", "event"),), payload=b"{}")
    assert frame == same and hash(frame) == hash(same)
    assert frame.replace(payload=None) == lark_frames.Frame(300, 2, 3, 1, (("type", "event"),))
    assert "payload=<2 bytes>" in repr(frame)
    with pytest.raises(AttributeError):
        frame.seq_id = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        frame.headers = ()  # type: ignore[misc]

"""Lark long-connection frames: ``pbbp2.Frame``, protobuf (proto2) on the wire
(docs/protocols/lark.md#frames).

With the ``lark`` extra (``protobuf``), frames go through the protobuf runtime, with the schema
below built as a descriptor at import (no protoc, no generated file): ``benchmarks/lark.py``
measured it about 30 times faster than the pure-Python codec here, which is the fallback when
protobuf is not installed. Both write the same bytes, and both raise only
:class:`ProtocolError`: strict about what the schema requires (fields 1 to 4, header key and
value), lenient about unknown fields.

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1; required uint64 LogID = 2; required int32 service = 3;
      required int32 method = 4; repeated Header headers = 5; optional string payload_encoding = 6;
      optional string payload_type = 7; optional bytes payload = 8; optional string LogIDNew = 9;
    }
"""

from __future__ import annotations

import functools
from typing import Any, Final, final

import msgspec

from ..._errors import ProtocolError

CONTROL: Final = 0
DATA: Final = 1
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@final
class Frame(msgspec.Struct, frozen=True, gc=False):
    """One frame. ``headers`` keep their order; lookups take the first match.

    A frozen msgspec record the garbage collector does not track (it can hold no reference
    cycle): cheap to build, which every frame in and out does.
    See ``docs/protocols/lark.md#headers-and-methods``.
    """

    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = CONTROL
    headers: tuple[tuple[str, str], ...] = ()
    payload_encoding: str = ""
    payload_type: str = ""
    payload: bytes | None = None
    log_id_new: str = ""

    def header(self, key: str) -> str | None:
        for name, value in self.headers:
            if name == key:
                return value
        return None

    def replace(self, **changes: Any) -> Frame:
        """A copy with ``changes`` applied (field names as in the constructor)."""
        return msgspec.structs.replace(self, **changes)

    def ack(self, payload: bytes, *, biz_rt: str) -> Frame:
        """The answer to this data frame: same ids and headers, plus the handling time."""
        return msgspec.structs.replace(
            self, headers=(*self.headers, ("biz_rt", biz_rt)), payload=payload
        )


def _varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # negative int32 values go out as ten-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(data)) + data


def encode_pure(frame: Frame) -> bytes:
    """The frame's bytes. Fields 1-4 are always written (the Go SDK requires them); optional
    strings only when set, as the Python SDK does."""
    out = bytearray()
    out += _key(1, _VARINT) + _varint(frame.seq_id)
    out += _key(2, _VARINT) + _varint(frame.log_id)
    out += _key(3, _VARINT) + _varint(frame.service)
    out += _key(4, _VARINT) + _varint(frame.method)
    for name, value in frame.headers:
        out += _bytes_field(5, _header_bytes(name, value))
    for field, text in ((6, frame.payload_encoding), (7, frame.payload_type)):
        if text:
            out += _bytes_field(field, text.encode())
    if frame.payload is not None:
        out += _bytes_field(8, frame.payload)
    if frame.log_id_new:
        out += _bytes_field(9, frame.log_id_new.encode())
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtocolError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError("varint longer than ten bytes")


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for every field of one message."""
    fields: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtocolError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            fields.append((field, wire, value))
        elif wire == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ProtocolError("length-delimited field runs past the end")
            fields.append((field, wire, data[pos : pos + length]))
            pos += length
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
            if pos > len(data):
                raise ProtocolError("fixed-size field runs past the end")
        else:
            raise ProtocolError(f"unsupported wire type {wire}")
    return fields


def _text(value: int | bytes, what: str) -> str:
    if not isinstance(value, bytes):
        raise ProtocolError(f"{what} is not length-delimited")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8") from exc


def _number(value: int | bytes, what: str, bits: int, signed: bool) -> int:
    if not isinstance(value, int):
        raise ProtocolError(f"{what} is not a varint")
    value &= (1 << 64) - 1
    if signed:
        value &= (1 << bits) - 1
        if value >= 1 << (bits - 1):
            value -= 1 << bits
    return value


HEADER_CACHE: Final = 4096  # distinct headers remembered each way (most repeat: type, sum, seq)


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header_bytes(key: str, value: str) -> bytes:
    """One ``Header`` message's bytes (key and value under 128 bytes: one-byte lengths)."""
    k, v = key.encode(), value.encode()
    if len(k) < 0x80 and len(v) < 0x80:
        return b"\x0a" + bytes((len(k),)) + k + b"\x12" + bytes((len(v),)) + v
    return _bytes_field(1, k) + _bytes_field(2, v)


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header(data: bytes) -> tuple[str, str]:
    """Parse one ``Header`` message: (key, value); the common short form read in place."""
    size = len(data)
    if size >= 4 and data[0] == 0x0A and data[1] < 0x80:
        end = 2 + data[1]
        if end + 2 <= size and data[end] == 0x12 and end + 2 + data[end + 1] == size:
            return _text(data[2:end], "header key"), _text(data[end + 2 :], "header value")
    parts = {f: v for f, _, v in _fields(data)}
    if 1 not in parts or 2 not in parts:
        raise ProtocolError("a header lacks its key or value")
    return _text(parts[1], "header key"), _text(parts[2], "header value")


def decode_pure(data: bytes) -> Frame:
    """Parse one frame; anything malformed is a :class:`ProtocolError`."""
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes is over the {MAX_FRAME_BYTES}-byte cap")
    values: dict[str, object] = {}
    headers: list[tuple[str, str]] = []
    for field, _, value in _fields(bytes(data)):
        if field == 1:
            values["seq_id"] = _number(value, "SeqID", 64, signed=False)
        elif field == 2:
            values["log_id"] = _number(value, "LogID", 64, signed=False)
        elif field == 3:
            values["service"] = _number(value, "service", 32, signed=True)
        elif field == 4:
            values["method"] = _number(value, "method", 32, signed=True)
        elif field == 5:
            if not isinstance(value, bytes):
                raise ProtocolError("a header is not length-delimited")
            headers.append(_header(value))
        elif field in (6, 7, 9):
            name = {6: "payload_encoding", 7: "payload_type", 9: "log_id_new"}[field]
            values[name] = _text(value, name)
        elif field == 8:
            if not isinstance(value, bytes):
                raise ProtocolError("payload is not length-delimited")
            values["payload"] = value
    missing = [n for n in ("seq_id", "log_id", "service", "method") if n not in values]
    if missing:
        raise ProtocolError(f"frame lacks required field(s) {missing}")
    return Frame(headers=tuple(headers), **values)  # type: ignore[arg-type]


def _protobuf_class() -> Any:
    """``pbbp2.Frame`` from a descriptor built here, or None without the protobuf runtime."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:
        return None
    field = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="trio_chatbridge/pbbp2.proto", package="trio_chatbridge.pbbp2", syntax="proto2"
    )
    # Field 5 is declared as raw bytes, not as the Header message: the same wire format
    # (length-delimited), but the runtime hands the headers over as bytes, which
    # _header/_header_bytes read and write faster than the runtime's Python objects for
    # nested messages (the codec row of docs/performance.md has the figures).
    message = fdp.message_type.add(name="Frame")
    for name, number, label, kind in (
        ("SeqID", 1, field.LABEL_REQUIRED, field.TYPE_UINT64),
        ("LogID", 2, field.LABEL_REQUIRED, field.TYPE_UINT64),
        ("service", 3, field.LABEL_REQUIRED, field.TYPE_INT32),
        ("method", 4, field.LABEL_REQUIRED, field.TYPE_INT32),
        ("payload_encoding", 6, field.LABEL_OPTIONAL, field.TYPE_STRING),
        ("payload_type", 7, field.LABEL_OPTIONAL, field.TYPE_STRING),
        ("payload", 8, field.LABEL_OPTIONAL, field.TYPE_BYTES),
        ("LogIDNew", 9, field.LABEL_OPTIONAL, field.TYPE_STRING),
    ):
        message.field.add(name=name, number=number, label=label, type=kind)
    message.field.add(name="headers", number=5, label=field.LABEL_REPEATED, type=field.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("trio_chatbridge.pbbp2.Frame")
    )


_PB: Final = _protobuf_class()
USING_PROTOBUF: Final = _PB is not None
"""True when frames go through the protobuf runtime (the ``lark`` extra is installed)."""


def encode(frame: Frame) -> bytes:
    """The frame's bytes: fields 1-4 always (the Go SDK requires them), others when set."""
    if _PB is None:
        return encode_pure(frame)
    message = _PB(
        SeqID=frame.seq_id,
        LogID=frame.log_id,
        service=frame.service,
        method=frame.method,
        headers=[_header_bytes(key, value) for key, value in frame.headers],
    )
    if frame.payload_encoding:
        message.payload_encoding = frame.payload_encoding
    if frame.payload_type:
        message.payload_type = frame.payload_type
    if frame.payload is not None:
        message.payload = frame.payload
    if frame.log_id_new:
        message.LogIDNew = frame.log_id_new
    data: bytes = message.SerializeToString()
    return data


def decode(data: bytes) -> Frame:
    """Parse one frame; anything malformed is a :class:`ProtocolError`."""
    if _PB is None:
        return decode_pure(data)
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes is over the {MAX_FRAME_BYTES}-byte cap")
    try:
        message = _PB.FromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError, and sometimes other errors
        raise ProtocolError(f"not a pbbp2 frame: {exc}") from exc
    if not message.IsInitialized():  # ParseFromString lets required fields go missing
        missing = message.FindInitializationErrors()
        raise ProtocolError(f"frame lacks required field(s) {missing}")
    return Frame(
        seq_id=message.SeqID,
        log_id=message.LogID,
        service=message.service,
        method=message.method,
        headers=tuple([_header(data) for data in message.headers]),
        payload_encoding=message.payload_encoding,
        payload_type=message.payload_type,
        payload=message.payload if message.HasField("payload") else None,
        log_id_new=message.LogIDNew,
    )

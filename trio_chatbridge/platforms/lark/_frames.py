"""Lark long-connection frames: ``pbbp2.Frame``, protobuf (proto2) on the wire [A3].

The schema is nine fields; we encode and decode it by hand (varints and length-delimited
fields), which needs no generated code and no runtime dependency. ``benchmarks/lark.py``
measures it against the ``protobuf`` runtime with the same schema. Decoding is strict about
what the schema requires (fields 1 to 4, header key and value) and lenient about unknown
fields, and raises only :class:`ProtocolError`.

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1; required uint64 LogID = 2; required int32 service = 3;
      required int32 method = 4; repeated Header headers = 5; optional string payload_encoding = 6;
      optional string payload_type = 7; optional bytes payload = 8; optional string LogIDNew = 9;
    }
"""

from __future__ import annotations

from typing import Final

import attrs

from ..._errors import ProtocolError

CONTROL: Final = 0
DATA: Final = 1
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


@attrs.frozen
class Frame:
    """One frame. ``headers`` keep their order; lookups take the first match [A4]."""

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

    def with_header(self, key: str, value: str) -> Frame:
        return attrs.evolve(self, headers=(*self.headers, (key, value)))


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


def encode(frame: Frame) -> bytes:
    """The frame's bytes. Fields 1-4 are always written (the Go SDK requires them); optional
    strings only when set, as the Python SDK does."""
    out = bytearray()
    out += _key(1, _VARINT) + _varint(frame.seq_id)
    out += _key(2, _VARINT) + _varint(frame.log_id)
    out += _key(3, _VARINT) + _varint(frame.service)
    out += _key(4, _VARINT) + _varint(frame.method)
    for name, value in frame.headers:
        header = _bytes_field(1, name.encode()) + _bytes_field(2, value.encode())
        out += _bytes_field(5, header)
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


def decode(data: bytes) -> Frame:
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
            parts = {f: v for f, _, v in _fields(value)}
            if 1 not in parts or 2 not in parts:
                raise ProtocolError("a header lacks its key or value")
            headers.append((_text(parts[1], "header key"), _text(parts[2], "header value")))
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

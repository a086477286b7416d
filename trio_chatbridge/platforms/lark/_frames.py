"""Lark long-connection frames: ``pbbp2.Frame``, protobuf (proto2) on the wire
(docs/protocols/lark.md#frames).

A :class:`Frame` is the protobuf runtime's message, its headers read once (they are checked at
decoding, and every frame's are looked up): its other fields are read straight off that
message, encoding it is the runtime's serialization, and an ACK is the event's frame read again
from its bytes with one header more and a new payload, with no record in between
(``benchmarks/lark.py`` measures it against the bare runtime). The message class is built here
from a descriptor at import (no protoc, no generated file), from this schema:

    message Header { required string key = 1; required string value = 2; }
    message Frame {
      required uint64 SeqID = 1; required uint64 LogID = 2; required int32 service = 3;
      required int32 method = 4; repeated Header headers = 5; optional string payload_encoding = 6;
      optional string payload_type = 7; optional bytes payload = 8; optional string LogIDNew = 9;
    }

Decoding raises only :class:`ProtocolError`: strict about what the schema requires (fields 1 to
4, a header's key and value, in UTF-8), lenient about the rest: unknown fields are kept (an ACK
echoes them, as the SDKs' ACKs do), and fields 6, 7 and 9, which nothing here reads, are taken
as they come (read with U+FFFD where they are not UTF-8).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import Any, Final, final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..._errors import ProtocolError

CONTROL: Final = 0
DATA: Final = 1
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024  # an event frame we handle (4x lark-oapi's 1 MiB)
# a frame we read at all (the WebSocket's limit): one over MAX_FRAME_BYTES up to this is read
# only to be ACKed and dropped, where closing the link would bring it again
# (docs/protocols/lark.md#events-fragments-and-acks)
MAX_MESSAGE_BYTES: Final = 4 * MAX_FRAME_BYTES


def _message_classes() -> tuple[Any, Any]:
    """``pbbp2.Frame`` and ``pbbp2.Header``, from a descriptor built here."""
    field = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="trio_chatbridge/pbbp2.proto", package="trio_chatbridge.pbbp2", syntax="proto2"
    )
    # Field 5 is declared as raw bytes, not as the Header message: the same wire format
    # (length-delimited), but the runtime hands each header over as its bytes, which
    # _header/_header_bytes read and write several times faster than the runtime builds and
    # reads its Python objects for nested messages. Header reads the rare header that is not
    # in the short form _header reads in place. Strings are declared as bytes (the same wire
    # format) and decoded here: the runtime would hand over invalid UTF-8 as bytes.
    header = fdp.message_type.add(name="Header")
    for name, number in (("key", 1), ("value", 2)):
        header.field.add(
            name=name, number=number, label=field.LABEL_REQUIRED, type=field.TYPE_BYTES
        )
    message = fdp.message_type.add(name="Frame")
    for name, number, label, kind in (
        ("SeqID", 1, field.LABEL_REQUIRED, field.TYPE_UINT64),
        ("LogID", 2, field.LABEL_REQUIRED, field.TYPE_UINT64),
        ("service", 3, field.LABEL_REQUIRED, field.TYPE_INT32),
        ("method", 4, field.LABEL_REQUIRED, field.TYPE_INT32),
        ("headers", 5, field.LABEL_REPEATED, field.TYPE_BYTES),
        ("payload_encoding", 6, field.LABEL_OPTIONAL, field.TYPE_BYTES),
        ("payload_type", 7, field.LABEL_OPTIONAL, field.TYPE_BYTES),
        ("payload", 8, field.LABEL_OPTIONAL, field.TYPE_BYTES),
        ("LogIDNew", 9, field.LABEL_OPTIONAL, field.TYPE_BYTES),
    ):
        message.field.add(name=name, number=number, label=label, type=kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"trio_chatbridge.pbbp2.{n}"))
        for n in ("Frame", "Header")
    )


_PB, _HEADER = _message_classes()


def _read(field: str) -> Any:
    """A read-only property that is ``field`` of a frame's message."""
    return property(operator.attrgetter(f"_message.{field}"))


@final
class Frame:
    """One frame: the runtime's message, its headers read once (a tuple of ``(key, value)``
    in their order; :meth:`header` takes the first match).

    A value: built from keywords (each defaulting as in the schema) or by :func:`decode`,
    never changed; equal to another frame when their fields are. See
    ``docs/protocols/lark.md#headers-and-methods``.
    """

    __slots__ = ("_headers", "_message")

    _message: Any
    _headers: tuple[tuple[str, str], ...]

    def __init__(
        self,
        seq_id: int = 0,
        log_id: int = 0,
        service: int = 0,
        method: int = CONTROL,
        headers: Iterable[tuple[str, str]] = (),
        payload_encoding: str = "",
        payload_type: str = "",
        payload: bytes | None = None,
        log_id_new: str = "",
    ) -> None:
        self._headers = tuple(headers)
        message = self._message = _PB(
            SeqID=seq_id,
            LogID=log_id,
            service=service,
            method=method,
            headers=[_header_bytes(key, value) for key, value in self._headers],
        )
        # Optional strings are written only when set, as the Python SDK does.
        if payload_encoding:
            message.payload_encoding = payload_encoding.encode()
        if payload_type:
            message.payload_type = payload_type.encode()
        if payload is not None:
            message.payload = payload
        if log_id_new:
            message.LogIDNew = log_id_new.encode()

    @classmethod
    def _of(cls, message: Any, headers: tuple[tuple[str, str], ...]) -> Frame:
        """The frame that is ``message``, whose headers read ``headers``."""
        frame = cls.__new__(cls)
        frame._message = message
        frame._headers = headers
        return frame

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """``(key, value)`` pairs, in their order."""
        return self._headers

    # The numbers, read off the message (read-only properties).
    seq_id: Final[int] = _read("SeqID")
    log_id: Final[int] = _read("LogID")
    service: Final[int] = _read("service")
    method: Final[int] = _read("method")

    @property
    def payload_encoding(self) -> str:
        return _lenient(self._message.payload_encoding)

    @property
    def payload_type(self) -> str:
        return _lenient(self._message.payload_type)

    @property
    def payload(self) -> bytes | None:
        """The payload, None when the frame has none (an empty one is ``b""``)."""
        message = self._message
        return message.payload if message.HasField("payload") else None

    @property
    def log_id_new(self) -> str:
        return _lenient(self._message.LogIDNew)

    def header(self, key: str) -> str | None:
        """The first header named ``key``, None if there is none."""
        for name, value in self._headers:
            if name == key:
                return value
        return None

    def _fields(self) -> dict[str, Any]:
        return {
            "seq_id": self.seq_id,
            "log_id": self.log_id,
            "service": self.service,
            "method": self.method,
            "headers": self.headers,
            "payload_encoding": self.payload_encoding,
            "payload_type": self.payload_type,
            "payload": self.payload,
            "log_id_new": self.log_id_new,
        }

    def replace(self, **changes: Any) -> Frame:
        """A copy with ``changes`` applied (field names as in the constructor)."""
        return Frame(**{**self._fields(), **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(tuple(self._fields().values()))

    def __repr__(self) -> str:
        fields = self._fields()
        payload = fields.pop("payload")
        shown = ", ".join(f"{name}={value!r}" for name, value in fields.items() if value)
        size = "None" if payload is None else f"<{len(payload)} bytes>"
        return f"Frame({shown}, payload={size})"


HEADER_CACHE: Final = 4096  # distinct headers remembered each way (most repeat: type, sum, seq)


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header_bytes(key: str, value: str) -> bytes:
    """One ``Header`` message's bytes: key, then value."""
    k, v = key.encode(), value.encode()
    if len(k) < 0x80 and len(v) < 0x80:  # one-byte lengths: the usual short form
        return b"\x0a" + bytes((len(k),)) + k + b"\x12" + bytes((len(v),)) + v
    data: bytes = _HEADER(key=k, value=v).SerializeToString()
    return data


def _lenient(data: bytes) -> str:
    return data.decode(errors="replace")


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8") from exc


@functools.lru_cache(maxsize=HEADER_CACHE)
def _header(data: bytes) -> tuple[str, str]:
    """Parse one ``Header`` message: (key, value); the common short form read in place."""
    size = len(data)
    if size >= 4 and data[0] == 0x0A and data[1] < 0x80:
        end = 2 + data[1]
        if end + 2 <= size and data[end] == 0x12 and end + 2 + data[end + 1] == size:
            return _text(data[2:end], "header key"), _text(data[end + 2 :], "header value")
    try:
        header = _HEADER.FromString(data)
    except Exception as exc:  # protobuf raises DecodeError, and sometimes other errors
        raise ProtocolError(f"not a header: {exc}") from exc
    if not header.IsInitialized():
        raise ProtocolError("a header lacks its key or value")
    return _text(header.key, "header key"), _text(header.value, "header value")


def encode(frame: Frame) -> bytes:
    """The frame's bytes: fields 1-4 always (the Go SDK requires them), others when set."""
    data: bytes = frame._message.SerializeToString()
    return data


def ack(data: bytes, payload: bytes, *, biz_rt: str) -> bytes:
    """The answer to the data frame whose bytes are ``data`` (decoded once already): the frame
    as it came (ids, headers, whatever else it carried), the handling time appended as the
    ``biz_rt`` header, ``payload`` in place of its own.

    It works from the bytes so that what waits for its ACK holds bytes, which the garbage
    collector does not track, rather than a frame and its message, which it does."""
    message = _PB.FromString(data)
    message.headers.append(_header_bytes("biz_rt", biz_rt))
    message.payload = payload
    answer: bytes = message.SerializeToString()
    return answer


def decode(data: bytes) -> Frame:
    """Parse one frame; anything malformed is a :class:`ProtocolError`."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"frame of {len(data)} bytes is over the {MAX_MESSAGE_BYTES}-byte cap")
    try:
        message = _PB.FromString(bytes(data))
    except Exception as exc:  # protobuf raises DecodeError, and sometimes other errors
        raise ProtocolError(f"not a pbbp2 frame: {exc}") from exc
    if not message.IsInitialized():  # parsing lets required fields go missing
        missing = message.FindInitializationErrors()
        raise ProtocolError(f"frame lacks required field(s) {missing}")
    return Frame._of(message, tuple(map(_header, message.headers)))

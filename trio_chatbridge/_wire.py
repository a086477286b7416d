"""Typed, lenient decoding of platform payloads: straight from JSON bytes into msgspec records.

Each platform's converter describes the payloads it reads as ``msgspec.Struct`` types, every
field optional, and decodes with a :class:`Lenient` decoder: compiled, no dict tree, and records
the garbage collector never tracks. Platforms send what their docs do not promise (a number
where a string was, an object where a list was), and the protocol notes ask us to read such a
field as missing (docs/protocols/weixin.md#lenient-json): a decode that fails validation is
repaired, the offending field dropped at the path msgspec names, and tried again. Only what
cannot be repaired (not JSON, not an object, nested too deeply) is a :class:`ProtocolError`,
one per payload.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Generic, TypeVar

import msgspec

from ._errors import ProtocolError

T = TypeVar("T")

MAX_REPAIRS: Final = 32
"""Fields one payload may have dropped before it counts as bad (each repair removes one)."""

_PATH: Final = re.compile(r"- at `\$((?:\.[^.\[`]+|\[\d+\])*)`$")
_STEP: Final = re.compile(r"\.([^.\[`]+)|\[(\d+)\]")
_encoder: Final = msgspec.json.Encoder()


def payload_bytes(payload: bytes | Mapping[str, Any], what: str) -> bytes:
    """``payload`` as JSON bytes: as given, or an already-decoded object encoded again.

    Raises :class:`ProtocolError` for anything but bytes or a JSON object."""
    if type(payload) is bytes:
        return payload
    if isinstance(payload, bytes | bytearray | memoryview):
        return bytes(payload)
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"{what} is a JSON object, got {type(payload).__name__}")
    try:
        return _encoder.encode(payload)
    except (TypeError, ValueError, OverflowError):
        pass  # an int over 64 bits, say: Python's encoder takes what its decoder gave
    try:
        return json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise lone_surrogate(what, exc) from exc
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} cannot be read: {exc}") from exc


def lone_surrogate(what: str, exc: UnicodeEncodeError) -> ProtocolError:
    """The error for a payload holding half a surrogate pair (``\\ud800``, an escape Python's
    JSON decoder takes): no text, so no store could journal it and no platform could be sent
    it; the payload is a bad one, skipped alone (docs/reliability.md)."""
    code = ord(exc.object[exc.start])
    return ProtocolError(f"{what} holds a lone surrogate (\\u{code:x}), which is no text: skipped")


class Lenient(Generic[T]):
    """Decodes JSON into ``type_``, reading a field of the wrong type as missing."""

    def __init__(self, type_: type[T], what: str) -> None:
        self._type = type_
        self._decoder = msgspec.json.Decoder(type_, strict=False)
        self.what = what
        """Names the payload in errors (``"WeChat message"``)."""
        self.first: Callable[[bytes], T] = self._decoder.decode
        """The decode alone, without repair: for a hot path that calls it with no frame of
        ours around it, and hands what it refuses (the exception raised) to :meth:`recover`."""

    def decode(self, data: bytes) -> T:
        """The record ``data`` holds; :class:`ProtocolError` if no repair makes it one."""
        try:
            return self._decoder.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            return self.recover(data, exc)

    def recover(self, data: bytes, refused: Exception) -> T:
        """What :meth:`decode` gives for ``data``, which :attr:`first` refused with
        ``refused`` (a msgspec error or RecursionError), without decoding it that way again."""
        if isinstance(refused, RecursionError):
            raise ProtocolError(f"{self.what} is nested too deeply") from refused
        return self._repaired(data)

    def _repaired(self, data: bytes) -> T:
        """Decoded as Python's decoder would (it also takes ``NaN``, ``Infinity`` and ``1e999``,
        as our JSON reader does), each field of the wrong type dropped in turn."""
        try:
            # strictly: Python's decoder would let surrogates through; a BOM it takes too
            text = data.decode("utf-8-sig")
            tree = json.loads(text)
            if "\\u" in text:  # an escape, maybe of half a surrogate pair
                json.dumps(tree, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise lone_surrogate(self.what, exc) from exc
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"{self.what} is not JSON we can read: {exc}") from exc
        for _ in range(MAX_REPAIRS + 1):
            try:
                return msgspec.convert(tree, self._type, strict=False)
            except msgspec.ValidationError as exc:
                error = str(exc)
            except RecursionError as exc:
                raise ProtocolError(f"{self.what} is nested too deeply") from exc
            if not _drop(tree, error):
                raise ProtocolError(f"{self.what}: {error}")
        raise ProtocolError(f"{self.what}: more than {MAX_REPAIRS} fields of the wrong type")


def _drop(tree: Any, message: str) -> bool:
    """Remove the value at the path a validation error names; False if there is none (the
    whole payload is of the wrong type, or the path does not lead anywhere)."""
    match = _PATH.search(message)
    if match is None or not match.group(1):
        return False
    steps = [(key, int(index) if index else None) for key, index in _STEP.findall(match.group(1))]
    node = tree
    for key, index in steps[:-1]:
        try:
            node = node[key] if index is None else node[index]
        except (KeyError, IndexError, TypeError):
            return False
    key, index = steps[-1]
    try:
        if index is None:
            del node[key]
        else:
            del node[index]
    except (KeyError, IndexError, TypeError):
        return False
    return True

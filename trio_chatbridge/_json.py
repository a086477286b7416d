"""The one bounded reader of JSON from the network: an object, or a :class:`ProtocolError`.

Every frame, event, page and API answer a connector receives goes through :func:`json_object`,
so each kind of bad input fails the same way, as our :class:`ProtocolError` with a message
saying what came: a body over its size cap, bytes that are not UTF-8, text that is not JSON,
nesting too deep for the decoder (Python's ``RecursionError``, caught, never pre-scanned for:
the common frame pays nothing), and JSON that is not an object. Like Python's own decoder it
takes ``NaN`` and ``Infinity`` (and ``1e999``) as floats: where a number matters, its reader
holds it to a range (``clamp`` in ``_receive.py``).

:func:`json_object_items` is the same for a page of items (WeChat's ``getupdates``): when
one item is undecodable (invalid UTF-8 or nesting too deep inside it), only that item is
replaced by its :class:`ProtocolError`, and the rest of the page stands.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._errors import ProtocolError
from ._redact import redact_body

if TYPE_CHECKING:  # only read_body's annotation: the decoders stay free of I/O libraries
    import httpx

MAX_JSON_BYTES: Final = 1024 * 1024
"""Default size cap of one JSON document from the network, in bytes (characters for text)."""


async def read_body(
    response: httpx.Response, what: str, *, max_bytes: int = MAX_JSON_BYTES
) -> bytes:
    """The body of a response opened with ``client.stream(...)``, read with a cap: refused as
    :class:`ProtocolError` as soon as its ``Content-Length`` or the bytes so far pass
    ``max_bytes``, so a huge answer is never buffered whole. If cancelled, nothing is kept.

    A compressed body (``Content-Encoding`` gzip or deflate) is decompressed here, never more
    than the cap allows at a time, so a small compressed bomb cannot allocate past the cap
    either (httpx's own decoding inflates a whole chunk at once). An encoding this reader
    cannot bound (``br``, ``zstd``: httpx asks for them only where their packages are
    installed) is refused, as is a corrupt or truncated compressed body.
    """
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared[:16]) > max_bytes:
        shown = declared if len(declared) <= 20 else declared[:20] + "..."
        raise ProtocolError(f"{what} announces {shown} bytes, over the {max_bytes}-byte cap")
    if response.is_stream_consumed:  # read whole already (made in memory, not streamed)
        if len(response.content) > max_bytes:
            raise ProtocolError(f"{what} runs over the {max_bytes}-byte cap")
        return response.content
    stages = _decoders(response, what)
    pieces: list[bytes] = []  # joined once at the end: each byte copied once
    size = 0
    received = False
    async with aclosing(response.aiter_raw()) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            received = received or bool(chunk)
            piece = _inflate(stages, chunk, what, max_bytes - size)
            size += len(piece)
            if size > max_bytes:
                raise ProtocolError(f"{what} runs over the {max_bytes}-byte cap")
            pieces.append(piece)
    if received and not all(stage.eof for stage in stages):
        raise ProtocolError(f"{what} ends inside its compressed body")
    return b"".join(pieces)


# zlib's window bits for each Content-Encoding it decodes (RFC 9110, 8.4.1)
_WBITS: Final = {
    "gzip": zlib.MAX_WBITS | 16,
    "x-gzip": zlib.MAX_WBITS | 16,
    "deflate": zlib.MAX_WBITS,
}


def _decoders(response: httpx.Response, what: str) -> list[Any]:
    """One zlib decompressor per ``Content-Encoding`` of ``response``, the last applied first."""
    encodings = response.headers.get("content-encoding", "").lower().split(",")
    stages = []
    for encoding in reversed([e.strip() for e in encodings]):
        if encoding in ("", "identity"):
            continue
        if encoding not in _WBITS:
            raise ProtocolError(f"{what} is in Content-Encoding {encoding[:20]!r}, not read here")
        stages.append(zlib.decompressobj(_WBITS[encoding]))
    return stages


def _inflate(stages: list[Any], data: bytes, what: str, room: int) -> bytes:
    """``data`` through each decompressor in turn, each producing at most ``room + 1`` bytes:
    enough to tell that the body runs over its cap (``room`` bytes left), never more."""
    for stage in stages:
        try:
            data = stage.decompress(data, room + 1)
        except zlib.error as exc:
            raise ProtocolError(f"{what} has a corrupt compressed body ({exc})") from exc
        if stage.unconsumed_tail:  # stopped at room + 1 bytes, with more to come
            raise ProtocolError(f"{what} runs over its size cap once decompressed")
    return data


def json_object(
    data: bytes | bytearray | memoryview | str, what: str, *, max_bytes: int = MAX_JSON_BYTES
) -> dict[str, Any]:
    """``data`` decoded as a JSON object; ``what`` names it in the error (``"Lark token"``).

    Raises :class:`ProtocolError` for a document over ``max_bytes``, invalid UTF-8, invalid
    JSON, nesting too deep to decode, or a value that is not an object.
    """
    value = json_value(data, what, max_bytes=max_bytes)
    if type(value) is not dict:
        raise ProtocolError(f"{what} is a JSON {type(value).__name__}, not an object")
    return value


def json_value(
    data: bytes | bytearray | memoryview | str, what: str, *, max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """``data`` decoded as any JSON value; the errors of :func:`json_object` but the last."""
    if len(data) > max_bytes:
        raise ProtocolError(f"{what} of {len(data)} bytes is over the {max_bytes}-byte cap")
    try:
        text = data if isinstance(data, str) else bytes(data).decode()
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise ProtocolError(f"{what} is nested too deeply to decode") from exc
    except ValueError as exc:
        head = data[:100]
        shown = redact_body(head if isinstance(head, str) else bytes(head))
        raise ProtocolError(f"{what} is not JSON ({exc}): {shown!r}") from exc


def json_object_items(
    data: bytes, what: str, key: str, *, max_bytes: int = MAX_JSON_BYTES
) -> dict[str, Any]:
    """Like :func:`json_object`, but one bad element of the array ``data[key]`` spoils only
    itself: an element that cannot be decoded (invalid UTF-8, nested too deeply) is replaced
    by the :class:`ProtocolError` saying why.

    The common page is decoded once, as a whole; only a page that fails that way is split
    (by a scan that counts brackets, so it needs no recursion) and decoded element by element.
    """
    try:
        return json_object(data, what, max_bytes=max_bytes)
    except ProtocolError as exc:
        if not isinstance(exc.__cause__, UnicodeDecodeError | RecursionError):
            raise
        split = _split_array(data, key)
        if split is None:
            raise
    start, end, elements = split
    page = json_object(data[:start] + b"[]" + data[end:], what, max_bytes=max_bytes)
    items: list[Any] = []
    for n, (first, last) in enumerate(elements):
        try:
            items.append(json_value(data[first:last], f"{what}: {key}[{n}]", max_bytes=max_bytes))
        except ProtocolError as bad:
            items.append(bad)
    page[key] = items
    return page


# a string (escapes kept whole), a bracket, a comma, or a quote that opens no string
_TOKEN: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]|"', re.DOTALL)
_COLON: Final = re.compile(rb"\s*:")
_CLOSES: Final = {ord("]"): ord("["), ord("}"): ord("{")}


def _split_array(data: bytes, key: str) -> tuple[int, int, list[tuple[int, int]]] | None:
    """Where the top-level object's array ``key`` starts and ends, and its elements' spans;
    None unless the whole document is a well-bracketed object holding such an array."""
    scan = _ArrayScan(data, json.dumps(key).encode())
    take = scan.readers()
    for match in _TOKEN.finditer(data):
        token = match.group()
        if not take[token[0]](token, match.start()):
            return None
        if not scan.stack and data[match.end() :].strip():
            return None  # something after the object
    if scan.stack or scan.span is None:
        return None
    return scan.span[0], scan.span[1], scan.elements


@attrs.define
class _ArrayScan:
    """What :func:`_split_array` has seen so far, token by token. Each reader takes a token
    and where it starts, and answers False when the scan cannot be trusted from there on."""

    data: bytes
    wanted: bytes
    """The key, as a JSON string."""
    stack: list[int] = attrs.Factory(list)
    """The brackets open around the token."""
    span: tuple[int, int] | None = None
    """The array's, once closed."""
    elements: list[tuple[int, int]] = attrs.Factory(list)
    array_at: int = -1
    element_at: int = -1
    expect_array: bool = False
    """The key was just read, with its colon: its value comes next."""

    def readers(self) -> dict[int, Callable[[bytes, int], bool]]:
        """The reader of each kind of token, by its first byte."""
        return {
            ord('"'): self._string,
            ord("["): self._open,
            ord("{"): self._open,
            ord("]"): self._close,
            ord("}"): self._close,
            ord(","): self._comma,
        }

    def _string(self, token: bytes, at: int) -> bool:
        if len(token) == 1:
            return False  # a quote that opens no string: an unterminated string
        if (
            len(self.stack) == 1
            and token == self.wanted
            and _COLON.match(self.data, at + len(token))
        ):
            if self.array_at >= 0:
                return False  # the key twice: which one counts is not this scan's call
            self.expect_array = True
        return True

    def _open(self, token: bytes, at: int) -> bool:
        char = token[0]
        if not self.stack and char != ord("{"):
            return False
        if self.expect_array and len(self.stack) == 1:
            self.expect_array = False
            if char == ord("["):
                self.array_at, self.element_at = at, at + 1
        self.stack.append(char)
        return True

    def _close(self, token: bytes, at: int) -> bool:
        char = token[0]
        if not self.stack or self.stack.pop() != _CLOSES[char]:
            return False
        closes_array = char == ord("]") and len(self.stack) == 1 and self.span is None
        if closes_array and at > self.array_at >= 0:
            if self.data[self.element_at : at].strip():
                self.elements.append((self.element_at, at))
            self.span = (self.array_at, at + 1)
        return True

    def _comma(self, token: bytes, at: int) -> bool:
        if len(self.stack) == 2 and self.array_at >= 0 and self.span is None:  # in the array
            self.elements.append((self.element_at, at))
            self.element_at = at + 1
        elif len(self.stack) == 1:
            self.expect_array = False
        return True


def get_object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``data[key]`` if it is a JSON object, else an empty one (lenient reading of payloads)."""
    value = data.get(key)
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def get_str(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, else None."""
    value = data.get(key)
    return value if isinstance(value, str) else None

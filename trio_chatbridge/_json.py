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
from collections.abc import Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Final

from ._errors import ProtocolError

if TYPE_CHECKING:  # only read_body's annotation: the decoders stay free of I/O libraries
    import httpx

MAX_JSON_BYTES: Final = 1024 * 1024
"""Default size cap of one JSON document from the network, in bytes (characters for text)."""


async def read_body(
    response: httpx.Response, what: str, *, max_bytes: int = MAX_JSON_BYTES
) -> bytes:
    """The body of a response opened with ``client.stream(...)``, read with a cap: refused as
    :class:`ProtocolError` as soon as its ``Content-Length`` or the bytes so far pass
    ``max_bytes``, so a huge answer is never buffered whole. If cancelled, nothing is kept."""
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared[:16]) > max_bytes:
        shown = declared if len(declared) <= 20 else declared[:20] + "..."
        raise ProtocolError(f"{what} announces {shown} bytes, over the {max_bytes}-byte cap")
    body = bytearray()
    async with aclosing(response.aiter_bytes()) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            body += chunk
            if len(body) > max_bytes:
                raise ProtocolError(f"{what} runs over the {max_bytes}-byte cap")
    return bytes(body)


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
        raise ProtocolError(f"{what} is not JSON ({exc}): {data[:100]!r}") from exc


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
    wanted = json.dumps(key).encode()
    stack: list[int] = []
    span: tuple[int, int] | None = None
    elements: list[tuple[int, int]] = []
    array_at = element_at = -1
    expect_array = False
    for match in _TOKEN.finditer(data):
        token, at = match.group(), match.start()
        char = token[0]
        if token == b'"':
            return None  # an unterminated string: this scan cannot be trusted
        if char == ord('"'):
            if len(stack) == 1 and token == wanted and _COLON.match(data, match.end()):
                if array_at >= 0:
                    return None  # the key twice: which one counts is not this scan's call
                expect_array = True
                array_at = -1
            continue
        if char in (ord("["), ord("{")):
            if not stack and char != ord("{"):
                return None
            if expect_array and len(stack) == 1:
                expect_array = False
                if char == ord("["):
                    array_at, element_at = at, at + 1
            stack.append(char)
        elif char in _CLOSES:
            if not stack or stack.pop() != _CLOSES[char]:
                return None
            if len(stack) == 1 and at > array_at >= 0 and span is None and char == ord("]"):
                if data[element_at:at].strip():
                    elements.append((element_at, at))
                span = (array_at, at + 1)
        elif len(stack) == 2 and array_at >= 0 and span is None:  # a comma in the array
            elements.append((element_at, at))
            element_at = at + 1
        elif len(stack) == 1:
            expect_array = False
        if not stack and data[match.end() :].strip():
            return None
    if stack or span is None:
        return None
    return span[0], span[1], elements


def get_object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``data[key]`` if it is a JSON object, else an empty one (lenient reading of payloads)."""
    value = data.get(key)
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def get_str(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, else None."""
    value = data.get(key)
    return value if isinstance(value, str) else None

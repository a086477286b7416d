"""The one bounded reader of network JSON: every kind of bad input is our ProtocolError."""

from __future__ import annotations

import contextlib
import gzip
import json
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_chatbridge import ProtocolError
from trio_chatbridge._json import MAX_JSON_BYTES, json_object, json_object_items, read_body

DEEP = b"[" * 20_000 + b"]" * 20_000  # far deeper than the interpreter can recurse

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"a": ' + DEEP + b"}", "nested too deeply"),
        ('{"a": ' + DEEP.decode() + "}", "nested too deeply"),
        (b'{"text": "\xff\xfe"}', "not UTF-8"),
        (b'{"a": 1', "not JSON"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b'{"a": "' + b"x" * MAX_JSON_BYTES + b'"}', "over the 1048576-byte cap"),
        ('\ufeff{"a": 1}'.encode(), "not JSON"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
    ],
)
def test_bad_input_is_a_protocol_error_saying_what_came(data: bytes | str, says: str) -> None:
    with pytest.raises(ProtocolError, match=says) as caught:
        json_object(data, "test frame")
    assert str(caught.value).startswith("test frame")


def test_the_cap_is_set_per_call_site() -> None:
    assert json_object(b'{"a": "0123456789"}', "x", max_bytes=19) == {"a": "0123456789"}
    with pytest.raises(ProtocolError, match="over the 18-byte cap"):
        json_object(b'{"a": "0123456789"}', "x", max_bytes=18)


@pytest.mark.slow
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_any_object_comes_back_as_it_went(value: dict[str, Any]) -> None:
    data = json.dumps(value).encode()
    assert json_object(data, "x") == value
    assert json_object(data.decode(), "x") == value


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_raises_only_protocol_errors(data: bytes | str) -> None:
    with contextlib.suppress(ProtocolError):
        assert isinstance(json_object(data, "x"), dict)


def test_one_undecodable_item_spoils_only_itself() -> None:
    page = (
        b'{"ret": 0, "msgs": [{"n": 1}, {"deep": '
        + DEEP
        + b'}, {"text": "caf\xe9"}, {"n": "[\\"]"}, 7], "get_updates_buf": "next"}'
    )
    decoded = json_object_items(page, "page", "msgs")
    assert decoded["ret"] == 0 and decoded["get_updates_buf"] == "next"
    first, deep, latin1, tricky, seven = decoded["msgs"]
    assert first == {"n": 1} and tricky == {"n": '["]'} and seven == 7
    assert isinstance(deep, ProtocolError) and "page: msgs[1] is nested too deeply" in str(deep)
    assert isinstance(latin1, ProtocolError) and "msgs[2] is not UTF-8" in str(latin1)


@pytest.mark.parametrize(
    "page",
    [
        b'{"msgs": [' + DEEP + b"]",  # not closed
        b'{"msgs": [1], "other": ' + DEEP + b"}",  # the bad part is outside the items
        b'{"msgs": [1], "msgs": [' + DEEP + b"]}",  # the key twice
        b'{"msgs": [1, "\xff]}',  # a string never closed
        b'["msgs", ' + DEEP + b"]",  # not an object
        b'{"msgs": {"a": ' + DEEP + b"}}",  # not an array
        b'{"msgs": [1]} ' + DEEP,  # something after the object
        b'{"a": "\xff", "msgs": []}',
    ],
)
def test_a_page_that_cannot_be_split_safely_is_bad_as_a_whole(page: bytes) -> None:
    with pytest.raises(ProtocolError):
        json_object_items(page, "page", "msgs")


@pytest.mark.slow
@given(st.dictionaries(st.text(), json_values, max_size=4), st.lists(json_values, max_size=5))
def test_a_split_page_holds_what_a_whole_decode_would(
    page: dict[str, Any], items: list[Any]
) -> None:
    """Forced down the split path by one deep item appended: the rest is decoded the same."""
    page.pop("msgs", None)
    data = json.dumps({**page, "msgs": [*items, "DEEP"]}).encode().replace(b'"DEEP"', DEEP)
    decoded = json_object_items(data, "page", "msgs")
    assert isinstance(decoded["msgs"][-1], ProtocolError)
    assert decoded == {**page, "msgs": [*items, decoded["msgs"][-1]]}


# Stopping early leaves httpx's nested response iterators to the garbage collector (Trio
# closes them then, with a ResourceWarning): the price of not reading the rest.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_body_is_read_with_a_cap_never_whole() -> None:
    sent: list[int] = []

    async def endless() -> Any:
        for _ in range(1000):
            sent.append(1)
            yield b"x" * 65536

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/announced":
            return httpx.Response(200, headers={"content-length": "99999999999999999999"})
        if request.url.path == "/absurd":  # too many digits for int(): never a ValueError
            return httpx.Response(200, headers={"content-length": "9" * 5000})
        if request.url.path == "/whole":
            return httpx.Response(200, content=b"x" * (MAX_JSON_BYTES + 1))
        return httpx.Response(200, content=endless())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        async with http.stream("GET", "http://127.0.0.1/endless") as response:
            with pytest.raises(ProtocolError, match="runs over the 1048576-byte cap"):
                await read_body(response, "answer")
        assert len(sent) <= 17  # 1 MiB and one chunk, not 64 MiB
        async with http.stream("GET", "http://127.0.0.1/absurd") as response:
            with pytest.raises(ProtocolError, match="announces 9999"):
                await read_body(response, "answer")
        async with http.stream("GET", "http://127.0.0.1/whole") as response:
            with pytest.raises(ProtocolError, match="announces 1048577 bytes"):
                await read_body(response, "answer")
        async with http.stream("GET", "http://127.0.0.1/announced") as response:
            with pytest.raises(ProtocolError, match="announces 99999999999999999999 bytes"):
                await read_body(response, "answer")


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


BOMB: Final = gzipped(b"\0" * (64 * 2**20))  # 64 MiB of zeros in 64 KiB


async def streamed(data: bytes, chunk: int) -> AsyncIterator[bytes]:
    """``data`` in ``chunk``-byte pieces (a body given as bytes, httpx decodes at once, before
    any reader sees it; a real connection streams)."""
    for at in range(0, len(data), chunk):
        yield data[at : at + chunk]


@asynccontextmanager
async def answer(encoding: str, body: bytes, chunk: int = 100) -> AsyncIterator[httpx.Response]:
    """A streamed response whose body is ``body``, in Content-Encoding ``encoding``."""

    def handler(request: httpx.Request) -> httpx.Response:
        content = streamed(body, chunk)
        return httpx.Response(200, headers={"content-encoding": encoding}, content=content)

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http,
        http.stream("GET", "http://127.0.0.1/") as response,
    ):
        yield response


# As above: a body refused half-way leaves httpx's iterators to the garbage collector.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize(
    ("encoding", "body"), [("gzip", BOMB), ("gzip, gzip", gzipped(BOMB))], ids=["once", "twice"]
)
async def test_a_compressed_bomb_is_refused_before_it_is_inflated(
    encoding: str, body: bytes
) -> None:
    """The cap applies to the decompressed bytes as they come: a 64 KiB gzip body (in one
    chunk) that would inflate to 64 MiB never allocates much more than the cap (httpx's own
    decoding inflates a whole chunk at once: 64 MiB)."""
    tracemalloc.start()
    try:
        async with answer(encoding, body, chunk=len(body)) as response:
            with pytest.raises(ProtocolError, match="runs over"):
                await read_body(response, "answer")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_JSON_BYTES


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzipped),
        ("x-gzip", gzipped),
        ("deflate", zlib.compress),
        ("gzip, deflate", lambda data: zlib.compress(gzipped(data))),
        ("identity", lambda data: data),
        ("", lambda data: data),
    ],
)
async def test_a_compressed_body_is_read_as_sent(
    encoding: str, encode: Callable[[bytes], bytes]
) -> None:
    text = json.dumps({"text": "héllo " * 10_000}).encode()
    async with answer(encoding, encode(text)) as response:  # in small chunks
        assert await read_body(response, "answer") == text
    async with answer(encoding, encode(text)) as response:
        assert await read_body(response, "answer", max_bytes=len(text)) == text
    async with answer(encoding, encode(text)) as response:
        with pytest.raises(ProtocolError, match="runs over"):
            await read_body(response, "answer", max_bytes=len(text) - 1)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize(
    ("encoding", "body", "says"),
    [
        ("gzip", gzipped(b'{"a": 1}')[:-12], "ends inside its compressed body"),
        ("gzip", b"not gzip at all", "corrupt compressed body"),
        ("deflate", gzipped(b'{"a": 1}'), "corrupt compressed body"),
        ("br", b"\x0b\x03\x80{}\x03", "Content-Encoding 'br', not read here"),
        ("gzip, zstd", b"{}", "Content-Encoding 'zstd', not read here"),
    ],
    ids=["truncated", "not-gzip", "gzip-as-deflate", "br", "zstd"],
)
async def test_a_bad_or_unknown_encoding_is_a_protocol_error(
    encoding: str, body: bytes, says: str
) -> None:
    async with answer(encoding, body) as response:
        with pytest.raises(ProtocolError, match=says):
            await read_body(response, "answer")

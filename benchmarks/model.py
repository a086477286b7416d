"""The message model's cost per message: decoding a WeChat page and keeping the messages, and
the journal's encoding of a message.

Reported in one run: CPU per message and GC-tracked objects per kept message for a page decoded
as the WeChat connector did before it handed bytes on (Python's ``json.loads``, then
``weixin.to_message`` on each decoded entry) and as it does now (its protocol core's
``Poller.receive``: msgspec splits the page into each entry's bytes, ``weixin.to_message``
decodes each into typed records, the context tokens and cursor are read), against the bare
decode of the page (``json.loads`` alone, keeping nothing). Then the journal's encoding, msgspec
JSON (what the stores write) against msgpack, each way.
"""

from __future__ import annotations

import functools
import gc
import json
import time
from collections.abc import Callable
from typing import Any, Final

import msgspec

import trio_chatbridge as cb
from trio_chatbridge.connectors import Page
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _protocol as weixin_protocol

from ._util import REPEAT, report

PAGES = 200
PAGE = 100  # messages per getupdates page


def _page(first: int) -> bytes:
    """One getupdates answer of PAGE text messages, as the emulator writes it."""
    msgs = [
        {
            "seq": n,
            "message_id": 7_448_678_501_208_393_000 + n,
            "from_user_id": f"user{n % 1000}@im.wechat",
            "to_user_id": "bot@im.bot",
            "create_time_ms": 1_764_000_000_000 + n,
            "session_id": f"session-{n % 1000}",
            "message_type": 1,
            "message_state": 2,
            "item_list": [{"type": 1, "text_item": {"text": f"message {n}"}}],
            "context_token": f"ctx-{n}-0123abcd",
        }
        for n in range(first, first + PAGE)
    ]
    return json.dumps({"ret": 0, "msgs": msgs, "get_updates_buf": "cursor"}).encode()


_poller: Final = weixin_protocol.Poller(
    "token", "http://127.0.0.1/", functools.partial(weixin.to_message, "bot")
)


def _json_loads_only(page: bytes) -> list[Any]:
    json.loads(page)
    return []


def _decoded_entries(page: bytes) -> list[Any]:
    """As the WeChat connector did before: the page decoded, each entry dict converted."""
    return [weixin.to_message("bot", raw) for raw in json.loads(page)["msgs"]]


def _entry_bytes(page: bytes) -> list[Any]:
    """As the WeChat connector does: its core splits the page, converts each entry's bytes."""
    event = _poller.receive(page, 0.0)
    assert isinstance(event, Page)
    return list(event.messages)


def _measure(convert: Callable[[bytes], list[Any]], pages: list[bytes]) -> tuple[float, float]:
    """CPU seconds per message (best of REPEAT) and tracked objects per kept message."""
    best = float("inf")
    for _ in range(REPEAT):
        gc.collect()
        start = time.process_time()
        kept = [m for page in pages for m in convert(page)]
        best = min(best, time.process_time() - start)
        del kept
    gc.collect()
    before = len(gc.get_objects())
    kept = [m for page in pages for m in convert(page)]
    gc.collect()  # tuples of untracked objects are untracked by a collection
    tracked = (len(gc.get_objects()) - before - 1) / max(len(kept), 1)  # the list itself
    return best / (len(pages) * PAGE), tracked


def _codec_cost(encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> str:
    messages = [m for m in _entry_bytes(_page(0)) if m is not None]
    best_encode = best_decode = float("inf")
    for _ in range(REPEAT):
        start = time.process_time()
        for _ in range(20):
            bodies = [encode(m) for m in messages]
        best_encode = min(best_encode, time.process_time() - start)
        start = time.process_time()
        for _ in range(20):
            again = [decode(b) for b in bodies]
        best_decode = min(best_decode, time.process_time() - start)
    assert again == messages
    count = 20 * len(messages)
    size = sum(map(len, bodies)) / len(bodies)
    return (
        f"encode {best_encode / count * 1e6:4.2f} us, decode {best_decode / count * 1e6:4.2f} us"
        f" CPU/message, {size:.0f} bytes"
    )


def bench_model() -> None:
    pages = [_page(i * PAGE) for i in range(PAGES)]
    loads = _measure(_json_loads_only, pages)
    decoded = _measure(_decoded_entries, pages)
    entries = _measure(_entry_bytes, pages)
    rows = [
        ("json.loads of the page alone (nothing kept)", f"{loads[0] * 1e6:5.2f} us CPU/message"),
        *(
            (name, f"{cpu * 1e6:5.2f} us CPU/message, {tracked:4.2f} tracked objects per kept")
            for name, (cpu, tracked) in (
                ("before: json.loads + weixin.to_message(entry dict)", decoded),
                ("connector's core: Poller.receive (split, entry bytes)", entries),
            )
        ),
    ]
    json_decoder = msgspec.json.Decoder(cb.Message)
    msgpack_decoder = msgspec.msgpack.Decoder(cb.Message)
    rows.append(
        ("journal encoding, msgspec JSON", _codec_cost(msgspec.json.encode, json_decoder.decode))
    )
    rows.append(
        ("journal encoding, msgpack", _codec_cost(msgspec.msgpack.encode, msgpack_decoder.decode))
    )
    report(f"message model: {PAGES * PAGE:,} WeChat messages in pages of {PAGE}, kept", rows)


BENCHMARKS = {"model": bench_model}

"""The message model's cost per message: decoding a WeChat page and keeping the messages.

Groundwork for the collector-free message model of issue 12 (not built yet): today's path
(``json.loads`` + ``weixin.to_message`` into attrs records) against a candidate measured here
only, msgspec decoding the page straight into typed records and a frozen message record, both
``gc=False``. Reported: CPU per message and GC-tracked objects per kept message, in one run.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from trio_chatbridge.platforms import weixin

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


# -- the candidate (measured here only) ------------------------------------------------------


class _TextItem(msgspec.Struct, gc=False):
    text: str = ""


class _Item(msgspec.Struct, gc=False):
    type: int = 0
    text_item: _TextItem | None = None


class _Wire(msgspec.Struct, gc=False):
    message_id: int = 0
    from_user_id: str = ""
    create_time_ms: int = 0
    message_type: int = 0
    message_state: int = 0
    item_list: list[_Item] = []
    context_token: str = ""


class _Updates(msgspec.Struct, gc=False):
    msgs: list[msgspec.Raw] = []
    get_updates_buf: str = ""


class _Text(msgspec.Struct, frozen=True, gc=False):
    text: str


class _Chat(msgspec.Struct, frozen=True, gc=False):
    id: str
    kind: str = "direct"


class _Message(msgspec.Struct, frozen=True, gc=False):
    platform: str
    account: str
    id: str
    chat: _Chat
    sender: _Chat
    parts: tuple[_Text, ...]
    timestamp: float
    context_token: str
    raw: msgspec.Raw  # this message's undecoded bytes: decoded on demand


_updates = msgspec.json.Decoder(_Updates)
_wire = msgspec.json.Decoder(_Wire)


def _candidate(page: bytes) -> list[Any]:
    out = []
    for raw in _updates.decode(page).msgs:
        w = _wire.decode(raw)
        chat = _Chat(w.from_user_id)
        parts = tuple(_Text(i.text_item.text) for i in w.item_list if i.text_item is not None)
        out.append(
            _Message(
                "weixin",
                "bot",
                str(w.message_id),
                chat,
                chat,
                parts,
                w.create_time_ms / 1000,
                w.context_token,
                raw,
            )
        )
    return out


def _today(page: bytes) -> list[Any]:
    return [weixin.to_message("bot", raw) for raw in json.loads(page)["msgs"]]


def _faster_json(page: bytes) -> list[Any]:
    """A faster JSON decoder alone, into the same dicts and attrs records as today."""
    return [weixin.to_message("bot", raw) for raw in msgspec.json.decode(page)["msgs"]]


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
    tracked = (len(gc.get_objects()) - before - 1) / len(kept)  # the list itself
    return best / len(kept), tracked


def bench_model() -> None:
    pages = [_page(i * PAGE) for i in range(PAGES)]
    today = _measure(_today, pages)
    faster_json = _measure(_faster_json, pages)
    candidate = _measure(_candidate, pages)
    rows = [
        (name, f"{cpu * 1e6:5.2f} us CPU/message, {tracked:4.1f} tracked objects per kept message")
        for name, (cpu, tracked) in (
            ("today: json.loads + weixin.to_message (attrs)", today),
            ("msgspec.json.decode to dicts + to_message", faster_json),
            ("candidate: msgspec typed decode, gc=False Structs", candidate),
        )
    ]
    rows.append(("CPU, candidate / today", f"{candidate[0] / today[0]:.2f}x"))
    report(f"message model: {PAGES * PAGE:,} WeChat messages in pages of {PAGE}, kept", rows)


BENCHMARKS = {"model": bench_model}

"""How a store writes a message: JSON by msgspec, straight from the record and back.

JSON rather than msgpack (measured in ``benchmarks/model.py``: msgpack is about 1 µs a message
faster each way): every store keeps text (SQLite's ``body`` column, Redis replies decoded as
text), and a row stays readable with ``sqlite3`` or ``redis-cli``. ``raw`` is written as
base64, as msgspec writes bytes.

Rows written before messages were msgspec records (``Message.to_json``, up to 0.x of
2026-12) hold ``reply_handle``, ``raw`` and ``Media.ref`` as JSON objects: they are read too,
so messages journaled before an upgrade are still replayed after it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from .._errors import ProtocolError
from .._messages import Message

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Message)
log = logging.getLogger("trio_chatbridge.stores")


def encode_message(message: Message) -> str:
    """The journal's text for ``message``."""
    return _encoder.encode(message).decode()


def encodes(message: Message) -> bool:
    """Whether ``message`` can be journaled (all its text is Unicode); logs nothing."""
    try:
        _encoder.encode(message)
    except UnicodeEncodeError:
        return False
    return True


def unencodable(messages: Sequence[Message]) -> dict[int, ProtocolError]:
    """The messages that cannot be journaled, by index, each with its error: a text in it is
    not Unicode (a lone surrogate, which only a connector's own code makes). Called once an
    encoding failed (each message is encoded again): no cost while all encode. Each is
    logged; the store sets it aside alone, journals the others and counts it in
    ``undecodable``, and the put calls it not new, so the connector acknowledges it."""
    refused: dict[int, ProtocolError] = {}
    for i, message in enumerate(messages):
        try:
            _encoder.encode(message)
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start : exc.end]
            refused[i] = error = ProtocolError(
                f"message {message.id!r} of {message.platform}:{message.account!r} set aside, "
                f"neither journaled nor handled: it holds text that is not Unicode ({bad!r}, "
                f"{exc.reason}). Fix the connector that made it: replace or drop lone "
                "surrogates (text.encode('utf-8', 'replace').decode())"
            )
            log.error("%s", error)
    return refused


def decode_message(body: str | bytes) -> Message:
    """The message ``body`` holds (either format); :class:`ProtocolError` if it holds none.

    Nothing else escapes, whatever ``body`` holds: the typed decoder can stop at a validation
    error before it reaches text the untyped one then fails to parse (``{"account": null, "x":
    Infinity}``), so the second try catches msgspec's decode errors too."""
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        try:
            return _from_first_format(msgspec.json.decode(body))
        except (msgspec.MsgspecError, TypeError, AttributeError) as again:
            raise ProtocolError(f"not a serialised Message: {exc}") from again
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a serialised Message: {exc}") from exc


def _from_first_format(data: Any) -> Message:
    """A row of the first format: objects where a Handle and bytes now are."""
    data["reply_handle"] = _entries(data.get("reply_handle"))
    raw = data.get("raw")
    data["raw"] = msgspec.json.encode(raw) if raw else b""
    for part in data.get("parts") or ():
        media = part.get("media")
        if media is not None:
            media["ref"] = _entries(media.get("ref"))
    return msgspec.convert(data, Message)


def _entries(mapping: Any) -> dict[str, Any]:
    return {"entries": list((mapping or {}).items())}

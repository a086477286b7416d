"""Decoding JSON from the network: an object, or a :class:`ProtocolError` saying what came."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._errors import ProtocolError


def json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """``data`` decoded as a JSON object; ``what`` names it in the error (``"Lark token"``)."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} answered with invalid JSON: {data[:100]!r}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} answered with a JSON {type(value).__name__}, not an object")
    return value


def get_object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``data[key]`` if it is a JSON object, else an empty one (lenient reading of payloads)."""
    value = data.get(key)
    return value if type(value) is dict or isinstance(value, Mapping) else {}


def get_str(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, else None."""
    value = data.get(key)
    return value if isinstance(value, str) else None

"""Server-given numbers held to a range: pure, so that a sans-I/O protocol core can use it
without importing trio through ``_receive.py``."""

from __future__ import annotations

from typing import Final

MAX_TIMESTAMP: Final = 1e11
"""Seconds since the epoch beyond which a platform's timestamp is nonsense (year 5138)."""
_NUMBER: Final = (int, float)  # a tuple built once: ``int | float`` makes a union per call


def clamp(value: object, low: float, high: float, default: float) -> float:
    """A server-given number (of seconds, say) held to ``[low, high]``; ``default`` when it
    is no number at all (a string, a bool, NaN). Infinities and huge ints end up at a bound."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or value != value:
        return default
    return float(min(max(value, low), high))

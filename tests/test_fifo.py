"""Bounded insertion-ordered dicts: the oldest keys forgotten in halves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_chatbridge._fifo import trim


@given(st.integers(min_value=2, max_value=64), st.integers(min_value=0, max_value=500))
def test_trim_keeps_the_newest_in_order_within_the_bound(most: int, inserted: int) -> None:
    entries: dict[int, None] = {}
    for key in range(inserted):
        entries[key] = None
        trim(entries, most)
        assert len(entries) <= most
        # the newest half of the bound is always there, in insertion order
        assert list(entries)[-(most // 2) :] == list(range(key + 1))[-(most // 2) :]
    assert list(entries) == sorted(entries)

"""``clamp``: a server-given number held to a range, anything else the default."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from trio_chatbridge._ranges import clamp

LOW, HIGH, DEFAULT = -5.0, 100.0, 7.5


@given(st.integers() | st.floats())
def test_a_number_is_held_to_the_range(value: float) -> None:
    held = clamp(value, LOW, HIGH, DEFAULT)
    if math.isnan(value):
        assert held == DEFAULT
    else:
        assert type(held) is float and held == min(max(value, LOW), HIGH)


@given(st.booleans() | st.none() | st.text() | st.binary() | st.lists(st.integers()))
def test_anything_else_is_the_default(value: Any) -> None:
    assert clamp(value, LOW, HIGH, DEFAULT) == DEFAULT


def test_known_answers() -> None:
    assert [clamp(v, LOW, HIGH, DEFAULT) for v in (3, -math.inf, math.inf, 10**400, "3")] == [
        3.0,
        LOW,
        HIGH,
        HIGH,
        DEFAULT,
    ]

"""Hostile TTLs given to the stores' ``set``: every store answers the same, as docs/stores.md
says (a ``ttl`` that is not a number of seconds over 0 and at most 1e12, or is a bool,
raises ``ValueError``), and
none answers a bad argument with a ``StoreError`` "retrying with backoff", which a connector
would retry for good."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_stores import store_factory

import trio_chatbridge as cb


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[cb.Store]:
    async with store_factory(request.param, request, tmp_path)() as store:
        yield store


@pytest.mark.parametrize(
    ("ttl", "kind"),
    [(ttl, kind) for ttl in (1e17, 1e300) for kind in ("memory", "sqlite", "redis")],
)
async def test_a_huge_ttl_is_kept_or_refused_as_a_bad_argument_by_every_store(
    request: pytest.FixtureRequest, tmp_path: Path, ttl: float, kind: str
) -> None:
    """Past about 9.2e15 s Redis refuses the expiry ('value is not an integer or out of
    range'), where the other stores keep the value: a RedisStore raised StoreError, 'retrying
    with backoff', for an argument no retry can fix."""
    async with store_factory(kind, request, tmp_path)() as store:
        try:
            await store.set("p", "a", "k", "v", ttl=ttl)
        except ValueError as exc:
            assert "ttl" in str(exc)
            assert await store.get("p", "a", "k") is None
        else:
            assert await store.get("p", "a", "k") == "v"


async def test_a_bool_is_not_taken_for_a_ttl_of_one_second(any_store: cb.Store) -> None:
    """``ttl=True`` ("expire it") was kept for 1 s, ``ttl=False`` refused as not over 0: a
    bool is refused as not a number of seconds."""
    for ttl in (True, False):
        with pytest.raises(ValueError, match="ttl"):
            await any_store.set("p", "a", "k", "v", ttl=ttl)
    assert await any_store.get("p", "a", "k") is None

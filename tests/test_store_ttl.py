"""Values stored with a time-to-live: read until it passes, missing after, forgotten by the
store (Redis expires them itself; the others when the journal is pruned); the cursor saved
with them keeps none. WeChat's context tokens are stored so, for the longest reported life."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_stores import Clock, raw_client, store_factory

import trio_chatbridge as cb
from trio_chatbridge.platforms import weixin
from trio_chatbridge.stores import _sqlite
from trio_chatbridge.testing import FakeConnector, WeixinEmulator, running_bridge


async def _expires(store: cb.Store, advance: Callable[[float], Awaitable[object]]) -> None:
    """What every store does with TTLs, time moved on by ``advance``."""
    await store.set("p", "a", "token", "t1", ttl=10)
    await store.set_many("p", "a", {"x": "1", "y": "2"}, ttl=20)
    await store.set_cursor("p", "a", "c1", with_values={"ctx:u": "u1"}, values_ttl=10)
    await store.set("p", "b", "token", "kept")  # another account, no TTL
    await advance(9)
    assert await store.get("p", "a", "token") == "t1"
    assert await store.get("p", "a", "ctx:u") == "u1"
    await advance(2)  # 11 s: the 10 s values are gone, the 20 s ones and the cursor are not
    assert await store.get("p", "a", "token") is None
    assert await store.get("p", "a", "ctx:u") is None
    assert (await store.get("p", "a", "x"), await store.get("p", "a", "y")) == ("1", "2")
    assert await store.get_cursor("p", "a") == "c1"
    await store.set("p", "a", "x", "forever")  # stored again without a TTL: it has none now
    await store.set("p", "a", "y", "again", ttl=30)  # or a new one, from now
    await advance(10)  # 21 s
    assert (await store.get("p", "a", "x"), await store.get("p", "a", "y")) == ("forever", "again")
    await store.set("p", "a", "token", "t2", ttl=10)  # stored again once gone
    assert await store.get("p", "a", "token") == "t2"
    await store.set("p", "a", "token", None)  # deleted before its TTL
    assert await store.get("p", "a", "token") is None
    await advance(1_000_000)
    assert await store.get("p", "a", "x") == "forever"
    assert await store.get("p", "a", "y") is None
    assert await store.get("p", "b", "token") == "kept"
    assert await store.get_cursor("p", "a") == "c1"


async def test_memory_values_expire_on_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    store = cb.MemoryStore()
    await _expires(store, trio.sleep)
    await store.set_many("p", "a", {f"k{i}": "v" for i in range(100)}, ttl=5)
    await trio.sleep(6)
    await store.journal_prune(0)  # the periodic prune forgets the values past their TTL
    assert not any(key.startswith("k") for key in store._values[("p", "a")])  # not just unreadable


async def test_memory_keeps_nothing_for_accounts_whose_values_and_messages_are_all_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A bridge that saw many accounts come and go kept an empty dict of values and an empty
    dedup index for each, for good, once their values expired and their messages were
    pruned: the periodic prune now drops them."""
    store = cb.MemoryStore(wall_clock=trio.current_time)
    for n in range(1000):
        await store.set_many("fake", f"acct{n}", {"context_token:u": "t"}, ttl=5)
        message = FakeConnector(f"acct{n}").message("hi")
        await store.journal_add([message])
        await store.journal_done([message])
    await store.set("fake", "kept", "cursor", "c")  # no TTL: stays
    await trio.sleep(6)
    assert await store.journal_prune(trio.current_time()) == 1000
    assert list(store._values) == [("fake", "kept")]
    assert store._index == {}
    assert await store.get("fake", "kept", "cursor") == "c"


async def test_sqlite_values_expire_on_its_wall_clock_and_a_prune_deletes_them(
    tmp_path: Path,
) -> None:
    clock = Clock()

    async def advance(seconds: float) -> None:
        clock.now += seconds

    path = tmp_path / "ttl.db"
    async with cb.SQLiteStore(path, wall_clock=clock) as store:
        await _expires(store, advance)
        await store.set_many("p", "a", {f"k{i}": "v" for i in range(100)}, ttl=5)
    async with cb.SQLiteStore(path, wall_clock=clock) as reopened:  # the TTL is in the file
        assert await reopened.get("p", "a", "k1") == "v"
        await advance(6)
        assert await reopened.get("p", "a", "k1") is None
        await reopened.journal_prune(0)
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT key FROM kv WHERE platform = 'p' ORDER BY key").fetchall()
    assert rows == [("_cursor",), ("token",), ("x",)]  # a's cursor and x, b's token: no others


async def test_sqlite_deletes_expired_values_a_batch_a_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prune deletes the values past their TTL a bounded batch at a time, each batch a
    transaction of its own: the store's other calls get their turn between two (a day of
    expired context tokens is not one long write that holds them all back)."""
    monkeypatch.setattr(_sqlite, "KV_PRUNE_BATCH", 10)
    clock = Clock()
    pruned = trio.Event()
    writes_before = 0

    async def prune(store: cb.SQLiteStore) -> None:
        await store.journal_prune(0)
        pruned.set()

    async with cb.SQLiteStore(tmp_path / "batches.db", wall_clock=clock) as store:
        await store.set_many("p", "a", {f"k{i}": "v" for i in range(25)}, ttl=5)
        await store.set("p", "a", "kept", "v")
        clock.now += 6
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prune, store)
            while not pruned.is_set():  # each queued behind the prune's call in the thread
                await store.set("p", "b", "turn", str(writes_before))
                writes_before += 1
        # a write's turn after each of its transactions: the journal's, then 10, 10 and 5
        # values (one transaction for all of them gives one turn fewer, or two)
        assert writes_before >= 4
        assert await store.get("p", "a", "kept") == "v"
    with closing(sqlite3.connect(tmp_path / "batches.db")) as db:
        rows = db.execute("SELECT key FROM kv WHERE account = 'a'").fetchall()
    assert rows == [("kept",)]


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_redis_values_are_keys_of_their_own_that_redis_expires(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = store_factory(kind, request, tmp_path)()
    assert isinstance(store, cb.RedisStore)
    raw = raw_client(kind, request)
    own = f"{store.prefix}{{p:a}}:kv:ctx:u"  # the layout stores/_redis.py documents
    async with store, raw:

        async def advance(seconds: float) -> None:
            """Every value of the test that much nearer its expiry, as if the time passed."""
            for key in await _own_keys(raw, store.prefix):
                left = await raw.pttl(key)
                if left > 0:
                    if left > seconds * 1000:
                        await raw.pexpire(key, left - int(seconds * 1000))
                    else:
                        await raw.delete([key])

        await store.set_cursor("p", "a", "c1", with_values={"ctx:u": "u1"}, values_ttl=3600)
        assert 3_590_000 < await raw.pttl(own) <= 3_600_000
        assert await raw.hget(f"{store.prefix}{{p:a}}:kv", "ctx:u") is None  # not in the hash
        await store.set("p", "a", "ctx:u", "u2")  # without a TTL: back in the hash
        assert await raw.exists([own]) == 0
        assert await store.get("p", "a", "ctx:u") == "u2"
        await store.set("p", "a", "ctx:u", None)
        await _expires(store, advance)


async def test_redis_reads_a_value_an_older_version_wrote_over_one_with_a_ttl(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """During a rolling upgrade, a process of a version without TTLs writes a peer's new
    context token to the hash (HSET), leaving the key of its own that this version wrote
    earlier: the newer value (the hash's) is read, not the older one until it expires. (This
    version never leaves both: each of its writes clears the other place.)"""
    store = store_factory("redis", request, tmp_path)()
    assert isinstance(store, cb.RedisStore)
    raw = raw_client("redis", request)
    async with store, raw:
        await store.set("p", "a", "ctx:u", "old", ttl=3600)
        await raw.hset(f"{store.prefix}{{p:a}}:kv", {"ctx:u": "new"})  # the older version
        assert await store.get("p", "a", "ctx:u") == "new"


async def _own_keys(raw: Any, prefix: str) -> list[str]:
    """The keys of values stored with a TTL under ``prefix`` (a test's own few)."""
    keys: list[str] = []
    async for key in raw.scan_iter(match=f"{prefix}*:kv:*"):
        keys.append(key)
    return keys


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[cb.Store]:
    async with store_factory(request.param, request, tmp_path)() as store:
        yield store


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan, math.inf])
async def test_a_ttl_that_is_not_a_positive_number_of_seconds_is_refused(
    any_store: cb.Store, ttl: float
) -> None:
    with pytest.raises(ValueError, match="ttl must be a number of seconds over 0 and at most"):
        await any_store.set("p", "a", "k", "v", ttl=ttl)
    with pytest.raises(ValueError, match="ttl must be a number of seconds over 0"):
        await any_store.set_cursor("p", "a", "c", with_values={"k": "v"}, values_ttl=ttl)
    assert await any_store.get("p", "a", "k") is None
    assert await any_store.get_cursor("p", "a") is None


async def test_a_version_2_file_keeps_its_values_and_gains_their_expiry(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "v2.db"
    async with cb.SQLiteStore(path, wall_clock=clock) as store:
        await store.set_cursor("p", "a", "c1", with_values={"ctx:u": "u1"})
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # as version 2 left it
        db.execute("DROP INDEX kv_expiry")
        db.execute("ALTER TABLE kv DROP COLUMN expires_at")
        db.execute("PRAGMA user_version=2")
    async with cb.SQLiteStore(path, wall_clock=clock) as migrated:
        assert await migrated.get_cursor("p", "a") == "c1"
        assert await migrated.get("p", "a", "ctx:u") == "u1"
        await migrated.set("p", "a", "ctx:u", "u2", ttl=10)
        clock.now += 11
        assert await migrated.get("p", "a", "ctx:u") is None
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (_sqlite.SCHEMA_VERSION,) == (3,)


async def test_weixin_forgets_a_users_context_token_after_a_day(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A token is kept for the longest reported life, then a notification to that user says
    why it cannot go (and the store holds no entry per user who ever wrote)."""
    emu = WeixinEmulator()
    store = cb.MemoryStore()
    seen = trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.set()

    connector = emu.connector()
    async with running_bridge(cb.Bridge([connector], agent, store=store)):
        emu.user_says("wx-ann", "remind me tomorrow")
        await seen.wait()
        await trio.sleep(weixin.CONTEXT_TOKEN_TTL - 60)
        await connector.send_first("wx-ann", "a minute to go")
        await trio.sleep(120)
        with pytest.raises(cb.SendError, match=r"no context token for wx-ann.*last 24 h"):
            await connector.send_first("wx-ann", "too late")
    assert [s.text for s in emu.sent] == ["a minute to go"]
    assert weixin.CONTEXT_TOKEN_TTL == 24 * 3600

from __future__ import annotations

import gc
import math
import sqlite3
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import coredis
import hypothesis.strategies as st
import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings

import trio_chatbridge as cb
from trio_chatbridge.stores import StaleLeaseError, journal_key
from trio_chatbridge.stores._redis import BATCH
from trio_chatbridge.testing import FakeConnector, RedisServer

fake = FakeConnector()


class Clock:
    """A wall clock the test moves by hand (for the SQLite store's leases)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


STORES = ["memory", "sqlite", "redis", "redis-cluster"]


def store_factory(
    kind: str, request: pytest.FixtureRequest, directory: Path, **options: Any
) -> Callable[[], cb.Store]:
    """Builds stores of ``kind`` that all see the same data (one file, one key prefix), and
    no other test's: the Redis ones get a key prefix of their own."""
    if kind == "memory":
        memory = cb.MemoryStore(**options)
        return lambda: memory
    if kind == "sqlite":
        return lambda: cb.SQLiteStore(directory / "store.db", **options)
    prefix = f"test-{uuid.uuid4().hex}:"
    if kind == "redis":
        node: RedisServer = request.getfixturevalue("redis_node")
        return lambda: cb.RedisStore.from_url(node.url, prefix=prefix, **options)
    nodes: list[RedisServer] = request.getfixturevalue("redis_cluster_nodes")
    return lambda: cb.RedisStore.from_url(nodes[0].url, prefix=prefix, cluster=True, **options)


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[cb.Store]:
    async with store_factory(request.param, request, tmp_path)() as store:
        yield store


async def test_journal_tells_new_from_duplicate(store: cb.Store) -> None:
    a, b = fake.message("a", id="1"), fake.message("b", id="2")
    assert await store.journal_add([a, b, a]) == [True, True, False]
    assert await store.journal_add([b, fake.message("c", id="3")]) == [False, True]
    other_account = FakeConnector("other").message("a", id="1")
    assert await store.journal_add([other_account]) == [True]


async def test_journal_pending_done_and_failed(store: cb.Store) -> None:
    messages = [fake.message(str(i), id=str(i)) for i in range(5)]
    await store.journal_add(messages)
    assert await store.journal_pending() == messages
    await store.journal_done(messages[:2])
    await store.journal_done(messages[2:3], error="ValueError: nope")
    assert await store.journal_pending() == messages[3:]
    entry = await store.journal_entry(("fake", "bot", "2"))
    assert entry is not None
    assert (entry.state, entry.error, entry.message) == ("failed", "ValueError: nope", messages[2])
    assert await store.journal_entry(("fake", "bot", "nope")) is None


async def test_journal_prune_keeps_pending(store: cb.Store) -> None:
    done, pending = fake.message("x", id="d"), fake.message("y", id="p")
    await store.journal_add([done, pending])
    await store.journal_done([done])
    assert await store.journal_prune(before=0) == 0
    assert await store.journal_prune(before=float("inf")) == 1
    assert await store.journal_pending() == [pending]
    assert await store.journal_add([done]) == [True]  # forgotten: would be new again


async def test_key_values_and_cursors_are_per_account(store: cb.Store) -> None:
    assert await store.get("weixin", "a", "token") is None
    await store.set("weixin", "a", "token", "t1")
    await store.set("weixin", "b", "token", "t2")
    await store.set("weixin", "a", "token", "t3")
    assert await store.get("weixin", "a", "token") == "t3"
    assert await store.get("weixin", "b", "token") == "t2"
    await store.set("weixin", "a", "token", None)
    assert await store.get("weixin", "a", "token") is None
    await store.set_many("weixin", "a", {"x": "1", "y": "2", "token": None})
    assert (await store.get("weixin", "a", "x"), await store.get("weixin", "a", "y")) == ("1", "2")
    await store.set_many("weixin", "a", {"x": None})
    assert await store.get("weixin", "a", "x") is None
    await store.set_cursor("weixin", "a", "cursor-1")
    assert await store.get_cursor("weixin", "a") == "cursor-1"
    assert await store.get_cursor("weixin", "b") is None
    await store.set_cursor("weixin", "a", "cursor-2", with_values={"ctx:u1": "c1", "y": None})
    assert await store.get_cursor("weixin", "a") == "cursor-2"
    assert await store.get("weixin", "a", "ctx:u1") == "c1"
    assert await store.get("weixin", "a", "y") is None
    await store.set_many("weixin", "a", {})  # nothing to write: no error, nothing changes
    assert await store.get_cursor("weixin", "a") == "cursor-2"


async def lease_behaviour(store: cb.Store, advance: Callable[[float], Awaitable[object]]) -> None:
    assert await store.acquire_lease("conn", "p1", ttl=10)
    assert not await store.acquire_lease("conn", "p2", ttl=10)
    assert await store.acquire_lease("conn", "p1", ttl=10)  # ours already: extended
    await advance(5)
    assert await store.renew_lease("conn", "p1", ttl=10)
    assert not await store.renew_lease("conn", "p2", ttl=10)
    await advance(11)  # expired
    assert not await store.renew_lease("conn", "p1", ttl=10)
    assert await store.acquire_lease("conn", "p2", ttl=10)
    await store.release_lease("conn", "p1")  # not ours: no effect
    assert not await store.acquire_lease("conn", "p1", ttl=10)
    await store.release_lease("conn", "p2")
    assert await store.acquire_lease("conn", "p1", ttl=10)


async def test_memory_leases_follow_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    await lease_behaviour(cb.MemoryStore(), trio.sleep)


async def test_sqlite_leases_follow_wall_clock(tmp_path: Path) -> None:
    clock = Clock()

    async def advance(seconds: float) -> None:
        clock.now += seconds

    async with cb.SQLiteStore(tmp_path / "l.db", wall_clock=clock) as store:
        await lease_behaviour(store, advance)


async def test_sqlite_keeps_everything_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    message = fake.message("hello", id="42")
    async with cb.SQLiteStore(path) as store:
        await store.journal_add([message])
        await store.set_cursor("fake", "bot", "c9")
    async with cb.SQLiteStore(path) as store:
        assert await store.journal_pending() == [message]
        assert await store.journal_add([message]) == [False]
        assert await store.get_cursor("fake", "bot") == "c9"


async def test_sqlite_large_batch_is_one_call(tmp_path: Path) -> None:
    messages = [fake.message(str(i), id=str(i)) for i in range(1000)]
    async with cb.SQLiteStore(tmp_path / "big.db") as store:
        assert await store.journal_add(messages) == [True] * 1000
        assert await store.journal_add([*messages[500:], fake.message("n", id="new")]) == (
            [False] * 500 + [True]
        )
        assert len(await store.journal_pending()) == 1001


async def test_sqlite_reads_the_expiries_of_many_leases_in_one_query(tmp_path: Path) -> None:
    clock = Clock()
    names = [f"lease{i}" for i in range(1000)]
    async with cb.SQLiteStore(tmp_path / "leases.db", wall_clock=clock) as store:
        assert all(await store.acquire_leases(names[::2], "p1", ttl=10))
        assert store._db is not None
        queries: list[str] = []
        store._db.set_trace_callback(queries.append)
        left = await store.leases_remaining(names)
    assert left == [10.0, 0.0] * 500
    assert len([q for q in queries if q.startswith("SELECT")]) == 1, queries


async def test_sqlite_takes_and_renews_many_leases_in_one_transaction(tmp_path: Path) -> None:
    """A lease round on a shared file took each lease in a transaction (and a commit: a sync)
    of its own: 1,000 accounts, 1,000 commits a round. Now one for all of them."""
    clock = Clock()
    names = [f"lease{i}" for i in range(1000)]
    async with cb.SQLiteStore(tmp_path / "leases.db", wall_clock=clock) as store:
        assert await store.acquire_lease("theirs", "p2", ttl=10)
        assert store._db is not None
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        taken = await store.acquire_leases([*names, "theirs", names[0]], "p1", ttl=10)
        renewed = await store.renew_leases([*names, "theirs"], "p1", ttl=20)
        assert await store.acquire_leases([], "p1", ttl=10) == []
    assert taken == [True] * 1000 + [False, True]  # one twice: taken, then ours already
    assert renewed == [True] * 1000 + [False]
    transactions = [q for q in statements if q.startswith(("BEGIN", "COMMIT"))]
    assert len(transactions) == 4 and transactions[:2] == ["BEGIN IMMEDIATE", "COMMIT"]


async def test_sqlite_errors_are_clear(tmp_path: Path) -> None:
    store = cb.SQLiteStore(tmp_path / "x.db")
    with pytest.raises(cb.StoreError, match="not open"):
        await store.get("a", "b", "c")
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(cb.StoreError, match="cannot open"):
        await cb.SQLiteStore(bad).open()


async def test_sqlite_inline_mode_keeps_an_autojump_clock_still(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # In a thread, each call would let the autojump clock leap to the next deadline (here the
    # 60 s scope): inline, no time passes at all.
    with trio.fail_after(60):
        async with cb.SQLiteStore(tmp_path / "inline.db", threaded=False) as store:
            for i in range(50):
                await store.journal_add([fake.message(str(i), id=str(i))])
            assert len(await store.journal_pending()) == 50
    assert trio.current_time() == 0


ids = st.sampled_from(["a", "b", "c", "d"])
accounts = st.sampled_from(["x", "y"])
fakes = {account: FakeConnector(account) for account in ("x", "y")}
messages = st.builds(lambda account, id: fakes[account].message(id, id=id), accounts, ids)
keys = st.sampled_from(["k1", "k2"])
values = st.none() | st.sampled_from(["", "v1", "值"])
lease_names = st.sampled_from(["L1", "L2", "L3"])
lease_owners = st.sampled_from(["o1", "o2"])
journal_operations = st.one_of(
    st.tuples(st.just("add"), st.lists(messages, max_size=5)),
    st.tuples(st.just("done"), st.lists(messages, max_size=4), st.none() | st.just("boom")),
    st.tuples(st.just("pending")),
    st.tuples(st.just("entry"), messages),
    st.tuples(st.just("prune"), st.integers(0, 3)),
    st.tuples(st.just("tick")),
)
operations = journal_operations | st.one_of(
    st.tuples(st.just("set"), accounts, keys, values),
    st.tuples(st.just("set_many"), accounts, st.dictionaries(keys, values, max_size=2)),
    st.tuples(st.just("get"), accounts, keys),
    st.tuples(
        st.just("cursor"),
        accounts,
        st.sampled_from(["c1", "c2"]),
        st.dictionaries(keys, values, max_size=2),
    ),
    st.tuples(st.just("get_cursor"), accounts),
    # with a TTL no script outlives: where each store keeps such values (Redis: keys of
    # their own) must not change what reads and later writes see
    st.tuples(st.just("set_ttl"), accounts, keys, values),
    st.tuples(
        st.just("cursor_ttl"),
        accounts,
        st.sampled_from(["c1", "c2"]),
        st.dictionaries(keys, values, max_size=2),
    ),
    # leases with a TTL no script outlives (a tick is a second), by two owners
    st.tuples(
        st.sampled_from(["acquire", "renew"]),
        st.lists(lease_names, max_size=3),
        lease_owners,
        st.sampled_from([600, 3600]),
    ),
    st.tuples(st.just("release"), lease_names, lease_owners),
    st.tuples(st.just("remaining"), st.lists(lease_names, max_size=4)),
)


scripts = st.lists(operations, max_size=25)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
@given(script=scripts)
def test_each_store_behaves_like_the_memory_store(
    kind: str, request: pytest.FixtureRequest, script: list[tuple[Any, ...]]
) -> None:
    """The same operations give the same answers from every store as from the memory store
    (duplicates in one batch, done before add, pruning by age, empty and non-ASCII values,
    cursors with values), and the same once the store is opened anew."""
    behaves_like_memory(kind, request, script)


@pytest.mark.slow
@settings(max_examples=20)  # each example connects to three nodes, twice
@given(script=scripts)
def test_the_cluster_store_behaves_like_the_memory_store(
    request: pytest.FixtureRequest, script: list[tuple[Any, ...]]
) -> None:
    behaves_like_memory("redis-cluster", request, script)


def behaves_like_memory(
    kind: str, request: pytest.FixtureRequest, script: list[tuple[Any, ...]]
) -> None:

    async def apply(store: cb.Store, op: tuple[Any, ...]) -> object:
        name, *args = op
        if name == "add":
            return await store.journal_add(args[0])
        if name == "done":
            await store.journal_done(args[0], error=args[1])
        if name == "pending":
            return sorted(journal_key(m) for m in await store.journal_pending())
        if name == "entry":
            entry = await store.journal_entry(journal_key(args[0]))
            return None if entry is None else (entry.message, entry.state, entry.error)
        if name == "prune":
            return await store.journal_prune(clock.now - args[0])
        if name == "set":
            await store.set("p", *args)
        if name == "set_many":
            await store.set_many("p", *args)
        if name == "get":
            return await store.get("p", *args)
        if name == "cursor":
            await store.set_cursor("p", args[0], args[1], with_values=args[2])
        if name == "get_cursor":
            return await store.get_cursor("p", args[0])
        if name == "set_ttl":
            await store.set("p", *args, ttl=3600)
        if name == "cursor_ttl":
            await store.set_cursor("p", args[0], args[1], with_values=args[2], values_ttl=3600)
        if name == "acquire":
            return await store.acquire_leases(*args)
        if name == "renew":
            return await store.renew_leases(*args)
        if name == "release":
            await store.release_lease(*args)
        if name == "remaining":
            return await remaining(store, args[0])
        return None  # the writes: compared through the reads that follow

    clock = Clock()
    options: dict[str, Any] = {"wall_clock": clock}
    if kind == "sqlite":
        options["threaded"] = False

    async def main(directory: Path) -> None:
        memory = cb.MemoryStore(wall_clock=clock)
        factory = store_factory(kind, request, directory, **options)
        async with factory() as store:
            for op in script:
                if op == ("tick",):
                    clock.now += 1  # a second passes: what prune() measures
                    continue
                assert await apply(store, op) == await apply(memory, op), op
        async with factory() as reopened:
            reads: list[tuple[Any, ...]] = [("get", a, k) for a in "xy" for k in ("k1", "k2")]
            reads.append(("remaining", ["L1", "L2", "L3"]))
            for op in [("pending",), *[("get_cursor", a) for a in "xy"], *reads]:
                assert await apply(reopened, op) == await apply(memory, op), op

    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, Path(directory))


async def remaining(store: cb.Store, names: list[str]) -> list[int]:
    """The leases' time left, by one batched call, in hundreds of seconds (what every store
    agrees on, whatever its clock: a script's ticks take off 25 s at most); each the same as
    the per-name call's, read just after."""
    batched = await store.leases_remaining(names)
    one_by_one = [await store.lease_remaining(name) for name in names]
    assert len(batched) == len(names) and None not in batched, batched
    for left, alone in zip(batched, one_by_one, strict=True):
        assert left is not None and alone is not None
        assert 0 <= left - alone < 1, (batched, one_by_one)  # time passed in between
    return [math.ceil((left or 0) / 100) for left in batched]


@contextmanager
def _file_locked(path: Path) -> Iterator[Callable[[], object]]:
    """Another connection holds the file's write lock (as another process could) until the
    returned function is called: the store's next commit waits for it in its worker thread."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield lambda: other.execute("COMMIT")
    finally:
        other.close()


def _commits(store: cb.SQLiteStore) -> list[str]:
    """Every COMMIT the store's connection runs from now on (the group commit is the point)."""
    seen: list[str] = []
    assert store._db is not None
    store._db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def test_sqlite_concurrent_adds_and_done_marks_share_one_commit(tmp_path: Path) -> None:
    first = [fake.message("first", id="first")]
    async with cb.SQLiteStore(tmp_path / "group.db") as store:
        await store.journal_add(first)
        commits = _commits(store)
        results: dict[int, list[bool]] = {}

        async def add(i: int) -> None:
            results[i] = await store.journal_add([fake.message(str(i), id=str(i % 5))])

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(add, i)
                nursery.start_soon(store.journal_done, first)
        # Whoever holds the writer's turn commits everything queued by then: 11 writes take
        # one commit, or two if the first caller began before the others queued.
        assert 1 <= len(commits) <= 2
        assert sorted(r for (r,) in results.values()).count(True) == 5  # ids 0..4, each once
        assert sorted(m.id for m in await store.journal_pending()) == ["0", "1", "2", "3", "4"]


async def test_sqlite_one_bad_write_fails_alone(tmp_path: Path) -> None:
    unencodable = cast(bytes, object())
    bad = cb.Message("fake", "bot", "bad", cb.Chat("c"), cb.Sender("u"), (), raw=unencodable)
    good = fake.message("good", id="good")
    async with cb.SQLiteStore(tmp_path / "bad.db") as store:
        outcome: dict[str, Any] = {}

        async def add(name: str, message: cb.Message) -> None:
            try:
                outcome[name] = await store.journal_add([message])
            except cb.StoreError as exc:
                outcome[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(add, "bad", bad)
            nursery.start_soon(add, "good", good)
        assert isinstance(outcome["bad"], cb.StoreError)
        assert outcome["good"] == [True]
        assert await store.journal_pending() == [good]


async def test_sqlite_add_cancelled_before_its_commit_writes_nothing(tmp_path: Path) -> None:
    gated, queued = fake.message("gated", id="gated"), fake.message("queued", id="queued")
    async with cb.SQLiteStore(tmp_path / "cancel.db") as store:
        with trio.fail_after(10), _file_locked(tmp_path / "cancel.db") as release:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.journal_add, [gated])
                await trio.testing.wait_all_tasks_blocked()  # its commit began, in the thread
                scope = trio.CancelScope()

                async def add_queued() -> None:
                    with scope:
                        await store.journal_add([queued])

                nursery.start_soon(add_queued)
                await trio.testing.wait_all_tasks_blocked()  # queued behind it
                scope.cancel()
                release()
        assert scope.cancelled_caught
        await store.journal_add([fake.message("later", id="later")])  # a later commit...
        assert [m.id for m in await store.journal_pending()] == ["gated", "later"]  # ...alone


async def test_sqlite_add_cancelled_once_its_commit_began_is_written(tmp_path: Path) -> None:
    gated = fake.message("gated", id="gated")
    added: list[list[bool]] = []
    async with cb.SQLiteStore(tmp_path / "begun.db") as store:
        with trio.fail_after(10), _file_locked(tmp_path / "begun.db") as release:
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def add() -> None:
                    with scope:
                        added.append(await store.journal_add([gated]))
                        await trio.lowlevel.checkpoint()

                nursery.start_soon(add)
                await trio.testing.wait_all_tasks_blocked()  # its commit waits for the lock
                scope.cancel()
                release()
        # The call completed (the cancellation comes at the caller's next checkpoint)...
        assert added == [[True]]
        assert scope.cancelled_caught
        assert [m.id for m in await store.journal_pending()] == ["gated"]  # ...journaled


async def test_sqlite_writer_cancelled_before_its_thread_ran_leaves_the_others_queued(
    tmp_path: Path,
) -> None:
    # The writer whose turn it is waits for the connection (a key-value write holds it,
    # itself waiting for the file's lock) and is cancelled there: its turn was never written,
    # so it raises Cancelled (not "begun"), and the writes queued after it are written next
    # (not answered as duplicates of a commit that never happened).
    cancelled, kept = fake.message("cancelled", id="cancelled"), fake.message("kept", id="kept")
    results: list[list[bool]] = []
    async with cb.SQLiteStore(tmp_path / "turn.db") as store:
        with trio.fail_after(10), _file_locked(tmp_path / "turn.db") as release:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.set, "fake", "bot", "key", "value")
                await trio.testing.wait_all_tasks_blocked()  # the set holds the connection
                scope = trio.CancelScope()

                async def add_cancelled() -> None:
                    with scope:
                        await store.journal_add([cancelled])

                async def add_kept() -> None:
                    results.append(await store.journal_add([kept]))

                nursery.start_soon(add_cancelled)
                await trio.testing.wait_all_tasks_blocked()  # its turn waits for the connection
                nursery.start_soon(add_kept)
                await trio.testing.wait_all_tasks_blocked()  # queued behind it
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                release()
        assert scope.cancelled_caught
        assert results == [[True]]
        assert [m.id for m in await store.journal_pending()] == ["kept"]


@pytest.fixture(params=["redis", "redis-cluster"])
async def redis_pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[cb.RedisStore, cb.RedisStore, Callable[[float], Awaitable[None]]]]:
    """Two stores on one Redis (two processes, as far as leases go), and ``advance(seconds)``,
    which brings every lease that much nearer its expiry, as if the time had passed."""
    factory = store_factory(request.param, request, tmp_path)
    first, second = factory(), factory()
    assert isinstance(first, cb.RedisStore) and isinstance(second, cb.RedisStore)
    raw = raw_client(request.param, request)
    async with first, second, raw:

        async def advance(seconds: float) -> None:
            for name in ("conn", fake.name):  # the leases these tests take
                key = f"{first.prefix}{{{name}}}:lease"  # the layout stores/_redis.py documents
                left = await raw.pttl(key)
                if left > 0:
                    if left > seconds * 1000:
                        await raw.pexpire(key, left - int(seconds * 1000))
                    else:
                        await raw.delete([key])

        yield first, second, advance


def raw_client(
    kind: str, request: pytest.FixtureRequest
) -> coredis.Redis[str] | coredis.RedisCluster[str]:
    """A plain coredis client on the test's Redis."""
    if kind == "redis":
        node: RedisServer = request.getfixturevalue("redis_node")
        return coredis.Redis("127.0.0.1", node.port, decode_responses=True)
    nodes: list[RedisServer] = request.getfixturevalue("redis_cluster_nodes")
    return coredis.RedisCluster("127.0.0.1", nodes[0].port, decode_responses=True)


async def test_redis_leases_follow_redis_clock(
    redis_pair: tuple[cb.RedisStore, cb.RedisStore, Callable[[float], Awaitable[None]]],
) -> None:
    store, _, advance = redis_pair
    await lease_behaviour(store, advance)


async def test_a_stale_lease_holder_cannot_write(
    redis_pair: tuple[cb.RedisStore, cb.RedisStore, Callable[[float], Awaitable[None]]],
) -> None:
    old, new, advance = redis_pair
    message, late = fake.message("hi", id="1"), fake.message("late", id="2")
    assert await old.acquire_lease(fake.name, "old", ttl=10)
    await old.journal_add([message])
    await old.set_cursor("fake", "bot", "c1")
    await advance(11)  # the old owner was paused past its lease
    assert await new.acquire_lease(fake.name, "new", ttl=10)
    assert (new.lease_token(fake.name) or 0) > (old.lease_token(fake.name) or 0)
    for write in (
        old.journal_done([message]),
        old.journal_add([late]),
        old.set_cursor("fake", "bot", "c0"),
        old.set("fake", "bot", "token", "x"),
    ):
        with pytest.raises(StaleLeaseError, match="another process holds the lease"):
            await write
    assert await new.get_cursor("fake", "bot") == "c1"
    assert await new.journal_pending_of("fake", "bot") == [message]
    assert await new.journal_entry(journal_key(late)) is None
    await new.journal_done([message])
    await new.set_cursor("fake", "bot", "c2")
    assert (await new.journal_pending(), await new.get_cursor("fake", "bot")) == ([], "c2")
    # Re-acquiring it later gives the old store a fresh token: it may write again.
    await new.release_lease(fake.name, "new")
    assert await old.acquire_lease(fake.name, "old", ttl=10)
    await old.set_cursor("fake", "bot", "c3")
    assert await new.get_cursor("fake", "bot") == "c3"


async def test_redis_store_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(cb.StoreError, match="redis:// or rediss://"):
        cb.RedisStore.from_url("http://127.0.0.1:1")
    with pytest.raises(cb.StoreError, match="braces"):
        cb.RedisStore.from_url("redis://127.0.0.1:1", prefix="{x}")
    store = cb.RedisStore.from_url("redis://user:s3cret@127.0.0.1:1/0", timeout=1)
    assert "s3cret" not in repr(store)
    with pytest.raises(cb.StoreError, match="not open"):
        await store.get("a", "b", "c")
    with trio.fail_after(10), pytest.raises(cb.StoreError, match="could not connect") as info:
        await store.open()
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.lease_remaining("a"),
        lambda store: store.leases_remaining(["a", "b"]),
        lambda store: store.acquire_leases(["a"], "p1", 10),
        lambda store: store.renew_leases(["a"], "p1", 10),
        lambda store: store.journal_pending(),
    ],
    ids=["lease_remaining", "leases_remaining", "acquire_leases", "renew_leases", "pending"],
)
async def test_a_redis_store_not_open_says_so_to_its_pipelined_calls(
    call: Callable[[cb.RedisStore], Awaitable[object]],
) -> None:
    """Calls sent as pipelines say "not open" as the others do (lease_remaining did, until it
    became a pipelined read; they raised coredis's RuntimeError 'Connection pool is not
    initialized'). No server needed: nothing is sent."""
    store = cb.RedisStore.from_url("redis://127.0.0.1:1/0", timeout=1)
    with trio.fail_after(10), pytest.raises(cb.StoreError, match="is not open"):
        await call(store)


async def test_members_join_by_heartbeat_and_can_leave(store: cb.Store) -> None:
    assert list(await store.heartbeat("g", "p2", 10)) == ["p2"]
    assert list(await store.heartbeat("g", "p1", 20)) == ["p1", "p2"]
    assert list(await store.heartbeat("other", "p3", 10)) == ["p3"]
    assert list(await store.heartbeat("g", "p2", 0)) == ["p1"]  # p2 leaves
    left = await store.heartbeat("g", "p1", 10)
    assert list(left) == ["p1"] and 9 < left["p1"] <= 10


async def test_leases_are_taken_and_renewed_together(store: cb.Store) -> None:
    """More than one pipeline's worth (RedisStore): each renewed only if held by the owner."""
    ours = [f"lease{i}" for i in range(BATCH + 5)]
    assert await store.acquire_lease("theirs", "p2", ttl=10)
    acquired = await store.acquire_leases([*ours, "theirs"], "p1", ttl=10)
    assert acquired == [True] * len(ours) + [False]
    if isinstance(store, cb.RedisStore):  # each acquisition's fencing token is kept
        assert all(store.lease_token(name) for name in ours)
    renewed = await store.renew_leases([*ours, "theirs", "free"], "p1", ttl=30)
    assert renewed == [True] * len(ours) + [False, False]
    assert 29 < (await store.lease_remaining(ours[-1]) or 0) <= 30
    assert (await store.lease_remaining("theirs") or 0) <= 10


async def test_the_expiries_of_many_leases_are_read_together(store: cb.Store) -> None:
    """More than one pipeline's worth (RedisStore), in the names' order, a name twice too."""
    ours = [f"lease{i}" for i in range(BATCH + 5)]
    assert all(await store.acquire_leases(ours, "p1", ttl=30))
    assert await store.acquire_lease("theirs", "p2", ttl=10)
    left = await store.leases_remaining(["free", *ours, "theirs", ours[0]])
    assert left[0] == 0
    assert all(29 < (t or 0) <= 30 for t in [*left[1 : len(ours) + 1], left[-1]]), left
    assert 9 < (left[-2] or 0) <= 10
    assert await store.leases_remaining([]) == []


async def test_members_say_when_they_expire(store: cb.Store) -> None:
    await store.heartbeat("g", "p1", 30)
    left = await store.heartbeat("g", "p2", 10)
    assert 29 < left["p1"] <= 30 and 9 < left["p2"] <= 10


async def test_a_lease_says_how_long_it_has_left(store: cb.Store) -> None:
    assert await store.lease_remaining("conn") == 0  # free
    assert await store.acquire_lease("conn", "p1", ttl=10)
    assert 9 < (await store.lease_remaining("conn") or 0) <= 10
    await store.release_lease("conn", "p1")
    assert await store.lease_remaining("conn") == 0


async def test_members_expire_on_the_sqlite_wall_clock(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "members.db"
    async with cb.SQLiteStore(path, wall_clock=clock) as one, cb.SQLiteStore(path) as two:
        two.wall_clock = clock  # two processes on one host, one clock
        await one.heartbeat("g", "p1", 10)
        assert list(await two.heartbeat("g", "p2", 30)) == ["p1", "p2"]
        clock.now += 10
        assert await two.heartbeat("g", "p2", 30) == {"p2": 30}


@pytest.mark.parametrize("kind", ["memory", "redis", "redis-cluster"])
async def test_releases_and_leaves_are_told_to_watchers(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    factory = store_factory(kind, request, tmp_path)
    told = trio.Semaphore(0, max_value=100)
    async with factory() as ours, factory() as theirs, trio.open_nursery() as nursery:
        await nursery.start(ours.watch_releases, told.release)
        assert await theirs.acquire_lease("conn", "p2", ttl=10)
        await theirs.heartbeat("g", "p2", 10)
        await theirs.release_lease("conn", "p1")  # not held by p1: nothing to tell
        await theirs.release_lease("conn", "p2")
        with trio.fail_after(5):
            await told.acquire()
        await theirs.heartbeat("g", "p2", 0)
        with trio.fail_after(5):
            await told.acquire()
        assert told.value == 0
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_redis_pending_of_many_accounts_in_batches(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """More accounts than one pipeline reads: the same entries, oldest first, as the
    account-by-account reads give."""
    accounts = [FakeConnector(f"a{i:03}") for i in range(BATCH + 30)]
    async with store_factory(kind, request, tmp_path)() as store:
        assert isinstance(store, cb.RedisStore)
        expected: list[cb.Message] = []
        for round_ in range(2):
            page = [a.message(f"{round_}", id=f"{a.account}-{round_}") for a in accounts]
            await store.journal_add(page)
            await store.journal_done(page[::3])
            expected += [m for i, m in enumerate(page) if i % 3]
            store.wall_clock = lambda: time.time() + 1  # the second page is newer
        pending = await store.journal_pending()
        assert pending == expected
        one_by_one = [await store.journal_pending_of("fake", a.account) for a in accounts]
        flat = [m for messages in one_by_one for m in messages]
        assert sorted(pending, key=journal_key) == sorted(flat, key=journal_key)


async def test_redis_pending_of_an_account_with_more_than_lua_can_unpack(
    redis_node: RedisServer,
) -> None:
    """9,000 pending messages in one account (Lua unpacks at most about 8,000 values)."""
    store = cb.RedisStore.from_url(redis_node.url, prefix=f"test-{uuid.uuid4().hex}:")
    async with store:
        messages = [fake.message("m", id=str(i)) for i in range(9_000)]
        await store.journal_add(messages)
        assert await store.journal_pending_of(fake.platform, fake.account) == messages
        assert await store.journal_pending() == messages


class _FlatJournal:
    """The journal's meaning in the plainest terms: one record per message, in arrival
    order. MemoryStore keeps pages instead; it has to answer exactly as this does."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[tuple[str, str, str], list[Any]] = {}  # message, received, outcome

    def add(self, batch: list[cb.Message]) -> list[bool]:
        added = []
        for message in batch:
            added.append(journal_key(message) not in self.records)
            self.records.setdefault(journal_key(message), [message, self.clock.now, None])
        return added

    def done(self, batch: list[cb.Message], error: str | None) -> None:
        for message in batch:
            if journal_key(message) in self.records:
                self.records[journal_key(message)][2] = (
                    ("failed", error) if error else ("done", None)
                )

    def pending(self) -> list[cb.Message]:
        return [message for message, _, outcome in self.records.values() if outcome is None]

    def entry(self, message: cb.Message) -> tuple[Any, ...] | None:
        record = self.records.get(journal_key(message))
        if record is None:
            return None
        return (record[0], *(record[2] or ("pending", None)), record[1])

    def prune(self, before: float) -> int:
        old = [k for k, (_, at, outcome) in self.records.items() if outcome and at < before]
        for key in old:
            del self.records[key]
        return len(old)


@given(script=st.lists(journal_operations, max_size=40))
def test_the_memory_journal_in_pages_means_one_record_per_message(
    script: list[tuple[Any, ...]],
) -> None:
    """Pages of several accounts, duplicates within a page and across pages, done-marks
    before the add, on part of a page, failed then done, pruning part of a page: the memory
    store answers as a plain record per message would, pending messages oldest first."""
    _answers_as_flat_journal(script)


# The very objects journaled, as the dispatcher marks them (a done-mark finds such a message
# by its place in its page), and equal copies of them (found through the account's index).
# Twelve ids: pages longer than the few a done-mark looks through in turn.
pools = {a: [fakes[a].message(str(i), id=str(i)) for i in range(12)] for a in ("x", "y")}
pooled = pools["x"] + pools["y"]
same_or_copies = st.sampled_from(pooled) | st.sampled_from(pooled).map(msgspec.structs.replace)
one_account = accounts.flatmap(lambda account: st.permutations(pools[account]))
marked_by_place = st.one_of(
    st.tuples(st.just("add"), st.lists(st.sampled_from(pooled), max_size=14) | one_account),
    st.tuples(st.just("done"), st.lists(same_or_copies, max_size=14), st.none() | st.just("x")),
    st.tuples(st.just("pending")),
    st.tuples(st.just("entry"), same_or_copies),
    st.tuples(st.just("prune"), st.integers(0, 3)),
    st.tuples(st.just("tick")),
)


@given(script=st.lists(marked_by_place, max_size=40))
def test_the_memory_journal_marks_the_journaled_messages_by_their_place(
    script: list[tuple[Any, ...]],
) -> None:
    """Done-marks of the journaled objects themselves, in and out of their pages' order,
    across pages and accounts, mixed with equal copies, after pruning part of a page, on
    pages short and long: the memory store answers as a plain record per message would."""
    _answers_as_flat_journal(script)


def _answers_as_flat_journal(script: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    model = _FlatJournal(clock)
    store = cb.MemoryStore(wall_clock=clock)

    async def main() -> None:
        for name, *args in script:
            if name == "tick":
                clock.now += 1
            elif name == "add":
                assert await store.journal_add(args[0]) == model.add(args[0])
            elif name == "done":
                await store.journal_done(args[0], error=args[1])
                model.done(args[0], args[1])
            elif name == "pending":
                assert await store.journal_pending() == model.pending()
            elif name == "entry":
                entry = await store.journal_entry(journal_key(args[0]))
                got = entry and (entry.message, entry.state, entry.error, entry.received_at)
                assert got == model.entry(args[0])
            else:
                before = clock.now - args[0]
                assert await store.journal_prune(before) == model.prune(before)
        assert await store.journal_pending() == model.pending()

    trio.run(main)


async def test_the_memory_journal_adds_nothing_the_collector_walks() -> None:
    """Journaled messages, one per put as a push platform hands them over, then marked done:
    the journal holds no GC-tracked object per message or per page (its index aside)."""
    store = cb.MemoryStore()
    messages = [fake.message(f"{i}", chat=f"c{i % 7}", id=f"gc{i}") for i in range(2000)]
    await store.journal_add(messages[:1])  # the account's index, made on first use
    gc.collect()
    before = len(gc.get_objects())
    for message in messages[1:]:
        await store.journal_add([message])
    await store.journal_done(messages[: len(messages) // 2])
    await store.journal_done(messages[len(messages) // 2 :], error="boom")
    gc.collect()
    assert len(gc.get_objects()) - before < 20  # it was two per put (the page, its list)
    entry = await store.journal_entry(journal_key(messages[-1]))
    assert entry is not None and (entry.message, entry.state) == (messages[-1], "failed")


async def test_a_message_whose_text_is_not_unicode_is_set_aside_alone(
    store: cb.Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate (a user's connector's own making) failed the whole SQLite write, the
    good messages of the put with it, at every redelivery: lost for good. Redis failed the
    put too, after journaling the accounts before it. The message is set aside alone
    (logged, counted in ``undecodable``, not new, so acknowledged); the others journaled."""
    before, after = fake.message("before", id="1"), fake.message("after", id="3")
    bad = fake.message("lone \ud800 surrogate", id="2")
    other = FakeConnector("other")
    bad_id, other_good = other.message("x", id="\udc00"), other.message("y", id="4")
    put = [before, bad, bad_id, after, other_good]
    added = await store.journal_add(put)
    if isinstance(store, cb.MemoryStore):  # holds the objects, encodes nothing: kept
        assert added == [True] * 5 and store.undecodable == 0
        return
    assert added == [True, False, False, True, True]
    assert sorted(m.id for m in await store.journal_pending()) == ["1", "3", "4"]
    assert store.undecodable == 2
    assert "message '2' of fake:'bot' set aside" in caplog.text
    assert "'\\udc00' of fake:'other' set aside" in caplog.text and "not Unicode" in caplog.text
    # Redelivered: the good ones are duplicates now, the bad ones set aside again.
    assert await store.journal_add(put) == [False] * 5
    assert store.undecodable == 4

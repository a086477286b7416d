"""RedisStore against a hostile world: a Redis that lost its keys, someone else's data under
our prefix, corrupted records, a password in the URL.

Each test keeps to a key prefix of its own on the session's Redis, or starts a Redis of its own
when it restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import coredis
import pytest
import trio
from redis_servers import require_redis

import trio_chatbridge as cb
from trio_chatbridge.stores import StaleLeaseError, journal_key, store_from_url
from trio_chatbridge.testing import FakeConnector, RedisServer, redis_server

fake = FakeConnector("bot")
STALE = "another process holds the lease now, or Redis lost it"


@pytest.fixture
async def raw(redis_node: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    """A plain client on the session's Redis, to play the other application."""
    async with coredis.Redis("127.0.0.1", redis_node.port, decode_responses=True) as client:
        yield client


@attrs.define
class Recorder:
    """An agent that answers "ok" and records each message's text; ``all_in`` is set once
    ``expected`` were handled."""

    expected: int
    handled: list[str] = attrs.Factory(list)
    all_in: trio.Event = attrs.Factory(trio.Event)

    async def __call__(self, batch: cb.Batch, reply: cb.Reply) -> None:
        self.handled.extend(m.text for m in batch.messages)
        await reply.send("ok")
        if len(self.handled) == self.expected:
            self.all_in.set()


def prefix() -> str:
    return f"hostile-{uuid.uuid4().hex}:"


async def test_a_redis_restarted_empty_refuses_the_old_holders_writes(tmp_path: Path) -> None:
    """A Redis without persistence restarted: the lease and the fence counter are gone. The
    old holder's writes are refused, before and after a new holder acquired the lease, and
    the new holder's are accepted (unfenced counters would give both the same token)."""
    require_redis()
    message = fake.message("hi", id="1")
    with redis_server(tmp_path) as server, trio.fail_after(20):
        old = cb.RedisStore.from_url(server.url, timeout=2)
        new = cb.RedisStore.from_url(server.url, timeout=2)
        async with old, new:
            assert await old.acquire_lease(fake.name, "old", ttl=10)
            await old.journal_add([message])
            server.restart()
            with pytest.raises(StaleLeaseError, match=STALE):
                await old.set_cursor("fake", "bot", "c0")
            assert await new.acquire_lease(fake.name, "new", ttl=10)
            assert new.lease_token(fake.name) != old.lease_token(fake.name)
            for write in (
                old.journal_add([message]),
                old.journal_done([message]),
                old.set("fake", "bot", "cursor", "c0"),
            ):
                with pytest.raises(StaleLeaseError, match=STALE):
                    await write
            await new.journal_add([message])
            await new.set_cursor("fake", "bot", "c1")
            assert await new.journal_pending_of("fake", "bot") == [message]
            assert await new.get_cursor("fake", "bot") == "c1"


async def test_an_acquisition_lost_by_redis_gives_no_token_twice(
    redis_node: RedisServer, raw: coredis.Redis[str]
) -> None:
    """Redis with ``appendfsync everysec`` crashed and lost its last second: the old holder's
    acquisition (the counter's increment, the lease) is gone. The next acquisition's token
    still differs from the old holder's, whose writes are refused."""
    keys = prefix()
    old = cb.RedisStore.from_url(redis_node.url, prefix=keys)
    new = cb.RedisStore.from_url(redis_node.url, prefix=keys)
    fence, lease = f"{keys}{{{fake.name}}}:fence", f"{keys}{{{fake.name}}}:lease"
    with trio.fail_after(10):
        async with old, new:
            assert await new.acquire_lease(fake.name, "new", ttl=10)
            await new.release_lease(fake.name, "new")
            before = await raw.get(fence)
            assert before is not None
            assert await old.acquire_lease(fake.name, "old", ttl=10)
            await raw.set(fence, before)  # the crash: the last second is lost
            await raw.delete([lease])
            assert await new.acquire_lease(fake.name, "new", ttl=10)
            assert new.lease_token(fake.name) != old.lease_token(fake.name)
            with pytest.raises(StaleLeaseError, match=STALE):
                await old.set_cursor("fake", "bot", "c0")
            await new.set_cursor("fake", "bot", "c1")
            assert await new.get_cursor("fake", "bot") == "c1"


async def test_a_corrupted_journal_record_is_set_aside_and_the_others_replayed(
    redis_node: RedisServer, raw: coredis.Redis[str], caplog: pytest.LogCaptureFixture
) -> None:
    """One record that does not decode used to crash every bridge acquiring its account (a
    crash loop of the whole fleet). It is logged with its key, marked failed, counted; the
    account's other messages are handled once each, and new ones too."""
    keys = prefix()
    connector = FakeConnector("bot")
    good = [connector.message("first", id="1"), connector.message("third", id="3")]
    async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as store:
        await store.journal_add([good[0], connector.message("second", id="2"), good[1]])
    body = f"{keys}{{{connector.name}}}:body"
    await raw.hset(body, {"2": "{not json"})
    agent = Recorder(3)
    store = cb.RedisStore.from_url(redis_node.url, prefix=keys)
    bridge = cb.Bridge(
        [connector],
        agent,
        store=store,
        leases=cb.Leases(ttl=3),
        debounce=cb.Debounce(window=0.01, max_delay=0.05),
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await bridge.wait_status(lambda s: s[connector.name].state == "running")
            await connector.say("fourth", id="4")
            await agent.all_in.wait()
            bridge.shutdown()  # graceful: the runs' done-marks are written
        async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as again:
            assert await again.journal_pending_of("fake", "bot") == []
            with pytest.raises(cb.StoreError, match=f"'2' of '{keys}.*:body'.*not a serialised"):
                await again.journal_entry(("fake", "bot", "2"))
    assert sorted(agent.handled) == ["first", "fourth", "third"]
    assert store.undecodable == 1
    state = await raw.hget(f"{keys}{{{connector.name}}}:state", "2")
    assert state == "fundecodable journal record"  # the reason: in the log and journal_entry
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_chatbridge.stores.redis" and r.levelno >= logging.WARNING
    ]
    assert len(warned) == 1 and f"'2' of '{body}'" in warned[0]


async def test_every_accounts_pending_skips_records_that_do_not_decode(
    redis_node: RedisServer, raw: coredis.Redis[str]
) -> None:
    """``journal_pending`` (a bridge without leases reads it at start) sets aside a bad body,
    and returns the other accounts' messages."""
    keys = prefix()
    a, b = FakeConnector("a"), FakeConnector("b")
    kept = [a.message("kept", id="1"), b.message("kept too", id="1")]
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as store:
            await store.journal_add([*kept, a.message("bad body", id="2")])
            await store.journal_add([a.message("bad JSON after a bad field", id="3")])
            await raw.hset(f"{keys}{{{a.name}}}:body", {"2": '{"id": 2}'})
            # The codec's second try (the first format) meets the Infinity: msgspec's DecodeError
            await raw.hset(f"{keys}{{{a.name}}}:body", {"3": '{"account": null, "x": Infinity}'})
            assert await store.journal_pending() == kept
            assert store.undecodable == 2
            assert await store.journal_pending() == kept
            assert store.undecodable == 2
            with pytest.raises(cb.StoreError, match=r"'3' of .* is not a serialised message"):
                await store.journal_entry(("fake", "a", "3"))


async def test_a_bad_time_of_receipt_keeps_its_good_message(
    redis_node: RedisServer, raw: coredis.Redis[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupted time of receipt next to a body that decodes: the message is replayed (its
    time taken as 0, so it comes first), logged, not counted as undecodable; it used to be
    marked failed, a good message lost. ``journal_entry`` read it as a crash (ValueError)."""
    keys = prefix()
    first, bad = fake.message("first", id="1"), fake.message("bad time", id="2")
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as store:
            await store.journal_add([first, bad])
            for corrupt in ("yesterday", "nan", "inf"):
                await raw.hset(f"{keys}{{{fake.name}}}:recv", {"2": corrupt})
                assert await store.journal_pending() == [bad, first]
                assert await store.journal_pending_of("fake", "bot") == [first, bad]  # by seq
                entry = await store.journal_entry(journal_key(bad))
                assert entry is not None and (entry.state, entry.received_at) == ("pending", 0)
            assert store.undecodable == 0
            await store.journal_done([bad])
            assert await store.journal_pending_of("fake", "bot") == [first]
    warned = [r.getMessage() for r in caplog.records if r.name == "trio_chatbridge.stores.redis"]
    assert warned and all("no valid time of receipt" in w for w in warned)


async def test_a_mark_of_an_undecodable_record_does_not_grow_with_their_number(
    redis_node: RedisServer, raw: coredis.Redis[str]
) -> None:
    """Each bad record used to be marked with the reasons of all the account's bad records
    joined: N marks of N reasons each (quadratic). A mark is the same for 1 bad record or 50."""
    keys = prefix()
    marks: dict[int, list[str]] = {}
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as store:
            for count in (1, 50):
                connector = FakeConnector(f"bot{count}")
                ids = [str(i) for i in range(count)]
                await store.journal_add([connector.message("x", id=i) for i in ids])
                body = f"{keys}{{{connector.name}}}:body"
                await raw.hset(body, {i: f"{{not json {i}" for i in ids})
                assert await store.journal_pending_of("fake", connector.account) == []
                state = await raw.hgetall(f"{keys}{{{connector.name}}}:state")
                assert sorted(state) == sorted(ids)
                marks[count] = list(state.values())
            assert store.undecodable == 51
    assert {len(mark) for mark in marks[50]} == {len(marks[1][0])}


async def test_accounts_whose_names_hold_colons_keep_apart(
    redis_node: RedisServer, raw: coredis.Redis[str]
) -> None:
    """Platform ``p:a`` with account ``b`` and platform ``p`` with account ``a:b`` joined
    plainly shared one hash tag: one journal (the second's message 1 taken for a duplicate
    of the first's: lost), one cursor, one lease. The usual names keep their keys."""
    keys = prefix()
    first, second = FakeConnector("b", platform="p:a"), FakeConnector("a:b", platform="p")
    usual = FakeConnector("bot")
    assert first.name != second.name
    assert (first.name, usual.name) == ("p%3Aa:b", "fake:bot")
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as store:
            messages = [c.message("hi", id="1") for c in (first, second, usual)]
            assert await store.journal_add(messages) == [True, True, True]
            await store.set_cursor("p:a", "b", "c1")
            assert await store.get_cursor("p", "a:b") is None
            assert await store.acquire_lease(first.name, "one", ttl=10)
            assert await store.acquire_lease(second.name, "two", ttl=10)
            assert await store.journal_pending_of("p", "a:b") == [messages[1]]
            await store.journal_done([messages[0]])
            assert await store.journal_pending_of("p", "a:b") == [messages[1]]
    assert await raw.hexists(f"{keys}{{fake:bot}}:body", "1")  # where it always was
    assert await raw.hexists(f"{keys}{{p:a%3Ab}}:body", "1")


def test_a_bridge_takes_accounts_whose_plain_names_would_collide() -> None:
    connectors = [FakeConnector("b", platform="p:a"), FakeConnector("a:b", platform="p")]

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise AssertionError("no message comes")

    bridge = cb.Bridge(connectors, agent)
    assert sorted(bridge.status()) == ["p%3Aa:b", "p:a%3Ab"]


async def test_another_applications_key_under_our_prefix_is_a_clear_error(
    redis_node: RedisServer, raw: coredis.Redis[str]
) -> None:
    """A string where our hash is (WRONGTYPE): the error says what to do; the account's
    other keys and the other accounts work on, and the account too once the key is gone."""
    keys = prefix()
    kv = f"{keys}{{fake:bot}}:kv"
    await raw.set(kv, "someone else's")
    with trio.fail_after(10):
        async with cb.RedisStore.from_url(redis_node.url, prefix=keys) as store:
            for call in (store.get_cursor("fake", "bot"), store.set_cursor("fake", "bot", "c")):
                with pytest.raises(
                    cb.StoreError, match=r"another application.*prefix of their own"
                ):
                    await call
            assert await store.journal_add([fake.message("hi", id="1")]) == [True]
            await store.set_cursor("fake", "other", "c")
            await raw.delete([kv])
            await store.set_cursor("fake", "bot", "c")
            assert await store.get_cursor("fake", "bot") == "c"


async def test_a_password_stays_out_of_reprs_errors_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ours and coredis's: the store's repr, a refused password's error (and its causes), a
    lost connection's, and every log line (coredis's at DEBUG too)."""
    require_redis()
    secret = f"pw-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with redis_server(tmp_path) as server, trio.fail_after(20):
        server.cli("config", "set", "requirepass", secret)
        good = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        for url in (good, good.replace(secret, "x" + secret)):
            # store_from_url's timeout is 5 s: not worth a pause
            for store, pause in (
                (cb.RedisStore.from_url(url, timeout=1), True),
                (store_from_url(url), False),
            ):
                assert isinstance(store, cb.RedisStore)
                texts.append(repr(store))
                try:
                    async with store:
                        await store.set_cursor("fake", "bot", "c")
                        texts.append(await store.get_cursor("fake", "bot") or "")
                        if not pause:
                            continue
                        server.pause()
                        try:
                            with pytest.raises(cb.StoreError, match="could not read"):
                                await store.get_cursor("fake", "bot")
                        finally:
                            server.resume()
                except cb.ConfigurationError as exc:
                    texts += traceback.format_exception(exc)
                    assert "refused the credentials" in str(exc)
                    assert "invalid username-password" in str(exc)
    assert texts.count("c") == 2  # the good password worked, the bad one did not
    texts += [r.getMessage() for r in caplog.records]
    assert not [t for t in texts if secret in t]


async def test_a_redis_restarted_empty_still_prunes_the_accounts_journals(
    tmp_path: Path,
) -> None:
    """The set of accounts (where pruning finds journals) is lost with the rest: the store
    that remembered having written it records an account again at its first message after."""
    require_redis()
    with redis_server(tmp_path) as server, trio.fail_after(20):
        async with cb.RedisStore.from_url(server.url, timeout=2) as store:
            await store.journal_add([fake.message("before", id="1")])
            server.restart()
            after = fake.message("after", id="2")
            assert await store.journal_add([after]) == [True]
            await store.journal_done([after])
            assert await store.journal_prune(math.inf) == 1
            assert await store.journal_entry(journal_key(after)) is None


async def test_a_journal_write_whose_reply_came_late_is_handled_once(tmp_path: Path) -> None:
    """Redis answers after the timeout (paused): the write lands all the same. coredis sent
    it again by itself, and that second write found the message journaled: a duplicate, so
    nobody ever handled it. Now the write fails (the connector is not acknowledged), and the
    platform's redelivery is new once, a duplicate after that."""
    require_redis()
    message = fake.message("hi", id="1")

    async def resume(server: RedisServer) -> None:
        await trio.sleep(0.3)  # real time: the Redis process is frozen meanwhile
        server.resume()

    with redis_server(tmp_path) as server, trio.fail_after(20):
        async with cb.RedisStore.from_url(server.url, timeout=0.2) as store:
            await store.journal_add([fake.message("warm", id="0")])  # connected, scripts loaded
            first = None
            server.pause()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume, server)
                with contextlib.suppress(cb.StoreError):
                    first = await store.journal_add([message])
            await trio.sleep(0.1)  # the frozen write runs once Redis is back
            again = await store.journal_add([message])
            assert [first, again].count([True]) == 1
            assert await store.journal_add([message]) == [False]


async def test_a_write_that_ended_unknown_is_new_only_while_pending_and_unreplayed(
    tmp_path: Path,
) -> None:
    """The redelivery of a message whose journal write failed (it landed) is a duplicate
    once the message is done, and once the account's lease was acquired (its replay queues
    the message)."""
    require_redis()
    done, replayed = fake.message("done", id="1"), fake.message("replayed", id="2")
    with redis_server(tmp_path) as server, trio.fail_after(20):
        store = cb.RedisStore.from_url(server.url, timeout=0.2)
        other = cb.RedisStore.from_url(server.url)
        async with store, other:
            await store.journal_add([fake.message("warm", id="0")])  # connected, scripts loaded
            for message in (done, replayed):
                server.pause()
                try:
                    with pytest.raises(cb.StoreError, match="timed out"):
                        await store.journal_add([message])
                finally:
                    server.resume()
            await other.journal_done([done])  # another process replayed and handled it
            assert await store.acquire_lease(fake.name, "me", ttl=10)
            assert [m.id for m in await store.journal_pending_of("fake", "bot")] == ["0", "2"]
            assert await store.journal_add([done, replayed]) == [False, False]


async def test_a_bridge_handles_a_message_whose_journal_reply_came_late(tmp_path: Path) -> None:
    """End to end: Redis frozen past the store's timeout while a message is journaled. The
    put fails, the connector is restarted and delivers the message again: it is handled
    once (it stayed pending, unhandled, for as long as the bridge kept the lease)."""
    require_redis()
    connector = FakeConnector("bot")
    agent = Recorder(2)
    with redis_server(tmp_path) as server, trio.fail_after(20):
        bridge = cb.Bridge(
            [connector],
            agent,
            store=cb.RedisStore.from_url(server.url, timeout=0.2),
            leases=cb.Leases(ttl=6),
            debounce=cb.Debounce(window=0.01, max_delay=0.05),
            backoff=cb.Backoff(initial=0.05, maximum=0.1),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await bridge.wait_status(lambda s: s[connector.name].state == "running")
            await connector.say("before", id="0")
            server.pause()
            try:
                connector.deliver(connector.message("during", id="1"))
                await trio.sleep(0.5)  # real time: Redis is frozen
            finally:
                server.resume()
            await agent.all_in.wait()
            bridge.shutdown()
    assert agent.handled == ["before", "during"]
    assert bridge.stats().duplicates == 0


async def test_a_write_that_ended_unknown_past_the_bound_is_still_new_on_redelivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More journal writes ended unknown than the store remembers ids of: the redelivery of
    one it forgot, journaled and pending, used to be a duplicate, dropped, and so never
    handled while this process kept the lease (lost). Now every pending redelivery of that
    account is new until its lease is next acquired (at least once)."""
    require_redis()
    monkeypatch.setattr("trio_chatbridge.stores._redis.UNSURE_AT_MOST", 1)
    forgotten, kept = fake.message("forgotten", id="1"), fake.message("kept", id="2")
    with redis_server(tmp_path) as server, trio.fail_after(20):
        async with cb.RedisStore.from_url(server.url, timeout=0.2) as store:
            await store.journal_add([fake.message("warm", id="0")])  # connected, scripts loaded
            server.pause()
            try:
                with pytest.raises(cb.StoreError, match="timed out"):
                    await store.journal_add([forgotten, kept])
            finally:
                server.resume()
            await trio.sleep(0.1)  # the frozen write runs once Redis is back
            assert [m.id for m in await store.journal_pending_of("fake", "bot")] == ["0", "1", "2"]
            assert await store.journal_add([forgotten, kept]) == [True, True]
            await store.journal_done([forgotten])
            assert await store.journal_add([forgotten]) == [False]  # done: a duplicate
            assert await store.acquire_lease(fake.name, "me", ttl=10)  # its replay queues all
            assert await store.journal_add([kept]) == [False]

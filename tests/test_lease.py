"""Leases on a shared store: one process per account, spread, failover, scoped replay.

Several bridges share one MemoryStore in one Trio run, under the autojump clock; each bridge
reaches it through a :class:`Link` that a test can cut, as a network partition would.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given

import trio_chatbridge as cb
from trio_chatbridge._lease import WAKE_AFTER, assign
from trio_chatbridge.stores import JournalEntry, JournalKey
from trio_chatbridge.testing import FakeConnector

TTL = 3.0
LEASES = cb.Leases(ttl=TTL, enabled=True, jitter=0.0)
ACCOUNTS = [f"bot{i}" for i in range(7)]


@given(
    accounts=st.sets(st.text("abc", min_size=1, max_size=4), max_size=30),
    members=st.sets(st.text("xyz", min_size=1, max_size=3), min_size=1, max_size=6),
)
def test_every_account_gets_one_owner_and_none_more_than_its_share(
    accounts: set[str], members: set[str]
) -> None:
    owners = assign(list(accounts), list(members))
    assert set(owners) == accounts and set(owners.values()) <= members
    share = math.ceil(len(accounts) / len(members))
    assert max(Counter(owners.values()).values(), default=0) <= share
    assert assign(sorted(accounts, reverse=True), sorted(members, reverse=True)) == owners


def test_a_leaving_member_moves_only_its_accounts_when_shares_allow() -> None:
    accounts = [f"a{i}" for i in range(12)]
    before = assign(accounts, ["p", "q", "r", "s"])
    after = assign(accounts, ["p", "q", "r", "s", "t", "u"])  # shares shrink from 3 to 2
    kept = sum(before[a] == after[a] for a in accounts)
    assert kept >= 6  # rendezvous hashing: most accounts stay where they were


class Link(cb.Store):
    """One bridge's way to the shared store; ``cut`` makes every call fail, as a partition."""

    shared = True

    def __init__(self, store: cb.Store) -> None:
        self.store = store
        self.cut = False
        self.cut_beats = False
        """Only heartbeats fail (a process that dies in a round, after renewing)."""

    def _check(self) -> cb.Store:
        if self.cut:
            raise cb.StoreError("link cut by the test")
        return self.store

    async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
        return await self._check().journal_add(messages)

    async def journal_done(
        self, messages: Sequence[cb.Message], *, error: str | None = None
    ) -> None:
        await self._check().journal_done(messages, error=error)

    async def journal_pending(self) -> list[cb.Message]:
        return await self._check().journal_pending()

    async def journal_pending_of(self, platform: str, account: str) -> list[cb.Message]:
        return await self._check().journal_pending_of(platform, account)

    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        return await self._check().journal_entry(key)

    async def journal_prune(self, before: float) -> int:
        return await self._check().journal_prune(before)

    async def get(self, platform: str, account: str, key: str) -> str | None:
        return await self._check().get(platform, account, key)

    async def set(
        self, platform: str, account: str, key: str, value: str | None, *, ttl: float | None = None
    ) -> None:
        await self._check().set(platform, account, key, value, ttl=ttl)

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._check().acquire_lease(name, owner, ttl)

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        return await self._check().renew_lease(name, owner, ttl)

    async def release_lease(self, name: str, owner: str) -> None:
        await self._check().release_lease(name, owner)

    async def lease_remaining(self, name: str) -> float | None:
        return await self._check().lease_remaining(name)

    async def heartbeat(self, group: str, member: str, ttl: float) -> dict[str, float]:
        if self.cut_beats:
            raise cb.StoreError("heartbeats cut by the test")
        return await self._check().heartbeat(group, member, ttl)

    async def watch_releases(
        self,
        notify: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        def told() -> None:
            if not self.cut:
                notify()

        await self.store.watch_releases(told, task_status=task_status)


class Process:
    """One bridge on the shared store, its connectors, and what its agent handled."""

    def __init__(
        self,
        shared: cb.Store,
        accounts: Sequence[str] = ACCOUNTS,
        link: Link | None = None,
        leases: cb.Leases = LEASES,
    ) -> None:
        self.link = Link(shared) if link is None else link
        self.connectors = {a: FakeConnector(a) for a in accounts}
        self.handled: list[str] = []
        self.bridge = cb.Bridge(
            list(self.connectors.values()),
            self.agent,
            store=self.link,
            leases=leases,
            debounce=cb.Debounce(window=0.5),
            backoff=cb.Backoff(initial=0.5, jitter=0.0),
        )
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()

    async def agent(self, batch: cb.Batch, reply: cb.Reply) -> None:
        self.handled.extend(m.id for m in batch.messages)

    def held(self) -> list[str]:
        return sorted(
            name.split(":")[1] for name, s in self.bridge.status().items() if s.lease == "held"
        )

    def running(self) -> list[str]:
        return sorted(
            name.split(":")[1] for name, s in self.bridge.status().items() if s.state == "running"
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await self.bridge.run(task_status=task_status)
        finally:
            self.stopped.set()


@asynccontextmanager
async def processes(
    count: int,
) -> AsyncIterator[tuple[list[Process], trio.Nursery, cb.MemoryStore]]:
    """``count`` bridges running on one shared store, the whole bounded in (virtual) time;
    more can be started in the nursery."""
    shared = cb.MemoryStore()
    procs = [Process(shared) for _ in range(count)]
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for proc in procs:
                await nursery.start(proc.run)
            yield procs, nursery, shared
            for proc in procs:
                proc.bridge.shutdown()


def owners(procs: Sequence[Process]) -> Mapping[str, list[int]]:
    """Which processes hold each account's lease, and run its connector."""
    held: dict[str, list[int]] = {a: [] for a in ACCOUNTS}
    for i, proc in enumerate(procs):
        for account in proc.held():
            held[account].append(i)
    return held


async def test_each_account_runs_in_exactly_one_process_spread_evenly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with processes(3) as (procs, nursery, shared):
        await trio.sleep(3 * TTL)
        assert all(len(o) == 1 for o in owners(procs).values()), owners(procs)
        assert max(len(p.held()) for p in procs) <= math.ceil(7 / 3)
        for proc in procs:
            assert proc.running() == proc.held()
            standby = [s for s in proc.bridge.status().values() if s.lease == "standby"]
            assert all(s.state == "paused" for s in standby)

        # A fourth process joins: accounts move to it, never held twice on the way.
        procs.append(Process(shared))
        await nursery.start(procs[3].run)
        for _ in range(int(4 * TTL / 0.25)):
            await trio.sleep(0.25)
            assert all(len(o) <= 1 for o in owners(procs).values()), owners(procs)
            assert all(len(p.running()) <= len(p.held()) for p in procs)
        assert all(len(o) == 1 for o in owners(procs).values()), owners(procs)
        assert max(len(p.held()) for p in procs) <= math.ceil(7 / 4)
        assert procs[3].held()
        assert sum(p.bridge.stats().other.get("lease.handed_off", 0) for p in procs) > 0

        # One leaves gracefully: its leases are released, the others take them at once.
        leaving = procs.pop(0)
        leaving.bridge.shutdown()
        await trio.sleep(3 * TTL)
        assert all(len(o) == 1 for o in owners(procs).values()), owners(procs)
        assert max(len(p.held()) for p in procs) <= math.ceil(7 / 3)


async def test_a_process_cut_off_stops_its_connectors_before_its_leases_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with processes(2) as (procs, _, _):
        await trio.sleep(2 * TTL)
        victim = max(procs, key=lambda p: len(p.held()))
        other = procs[1 - procs.index(victim)]
        lost = victim.held()
        cut_at = trio.current_time()
        victim.link.cut = True
        # Renewals fail from now on: the last one was at most a round ago, so every
        # connector stops within the TTL minus the margin, before anyone can take over.
        step = 0.01
        while victim.running():
            await trio.sleep(step)
            assert not any(a in other.held() for a in victim.running())
        assert trio.current_time() - cut_at <= TTL * (1 - LEASES.margin) + step
        for name, status in victim.bridge.status().items():
            if name.split(":")[1] in lost:
                assert (status.lease, status.state) == ("lost", "paused")
        # The other process takes the accounts over within a TTL and a round.
        await trio.sleep(TTL + LEASES.round)
        assert other.held() == ACCOUNTS
        assert victim.bridge.stats().other["lease.lost"] == len(lost)
        # The partition heals: the victim rejoins and gets its share back; nothing crashed.
        victim.link.cut = False
        await trio.sleep(3 * TTL)
        assert all(len(o) == 1 for o in owners(procs).values()), owners(procs)
        assert victim.held()


async def running_everywhere(procs: Sequence[Process], step: float = 0.005) -> float:
    """Virtual seconds until every account's connector runs in one of ``procs`` (several
    bridges: no one status to wait on), at most 3 TTLs."""
    start = trio.current_time()
    for _ in range(int(3 * TTL / step)):
        if sorted(a for p in procs for a in p.running()) == ACCOUNTS:
            return trio.current_time() - start
        await trio.sleep(step)
    raise AssertionError(f"not taken over after {3 * TTL} s: {owners(procs)}")


@pytest.mark.parametrize("phase", [0.0, 0.3, 0.6, 0.95])
async def test_a_killed_owner_is_taken_over_within_one_ttl(
    autojump_clock: trio.testing.MockClock, phase: float
) -> None:
    """Killed at any point of its round, its accounts run elsewhere within the TTL (plus the
    standby's wake-up jitter): the standby wakes when the dead one's membership expires."""
    async with processes(2) as (procs, _, _):
        await trio.sleep(2 * TTL + phase * LEASES.round)
        victim, survivor = sorted(procs, key=lambda p: len(p.held()), reverse=True)
        assert victim.held()
        victim.link.cut = True  # it dies: nothing released, nothing left
        victim.scope.cancel()
        took = await running_everywhere([survivor])
        assert took <= TTL + LEASES.wake_jitter + 0.02, took
        procs.remove(victim)


async def test_an_owner_killed_between_renewing_and_beating_is_taken_over_within_one_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Its leases outlive its membership: the standby, refused, tries again just after the
    lease expires (not a round later)."""
    async with processes(1) as (procs, nursery, shared):
        # The victim's rounds come just after the survivor's: waiting for the survivor's
        # next round after the lease expired would take almost a round more.
        await trio.sleep(0.1 * LEASES.round)
        victim, survivor = Process(shared), procs[0]
        procs.append(victim)
        await nursery.start(victim.run)
        await trio.sleep(2 * TTL + 0.5 * LEASES.round)
        assert victim.held()
        victim.link.cut_beats = True
        await trio.sleep(LEASES.round)  # one more round: renewed, not beaten
        victim.link.cut = True
        victim.scope.cancel()
        took = await running_everywhere([survivor])
        assert LEASES.round < took <= TTL + LEASES.wake_jitter + 0.02, took
        procs.remove(victim)


async def test_a_graceful_stop_is_taken_over_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The store tells standbys of the releases and the leave: no waiting for a round."""
    async with processes(2) as (procs, _, _):
        await trio.sleep(2 * TTL + 0.5 * LEASES.round)
        leaving, staying = procs
        assert leaving.held()
        with trio.fail_after(1):
            leaving.bridge.shutdown()
            await leaving.stopped.wait()
        took = await running_everywhere([staying], step=0.001)
        assert took <= 0.1, took
        procs.remove(leaving)


class HeldOff(Link):
    """A store that refuses every acquisition until ``until`` (Trio's clock), as a
    ``RedisStore`` does after Redis lost its data; counts the look-ups of a lease's expiry."""

    def __init__(self, store: cb.Store, until: float) -> None:
        super().__init__(store)
        self.until = until
        self.lookups = 0

    def acquisitions_held_off(self) -> float:
        return max(0.0, self.until - trio.current_time())

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return self.acquisitions_held_off() <= 0 and await super().acquire_lease(name, owner, ttl)

    async def lease_remaining(self, name: str) -> float | None:
        self.lookups += 1
        return await super().lease_remaining(name)


async def test_a_hold_off_is_waited_out_without_a_lookup_per_account_and_shown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While the store holds acquisitions off, a round used to ask for each refused lease's
    expiry, one after another, and show "another process holds the lease". It asks nothing
    more, says the store holds off, and acquires just after the hold-off ends (before the
    next round)."""
    shared = cb.MemoryStore()
    until = 2.5 * TTL  # halfway between two rounds
    link = HeldOff(shared, until)
    proc = Process(shared, link=link)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(proc.run)
            await trio.sleep(until - 0.1)
            statuses = proc.bridge.status().values()
            assert [s.lease for s in statuses] == ["standby"] * len(ACCOUNTS)
            assert all("acquires no lease" in (s.detail or "") for s in statuses)
            assert link.lookups == 0
            await trio.sleep(0.1 + LEASES.wake_jitter + 0.02)
            assert proc.held() == sorted(ACCOUNTS)
            proc.bridge.shutdown()


class FarAway(Link):
    """A store whose acquisitions take ``per_lease`` seconds a lease (Trio's clock): Redis far
    away, many accounts."""

    def __init__(self, store: cb.Store, per_lease: float) -> None:
        super().__init__(store)
        self.per_lease = per_lease
        self.calls: list[int] = []

    async def acquire_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        self.calls.append(len(names))
        await trio.sleep(self.per_lease * len(names))
        return await super().acquire_leases(names, owner, ttl)


async def test_a_round_too_short_to_acquire_every_lease_keeps_what_it_acquired(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty accounts whose acquisition takes longer than a round: tried in one call, each
    round's was cut off and nothing was ever acquired. Ten to a call, each call's are kept,
    and the next round takes the rest."""
    monkeypatch.setattr("trio_chatbridge._lease.ACQUIRED_AT_ONCE", 10)
    accounts = [f"bot{i:02}" for i in range(30)]
    per_lease = 1.2 * LEASES.round / len(accounts)  # all of them: 1.2 rounds; ten: 0.4
    link = FarAway(cb.MemoryStore(), per_lease)
    proc = Process(link.store, accounts, link=link)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(proc.run)
            await trio.sleep(2.5 * LEASES.round)
            assert proc.held() == accounts
            proc.bridge.shutdown()
    assert link.calls[:4] == [10, 10, 10, 10]  # the third call cut off, tried again
    assert proc.bridge.stats().other["lease.acquired"] == 30


class Distant(Link):
    """Redis far away: each acquisition and each look-up of expiries is one round trip of
    ``rtt`` seconds (Trio's clock), however many leases it carries; records how many leases
    each look-up asked about."""

    def __init__(self, store: cb.Store, rtt: float) -> None:
        super().__init__(store)
        self.rtt = rtt
        self.lookups: list[int] = []

    async def acquire_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        await trio.sleep(self.rtt)
        return [await self._check().acquire_lease(name, owner, ttl) for name in names]

    async def lease_remaining(self, name: str) -> float | None:
        return (await self.leases_remaining([name]))[0]

    async def leases_remaining(self, names: Sequence[str]) -> list[float | None]:
        self.lookups.append(len(names))
        await trio.sleep(self.rtt)
        return [await self._check().lease_remaining(name) for name in names]


async def held_by_a_dead_owner(store: cb.Store, accounts: Sequence[str], until: float) -> None:
    """The accounts' leases held until ``until`` (Trio's clock) by an owner that is no member
    any more: it died after its membership expired, or was handing them off."""
    for account in accounts:
        ttl = until - trio.current_time()
        assert await store.acquire_lease(FakeConnector(account).name, "gone", ttl)


async def test_a_round_asks_the_expiries_of_its_refused_leases_in_one_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Thirty accounts whose leases a dead owner holds for two and a half more rounds, Redis
    50 ms away. A round asked each refused lease's expiry in a call of its own, one after
    another: thirty round trips, over the round's time, so the round was cut off, and the
    takeover waited for the next round. One call asks them all: the keeper wakes just after
    the leases expire, and takes every account then."""
    accounts = [f"acct{i:02}" for i in range(30)]
    link = Distant(cb.MemoryStore(), rtt=0.05)
    start = trio.current_time()
    expiry = start + 2.5 * LEASES.round
    await held_by_a_dead_owner(link.store, accounts, expiry)
    proc = Process(link.store, accounts, link=link)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(proc.run)
            await trio.sleep_until(expiry)
            assert proc.held() == []
            # woken at the expiry (plus its wake jitter), one round trip to acquire them
            await trio.sleep(WAKE_AFTER + LEASES.wake_jitter + link.rtt + 0.01)
            assert proc.held() == accounts
            proc.bridge.shutdown()
    assert link.lookups == [30, 30, 30]  # one look-up a round, each of every refused lease


async def test_a_round_cut_off_by_its_time_keeps_the_expiries_it_was_told(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty accounts, ten to an acquisition call, Redis so far away that a round has time
    for two calls and one look-up. The look-ups came after every call, so a round cut off
    learnt no expiry, and the keeper slept to its next round. Each call's refused leases
    are looked up as it returns: the first ten's expiries are kept, and the keeper wakes as
    they expire (here before its next round, which the jitter puts half a round after the
    last one's time ran out)."""
    monkeypatch.setattr("trio_chatbridge._lease.ACQUIRED_AT_ONCE", 10)
    leases = cb.Leases(ttl=TTL, enabled=True, jitter=0.5, random=lambda: 1.0)
    accounts = [f"acct{i:02}" for i in range(30)]
    link = Distant(cb.MemoryStore(), rtt=0.3 * leases.round)
    start = trio.current_time()
    # rounds start at 0, 1.5 and 3 rounds; the third one's time runs out at 4, the next at 4.5
    expiry = start + 4.2 * leases.round
    await held_by_a_dead_owner(link.store, accounts, expiry)
    proc = Process(link.store, accounts, link=link, leases=leases)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(proc.run)
            await trio.sleep_until(expiry)
            assert proc.held() == []
            # woken at the expiry, one round trip to acquire the first ten
            await trio.sleep(WAKE_AFTER + leases.wake_jitter + link.rtt + 0.01)
            assert proc.held() == accounts[:10]
            await trio.sleep(2 * link.rtt)
            assert proc.held() == accounts
            proc.bridge.shutdown()
    assert link.lookups[:3] == [10, 10, 10]  # one a call: the second call's cut off each round


class ExpiriesUnread(Link):
    """A store that takes leases but cannot tell their expiries: every look-up fails (a
    Redis user whose ACL denies PTTL, or a read failing for a while)."""

    async def leases_remaining(self, names: Sequence[str]) -> list[float | None]:
        raise cb.StoreError("NOPERM this user has no permissions to run the 'pttl' command")


async def test_a_failed_look_up_of_expiries_keeps_the_round_acquiring_the_other_leases(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty accounts, ten to an acquisition call, the first ten's leases held by a dead
    owner for long. The look-up of those ten's expiries failing ended the round before it
    tried the other twenty: a look-up that always fails kept them from being taken for good.
    A look-up only says when to try again; failed, those wait for a round, as before it."""
    monkeypatch.setattr("trio_chatbridge._lease.ACQUIRED_AT_ONCE", 10)
    accounts = [f"acct{i:02}" for i in range(30)]
    link = ExpiriesUnread(cb.MemoryStore())
    await held_by_a_dead_owner(link.store, accounts[:10], trio.current_time() + 100 * TTL)
    proc = Process(link.store, accounts, link=link)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(proc.run)
            await trio.sleep(3 * LEASES.round)
            assert proc.held() == accounts[10:]
            proc.bridge.shutdown()


async def test_bridges_sharing_one_sqlite_file_spread_its_accounts(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """SQLite keeps a membership too: processes on one file (leases enabled) share the
    accounts, and one that dies is taken over within the TTL (no release notices here)."""
    stores = [
        cb.SQLiteStore(tmp_path / "shared.db", threaded=False, wall_clock=trio.current_time)
        for _ in range(3)
    ]
    async with stores[0], stores[1], stores[2]:
        procs = [Process(store) for store in stores]
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for proc in procs:
                    await nursery.start(proc.run)
                await trio.sleep(3 * TTL)
                assert all(len(o) == 1 for o in owners(procs).values()), owners(procs)
                assert max(len(p.held()) for p in procs) <= math.ceil(len(ACCOUNTS) / 3)
                victim = max(procs, key=lambda p: len(p.held()))
                victim.link.cut = True
                victim.scope.cancel()
                procs.remove(victim)
                took = await running_everywhere(procs)
                assert took <= TTL + LEASES.wake_jitter + 0.02, took
                for proc in procs:
                    proc.bridge.shutdown()


async def test_unfinished_messages_replay_in_the_process_that_acquires_their_account(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with processes(2) as (procs, _, shared):
        await trio.sleep(2 * TTL)
        survivor, dying = procs
        theirs, ours = dying.held(), survivor.held()
        assert theirs and ours
        # The dying process is cut off with runs unfinished (journaled, never marked done);
        # a message of the survivor's own accounts is pending too (as if being handled).
        dying.link.cut = True
        left = [FakeConnector(a).message("left over", id=f"old-{a}") for a in ACCOUNTS]
        await shared.journal_add(left)
        await trio.sleep(TTL + 2 * LEASES.round)
        dying.scope.cancel()  # it dies, without releasing anything
        # The survivor acquired the dead one's accounts and replayed their messages only.
        assert survivor.held() == ACCOUNTS
        assert sorted(survivor.handled) == sorted(f"old-{a}" for a in theirs)
        assert dying.handled == []
        assert sorted(m.account for m in await shared.journal_pending()) == ours
        # New messages reach the process that runs the account, and are handled once.
        for account in ACCOUNTS:
            for proc in procs:
                proc.connectors[account].deliver(
                    FakeConnector(account).message("new", id=f"new-{account}")
                )
        await trio.sleep(2 * TTL)
        handled = Counter(m for p in procs for m in p.handled if m.startswith("new"))
        assert handled == Counter({f"new-{a}": 1 for a in ACCOUNTS})
        procs.remove(dying)


async def test_without_leases_a_bridge_replays_everything_at_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = cb.MemoryStore()
    message = FakeConnector("bot").message("left over", id="old")
    await shared.journal_add([message])
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.id for m in batch.messages)

    bridge = cb.Bridge([FakeConnector("bot")], agent, store=shared)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await trio.sleep(5)
            bridge.shutdown()
    assert handled == ["old"]
    assert all(s.lease is None for s in bridge.status().values())


class DoneRefused(cb.MemoryStore):
    """A store that refuses to mark messages done (Redis away, or our lease taken)."""

    async def journal_done(
        self, messages: Sequence[cb.Message], *, error: str | None = None
    ) -> None:
        raise cb.StoreError("refused by the test")


async def test_a_refused_done_mark_leaves_the_message_pending_and_the_bridge_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = DoneRefused()
    connector = FakeConnector("bot")
    handled: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(m.id for m in batch.messages)

    bridge = cb.Bridge([connector], agent, store=store, debounce=cb.Debounce(window=0.5))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await connector.say("one", id="1")
            await trio.sleep(2)
            await connector.say("two", id="2")
            await trio.sleep(2)
            bridge.shutdown()
    assert handled == ["1", "2"]
    assert [m.id for m in await store.journal_pending()] == ["1", "2"]  # replayed next time


class BusyStart(FakeConnector):
    """A connector whose start keeps the event loop busy: each of its steps stands for
    ``cost`` seconds of CPU (the clock jumps, no other task runs meanwhile), as building a
    client and sending a first request do; ``hang`` never comes up. ``starting`` counts the
    connectors in their start now, ``most`` the most there ever were."""

    starting = 0
    most = 0

    def __init__(self, account: str, clock: trio.testing.MockClock, cost: float) -> None:
        super().__init__(account)
        self.clock = clock
        self.cost = cost
        self.hang = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        BusyStart.starting += 1
        BusyStart.most = max(BusyStart.most, BusyStart.starting)
        try:
            for _ in range(4):
                self.clock.jump(self.cost)
                await trio.lowlevel.checkpoint()
            if self.hang:
                await trio.sleep_forever()
        finally:
            BusyStart.starting -= 1
        await super().run(task_status=task_status)


class Remote(cb.MemoryStore):
    """A store a round trip away: renewals and heartbeats take a millisecond, as to Redis
    (the reply is read in a later turn of the event loop, not in the sending task's step)."""

    def __init__(self) -> None:
        super().__init__()
        self.renewals: list[float] = []
        """When each renewal's reply was read."""

    async def renew_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        await trio.sleep(0.001)
        renewed = await super().renew_leases(names, owner, ttl)
        self.renewals.append(trio.current_time())
        return renewed

    async def heartbeat(self, group: str, member: str, ttl: float) -> dict[str, float]:
        await trio.sleep(0.001)
        return await super().heartbeat(group, member, ttl)


async def bridge_of_busy_starts(
    clock: trio.testing.MockClock, leases: cb.Leases, count: int, cost: float
) -> tuple[cb.Bridge, list[BusyStart]]:
    BusyStart.starting = BusyStart.most = 0
    connectors = [BusyStart(f"bot{i}", clock, cost) for i in range(count)]
    bridge = cb.Bridge(connectors, no_agent, store=Remote(), leases=leases)
    return bridge, connectors


async def no_agent(batch: cb.Batch, reply: cb.Reply) -> None:
    raise AssertionError("no message is sent in these tests")


async def test_renewals_keep_their_schedule_while_many_connectors_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A hundred connectors whose starts cost 80 ms of CPU each (8 s in all, over twice the
    margin between a renewal and the deadline it sets): started all at once, the loop would
    run every pending start's step before the keeper's next one, the first renewal would
    come back past its deadline, and every lease would lapse and be acquired again. Started
    a few at a time, each renewal keeps its round, and no lease is lost."""
    bridge, connectors = await bridge_of_busy_starts(autojump_clock, LEASES, 100, 0.02)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            start = trio.current_time()
            await bridge.wait_status(lambda s: all(c.state == "running" for c in s.values()))
            assert trio.current_time() - start >= 100 * 4 * 0.02 - 1e-6  # the CPU it cost
            await trio.sleep(3 * TTL)
            elapsed = trio.current_time()
            bridge.shutdown()
    other = bridge.stats().other
    assert other.get("lease.lost", 0) == 0, other
    assert other["lease.acquired"] == 100
    assert all(c.runs == 1 for c in connectors)
    assert BusyStart.most <= LEASES.starts
    # A renewal every round, all along (the first round acquires): a round apart, plus a
    # few turns of a loop still busy with starts, well inside the 2.4 s each one has.
    assert isinstance(bridge.store, Remote)
    renewals = bridge.store.renewals
    gaps = [b - a for a, b in zip([start, *renewals], renewals, strict=False)]
    assert renewals[-1] >= elapsed - LEASES.round - 0.1
    assert max(gaps) <= 2 * LEASES.round < TTL * (1 - LEASES.margin), gaps
    assert other["lease.renewed"] == 100 * len(renewals)


async def test_a_connector_slow_to_start_holds_its_start_slot_a_round_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Four connectors that never come up, one start slot: each holds it a round, then the
    next one starts (none waits for the others to come up)."""
    leases = cb.Leases(ttl=TTL, enabled=True, jitter=0.0, starts=1)
    bridge, connectors = await bridge_of_busy_starts(autojump_clock, leases, 4, 0.0)
    for connector in connectors:
        connector.hang = True
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await trio.sleep(3 * leases.round + 0.1)
            assert BusyStart.starting == 4  # all started, none stopped
            assert bridge.stats().other.get("lease.lost", 0) == 0
            bridge.shutdown()


class FailsToStart(FakeConnector):
    """A connector whose every start fails at once, with ``error``."""

    def __init__(self, account: str, error: Exception) -> None:
        super().__init__(account)
        self.error = error

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        await trio.lowlevel.checkpoint()
        raise self.error


@pytest.mark.parametrize(
    "error", [ConnectionError("refused"), cb.FatalConnectorError("bad token")], ids=repr
)
async def test_a_start_that_fails_gives_its_slot_up_at_once(
    autojump_clock: trio.testing.MockClock, error: Exception
) -> None:
    """One start slot, three connectors that fail to start: each gives the slot to the next
    as soon as its attempt failed (transient: it retries after its backoff; fatal: for good),
    not a round later."""
    leases = cb.Leases(ttl=TTL, enabled=True, jitter=0.0, starts=1)
    connectors = [FailsToStart(f"bot{i}", error) for i in range(3)]
    bridge = cb.Bridge(connectors, no_agent, store=Remote(), leases=leases)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await trio.sleep(0.1 * leases.round)
            assert [c.runs for c in connectors] == [1, 1, 1]
            bridge.shutdown()

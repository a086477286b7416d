"""Leases: on a store shared by several processes, each account's connector runs in one only.

A :class:`LeaseKeeper` runs one round every third of the lease's TTL (jittered): it renews
the leases it holds, records this process in the store's membership, works out which
accounts should be its own, hands off the others and tries to acquire its own.

Between rounds a standby does not wait for the next one when it knows better. The membership
tells it when each other member expires unless it beats again; a member beats after renewing
its leases, so when it dies its leases expire no later than its membership (on one Redis
clock). The standby wakes just after the earliest such expiry (a little jitter) and runs an
extra round, so a killed owner's accounts are taken over about one TTL after its last
renewal, not a round later. An acquisition refused for an account that is now this
process's (its lease outlived its owner's membership) is tried again just after the lease
expires. And a store that publishes releases (``RedisStore``) wakes standbys at once when a
lease is released or a member leaves: a graceful stop or a handoff is taken over at once.

The lease *is* the connector's cancel-scope deadline: each account's supervisor runs inside a
``trio.CancelScope`` whose deadline is the lease's expiry (counted from when the renewal was
sent) minus a margin. A process that cannot renew (Redis gone, the process paused) has
therefore stopped that connector before the lease expires and anyone else can take it; a
renewal refused (someone else holds it) stops the connector at once.

Which accounts are whose: every process sorts the accounts, and gives each in turn to the
live member that ranks it highest (rendezvous hashing) among those below ⌈M/N⌉ accounts. All
processes serving the same accounts compute the same answer, so each holds at most ⌈M/N⌉
once membership has settled, and a joining or leaving member moves few accounts. An account
given to another member is handed off (connector stopped, lease released) once membership
looked the same for two rounds in a row; its new owner acquires it at its next round.

When a lease is acquired, the account's unfinished journal entries are replayed, by this
process only (see ``docs/deploying.md`` for what is guaranteed).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import secrets
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, final

import attrs
import trio

from ._connector import LeaseState
from ._errors import ConfigurationError, StoreError
from ._messages import Message
from ._supervise import Supervisor
from .stores import Store

log = logging.getLogger("trio_chatbridge.lease")

ACQUIRED: Final = "lease.acquired"
LOST: Final = "lease.lost"
HANDED_OFF: Final = "lease.handed_off"
RENEWED: Final = "lease.renewed"
RELEASE_TIMEOUT: Final = 2.0  # seconds a graceful release may take before we give up on it
WAKE_AFTER: Final = 0.005  # seconds past an expiry before a standby acts on it
SETTLE: Final = 0.005  # seconds a woken keeper waits for more news before its extra round
ACQUIRED_AT_ONCE: Final = 1_000
"""Leases one call tries: each call's acquisitions are kept as it returns, so a round cut off
by its time still gains (RedisStore: five pipelines, sent together, two round trips)."""


@final
@attrs.frozen
class Leases:
    """How bridges on one shared store share accounts (see ``docs/deploying.md``)."""

    ttl: float = 15.0
    """Seconds a lease lasts unless renewed; renewed every third of it. A killed process's
    accounts are taken over at most about this long after it died (its last renewal's
    lease running out, plus ``wake_jitter`` and a few round trips); a stopped process's at
    once on a store that publishes releases (``RedisStore``)."""
    margin: float = 0.2
    """Fraction of ``ttl``: a connector whose lease was not renewed stops this long before
    the lease expires, so that no two processes ever run it at once."""
    group: str = "default"
    """Bridges in one group share the accounts they have in common."""
    enabled: bool | None = None
    """``None``: take leases when the store is shared (``RedisStore``); ``True`` or
    ``False`` to decide here (tests take leases on a ``MemoryStore``)."""
    handoff_grace: float = 10.0
    """Seconds a process handing an account off waits for its runs of that account to finish
    (its journal entries marked done) before it releases the lease, so that the new owner
    does not replay them."""
    jitter: float = 0.1
    """Each round's interval is scaled by a random factor in ``[1 - jitter, 1 + jitter]``."""
    wake_jitter: float = 0.01
    """Seconds, at most, a standby waits at random past an expiry it woke for, so that
    standbys do not all ask at the same instant. Small: each account has one assigned new
    owner, so standbys woken together ask for different leases (a heartbeat and one
    pipelined acquisition each); what it adds to every takeover after a crash is its mean."""
    starts: int = 16
    """Accounts whose connectors start at once. An account's start (replaying its unfinished
    messages, then the connector's first start: its client, its first request) holds one of
    these slots until the connector is up or its first attempt failed, at most a round: a
    process acquiring a thousand leases at once starts them a few at a time, so that its
    event loop stays free enough for the renewals to keep their schedule."""
    random: Callable[[], float] = attrs.field(default=random.random, repr=False)

    def __attrs_post_init__(self) -> None:
        if not (
            self.ttl > 0
            and 0 < self.margin < 2 / 3
            and 0 <= self.jitter < 1
            and self.wake_jitter >= 0
            and self.starts >= 1
        ):
            raise ConfigurationError(
                "Leases need ttl > 0, 0 < margin < 2/3 (a renewal must land before the "
                "connector stops), 0 <= jitter < 1, wake_jitter >= 0 and starts >= 1"
            )

    def applies_to(self, store: Store) -> bool:
        return store.shared if self.enabled is None else self.enabled

    @property
    def round(self) -> float:
        """Seconds between two rounds, before jitter: a third of the TTL."""
        return self.ttl / 3


def assign(accounts: Sequence[str], members: Sequence[str]) -> dict[str, str]:
    """Who should hold each account: balanced rendezvous hashing, at most ⌈M/N⌉ each.

    Deterministic: every process given the same accounts and members gets the same answer.
    """
    if not members:
        return {}
    cap = math.ceil(len(accounts) / len(members))
    load: Counter[str] = Counter()
    owners: dict[str, str] = {}
    for account in sorted(accounts):
        for member in sorted(members, key=lambda m: _score(m, account), reverse=True):
            if load[member] < cap:
                owners[account] = member
                load[member] += 1
                break
    return owners


def _score(member: str, account: str) -> bytes:
    return hashlib.blake2b(f"{member}\0{account}".encode(), digest_size=8).digest()


def owner_id() -> str:
    """This process's name in leases and membership: host, pid, and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@attrs.define(eq=False)
class _Account:
    """One account's lease, as this process sees it, and the scope its connector runs in."""

    supervisor: Supervisor
    state: LeaseState = "standby"
    acquired: trio.Event = attrs.Factory(trio.Event)
    """Set when this process acquired the lease and the connector should start."""
    deadline: float = -math.inf
    scope: trio.CancelScope | None = None
    handing_off: bool = False
    hand_off: trio.Event = attrs.Factory(trio.Event)
    """Set to make the running connector finish its account's runs, then stop."""
    failed: bool = False
    """The connector stopped for good (fatal error): not acquired again here."""
    retry_at: float = math.inf
    """When to try again an acquisition refused (Trio's clock): just after the lease expires."""

    @property
    def name(self) -> str:
        return self.supervisor.connector.name

    @property
    def holds(self) -> bool:
        return self.state == "held"

    def show(self, state: LeaseState, detail: str | None = None) -> None:
        self.state = state
        sup = self.supervisor
        sup.status = attrs.evolve(sup.status, lease=state)
        if state == "held":
            sup.set_state("starting")
        else:
            sup.set_state("paused", detail)

    def extend(self, deadline: float) -> None:
        self.deadline = deadline
        if self.scope is not None:
            self.scope.deadline = deadline


Replay = Callable[[Sequence[Message]], Awaitable[None]]


@attrs.define(eq=False)
class LeaseKeeper:
    """Runs the supervisors of ``accounts`` only while this process holds their leases."""

    config: Leases
    store: Store
    supervisors: Sequence[Supervisor]
    replay: Replay
    """Queues an account's unfinished messages (the inbox's ``replay``)."""
    counters: Counter[str]
    owner: str = attrs.field(factory=owner_id)
    _accounts: list[_Account] = attrs.field(init=False)
    _members: tuple[str, ...] = attrs.field(default=(), init=False)
    _scheduled_members: tuple[str, ...] = attrs.field(default=(), init=False)
    """The membership the last scheduled round saw (handoffs wait until it holds still)."""
    _stable: bool = attrs.field(default=False, init=False)
    _expiries: dict[str, float] = attrs.field(factory=dict, init=False)
    """When each other member expires unless it beats again (Trio's clock)."""
    _nudged: trio.Event = attrs.field(factory=trio.Event, init=False)
    _starting: trio.CapacityLimiter = attrs.field(init=False)
    """Slots for accounts starting (``Leases.starts``)."""

    def __attrs_post_init__(self) -> None:
        self._accounts = [_Account(s) for s in self.supervisors]
        self._starting = trio.CapacityLimiter(self.config.starts)

    def held(self) -> list[str]:
        """Names of the accounts whose lease this process holds now."""
        return [a.name for a in self._accounts if a.holds]

    async def run(self) -> None:
        """Run rounds and the accounts' connectors until cancelled; then release every lease
        this process holds (each bounded by ``RELEASE_TIMEOUT``), its connector stopped first,
        and leave the membership. After cancellation no connector of this keeper runs, and
        its leases and membership are given back unless the store did not answer in time
        (then they expire on their own)."""
        try:
            async with trio.open_nursery() as nursery:
                for account in self._accounts:
                    nursery.start_soon(self._gated, account)
                nursery.start_soon(self._listen)
                next_round = trio.current_time()
                while True:
                    self._nudged = trio.Event()
                    scheduled = trio.current_time() >= next_round
                    if scheduled:
                        jitter = 1 + self.config.jitter * (2 * self.config.random() - 1)
                        next_round = trio.current_time() + self.config.round * jitter
                    await self._round(scheduled)
                    # Until the next round, or earlier: an expiry worth acting on, or news.
                    with trio.move_on_at(min(next_round, self._wake_at())):
                        await self._nudged.wait()
                        await trio.sleep(SETTLE)  # a leaving process releases in a burst
        finally:
            # Leave the membership (a heartbeat that expires at once), so that nobody hands
            # an account off to this process any more.
            with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
                try:
                    await self.store.heartbeat(self.config.group, self.owner, 0)
                except StoreError as exc:
                    log.warning("could not leave the membership: %s", exc)

    def _nudge(self) -> None:
        self._nudged.set()

    async def _listen(self) -> None:
        """Wake the rounds whenever the store tells of a release or a leave; listen again a
        round after the store failed (rounds cover what was missed meanwhile)."""
        while True:
            try:
                await self.store.watch_releases(self._nudge)
            except StoreError as exc:
                log.warning("not told of lease releases for now: %s", exc)
            await trio.sleep(self.config.round)

    def _wake_at(self) -> float:
        """When an extra round is worth it: just after the earliest expiry of another
        member's membership or of a lease this process was refused."""
        soonest = min(
            [*self._expiries.values(), *(a.retry_at for a in self._accounts)], default=math.inf
        )
        return soonest + WAKE_AFTER + self.config.wake_jitter * self.config.random()

    async def _round(self, scheduled: bool) -> None:
        """Renew (in scheduled rounds), then beat, then hand off (in scheduled rounds) and
        acquire. Beating after renewing makes this process's membership outlive its leases,
        so a standby woken by that membership's expiry finds the leases free."""
        held = [a for a in self._accounts if a.holds]
        if scheduled and held:
            await self._renew(held)
        members = sorted({*await self._beat(), self.owner})
        self._members = tuple(members)
        if scheduled:
            self._stable = self._members == self._scheduled_members
            self._scheduled_members = self._members
        wanted = self._settle(members, scheduled)
        if wanted:
            await self._acquire(wanted)

    async def _beat(self) -> list[str]:
        """Beat this process's membership; the members the store knows (those of the last
        round if it does not answer in time), noting when each other member's expires."""
        members = list(self._members)
        self._expiries = {}
        try:
            with trio.move_on_after(self.config.round):
                beat = await self.store.heartbeat(self.config.group, self.owner, self.config.ttl)
                now = trio.current_time()
                members = list(beat)
                self._expiries = {m: now + left for m, left in beat.items() if m != self.owner}
        except StoreError as exc:
            log.warning("lease round: membership not updated: %s", exc)
        return members

    def _settle(self, members: list[str], scheduled: bool) -> list[_Account]:
        """Hand off what another member should serve (in a stable scheduled round); the
        accounts this process should serve but does not hold yet."""
        owners = assign([a.name for a in self._accounts if not a.failed], members)
        wanted: list[_Account] = []
        for account in self._accounts:
            account.retry_at = math.inf
            mine = owners.get(account.name) == self.owner
            hand_off = scheduled and self._stable and not account.handing_off
            if account.holds and not mine and hand_off:
                log.info("handing %s off to %s", account.name, owners.get(account.name))
                account.handing_off = True
                account.hand_off.set()
            elif mine and not account.holds and not account.acquired.is_set():
                wanted.append(account)
            elif account.supervisor.status.lease is None:  # first round, someone else's
                account.show("standby", "standby: another process serves this account")
        return wanted

    async def _acquire(self, accounts: Sequence[_Account]) -> None:
        """Try the leases of ``accounts``, :data:`ACQUIRED_AT_ONCE` to a call (as few round
        trips as the store can); start the connector of each acquired, and note when to try
        again each refused (:meth:`_retry_refused`), as each call returns. What the round's
        time cuts off is tried again the next round, and what was acquired and learnt before
        is kept: a store too slow to take them all in one round (many accounts, Redis far
        away) still takes a share each round, and wakes the keeper as the leases it was
        refused expire."""
        refused: list[_Account] = []
        untried = list(accounts)
        why = "standby: another process holds the lease"
        try:
            with trio.move_on_after(self.config.round):
                while untried:
                    trying = untried[:ACQUIRED_AT_ONCE]
                    sent = trio.current_time()
                    names = [a.name for a in trying]
                    got = await self.store.acquire_leases(names, self.owner, self.config.ttl)
                    del untried[: len(trying)]
                    refused_now = [a for a, ok in zip(trying, got, strict=True) if not ok]
                    refused += refused_now
                    for account in (a for a, ok in zip(trying, got, strict=True) if ok):
                        account.extend(sent + self.config.ttl * (1 - self.config.margin))
                        account.state = "held"
                        account.acquired.set()
                        self.counters[ACQUIRED] += 1
                        log.info("acquired the lease of %s", account.name)
                    held_off = await self._retry_refused(refused_now)
                    if held_off > 0:
                        why = (
                            f"standby: the store acquires no lease for {held_off:.1f} s, until "
                            "every process that may hold one from before has stopped (see "
                            "docs/deploying.md)"
                        )
        except StoreError as exc:
            log.warning("could not try %d leases: %s", len(untried), exc)
        for account in (*refused, *untried):
            if account.state != "lost":
                account.show("standby", why)

    async def _retry_refused(self, refused: Sequence[_Account]) -> float:
        """Note when to try each of ``refused`` again: when the store's hold-off ends (without
        asking about each lease; returns it), else just after its lease expires, asked of all
        of them in one call (:meth:`Store.leases_remaining`), unless told of a release first.
        Held by another, a lease's owner died after its membership did, or is handing it off.
        Cancelled (the round's time ran out), or the store failed to answer: the leases not
        answered for wait for a round (a look-up only says when to try again: its failure
        never keeps the round from trying the other leases)."""
        held_off = self.store.acquisitions_held_off()
        if held_off > 0:
            for account in refused:
                account.retry_at = trio.current_time() + held_off
        elif refused:
            try:
                left = await self.store.leases_remaining([a.name for a in refused])
            except StoreError as exc:
                log.warning("could not read when %d refused leases expire: %s", len(refused), exc)
                return held_off
            now = trio.current_time()
            for account, seconds in zip(refused, left, strict=True):
                if seconds is not None:
                    account.retry_at = now + seconds
        return held_off

    async def _renew(self, accounts: Sequence[_Account]) -> None:
        """Renew the leases of ``accounts`` in one call (as few round trips as the store
        can): each renewed one's deadline moves on; one refused stops its connector now."""
        sent = trio.current_time()
        renewed: list[bool] = []
        try:
            # Waiting past the deadlines is pointless: by then the connectors have stopped.
            with trio.move_on_at(min(a.deadline for a in accounts)):
                names = [a.name for a in accounts]
                renewed = await self.store.renew_leases(names, self.owner, self.config.ttl)
        except StoreError as exc:
            log.warning("could not renew %d leases: %s", len(accounts), exc)
        for account, kept in zip(accounts, renewed, strict=False):
            if kept:
                account.extend(sent + self.config.ttl * (1 - self.config.margin))
                self.counters[RENEWED] += 1
            else:
                log.warning(
                    "lost the lease of %s: it expired (or Redis lost it) or another process "
                    "holds it",
                    account.name,
                )
                if account.scope is not None:
                    account.scope.cancel()

    async def _gated(self, account: _Account) -> None:
        """Run the account's supervisor each time the lease is acquired, in a scope whose
        deadline the renewals move; release the lease after a handoff or at shutdown."""
        try:
            while True:
                await account.acquired.wait()
                account.show("held")
                with trio.CancelScope(deadline=account.deadline) as scope:
                    account.scope = scope
                    async with trio.open_nursery() as nursery:
                        if not await self._start(account, nursery):
                            # Give the lease back: the next acquisition replays, whoever
                            # makes it.
                            account.handing_off = True
                account.scope = None
                account.acquired = trio.Event()
                if account.failed or account.handing_off:
                    if account.handing_off:
                        self.counters[HANDED_OFF] += 1
                    await self._release(account)
                    account.handing_off = False
                    account.hand_off = trio.Event()
                    account.show("standby", "handed off to another process")
                    if account.failed:
                        return
                else:
                    self.counters[LOST] += 1
                    log.warning("%s stopped: its lease could not be renewed in time", account.name)
                    account.show("lost", "lease lost: could not renew it in time")
        finally:
            account.scope = None
            if account.holds:
                with trio.CancelScope(shield=True):
                    await self._release(account)

    async def _start(self, account: _Account, nursery: trio.Nursery) -> bool:
        """In one of the keeper's start slots: replay the account's unfinished messages, then
        start its supervisor in ``nursery`` and wait for its first start to be over (at most
        a round: a connector slow to come up does not hold the others back). False when the
        journal could not be read (nothing started)."""
        connector = account.supervisor.connector
        async with self._starting:
            try:
                pending = await self.store.journal_pending_of(connector.platform, connector.account)
            except StoreError as exc:
                log.warning("could not replay %s: %s", account.name, exc)
                return False
            await self.replay(pending)
            first_start_over = trio.Event()
            nursery.start_soon(self._stop_when_handed_off, account)
            nursery.start_soon(self._supervise, account, nursery.cancel_scope, first_start_over)
            with trio.move_on_after(self.config.round):
                await first_start_over.wait()
        return True

    @staticmethod
    async def _supervise(
        account: _Account, done: trio.CancelScope, first_start_over: trio.Event
    ) -> None:
        """Run the account's supervisor; once it returns (it failed for good), cancel
        ``done`` (the account's other tasks)."""
        await account.supervisor.run(first_start_over.set)
        account.failed = True  # run() only returns when it failed for good
        done.cancel()

    async def _stop_when_handed_off(self, account: _Account) -> None:
        """Once asked to hand off: wait (at most ``handoff_grace``) until no message of the
        account is unfinished, the connector still up for their replies, then stop it.

        Everything pending was replayed here when the lease was acquired, or arrived since, so
        it is this process's to finish; the new owner replays only what arrives in between
        the last look and the stop. The lease is still renewed meanwhile.
        """
        await account.hand_off.wait()
        connector = account.supervisor.connector
        with trio.move_on_after(self.config.handoff_grace):
            while True:
                try:
                    if not await self.store.journal_pending_of(
                        connector.platform, connector.account
                    ):
                        break
                except StoreError as exc:
                    log.warning("handing %s off: %s", account.name, exc)
                await trio.sleep(self.config.round / 10)
        if account.scope is not None:
            account.scope.cancel()

    async def _release(self, account: _Account) -> None:
        with trio.move_on_after(RELEASE_TIMEOUT):
            try:
                await self.store.release_lease(account.name, self.owner)
            except StoreError as exc:
                log.warning("could not release the lease of %s: %s", account.name, exc)
        account.state = "standby"

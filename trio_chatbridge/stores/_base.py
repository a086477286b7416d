"""What the bridge keeps, as one small abstract class every store implements.

A store holds four things:

- the **journal**: every accepted message, keyed by (platform, account, message id), so a
  redelivered message is recognised as a duplicate and an unfinished one is replayed on start;
- a **key-value space** per account, for cursors, context tokens, cached tickets;
- **leases**, so that only one process at a time runs a given connector.

Implementations only have to provide the primitives; the conveniences are built here once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Final, Literal, Self, TypeAlias, final

import attrs
import trio

from .._messages import Message

JournalKey: TypeAlias = tuple[str, str, str]
"""(platform, account, message id)."""

CURSOR_KEY = "_cursor"
"""The key-value key under which an account's cursor is kept. Keys starting with ``_`` are ours."""


MAX_TTL: Final = 1e12
"""The longest TTL a value takes, in seconds (some 31,700 years): Redis refuses an expiry past
about 9.2e15 s, and every store answers alike."""


def checked_ttl(ttl: float | None) -> float | None:
    """``ttl`` for a value (:meth:`Store.set`), or ValueError: a number of seconds over 0 and
    at most :data:`MAX_TTL` (a bool is not one: ``ttl=True`` is not "expire it")."""
    if ttl is not None and (isinstance(ttl, bool) or not 0 < ttl <= MAX_TTL):  # NaN fails too
        raise ValueError(
            f"a value's ttl must be a number of seconds over 0 and at most {MAX_TTL:g}, got {ttl!r}"
        )
    return ttl


def journal_key(message: Message) -> JournalKey:
    """The journal's key for a message."""
    return (message.platform, message.account, message.id)


JournalState: TypeAlias = Literal["pending", "done", "failed"]
"""Where a journaled message stands: ``pending`` until a run finished."""


@final
@attrs.frozen
class JournalEntry:
    """What the journal knows of one message."""

    message: Message
    state: JournalState
    """``pending`` until a run finished; ``failed`` when the run raised (see ``error``)."""
    error: str | None
    """The failure recorded for a failed run."""
    received_at: float
    """Wall-clock time at which the journal accepted it."""


class Store(ABC):
    """Durable state of a bridge. Use it as ``async with store:`` or let the bridge open it.

    Cancellation: every write is one transaction (or one script), so a cancelled write was
    made entirely or not at all, never in part. Where the store can tell, Cancelled means
    not at all (MemoryStore never waits, so it is never cancelled; SQLiteStore completes a
    write its worker thread has begun and returns, the cancellation taking effect at the
    caller's next checkpoint); a networked store (RedisStore) cannot always tell whether a
    command it sent was applied. A cancelled read changed nothing.
    """

    wall_clock: Callable[[], float] = time.time
    """Wall-clock seconds since the epoch, for ``received_at`` and pruning; a ``Bridge``
    given its own ``wall_clock`` sets it here, so both read one clock."""

    undecodable: int = 0
    """Journal records found not to decode (damaged, or written by something else) and set
    aside: marked failed, never replayed (see :meth:`journal_pending`); and messages that
    could not be written (text that is not Unicode, a lone surrogate), each set aside alone
    by :meth:`journal_add` (logged, returned as not new) while the others are journaled.
    ``bridge.stats()`` and the metrics report it; a store that keeps decoded messages
    (MemoryStore) has none, and keeps such a message as it is."""

    shared = False
    """Whether bridges on several processes use it at once: a bridge on a shared store runs a
    connector only while it holds the account's lease, and replays an account's unfinished
    messages when it acquires that lease (on a store that is not shared: all of them, at start).
    """

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:  # noqa: B027 - optional hook, most stores need nothing
        """Make the store ready (create tables, connect). Idempotent.

        Cancelled, it may or may not be open; :meth:`aclose` releases what it took either way.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`open` took. Idempotent; a cancellation does not stop it from
        releasing everything (the store shields what it must)."""

    # -- journal ---------------------------------------------------------------------------

    @abstractmethod
    async def journal_add(self, messages: Sequence[Message]) -> list[bool]:
        """Record messages not seen before, in one write; returns, per message, whether it was new.

        A message whose key is already there (or earlier in the same call) is a duplicate.
        When this returns, the new messages are durable. Cancelled: all the new messages were
        journaled or none (see the class).
        """

    @abstractmethod
    async def journal_done(self, messages: Sequence[Message], *, error: str | None = None) -> None:
        """Mark messages as handled; with ``error``, as handled by a run that failed.

        Cancelled: all or nothing (see the class).
        """

    @abstractmethod
    async def journal_pending(self) -> list[Message]:
        """Messages accepted but not yet marked done, oldest first (replayed on start).

        Cancelled: nothing changed (a read)."""

    async def journal_pending_of(self, platform: str, account: str) -> list[Message]:
        """The account's messages not yet marked done, oldest first (replayed by its owner).

        Cancelled: nothing changed (a read)."""
        return [
            m
            for m in await self.journal_pending()
            if (m.platform, m.account) == (platform, account)
        ]

    @abstractmethod
    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        """What the journal holds for one key, or None. Cancelled: nothing changed (a read)."""

    @abstractmethod
    async def journal_prune(self, before: float) -> int:
        """Forget handled messages accepted before wall-clock time ``before``; returns how many.

        Once forgotten, a redelivery of such a message would no longer be recognised. The
        bridge calls it at start, then periodically: where a store deletes the values past their
        ``ttl`` (:meth:`set`) if it does not forget them by itself. Cancelled: the journal's
        part all or nothing (see the class).
        """

    # -- key-value space, per account --------------------------------------------------------

    @abstractmethod
    async def get(self, platform: str, account: str, key: str) -> str | None:
        """The value stored under ``key`` for the account, or None (also once its ``ttl`` has
        passed). Cancelled: nothing changed."""

    @abstractmethod
    async def set(
        self, platform: str, account: str, key: str, value: str | None, *, ttl: float | None = None
    ) -> None:
        """Store ``value`` under ``key`` for the account; None deletes it. With ``ttl``
        (seconds), the value reads as missing once that long has passed, and the store
        forgets it by itself (RedisStore) or when the journal is pruned (the others); without
        it, the value stays until changed, whatever ``ttl`` it was stored with before.

        Cancelled: all or nothing (see the class).
        """

    async def set_many(
        self,
        platform: str,
        account: str,
        values: Mapping[str, str | None],
        *,
        ttl: float | None = None,
    ) -> None:
        """Store several values at once (one write where the store can), each with ``ttl``
        as :meth:`set` says; None deletes.

        Cancelled: all or nothing where it is one write (MemoryStore, SQLiteStore, RedisStore);
        this default, one ``set`` after another, may have stored the first few.
        """
        for key, value in values.items():
            await self.set(platform, account, key, value, ttl=ttl)

    async def get_cursor(self, platform: str, account: str) -> str | None:
        """The account's saved cursor (long-poll position), or None. Cancelled: nothing
        changed."""
        return await self.get(platform, account, CURSOR_KEY)

    async def set_cursor(
        self,
        platform: str,
        account: str,
        cursor: str,
        *,
        with_values: Mapping[str, str | None] | None = None,
        values_ttl: float | None = None,
    ) -> None:
        """Save the account's cursor, and ``with_values`` in the same write, those with
        ``values_ttl`` (:meth:`set`; the cursor has none). Call only after the messages before
        it were accepted. Cancelled: as :meth:`set_many`."""
        if values_ttl is None:
            await self.set_many(platform, account, {**(with_values or {}), CURSOR_KEY: cursor})
        else:  # the values with their TTL, then the cursor: never a cursor without them
            await self.set_many(platform, account, with_values or {}, ttl=values_ttl)
            await self.set(platform, account, CURSOR_KEY, cursor)

    # -- leases -----------------------------------------------------------------------------

    @abstractmethod
    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``ttl`` seconds if it is free, expired, or ours already.

        Cancelled: the lease may have been taken all the same; acquiring it again with the
        same owner returns it, or it expires after ``ttl``."""

    @abstractmethod
    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Extend a lease we hold; False if it expired or another owner took it.

        Cancelled: extended or not; count on the expiry of the last renewal that returned."""

    async def acquire_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        """:meth:`acquire_lease` for each of ``names``, in as few round trips as the store
        can (this default: one call each); returns, per name, whether it was acquired.

        Cancelled: each lease may have been taken or not; acquiring it again with the same
        owner returns it, or it expires after ``ttl``."""
        return [await self.acquire_lease(name, owner, ttl) for name in names]

    async def renew_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        """:meth:`renew_lease` for each of ``names``, in as few round trips as the store can
        (this default: one call each); returns, per name, whether it was renewed.

        Cancelled: each lease extended or not; count on the last renewal that returned."""
        return [await self.renew_lease(name, owner, ttl) for name in names]

    @abstractmethod
    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if we hold it.

        Cancelled: released or not; if not, it expires at the end of its TTL."""

    async def lease_remaining(self, name: str) -> float | None:
        """Seconds until lease ``name`` expires unless renewed (0 when it is free), or None
        when the store cannot tell. A standby refused a lease waits this long, not a round.
        A read: cancelled, it changed nothing."""
        return None

    async def leases_remaining(self, names: Sequence[str]) -> list[float | None]:
        """:meth:`lease_remaining` for each of ``names``, in as few round trips as the store
        can (this default: one call each); the answers in the names' order. The bridge asks
        it once per acquisition call, of the leases that call was refused.
        A read: cancelled, it changed nothing."""
        return [await self.lease_remaining(name) for name in names]

    def acquisitions_held_off(self) -> float:
        """Seconds until this store lets leases be acquired again (0: it does now). A store
        that lost leases whose holders may still run (``RedisStore`` after Redis lost its
        data) refuses every acquisition until they have stopped; a standby waits this long,
        without asking about each lease."""
        return 0.0

    async def heartbeat(self, group: str, member: str, ttl: float) -> dict[str, float]:
        """Count ``member`` alive in ``group`` for ``ttl`` seconds (0: it leaves); returns the
        live members, sorted by name, each with the seconds until it expires unless it beats
        again. A store that keeps no membership (one process per store) returns
        ``{member: ttl}``.

        Cancelled: the beat (or the leave) may have happened or not; a member that did not
        beat expires at the end of its previous TTL."""
        return {member: ttl}

    async def watch_releases(
        self,
        notify: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``notify()`` soon after any lease is released or any member leaves a group,
        in any process, until cancelled; started once it is listening. Standbys act on it at
        once instead of at their next round. A store that cannot tell (this default) never
        calls it: rounds still find out. After cancellation nothing is listening any more."""
        task_status.started()
        await trio.sleep_forever()


class OneWriteStore(Store):
    """A store that writes any set of values, and a cursor with them, in one write (one
    transaction, one script): ``set``, ``set_many`` and ``set_cursor`` are that one write,
    :meth:`_write_values`, so a cursor never lands without the values saved with it."""

    async def set(
        self, platform: str, account: str, key: str, value: str | None, *, ttl: float | None = None
    ) -> None:
        """As :meth:`Store.set`. Cancelled: written or not (one write)."""
        await self._write_values(platform, account, {key: value}, ttl)

    async def set_many(
        self,
        platform: str,
        account: str,
        values: Mapping[str, str | None],
        *,
        ttl: float | None = None,
    ) -> None:
        """As :meth:`Store.set_many`, in one write. Cancelled: every value written or none."""
        await self._write_values(platform, account, values, ttl)

    async def set_cursor(
        self,
        platform: str,
        account: str,
        cursor: str,
        *,
        with_values: Mapping[str, str | None] | None = None,
        values_ttl: float | None = None,
    ) -> None:
        """As :meth:`Store.set_cursor`, the cursor and the values in one write. Cancelled: all
        of it written or none."""
        await self._write_values(platform, account, with_values or {}, values_ttl, cursor)

    @abstractmethod
    async def _write_values(
        self,
        platform: str,
        account: str,
        values: Mapping[str, str | None],
        ttl: float | None,
        cursor: str | None = None,
    ) -> None:
        """``values`` (None deletes), each with ``ttl`` (checked by :func:`checked_ttl`), and
        ``cursor`` (no TTL) if given, in one write."""

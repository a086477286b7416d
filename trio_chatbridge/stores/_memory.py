"""A store in process memory: for tests, demos, and bots that may forget on restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import attrs
import trio

from .._messages import Message
from ._base import JournalEntry, JournalKey, JournalState, Store, journal_key


@attrs.define(eq=False)
class MemoryStore(Store):
    """Keeps everything in dicts. Leases expire on Trio's clock, so tests can drive them.

    Nothing survives the process; use :class:`SQLiteStore` for that. Its repr shows none of
    what it holds (tokens among it).
    """

    wall_clock: Callable[[], float] = time.time
    """Where ``received_at`` comes from (for pruning)."""
    # Three flat dicts rather than one record per message: a record is one more object per
    # message for the garbage collector to walk, and a busy journal holds many.
    _journal: dict[JournalKey, Message] = attrs.field(factory=dict, init=False, repr=False)
    _received: dict[JournalKey, float] = attrs.field(factory=dict, init=False, repr=False)
    _outcome: dict[JournalKey, tuple[JournalState, str | None]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _values: dict[tuple[str, str, str], str] = attrs.field(factory=dict, init=False, repr=False)
    _leases: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False, repr=False)
    _members: dict[str, dict[str, float]] = attrs.field(factory=dict, init=False, repr=False)
    _watchers: list[Callable[[], None]] = attrs.field(factory=list, init=False, repr=False)

    async def journal_add(self, messages: Sequence[Message]) -> list[bool]:
        now = self.wall_clock()
        journal = self._journal
        added: list[bool] = []
        for message in messages:
            key = journal_key(message)
            is_new = key not in journal
            if is_new:
                journal[key] = message
                self._received[key] = now
            added.append(is_new)
        return added

    async def journal_done(self, messages: Sequence[Message], *, error: str | None = None) -> None:
        outcome: tuple[JournalState, str | None] = (
            ("done", None) if error is None else ("failed", error)
        )
        for message in messages:
            key = journal_key(message)
            if key in self._journal:
                self._outcome[key] = outcome

    async def journal_pending(self) -> list[Message]:
        return [m for key, m in self._journal.items() if key not in self._outcome]

    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        message = self._journal.get(key)
        if message is None:
            return None
        state, error = self._outcome.get(key, ("pending", None))
        return JournalEntry(message, state, error, self._received[key])

    async def journal_prune(self, before: float) -> int:
        old = [key for key in self._outcome if self._received[key] < before]
        for key in old:
            del self._journal[key], self._received[key], self._outcome[key]
        return len(old)

    async def get(self, platform: str, account: str, key: str) -> str | None:
        return self._values.get((platform, account, key))

    async def set(self, platform: str, account: str, key: str, value: str | None) -> None:
        if value is None:
            self._values.pop((platform, account, key), None)
        else:
            self._values[(platform, account, key)] = value

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        now = trio.current_time()
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        now = trio.current_time()
        held = self._leases.get(name)
        if held is None or held[0] != owner or held[1] <= now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        held = self._leases.get(name)
        if held is not None and held[0] == owner:
            del self._leases[name]
            self._notify()

    async def lease_remaining(self, name: str) -> float:
        held = self._leases.get(name)
        return 0.0 if held is None else max(0.0, held[1] - trio.current_time())

    async def heartbeat(self, group: str, member: str, ttl: float) -> dict[str, float]:
        now = trio.current_time()
        members = self._members.setdefault(group, {})
        members[member] = now + ttl
        for name in [m for m, expires in members.items() if expires <= now]:
            del members[name]
        if ttl <= 0:
            self._notify()
        return {name: members[name] - now for name in sorted(members)}

    async def watch_releases(
        self,
        notify: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self._watchers.append(notify)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._watchers.remove(notify)

    def _notify(self) -> None:
        for notify in self._watchers:
            notify()

"""A store in process memory: for tests, demos, and bots that may forget on restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Literal

import attrs
import trio

from .._messages import Message
from ._base import JournalEntry, JournalKey, Store, journal_key


@attrs.define
class _Entry:
    message: Message
    received_at: float
    state: Literal["pending", "done", "failed"] = "pending"
    error: str | None = None


@attrs.define(eq=False)
class MemoryStore(Store):
    """Keeps everything in dicts. Leases expire on Trio's clock, so tests can drive them.

    Nothing survives the process; use :class:`SQLiteStore` for that.
    """

    wall_clock: Callable[[], float] = time.time
    """Where ``received_at`` comes from (for pruning)."""
    _journal: dict[JournalKey, _Entry] = attrs.field(factory=dict, init=False)
    _values: dict[tuple[str, str, str], str] = attrs.field(factory=dict, init=False)
    _leases: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False)

    async def journal_add(self, messages: Sequence[Message]) -> list[bool]:
        now = self.wall_clock()
        added: list[bool] = []
        for message in messages:
            key = journal_key(message)
            is_new = key not in self._journal
            if is_new:
                self._journal[key] = _Entry(message, now)
            added.append(is_new)
        return added

    async def journal_done(self, messages: Sequence[Message], *, error: str | None = None) -> None:
        for message in messages:
            entry = self._journal.get(journal_key(message))
            if entry is not None:
                entry.state = "done" if error is None else "failed"
                entry.error = error

    async def journal_pending(self) -> list[Message]:
        return [e.message for e in self._journal.values() if e.state == "pending"]

    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        entry = self._journal.get(key)
        if entry is None:
            return None
        return JournalEntry(entry.message, entry.state, entry.error, entry.received_at)

    async def journal_prune(self, before: float) -> int:
        old = [
            key
            for key, entry in self._journal.items()
            if entry.state != "pending" and entry.received_at < before
        ]
        for key in old:
            del self._journal[key]
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

"""A store in process memory: for tests, demos, and bots that may forget on restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs
import msgspec
import trio

from .._messages import Message
from ._base import (
    CURSOR_KEY,
    JournalEntry,
    JournalKey,
    JournalState,
    OneWriteStore,
    checked_ttl,
)

_SCANNED: Final = 8  # messages in a page up to which a done-mark looks through them in turn


class _Page(msgspec.Struct, gc=False):
    """The new messages of one account in one ``journal_add``, kept as one entry: one
    arrival time, one tuple, and the outcomes of those of them handled so far (small dicts to
    update instead of one the size of the journal).

    Nothing in a page is walked by the garbage collector: the page is a record it does not
    track, its messages a tuple of untracked records (the collector stops tracking such a
    tuple the first time it sees it), its outcomes strings and tuples of strings, its
    positions strings and ints. A page holds no reference back to the store, so it can be in
    no cycle. A journal of pages of one message (a push platform's callbacks) would otherwise
    add tracked objects with every put that every full collection walks again.
    """

    received_at: float
    messages: tuple[Message, ...] = ()
    outcomes: dict[str, tuple[JournalState, str | None]] = msgspec.field(default_factory=dict)
    """By message id, for the messages marked done or failed."""
    positions: dict[str, int] | None = None
    """By message id, where each is in ``messages``: made by the first done-mark that looks
    into a page of more than ``_SCANNED`` messages, dropped once all of them are marked."""

    def position(self, message: Message, *, known: bool = True) -> int:
        """Where ``message`` (this very object, not an equal one) is in the page, or -1.
        ``known=False``: the message may well be in another page, so a long page without
        positions does not make them for it (-1 unless it is the page's first)."""
        messages = self.messages
        if messages and messages[0] is message:  # (marks that follow the page's order)
            return 0
        if len(messages) <= _SCANNED:
            for at, kept in enumerate(messages):
                if kept is message:
                    return at
            return -1
        positions = self.positions
        if positions is None:
            if not known:
                return -1
            positions = self.positions = {m.id: at for at, m in enumerate(messages)}
        at = positions.get(message.id, -1)
        return at if at >= 0 and messages[at] is message else -1

    def marked(self) -> None:
        """Drop the positions once every message is marked: no more marks will need them."""
        if self.positions is not None and len(self.outcomes) >= len(self.messages):
            self.positions = None

    def pending(self) -> list[Message]:
        """Its messages not marked yet, in order."""
        outcomes = self.outcomes
        if not outcomes:
            return list(self.messages)
        return [m for m in self.messages if m.id not in outcomes]


@attrs.define(eq=False)
class MemoryStore(OneWriteStore):
    """Keeps everything in dicts. Leases expire on Trio's clock, so tests can drive them.

    Nothing survives the process; use :class:`SQLiteStore` for that. Its repr shows none of
    what it holds (tokens among it).
    """

    wall_clock: Callable[[], float] = time.time
    """Where ``received_at`` comes from (for pruning)."""
    # The journal: a page per journal_add (oldest first), and per account an index of message
    # id -> page for dedup. A message costs one index entry, and one outcome once handled.
    _pages: list[_Page] = attrs.field(factory=list, init=False, repr=False)
    _index: dict[tuple[str, str], dict[str, _Page]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _values: dict[tuple[str, str], dict[str, str | tuple[str, float]]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    """Per account, each value, or for one stored with a TTL the value and when it expires
    (Trio's clock): one dict per account, so a WeChat page's tokens cost one insert each by
    their own key (a key of three strings per value cost three times as much)."""
    _leases: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False, repr=False)
    _members: dict[str, dict[str, float]] = attrs.field(factory=dict, init=False, repr=False)
    _watchers: list[Callable[[], None]] = attrs.field(factory=list, init=False, repr=False)

    def _ids(self, message: Message) -> dict[str, _Page]:
        """The dedup index of the message's account (made on first use)."""
        return self._index.setdefault((message.platform, message.account), {})

    async def journal_add(self, messages: Sequence[Message]) -> list[bool]:
        now = self.wall_clock()
        added: list[bool] = []
        platform: str | None = None  # of the messages before (none yet)
        account: str | None = None
        ids: dict[str, _Page] = {}
        page: _Page | None = None
        kept: list[Message] = []  # the page's messages, until it is complete
        for message in messages:
            if message.account != account or message.platform != platform:
                # A page holds one account's messages: an id is unique only within one.
                if page is not None:
                    page.messages, page, kept = tuple(kept), None, []
                platform, account, ids = message.platform, message.account, self._ids(message)
            is_new = message.id not in ids
            if is_new:
                if page is None:
                    page = _Page(now)
                    self._pages.append(page)
                ids[message.id] = page
                kept.append(message)
            added.append(is_new)
        if page is not None:
            page.messages = tuple(kept)
        return added

    async def journal_done(self, messages: Sequence[Message], *, error: str | None = None) -> None:
        """Marks by page: a run's messages follow each other in their page, and a message
        that is the very object after the one marked before it, or one elsewhere in the same
        page, is found there, not in the account's index (a dict of every message journaled,
        whose lookups miss the CPU's caches: most of a done-mark's cost). Never cancelled: it
        does not wait, so every mark is made (see :class:`Store`)."""
        outcome: tuple[JournalState, str | None] = (
            ("done", None) if error is None else ("failed", error)
        )
        platform: str | None = None  # of the messages before (none yet)
        account: str | None = None
        ids: dict[str, _Page] = {}
        page: _Page | None = None  # of the message marked before, and its place there
        kept: tuple[Message, ...] = ()  # the page's messages
        marks: dict[str, tuple[JournalState, str | None]] = {}  # the page's outcomes
        at = -1
        for message in messages:
            at += 1
            if at < len(kept) and kept[at] is message:  # the next one in the same page
                marks[message.id] = outcome
                continue
            at = -1 if page is None else page.position(message, known=False)
            if at < 0:  # in another page (or an equal copy, not the journaled object)
                if message.account != account or message.platform != platform:
                    platform, account = message.platform, message.account
                    ids = self._index.get((platform, account), {})
                found = ids.get(message.id)
                if found is None:  # not journaled (or pruned): nothing to mark
                    continue
                if page is not None:
                    page.marked()
                page, kept, marks = found, found.messages, found.outcomes
                at = page.position(message)  # (-1 for an equal copy: kept[0] comes next)
            marks[message.id] = outcome
        if page is not None:
            page.marked()

    async def journal_pending(self) -> list[Message]:
        return [m for page in self._pages for m in page.pending()]

    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        platform, account, id_ = key
        page = self._index.get((platform, account), {}).get(id_)
        if page is None:
            return None
        message = next(m for m in page.messages if m.id == id_)
        state, error = page.outcomes.get(id_, ("pending", None))
        return JournalEntry(message, state, error, page.received_at)

    async def journal_prune(self, before: float) -> int:
        pruned = 0
        kept: list[_Page] = []
        for page in self._pages:
            if page.received_at < before and page.outcomes:
                pruned += len(page.outcomes)
                for message in page.messages:
                    if message.id in page.outcomes:
                        del self._ids(message)[message.id]
                page.messages, page.outcomes, page.positions = tuple(page.pending()), {}, None
            if page.messages:
                kept.append(page)
        self._pages = kept
        # an account none of whose messages is kept any more keeps no index either
        self._index = {account: ids for account, ids in self._index.items() if ids}
        self._forget_expired()
        return pruned

    def _forget_expired(self) -> None:
        """Drop the values whose TTL has passed (a read drops one it meets; this, the rest),
        and the accounts left with none: a bridge that saw many accounts come and go (a
        WeChat account's tokens expire a day after its last message) does not keep an empty
        dict for each of them."""
        now = trio.current_time()
        for values in self._values.values():
            expired = [
                key for key, value in values.items() if isinstance(value, tuple) and value[1] <= now
            ]
            for key in expired:
                del values[key]
        self._values = {account: values for account, values in self._values.items() if values}

    async def get(self, platform: str, account: str, key: str) -> str | None:
        values = self._values.get((platform, account))
        if values is None:
            return None
        value = values.get(key)
        if not isinstance(value, tuple):
            return value
        text, expires = value
        if expires <= trio.current_time():
            del values[key]
            return None
        return text

    async def _write_values(
        self,
        platform: str,
        account: str,
        values: Mapping[str, str | None],
        ttl: float | None,
        cursor: str | None = None,
    ) -> None:
        """One write with no checkpoint in it, so a cancellation never leaves it half done.
        (A WeChat page stores a context token per message with its cursor: one loop here,
        not one ``set`` coroutine per value.) A value's TTL runs on Trio's clock."""
        ttl = checked_ttl(ttl)
        stored = self._values.get((platform, account))
        if stored is None:
            stored = self._values[(platform, account)] = {}
        expires = None if ttl is None else trio.current_time() + ttl
        for key, value in values.items():
            if value is None:
                stored.pop(key, None)
            elif expires is None:
                stored[key] = value
            else:
                stored[key] = (value, expires)
        if cursor is not None:
            stored[CURSOR_KEY] = cursor

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
        return self._left(name, trio.current_time())

    async def leases_remaining(self, names: Sequence[str]) -> list[float | None]:
        now = trio.current_time()
        return [self._left(name, now) for name in names]

    def _left(self, name: str, now: float) -> float:
        held = self._leases.get(name)
        return 0.0 if held is None else max(0.0, held[1] - now)

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

"""The embedded default store: one SQLite file in WAL mode, on one connection.

sqlite3 blocks, so a call that may wait runs in ``trio.to_thread.run_sync`` behind a
``CapacityLimiter(1)``: one statement at a time on one connection. Journal writes are group
commits: the ``journal_add`` and ``journal_done`` calls waiting together (from concurrent
connectors and agent runs) are written in one transaction, one commit. A small one runs on the
event loop (a thread hop costs several times its rows, docs/performance.md "SQLite, sixth
session"): in WAL mode with ``synchronous=NORMAL`` a commit writes to the OS without syncing, and
it is tried without waiting for a lock, so it is bounded work; whatever may wait (a lock another
connection holds, a checkpoint's syncs, a large turn) goes to the worker thread. Leases use
wall-clock time, so that several processes sharing the file agree on when one expires.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import trio

from .._errors import ProtocolError, StoreError
from .._messages import Message
from ._base import CURSOR_KEY, JournalEntry, JournalKey, OneWriteStore, checked_ttl
from ._codec import decode_message, encode_message, unencodable

log = logging.getLogger("trio_chatbridge.stores.sqlite")

SCHEMA_VERSION: Final = 3
UNDECODABLE: Final = "undecodable journal record"  # the error a row set aside is marked with
FILE_MODE: Final = 0o600  # the store holds tokens: owner only
ROW_PARAMETERS: Final = 5  # a journal row's: platform, account, message id, body, received_at
ROWS_PER_STATEMENT: Final = 400  # 2,000 parameters: well under SQLite's variable limit
IDS_PER_STATEMENT: Final = 2_000  # message ids one done-mark takes, or lease names one read
ROWS_PER_TURN: Final = 5_000  # journal rows one group commit takes at most; the rest wait
DONE_LINGER: Final = 0.005  # seconds a done-mark waits to share a commit before taking its own
KV_PRUNE_BATCH: Final = 1_000  # expired values one transaction of a prune deletes at most
INLINE_ROWS: Final = 256  # journal rows a group commit may write on the event loop; more: thread
CHECKPOINT_AFTER: Final = 4_000  # rows, and 4 a commit, written between two checkpoints (thread)
BUSY_TIMEOUT_MS: Final = 5_000  # how long a call in the worker thread waits for the file's lock
OPEN_ATTEMPT_MS: Final = 200  # the longest one attempt to open waits for the lock: a stop's delay
OPEN_BUSY_TIMEOUT_MS: Final = 120_000
"""How long opening waits for the file's write lock (ms): another process may hold it for a
whole migration from version 1, measured at 0.7-0.9 s per 1,000,000 journal rows (of about
300-byte bodies, docs/performance.md "SQLite, migration"), so two minutes cover a journal of over
100 million rows on a disk several times slower, and still end a wait for a stuck process."""
CLOSE_WAIT: Final = 10.0
"""Seconds :meth:`SQLiteStore.aclose` waits (shielded) for an open's attempt under way in the
worker thread, which cannot be stopped: a migration of some 10 million journal rows at the rate
above; past it, that open closes its own connection when the attempt ends."""

_OUTCOMES: Final = """CREATE TABLE outcomes (
    seq INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    error TEXT
)"""
_FORGET: Final = """CREATE TRIGGER journal_forgotten AFTER DELETE ON journal BEGIN
    DELETE FROM outcomes WHERE seq = old.seq;
END"""
_KV_EXPIRY: Final = "CREATE INDEX kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL"
"""The values stored with a TTL, by expiry: what a prune deletes, found without a scan."""
_SCHEMA: Final = (
    """CREATE TABLE journal (
        seq INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        account TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body TEXT NOT NULL,
        received_at REAL NOT NULL,
        UNIQUE (platform, account, message_id)
    )""",
    _OUTCOMES,
    _FORGET,
    """CREATE TABLE kv (
        platform TEXT NOT NULL,
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        expires_at REAL,
        PRIMARY KEY (platform, account, key)
    )""",
    _KV_EXPIRY,
    """CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE members (
        grp TEXT NOT NULL,
        member TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (grp, member)
    )""",
)
"""Schema version 3: a journal row is written once, when its message is accepted; its outcome
(``done``, or ``failed`` with the error) is a row of its own in ``outcomes``, keyed by the
journal row's ``seq``. Pending is a journal row with no outcome. A done-mark appends to a
table in ``seq`` order instead of rewriting the message's row and an index of pending rows:
fewer pages written a commit (docs/performance.md, "SQLite, seventh session"). The trigger
keeps an outcome from outliving its row: a ``seq`` freed by a prune can be used again. A value
stored with a TTL has its wall-clock ``expires_at`` (NULL: none), version 3's one change."""

_PENDING: Final = (
    "SELECT seq, body FROM journal WHERE seq IN (SELECT seq FROM journal AS j "
    "WHERE NOT EXISTS (SELECT 1 FROM outcomes AS o WHERE o.seq = j.seq)) ORDER BY seq"
)
"""The journal rows with no outcome, oldest first: their ``seq`` found by a scan of the
unique index (it holds ``seq``: a fraction of the rows' bytes, the bodies of handled rows
never read), each checked against the outcomes' primary key, then the bodies read."""

_MIGRATION: Final = (
    _OUTCOMES,
    "INSERT INTO outcomes (seq, state, error) "
    "SELECT seq, state, error FROM journal WHERE state != 'pending'",
    "DROP INDEX journal_pending",
    _FORGET,
    # A process of an older version still running on the file would mark its runs done in
    # the columns nothing reads now: its marks would be lost without a word, its messages
    # handled again. Refused instead, loudly (its adds still go in: pending, as they are).
    "CREATE TRIGGER journal_version_1_mark BEFORE UPDATE OF state ON journal BEGIN "
    "SELECT RAISE(ABORT, 'this SQLiteStore file is at schema version 2 or later: a process "
    "of an older trio_chatbridge is still running on it; stop it (its runs replay)'); END",
)
"""From schema version 1 (the journal's ``state`` and ``error`` columns, a partial index of
pending rows) to 2, in the transaction that opens the file: all of it, or none. The two
columns stay, unused (a new row gets their defaults, ``'pending'`` and NULL; nothing reads
them): dropping them rewrote every row of the journal, 5-7 times the time and 25-28 times the
WAL of the rest of the migration (docs/performance.md, "SQLite, migration"). So a version 2
file has one of two journal layouts, and every statement names its columns. A trigger refuses
a write to the old ``state`` column: the done-mark of an older version still running."""

_MIGRATION_3: Final = ("ALTER TABLE kv ADD COLUMN expires_at REAL", _KV_EXPIRY)
"""From schema version 2 to 3: values' expiry, a column added (no row rewritten) and indexed.
A process of version 2 still running on the file stores new values without one (NULL: kept
until changed, as it always did), but one it stores over a value with an expiry keeps that
expiry (its upsert sets the value only); and it reads values past their TTL."""

T = TypeVar("T")


class SQLiteStore(OneWriteStore):
    """A store in one SQLite file; survives restarts, and can be shared by processes on one host.

    A new file is created readable by its owner only (0600, like its ``-wal`` and ``-shm``
    files): it holds tokens. ``synchronous="NORMAL"`` (the default) survives a crash of the
    process; ``"FULL"`` also survives a power loss, at the cost of an fsync per write.
    ``threaded=False`` runs every call inline, blocking the event loop: for tests under an
    autojump clock, which would otherwise jump ahead while the worker thread works.

    With ``synchronous="NORMAL"``, a journal group commit of at most 256 rows runs on the
    event loop (docs/stores.md, "Commits on the event loop"): it never waits for a lock
    (tried with a busy timeout of 0; when another connection holds the file's write lock, it
    is rolled back untouched and run again in the worker thread, which waits up to 5 s), never
    checkpoints (the store checkpoints in the worker thread, before the write that follows
    about 4,000 rows written by any call: journal, key-value, leases, heartbeats), and never
    syncs (the WAL's header is synced when the log restarts after a checkpoint: that commit
    is the checkpoint's own, in the thread, unless another process sharing the file
    checkpointed in between). What it may block the loop for: its rows' CPU (5-10 µs a row),
    writes into the OS's page cache, and a read from disk for each page the OS no longer
    holds. ``"FULL"`` syncs every commit, so every commit runs in the thread.

    ``done_linger`` (seconds, default 5 ms) is how long a ``journal_done`` waits for other
    writes to share its commit before it commits alone: a transaction and a thread hop cost
    far more than a row, and the dispatcher marks runs done a few at a time, so lingering
    cuts the transactions per message several times over (docs/performance.md, "SQLite,
    fifth session"). The price: a process that dies within that time after a run finished
    replays the run's messages at its next start, as it would had it died just before the
    commit; 0 commits at once.

    Cancellation: a call cancelled before the worker thread took it (or, for a journal write,
    before its group commit began on the event loop) did nothing and raises Cancelled; once
    taken (a thread cannot be stopped, a commit on the loop does not yield), it completes and
    returns as if not cancelled, the cancellation taking effect at the caller's next
    checkpoint. ``aclose`` closes the file even when cancelled.

    The file is at schema version 2; one of version 1 is migrated by the first store that
    opens it, in one transaction, and an older trio_chatbridge cannot open it after that
    (docs/stores.md, "The file's schema and its migration"). Opening waits up to 2 minutes
    for the file's write lock, which another process migrating the file holds meanwhile; a
    cancellation ends that wait within 0.2 s.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        wall_clock: Callable[[], float] = time.time,
        threaded: bool = True,
        done_linger: float = DONE_LINGER,
    ) -> None:
        self.path: str = os.fspath(path)
        self._threaded = threaded
        self._done_linger = done_linger
        self._synchronous = synchronous
        self.wall_clock = wall_clock
        self._limiter = trio.CapacityLimiter(1)
        self._db: sqlite3.Connection | None = None
        self._inline = threaded and synchronous == "NORMAL"  # small commits on the loop
        self._unchecked = 0  # rows (and 4 a commit) written since the last checkpoint
        self._waiting: deque[_Write] = deque()
        self._writer = trio.Lock()  # fair: callers take the writer's turn in arrival order
        self._opening = trio.Lock()  # one open at a time: a second finds the store open
        self._open_scope = trio.CancelScope()  # the open under way's: aclose cancels it
        self._closes = 0  # aclose calls begun: an open that began before one fails
        self.undecodable: int = 0
        """Journal rows found not to decode, and set aside (see :meth:`journal_pending`)."""

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call: in the worker thread, or inline with ``threaded=False``."""
        if self._threaded:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        await trio.lowlevel.checkpoint()
        return fn(*args)

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool = False) -> T:
        """``fn(db)`` in the worker thread. A call that ``writes`` counts the rows it changed
        towards the next checkpoint, and runs that checkpoint first when it is due: every
        write fills the WAL (a lease renewed every ttl/3, a heartbeat, a cursor), and the
        store's connection never checkpoints by itself, so an idle bridge's WAL stays bounded
        too. A read never checkpoints: the log's restart after one (which syncs its header)
        must be a commit in the thread, not one on the event loop."""
        db = self._open_db()
        try:
            if not self._inline:  # SQLite checkpoints by itself
                return await self._run(fn, db)
            if not writes:  # the connection does not wait for locks unless told to
                return await self._run(_patiently, fn, db)
            checkpoint = self._unchecked >= CHECKPOINT_AFTER
            counted = functools.partial(_counted, fn, checkpoint=checkpoint)
            outcome: tuple[T, int] = await self._run(_patiently, counted, db)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        self._unchecked = (0 if checkpoint else self._unchecked) + outcome[1]
        return outcome[0]

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(
                f"{self!r} is not open: use 'async with store:' or pass it to a Bridge"
            )
        return self._db

    async def open(self) -> None:
        """Open the file: create it, or migrate a version 1 file (docs/stores.md), waiting up to
        2 minutes for another process that holds its write lock (migrating it, say).

        Cancelled while it waits, it is not open, and promptly so: the wait for the lock is
        made of attempts of at most 0.2 s in the worker thread, and a cancellation takes
        effect between two of them; the connection made meanwhile is closed, the file
        untouched (an attempt's transaction is all of it or none). Cancelled during an attempt
        that then succeeds (the file created or migrated), it returns open, the cancellation
        taking effect at the caller's next checkpoint. Concurrent calls open it once.

        :meth:`aclose` while it opens (under way, or waiting for another open's turn) stops it
        as a cancellation would, and it raises :class:`StoreError`: the store stays closed."""
        closes = self._closes
        async with self._opening:
            if self._closes != closes:  # queued behind an open that aclose stopped
                raise self._closed_while_opening()
            if self._db is not None:
                return
            db: sqlite3.Connection | None = None
            try:
                with trio.CancelScope() as self._open_scope:
                    db = await self._run(self._connect)
                    await self._set_up(db)
                if self._closes != closes:  # aclose began meanwhile (and cancelled the scope)
                    raise self._closed_while_opening()
            except BaseException:
                if db is not None:
                    with trio.CancelScope(shield=True):
                        await self._run(db.close)
                raise
            self._db = db

    def _closed_while_opening(self) -> StoreError:
        return StoreError(
            f"{self!r} was closed while it was opening: not open. Open it again "
            "(or let the bridge open it) if it is still wanted."
        )

    def _connect(self) -> sqlite3.Connection:
        try:
            _create_private(self.path)
            return sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
                uri=self.path.startswith("file:"),  # (else it depends on SQLite's build)
            )
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _unopenable(self.path, f"; {_advice(exc)}", exc) from exc

    async def _set_up(self, db: sqlite3.Connection) -> None:
        """Create or migrate the schema and set the connection up, in attempts that each wait
        up to ``OPEN_ATTEMPT_MS`` for the write lock, until ``OPEN_BUSY_TIMEOUT_MS`` passed."""
        started = time.monotonic()
        limit = OPEN_BUSY_TIMEOUT_MS / 1000
        while True:
            attempt = max(0.001, min(OPEN_ATTEMPT_MS / 1000, limit - (time.monotonic() - started)))
            try:
                busy = await self._run(self._attempt, db, attempt)
            except sqlite3.DatabaseError as exc:
                if _locked(exc):  # outside WAL mode: SQLite will not wait where it may deadlock
                    held = _lock_held(time.monotonic() - started)
                    raise _unopenable(self.path, f": {held}", exc) from exc
                raise _unopenable(self.path, f"; {_advice(exc)}", exc) from exc
            if busy is None:
                return
            waited = time.monotonic() - started
            if waited >= limit:
                raise _unopenable(self.path, f": {_lock_held(waited)}", busy) from busy

    def _attempt(self, db: sqlite3.Connection, wait: float) -> sqlite3.OperationalError | None:
        """One attempt at :meth:`_set_up`, waiting up to ``wait`` seconds for the write lock
        (worker thread): None once done, or SQLite's "database is locked" when the lock was
        still held after the wait (to be tried again). A file locked outside WAL mode, or any
        other error, raises.

        Which it was is decided by the statement that met the lock, not by how long SQLite
        waited (a build without ``usleep`` waits in whole seconds, so not at all for a wait
        under one): switching to WAL meets a lock only on a file outside WAL mode, held by
        another connection's transaction, where SQLite refuses at once rather than risk a
        deadlock; ``BEGIN IMMEDIATE`` then runs in WAL mode, where a lock is waited for. A
        lock the switch did wait for (a closing process checkpointing a file already in WAL
        mode) is tried again too."""
        db.execute(f"PRAGMA busy_timeout={max(1, round(wait * 1000))}")
        began = time.monotonic()
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            # A lock SQLite waited for here is an ordinary one (a closing process
            # checkpointing a file already in WAL mode, say): tried again.
            if _locked(exc) and time.monotonic() - began >= wait / 2:
                return exc
            raise
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        try:
            with _transaction(db, "BEGIN IMMEDIATE"):  # one process creates or migrates
                self._schema(db)
                # Written even when it is the file's already: a file this process can read
                # but not write (immutable, say) is refused now, not at every message after.
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            if _locked(exc):
                return exc
            raise
        # Commits on the loop wait for no lock and never checkpoint; the thread's calls
        # set their own wait (_patiently).
        db.execute(f"PRAGMA busy_timeout={0 if self._inline else BUSY_TIMEOUT_MS}")
        if self._inline:
            db.execute("PRAGMA wal_autocheckpoint=0")
        return None

    def _schema(self, db: sqlite3.Connection) -> None:
        """Create the tables in a new file, or migrate an older schema to this one (in the
        caller's transaction: a failure leaves the file as it was; the caller writes the
        version)."""
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        statements: Sequence[str]
        if version == 0:
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master")]
            if tables:  # not one of ours, nor empty: another application's database
                raise StoreError(
                    f"{self.path} is not a trio_chatbridge store: it holds another "
                    f"application's tables ({', '.join(sorted(tables)[:5])}), left untouched. "
                    "Give the store a path of its own."
                )
            statements = _SCHEMA
        elif version == 1:
            statements = (*_MIGRATION, *_MIGRATION_3)
        elif version == 2:
            statements = _MIGRATION_3
        else:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this trio_chatbridge "
                f"knows ({SCHEMA_VERSION}): a newer version wrote it. Upgrade trio_chatbridge, "
                "or use another file."
            )
        for statement in statements:
            db.execute(statement)

    async def aclose(self) -> None:
        """As :meth:`Store.aclose`; every :meth:`open` under way or queued when it began fails
        with :class:`StoreError` (the one under way stopped within its attempt at the lock),
        and the store is closed. A cancellation does not stop it (shielded), and it returns
        once the open under way has closed its connection, or after 10 s (Trio's clock) at
        most: an attempt in the worker thread cannot be stopped, and one migrating a large
        version 1 file may take longer; that open then closes its connection itself when the
        attempt ends, and fails all the same."""
        self._closes += 1
        self._open_scope.cancel()
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_WAIT):
            async with self._opening:  # the open under way, if any, has closed its connection
                pass
        db, self._db = self._db, None
        if db is not None:
            with trio.CancelScope(shield=True):  # closed even when the bridge is cancelled
                await self._run(db.close)

    # -- journal ---------------------------------------------------------------------------

    async def journal_add(self, messages: Sequence[Message]) -> list[bool]:
        """As :meth:`Store.journal_add`, as part of the next group commit.

        Cancelled before its group commit began: nothing was written, Cancelled is raised.
        Once it began (the worker thread cannot be stopped), the call completes and returns
        as if not cancelled; the cancellation takes effect at the caller's next checkpoint.
        A message that cannot be written (text that is not Unicode) is set aside alone, not
        new (see :attr:`undecodable`); only a failed encoding looks for it.
        """
        if not messages:
            return []
        write = _Write(messages, None, self.wall_clock())
        await self._group_commit(write)
        if not write.aside:
            return write.added
        self.undecodable += len(write.aside)
        added = iter(write.added)
        return [i not in write.aside and next(added) for i in range(len(messages))]

    async def journal_done(self, messages: Sequence[Message], *, error: str | None = None) -> None:
        """As :meth:`Store.journal_done`, as part of a group commit: the next one to begin
        within ``done_linger``, or its own after that (cancellation as for
        :meth:`journal_add`: not begun, nothing written; begun, written and returned)."""
        if messages:
            mark = _Write(messages, "done" if error is None else "failed", error)
            await self._group_commit(mark, self._done_linger)

    async def _group_commit(self, write: _Write, linger: float = 0.0) -> None:
        """Queue ``write``; whoever holds the writer's turn writes everything queued by then.

        There is no writer task (a store has no nursery of its own): the first caller in line
        commits for all those waiting behind it, so concurrent puts and done-marks share one
        transaction, one thread hop and one commit. Every caller waits for its own commit, so
        the queue never holds more than one write per waiting caller. With ``linger``, a
        write that finds no commit under way first waits that long, queued, for another
        caller's commit to take it along; with one under way, the next turn takes it at once
        (lingering there only stalled callers that wait on their own marks, measured).
        """
        self._open_db()  # fail now if the store is not open
        self._waiting.append(write)
        try:
            if linger and not self._writer.locked():  # else the next turn takes it anyway
                with trio.move_on_after(linger):  # queued: still "not begun" if cancelled
                    await write.written.wait()
            if write.state != "written":
                async with self._writer:
                    if write.queued:
                        await self._commit_turn()
        except trio.Cancelled:
            if write.queued:  # not begun: withdrawn, nothing written
                self._waiting.remove(write)
                raise
            # Begun: the thread finishes it anyway, so the call completes as the writer's own
            # does (trio.to_thread ignores a cancel); the cancellation stays pending on the
            # caller's scope and takes effect at its next checkpoint. Should its turn have
            # been put back (its writer was cancelled before the thread began), it writes it.
            with trio.CancelScope(shield=True):
                async with self._writer:
                    if write.queued:
                        await self._commit_turn()
        if isinstance(write.error, sqlite3.Error):
            raise self._failed(write.error, _JOURNAL_RETRIED) from write.error
        if write.error is not None:
            raise write.error

    def _failed(self, exc: sqlite3.Error, then: str = "") -> StoreError:
        """What a person needs to act on SQLite's ``exc``: the file, what to do, and ``then``
        what becomes of what the failed operation was writing, where that is known."""
        return StoreError(f"{self.path}: {exc}: {_advice(exc)}{then}")

    async def _commit_turn(self) -> None:
        turn: list[_Write] = []
        rows = 0
        while self._waiting and (
            not turn or rows + len(self._waiting[0].messages) <= ROWS_PER_TURN
        ):
            write = self._waiting.popleft()
            write.state = "begun"
            rows += len(write.messages)
            turn.append(write)
        try:
            await self._write(turn, rows)
        except Exception as exc:  # the thread never ran it (the store was closed, say)
            for write in turn:
                write.error = write.error or exc
            raise
        except BaseException:
            # Cancelled before the thread began (waiting for the connection, which another
            # call held): nothing was written, so the turn goes back to the head of the queue
            # for the next writer; a writer whose own write was in it is then "not begun".
            for write in reversed(turn):
                write.state = "queued"
                self._waiting.appendleft(write)
            turn = []
            raise
        finally:
            for write in turn:
                write.state = "written"
                write.written.set()

    async def _write(self, turn: list[_Write], rows: int) -> None:
        """Commit ``turn``: on the event loop when it may (see the class), else in the worker
        thread. Either way it is written once begun: the loop's attempt cannot be cancelled,
        and one that finds the file locked wrote nothing before it goes to the thread."""
        db = self._open_db()
        commit: Callable[[sqlite3.Connection], object]
        if not self._inline:
            commit = functools.partial(_commit, turn)
            return await self._run(commit, db)
        checkpoint = self._unchecked >= CHECKPOINT_AFTER
        commit = functools.partial(_commit, turn, checkpoint=checkpoint)
        if rows <= INLINE_ROWS and not checkpoint:
            try:
                self._limiter.acquire_nowait()  # the connection, unless a thread has it
            except trio.WouldBlock:
                pass
            else:
                try:
                    statements = _statements(turn)
                    committed = _execute(turn, statements, db, wait=False)
                finally:
                    self._limiter.release()
                if committed:
                    self._unchecked += rows + 4
                    return None
                commit = functools.partial(_execute, turn, statements)  # the file was locked
        await self._run(_patiently, commit, db)
        self._unchecked = (0 if checkpoint else self._unchecked) + rows + 4
        return None

    async def journal_pending(self) -> list[Message]:
        """As :meth:`Store.journal_pending`. A row whose body does not decode (damaged, or
        written by something else) must not stop the others, nor every start: it is logged
        with its ``seq``, marked failed (``undecodable journal record: …``, not replayed
        again, pruned in time), counted in :attr:`undecodable`, and left out. If cancelled,
        it returns nothing and changes nothing, or only marks such rows failed."""

        def select(db: sqlite3.Connection) -> list[tuple[int, str]]:
            return db.execute(_PENDING).fetchall()

        found: list[Message] = []
        bad: list[tuple[int, str, str]] = []
        for seq, body in await self._call(select):
            try:
                found.append(decode_message(body))
            except ProtocolError as exc:
                bad.append((seq, "failed", f"{UNDECODABLE}: {exc}"))
        if bad:
            for seq, _, reason in bad:
                log.error("%s: journal row %d set aside, marked failed: %s", self.path, seq, reason)

            def mark(db: sqlite3.Connection) -> None:
                db.executemany("INSERT OR IGNORE INTO outcomes VALUES (?, ?, ?)", bad)

            await self._call(mark, writes=True)
            self.undecodable += len(bad)
        return found

    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        def select(db: sqlite3.Connection) -> Any:
            return db.execute(
                "SELECT body, coalesce(o.state, 'pending'), o.error, received_at "
                "FROM journal LEFT JOIN outcomes AS o USING (seq) "
                "WHERE platform = ? AND account = ? AND message_id = ?",
                key,
            ).fetchone()

        row = await self._call(select)
        if row is None:
            return None
        body, state, error, received_at = row
        return JournalEntry(decode_message(body), state, error, received_at)

    async def journal_prune(self, before: float) -> int:
        """As :meth:`Store.journal_prune`, in one transaction; then the values past their TTL
        are deleted, 1,000 to a transaction (found by the index of expiries: no scan), so
        the store's other calls take their turn between two. Cancelled: the
        journal's part all or nothing; of the values, some batches may have been deleted
        (harmless: a value past its TTL reads as missing already)."""

        def delete(db: sqlite3.Connection) -> int:
            with _transaction(db):
                cursor = db.execute(  # their outcomes go with them (the trigger)
                    "DELETE FROM journal "
                    "WHERE received_at < ? AND seq IN (SELECT seq FROM outcomes)",
                    (before,),
                )
            return cursor.rowcount

        pruned = await self._call(delete, writes=True)
        await self._delete_expired()
        return pruned

    async def _delete_expired(self) -> None:
        """Delete the values past their TTL, a batch of :data:`KV_PRUNE_BATCH` a transaction.
        Cancelled: the batches before it are deleted, the rest wait for the next prune."""
        now, batch = self.wall_clock(), KV_PRUNE_BATCH

        def delete(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute(
                    "DELETE FROM kv WHERE rowid IN "
                    "(SELECT rowid FROM kv WHERE expires_at <= ? LIMIT ?)",
                    (now, batch),
                ).rowcount

        while await self._call(delete, writes=True) == batch:
            pass

    # -- key-value --------------------------------------------------------------------------

    async def get(self, platform: str, account: str, key: str) -> str | None:
        now = self.wall_clock()

        def select(db: sqlite3.Connection) -> Any:
            return db.execute(
                "SELECT value FROM kv WHERE platform = ? AND account = ? AND key = ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (platform, account, key, now),
            ).fetchone()

        row = await self._call(select)
        return None if row is None else str(row[0])

    async def _write_values(
        self,
        platform: str,
        account: str,
        values: Mapping[str, str | None],
        ttl: float | None,
        cursor: str | None = None,
    ) -> None:
        """``values`` (None deletes), each with ``ttl``, and ``cursor`` (none) if given, in one
        transaction. Cancelled: all or nothing (see :class:`Store`)."""
        ttl = checked_ttl(ttl)
        expires = None if ttl is None else self.wall_clock() + ttl
        deletes = [(platform, account, k) for k, v in values.items() if v is None]
        upserts = [(platform, account, k, v, expires) for k, v in values.items() if v is not None]
        if cursor is not None:
            upserts.append((platform, account, CURSOR_KEY, cursor, None))
        if not upserts and not deletes:
            return

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(
                    "DELETE FROM kv WHERE platform = ? AND account = ? AND key = ?", deletes
                )
                db.executemany(
                    "INSERT INTO kv (platform, account, key, value, expires_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value = excluded.value, "
                    "expires_at = excluded.expires_at",
                    upserts,
                )

        await self._call(write, writes=True)

    # -- leases -----------------------------------------------------------------------------

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return (await self.acquire_leases([name], owner, ttl))[0]

    async def acquire_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        """As :meth:`Store.acquire_leases`, on the wall clock: one trip to the worker thread,
        one transaction (one commit, one sync) for every name, taken in order (a name twice:
        the second finds it ours). Cancelled: as every call here, it completes once its
        thread began; all of them were taken then, or none."""
        now = self.wall_clock()
        return await self._each_lease(_TAKE_LEASE, [(n, owner, now + ttl, now) for n in names])

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        return (await self.renew_leases([name], owner, ttl))[0]

    async def renew_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        """As :meth:`Store.renew_leases`, in one transaction as :meth:`acquire_leases`.
        Cancelled: all of them extended or none."""
        now = self.wall_clock()
        return await self._each_lease(_EXTEND_LEASE, [(now + ttl, n, owner, now) for n in names])

    async def _each_lease(self, sql: str, rows: list[tuple[object, ...]]) -> list[bool]:
        """``sql`` once for each of ``rows``, in one transaction in the worker thread; for
        each, whether it changed its lease. A lease round on a file shared by processes took
        a transaction, and so a commit and a sync, per lease: 1,000 accounts, 1,000 syncs."""
        if not rows:
            return []

        def each(db: sqlite3.Connection) -> list[bool]:
            with _transaction(db, "BEGIN IMMEDIATE"):
                return [db.execute(sql, row).rowcount == 1 for row in rows]

        return await self._call(each, writes=True)

    async def release_lease(self, name: str, owner: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

        await self._call(delete, writes=True)

    async def lease_remaining(self, name: str) -> float:
        return (await self._remaining([name]))[0]

    async def leases_remaining(self, names: Sequence[str]) -> list[float | None]:
        """As :meth:`Store.leases_remaining`, on the wall clock: one trip to the worker thread,
        one query for up to 2,000 names. A read: cancelled, it changed nothing."""
        return [*await self._remaining(names)]

    async def _remaining(self, names: Sequence[str]) -> list[float]:
        now = self.wall_clock()
        unique = list(dict.fromkeys(names))

        def read(db: sqlite3.Connection) -> dict[str, float]:
            expires: dict[str, float] = {}
            for chunk in _chunks(unique, IDS_PER_STATEMENT):
                marks = ",".join("?" * len(chunk))
                sql = "SELECT name, expires_at FROM leases WHERE name IN (" + marks + ")"
                expires.update(db.execute(sql, chunk).fetchall())
            return expires

        expires = await self._call(read) if unique else {}
        return [max(0.0, expires[name] - now) if name in expires else 0.0 for name in names]

    async def heartbeat(self, group: str, member: str, ttl: float) -> dict[str, float]:
        """As :meth:`Store.heartbeat`, on the wall clock (processes sharing the file are on
        one host). Cancelled: as for every call here, it completes once its thread began."""
        now = self.wall_clock()

        def beat(db: sqlite3.Connection) -> dict[str, float]:
            with _transaction(db, "BEGIN IMMEDIATE"):
                db.execute(
                    "INSERT INTO members (grp, member, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET expires_at = excluded.expires_at",
                    (group, member, now + ttl),
                )
                db.execute("DELETE FROM members WHERE grp = ? AND expires_at <= ?", (group, now))
                rows = db.execute(
                    "SELECT member, expires_at FROM members WHERE grp = ? ORDER BY member",
                    (group,),
                ).fetchall()
            return {name: expires - now for name, expires in rows}

        return await self._call(beat, writes=True)


@attrs.define(eq=False)
class _Write:
    """One ``journal_add`` (``mark`` None) or ``journal_done`` waiting for a group commit."""

    messages: Sequence[Message]
    mark: Literal["done", "failed"] | None
    detail: float | str | None
    """The add's wall-clock time, or the done-mark's error text."""
    state: Literal["queued", "begun", "written"] = "queued"
    written: trio.Event = attrs.Factory(trio.Event)
    """Set once its commit ended (state "written"), for a caller lingering for it."""
    added: list[bool] = attrs.Factory(list)
    """For an add: whether each message was new, in order."""
    error: Exception | None = None
    """Why this write failed (its own bad input, or the whole transaction's failure)."""
    aside: dict[int, ProtocolError] = attrs.Factory(dict)
    """For an add: the messages set aside, by their index in the caller's, left out of
    ``messages`` (see :func:`unencodable`)."""

    @property
    def queued(self) -> bool:
        """Waiting for a turn (a state that changes while its caller waits)."""
        return self.state == "queued"


_Statement = tuple["_Write | None", str, list[Any]]
"""A statement of a group commit: the add whose rows it inserts, its SQL, its parameters."""


def _commit(turn: list[_Write], db: sqlite3.Connection, *, checkpoint: bool = False) -> None:
    """Write a turn's adds and done-marks in one transaction (in the worker thread, or inline
    with ``threaded=False``); with ``checkpoint``, checkpoint the WAL first, so that the log's
    restart after it (which syncs its header) is this commit's, not one on the event loop."""
    if checkpoint:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    _execute(turn, _statements(turn), db)


def _counted(
    fn: Callable[[sqlite3.Connection], T], db: sqlite3.Connection, *, checkpoint: bool
) -> tuple[T, int]:
    """``fn(db)`` and the rows it changed, with ``checkpoint`` the WAL checkpointed first (as
    :func:`_commit`'s, so that the log's restart after it is this call's write, in the
    thread). A write that changed nothing wrote nothing to the WAL and counts 0; else its rows
    and 4, as a journal commit counts."""
    if checkpoint:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    before = db.total_changes
    result = fn(db)
    changed = db.total_changes - before
    return result, changed + 4 if changed else 0


def _statements(turn: list[_Write]) -> list[_Statement]:
    """A turn's adds and done-marks as statements, in their order.

    A write whose messages cannot be serialised fails alone (its ``error`` set, no statement).
    Every statement costs a trip into SQLite (and, in the worker thread, through the GIL while
    the event loop runs), so a turn runs as few as it can: an add is a multi-row ``INSERT``;
    done-marks in a row with one outcome are one ``INSERT INTO outcomes`` per account.
    """
    statements: list[_Statement] = []
    outcome: tuple[str, Any] | None = None  # of the done-marks being merged
    ids: dict[tuple[str, str], list[str]] = {}  # theirs, by account
    for write in turn:
        if write.mark is None:
            try:
                inserts = [(write, sql, params) for sql, params in _inserts(write)]
            except Exception as exc:
                if isinstance(exc, UnicodeEncodeError):  # set aside alone, the others journaled
                    write.aside = unencodable(write.messages)
                    kept = enumerate(write.messages)
                    write.messages = [m for i, m in kept if i not in write.aside]
                if not write.aside:  # handed to that write's caller alone
                    write.error = StoreError(f"cannot journal these messages: {exc!r}")
                    continue
                inserts = [(write, sql, params) for sql, params in _inserts(write)]
            statements += _marks(outcome, ids)
            outcome, ids = None, {}
            statements += inserts
        else:
            if (write.mark, write.detail) != outcome:
                statements += _marks(outcome, ids)
                outcome, ids = (write.mark, write.detail), {}
            for message in write.messages:
                ids.setdefault((message.platform, message.account), []).append(message.id)
    statements += _marks(outcome, ids)
    return statements


def _execute(
    turn: list[_Write], statements: list[_Statement], db: sqlite3.Connection, *, wait: bool = True
) -> bool:
    """Run a turn's statements as one transaction; a failing transaction fails every write
    in the turn (its ``error`` set, unless it failed on its own already). A turn of one
    statement runs without ``BEGIN`` and ``COMMIT`` (SQLite makes it a transaction of its
    own, as atomic and as durable), unless it adds several rows: those may need reading
    after it (:func:`_new`), within its transaction.

    Without ``wait`` (the connection's busy timeout is 0), a file locked by another
    connection rolls the turn back and returns False: nothing was written, to be run again
    where waiting is allowed. ``BEGIN IMMEDIATE`` takes the write lock before any statement,
    so a turn is refused whole or not at all.
    """
    try:
        single = len(statements) <= 1 and all(
            adding is None or len(params) == ROW_PARAMETERS for adding, _, params in statements
        )
        with contextlib.nullcontext() if single else _transaction(db, "BEGIN IMMEDIATE"):
            for adding, sql, params in statements:
                cursor = db.execute(sql, params)
                if adding is not None:
                    adding.added += _new(db, cursor, params)
    except Exception as exc:
        if not wait and _locked(exc):
            for write in turn:
                write.added.clear()
            return False
        for write in turn:
            write.error = write.error or exc
    return True


def _locked(exc: Exception) -> bool:
    """Whether ``exc`` is SQLite's "database is locked" (SQLITE_BUSY, extended codes too)."""
    busy = isinstance(exc, sqlite3.OperationalError) and exc.sqlite_errorcode & 0xFF
    return busy == sqlite3.SQLITE_BUSY


_READ_ONLY: Final = (
    "make the file and its directory writable by this process (SQLite writes its -wal and "
    "-shm files beside it), on a disk mounted read-write, not read-only"
)
_OS_ADVICE: Final = {
    errno.EROFS: _READ_ONLY,
    errno.EACCES: _READ_ONLY,
    errno.EPERM: _READ_ONLY,
    errno.ENOSPC: "free space on the disk that holds it",
    errno.ENOENT: "its directory does not exist: create it, or name another path",
    errno.ENOTDIR: "a part of its path is a file, not a directory: name another path",
    errno.EISDIR: "it is a directory: name a file in it (such as chatbridge.db)",
}
"""What to do about an OSError creating the file, by its errno."""


def _advice(exc: Exception) -> str:
    """What to do about ``exc``, by SQLite's primary result code
    (https://www.sqlite.org/rescode.html), or an OSError's errno."""
    if isinstance(exc, OSError) and exc.errno in _OS_ADVICE:
        return _OS_ADVICE[exc.errno]
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            f"another connection held the file's lock for over {BUSY_TIMEOUT_MS / 1000:g} s "
            "(a process stuck in a write, or a tool such as the sqlite3 shell or a backup in a "
            "transaction): end it"
        )
    if primary == sqlite3.SQLITE_FULL:
        return "free space on the disk that holds it (or raise its size limit)"
    if primary == sqlite3.SQLITE_READONLY:
        return _READ_ONLY
    if primary == sqlite3.SQLITE_CANTOPEN:  # the file, or its -wal or -shm
        return f"SQLite could not open it or create a file beside it: {_READ_ONLY}"
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return (
            "the file is damaged or not a trio_chatbridge store: move it away (or restore a "
            "backup) and start again"
        )
    return "check the path, the disk and the file's permissions"


_JOURNAL_RETRIED: Final = (
    "; what was not written is not lost: messages not journaled are not acknowledged (the "
    "connector gets them again), runs not marked done are replayed at the next start"
)


def _unopenable(path: str, why: str, exc: Exception) -> StoreError:
    """The error of an open that failed: the file, ``why`` (with its leading ``:`` or ``;``),
    and what SQLite said, or the operating system (an OSError of the file's creation)."""
    said = "SQLite said" if isinstance(exc, sqlite3.Error) else "the operating system said"
    return StoreError(f"cannot open {path} as a trio_chatbridge store{why}. {said}: {exc}")


def _lock_held(waited: float) -> str:
    """What an open that found the file locked for ``waited`` seconds met, and what to do.
    In WAL mode it waits up to ``OPEN_BUSY_TIMEOUT_MS``; a file outside WAL mode with another
    process in a transaction on it (a rollback journal's lock) fails the open at once: SQLite
    does not wait for a writer there, where waiting could deadlock."""
    limit = OPEN_BUSY_TIMEOUT_MS / 1000
    if waited >= limit:
        return (
            f"another process held its write lock for over {limit:g} s (a migration of a very "
            "large journal, or a process stuck in a write). Start again once that process is "
            "done, or stop it"
        )
    return (
        f"SQLite gave up after {waited:.1f} s of the {limit:g} s it may wait, as it does "
        "rather than risk a deadlock: another process is in a transaction on the file outside "
        "WAL mode (the sqlite3 shell or another program writing, or reading in a transaction). "
        "End that transaction "
        "or stop that process, then start again"
    )


def _patiently(fn: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> T:
    """``fn(db)`` waiting up to ``BUSY_TIMEOUT_MS`` for the file's locks (worker thread): the
    connection of a store that commits on the event loop waits for none otherwise."""
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        return fn(db)
    finally:
        db.execute("PRAGMA busy_timeout=0")


def _inserts(add: _Write) -> Iterator[tuple[str, list[Any]]]:
    """An add's statements: its rows inserted unless their key is there, nothing returned
    (``RETURNING`` cost 2-4 µs a row, measured: :func:`_new` tells the new ones apart)."""
    received_at = add.detail
    for chunk in _chunks(add.messages, ROWS_PER_STATEMENT):
        sql = (
            "INSERT INTO journal (platform, account, message_id, body, received_at) "
            "VALUES " + ",".join(["(?,?,?,?,?)"] * len(chunk)) + " ON CONFLICT DO NOTHING"
        )
        params = [
            value
            for m in chunk
            for value in (m.platform, m.account, m.id, encode_message(m), received_at)
        ]
        yield sql, params


def _new(db: sqlite3.Connection, cursor: sqlite3.Cursor, params: list[Any]) -> list[bool]:
    """Whether each row of an insert (its ``params``, a row's in turn) was new, read after it
    ran.

    All new (the common case): the rows it changed are all of them. Else the new ones are
    found by their ``seq``: a row inserted without one gets the largest ``seq`` in the table
    plus one (https://www.sqlite.org/autoinc.html; the journal never gives one, and no table
    reaches 2**63 rows), so the ``rowcount`` rows this statement inserted, under the write
    lock its transaction holds (an add of several rows is always in one), are the ``seq``
    range ending at ``lastrowid``. A key twice in the rows is new the first time, a
    duplicate the second."""
    inserted = cursor.rowcount
    if inserted * ROW_PARAMETERS == len(params):
        return [True] * inserted
    step = ROW_PARAMETERS
    keys = zip(params[0::step], params[1::step], params[2::step], strict=True)
    last = cursor.lastrowid or 0
    new = set(
        db.execute(
            "SELECT platform, account, message_id FROM journal WHERE seq > ? AND seq <= ?",
            (last - inserted, last),
        )
        if inserted
        else ()
    )
    added: list[bool] = []
    for key in keys:
        added.append(key in new)
        new.discard(key)
    return added


def _marks(
    outcome: tuple[str, Any] | None, ids: Mapping[tuple[str, str], list[str]]
) -> Iterator[tuple[None, str, list[Any]]]:
    """Done-marks of one outcome (state, error): a statement per account, whose message ids
    are the unique index's last column, so each is one index lookup."""
    if outcome is None:
        return
    for (platform, account), message_ids in ids.items():
        for chunk in _chunks(message_ids, IDS_PER_STATEMENT):
            sql = (
                "INSERT INTO outcomes (seq, state, error) SELECT seq, ?, ? FROM journal "
                "WHERE platform = ? AND account = ? AND message_id IN ("
                + ",".join("?" * len(chunk))
                + ") ON CONFLICT DO UPDATE SET state = excluded.state, error = excluded.error"
            )
            yield None, sql, [*outcome, platform, account, *chunk]


class _transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the body raises (the connection is in autocommit)."""

    def __init__(self, db: sqlite3.Connection, begin: str = "BEGIN") -> None:
        self._db = db
        self._begin = begin

    def __enter__(self) -> None:
        self._db.execute(self._begin)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _create_private(path: str) -> None:
    """Create the file at ``path`` (or the one a ``file:`` URI names, when it may create it)
    readable by its owner only (0600) unless it exists: it holds tokens. SQLite gives the
    ``-wal`` and ``-shm`` files the database file's mode."""
    if path.startswith("file:"):
        named = _created_by(path)
        if named is None:
            return
        path = named
    if path == ":memory:":
        return
    if os.path.isdir(path):  # else SQLite's "unable to open" says nothing of it
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    with contextlib.suppress(FileExistsError):  # an existing file keeps its owner's mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def _created_by(uri: str) -> str | None:
    """The file SQLite would create for the ``file:`` URI ``uri``, or None: an in-memory
    database, or a mode that creates nothing (``ro``, ``rw``: a missing file is an error)."""
    parts = urlsplit(uri)
    mode = dict(parse_qsl(parts.query)).get("mode", "rwc")
    path = unquote(parts.path)
    if mode != "rwc" or path in ("", ":memory:"):
        return None
    return path


_TAKE_LEASE: Final = (  # a lease free, expired or ours: (name, owner, expires_at, now)
    "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
    "WHERE leases.owner = excluded.owner OR leases.expires_at <= ?"
)
_EXTEND_LEASE: Final = (  # a lease ours and not expired: (expires_at, name, owner, now)
    "UPDATE leases SET expires_at = ? WHERE name = ? AND owner = ? AND expires_at > ?"
)


def _chunks(rows: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]

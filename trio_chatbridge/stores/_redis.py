"""A store in Redis, shared by bridges on several processes and machines (client: coredis).

Every key of one account carries the account's hash tag, ``<prefix>{platform:account}:…``
(``%`` and ``:`` in either part percent-encoded, as in the connector's name), so each account
lives in one slot and every script below touches one slot: it runs unchanged on Redis Cluster.
Per account:

- ``:body`` (hash, message id → JSON), ``:state`` (hash, id → ``d`` or ``f<error>``),
  ``:recv`` (hash, id → wall-clock time accepted), ``:pending`` (sorted set, id → sequence
  number from ``:seq``), ``:done`` (sorted set of handled ids by time accepted, for pruning);
- ``:add:<random>`` (string, 60 s): one journal write's answer, for coredis's rerun of it;
- ``:kv`` (hash): the account's key-value space, its cursor included, but for values stored
  with a TTL: each is ``:kv:<key>`` (string), which Redis expires;
- ``:lease`` (the owner's token, with Redis's own expiry) and ``:fence``, a counter that grows
  at each acquisition of the lease.

A lease named ``platform:account`` (what the bridge takes per connector) fences that account:
once this store acquired it, every journal and key-value write for the account carries the
acquisition's token, and the script refuses it with :class:`StaleLeaseError` when the counter
moved past it (someone acquired the lease since). A process paused past its lease therefore
cannot mark work done or move a cursor back. Writes for an account this store never leased
are not fenced (one process on its own).

Two keys span accounts: ``<prefix>accounts`` (a set, to find every account's journal) and
``<prefix>members:<group>`` (a sorted set, live bridges by expiry). Lease and membership
expiry are Redis's clock, so processes on different machines agree on them.

Redis being unreachable raises :class:`StoreError`: connectors restart with backoff, leases
are treated as lost, nothing crashes the bridge.
"""

from __future__ import annotations

import logging
import math
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar, final

import trio

from .._errors import ConfigurationError, ProtocolError, StoreError, find_error
from .._messages import Message
from .._names import account_name
from . import _tls
from ._base import (
    CURSOR_KEY,
    JournalEntry,
    JournalKey,
    JournalState,
    OneWriteStore,
    checked_ttl,
)
from ._codec import decode_message, encode_message, unencodable

if TYPE_CHECKING:  # imported where used: a bridge on another store never pays for coredis
    import coredis

log = logging.getLogger("trio_chatbridge.stores.redis")

DEFAULT_PREFIX: Final = "chatbridge:"
DEFAULT_TIMEOUT: Final = 5.0  # seconds, to connect and for each reply
STALE: Final = "STALE"  # what the fencing check answers, as a Redis error reply
UNDECODABLE: Final = "undecodable journal record"  # the error a record set aside is marked with
ANSWER_KEPT: Final = 60  # seconds a journal write's answer is kept, for coredis's rerun of it
UNSURE_AT_MOST: Final = 10_000  # message ids remembered whose journal write ended unknown
BATCH: Final = (
    200  # accounts a pipeline reads the pending messages of, or leases it takes or renews
)
PIPELINES_AT_ONCE: Final = 8
"""Pipelines of one call sent together, each on a connection of its own. coredis asks Redis
whether the scripts are loaded before each pipeline (``SCRIPT EXISTS``), so a pipeline is two
round trips: one after another, 1,000 leases took ten, and with Redis 250 ms away the five
seconds a lease round gives them (docs/deploying.md)."""

T = TypeVar("T")

# Every script that writes for an account starts here: KEYS[1] is the account's fence counter,
# ARGV[1] the writer's token (0: unfenced). A token is good only while it is the counter's
# value: larger, someone acquired the lease since; smaller or missing, Redis lost keys (a
# restart without persistence) and the lease with them. Lua numbers are doubles: exact up to
# 2**53.
_FENCE: Final = """
local token = tonumber(ARGV[1])
if token > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') ~= token then
  return redis.error_reply('STALE lease token ' .. ARGV[1])
end
"""

# KEYS: fence, body, pending, recv, seq, answer. ARGV: token, now, seconds the answer is kept,
# then id, body pairs. Returns a flag per message (1: added), then 1 if the sequence started
# (the account's first message, or its first since Redis lost its keys), else 0. The answer is
# also kept under KEYS[6], a key of this call's own: coredis sends the script again when the
# connection dropped before the reply came, and a rerun answers what the first run did (it
# would otherwise find its own messages journaled and call them duplicates).
_JOURNAL_ADD: Final = (
    _FENCE
    + """
local answer = redis.call('GET', KEYS[6])
if answer then
  return cjson.decode(answer)
end
local added = {}
local started = 0
for i = 4, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    local seq = redis.call('INCR', KEYS[5])
    if seq == 1 then
      started = 1
    end
    redis.call('ZADD', KEYS[3], seq, ARGV[i])
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[2])
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
end
added[#added + 1] = started
redis.call('SET', KEYS[6], cjson.encode(added), 'EX', ARGV[3])
return added
"""
)

# KEYS: fence, body, state, pending, recv, done. ARGV: token, state, then ids. A time of
# receipt that is not a number (a corrupted record) is pruned first.
_JOURNAL_DONE: Final = (
    _FENCE
    + """
for i = 3, #ARGV do
  local received = redis.call('HGET', KEYS[5], ARGV[i])
  if received then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[2])
    redis.call('ZREM', KEYS[4], ARGV[i])
    redis.call('ZADD', KEYS[6], tonumber(received) and received or '0', ARGV[i])
  end
end
return 0
"""
)

# KEYS: body, state, recv, done. ARGV: before.
_JOURNAL_PRUNE: Final = """
local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[1])
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
return #old
"""

# KEYS: pending, body, recv. The pending ids, oldest first, their bodies, and when each was
# accepted. HMGET takes the ids a thousand at a time: Lua unpacks at most about 8,000 values.
_JOURNAL_PENDING: Final = """
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local bodies, received = {}, {}
for first = 1, #ids, 1000 do
  local chunk = {unpack(ids, first, math.min(first + 999, #ids))}
  local b = redis.call('HMGET', KEYS[2], unpack(chunk))
  local r = redis.call('HMGET', KEYS[3], unpack(chunk))
  for i = 1, #chunk do
    bodies[#bodies + 1] = b[i]
    received[#received + 1] = r[i]
  end
end
return {ids, bodies, received}
"""

# KEYS: body, state, recv. ARGV: id.
_JOURNAL_ENTRY: Final = """
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1]),
        redis.call('HGET', KEYS[3], ARGV[1])}
"""

# KEYS: fence, kv, then each value's key of its own (kv:<key>). ARGV: token, TTL (ms), then
# key, flag, value triples (flag 0: delete; 1: set; 2: set with the TTL). A value lives in one
# place: the hash, or (with a TTL) a key of its own that Redis expires.
_KV_WRITE: Final = (
    _FENCE
    + """
for i = 3, #ARGV, 3 do
  local own = KEYS[(i - 3) / 3 + 3]
  local flag = ARGV[i + 1]
  if flag == '2' then
    redis.call('SET', own, ARGV[i + 2], 'PX', ARGV[2])
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('DEL', own)
    if flag == '1' then
      redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    else
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
  end
end
return 0
"""
)

# KEYS: kv, the value's key of its own. ARGV: key. The hash first: _KV_WRITE leaves a value
# in one place, so a value in both is one an older trio_chatbridge (no TTLs) wrote to the hash
# after this one gave it a key of its own: the hash's is the newer.
_KV_READ: Final = """
local kept = redis.call('HGET', KEYS[1], ARGV[1])
if kept then return kept end
return redis.call('GET', KEYS[2])
"""

# KEYS: lease, fence. ARGV: owner, ttl (ms). Returns the fencing token, or 0 when held by another.
# A new token is the counter plus one, or Redis's clock in microseconds if that is more: after
# a restart that lost the counter (or its last second, with appendfsync everysec), the next
# acquisition's token still differs from every token given before (about 1.8e15 now: 2**53 is
# reached in the year 2255).
_LEASE_ACQUIRE: Final = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
local token = tonumber(redis.call('GET', KEYS[2]) or '0')
if not holder or token == 0 then
  local now = redis.call('TIME')
  token = math.max(token + 1, tonumber(now[1] .. string.format('%06d', tonumber(now[2]))))
  redis.call('SET', KEYS[2], string.format('%.0f', token))
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: epoch. ARGV: a new epoch's name, the hold-off (ms), the epoch this store saw last
# ('' if none). Returns the epoch's name and the milliseconds left of its hold-off. The key
# (name:until, Redis's clock in ms) is written once and never expires: missing, Redis lost
# its data, or the prefix is new. Leases held before may still run, so a new epoch holds off
# for a full TTL from now, whoever finds it missing: nothing left in Redis tells a new prefix
# from a FLUSHALL or a failover to a replica that never synced, and Redis's uptime says
# nothing of when those lost the data (nor is INFO, which an ACL may deny, needed). Another
# epoch than the one seen (a store that never saw the old one made it): its hold-off is
# extended to a TTL from now.
_EPOCH: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold = tonumber(ARGV[2])
local value = redis.call('GET', KEYS[1])
local name, ends = nil, 0
if value then
  name, ends = string.match(value, '^(.*):(%d+)$')
  ends = tonumber(ends or '0')
end
if not name then
  name = ARGV[1]
  ends = now + hold
  redis.call('SET', KEYS[1], name .. ':' .. string.format('%.0f', ends))
elseif ARGV[3] ~= '' and name ~= ARGV[3] and ends < now + hold then
  ends = now + hold
  redis.call('SET', KEYS[1], name .. ':' .. string.format('%.0f', ends))
end
return {name, math.max(0, ends - now)}
"""

# KEYS: lease. ARGV: owner, ttl (ms).
_LEASE_RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: owner, the channel that tells standbys.
_LEASE_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
return 0
"""

# KEYS: members. ARGV: member, ttl (ms; 0 leaves), the channel that tells the others of a
# leave. Server time, so that every machine agrees. The key itself lives as long as its
# longest-lived member. Returns member, milliseconds left, member, milliseconds left, ...
_HEARTBEAT: Final = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if ARGV[2] == '0' then
  redis.call('PUBLISH', ARGV[3], KEYS[1])
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local left = {}
for i = 1, #live, 2 do
  left[#left + 1] = live[i]
  left[#left + 1] = tonumber(live[i + 1]) - ms
end
return left
"""


_FORBIDDEN: Final = (
    "the Redis user may not run what the store needs: grant it (ACL SETUSER) the commands "
    "+@read +@write +@scripting +@pubsub +ping +time on the keys ~<prefix>* and the channel "
    "&<prefix>released"
)


class StaleLeaseError(StoreError):
    """A write was refused: another process acquired this account's lease since we did."""


Client: TypeAlias = "coredis.Redis[str] | coredis.RedisCluster[str]"


@final
class RedisStore(OneWriteStore):
    """A store in Redis (or Redis Cluster), shared by bridges on several processes.

    Build it with :meth:`from_url`. ``prefix`` starts every key, so several deployments can
    share one Redis. Bridges on this store take a lease per account before running its
    connector (see ``docs/deploying.md``). Durability is Redis's: with ``appendonly yes`` and
    ``appendfsync everysec`` a crash of Redis loses at most a second of accepted messages.
    """

    shared = True

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = DEFAULT_PREFIX,
        description: str = "redis",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise StoreError(f"the key prefix {prefix!r} may not contain braces (hash tags)")
        self._client = client
        self.prefix = prefix
        self._description = description
        self.wall_clock = wall_clock
        self._stack: AsyncExitStack | None = None
        self._opening = False  # an open under way: a second, concurrent one is refused too
        self._fences: dict[str, int] = {}
        self._channel = prefix + "released"  # a channel, not a key: spans every slot
        self._known: set[str] = set()
        self._unsure: dict[tuple[str, str], None] = {}
        """(account, message id) of journal writes that failed or were cancelled, so unknown
        whether they landed, oldest first (see :meth:`journal_add`)."""
        self._overflowed: set[str] = set()
        """Accounts of ids that :attr:`_unsure` had to forget (it keeps the last 10,000)."""
        self.undecodable: int = 0
        """Journal records found not to decode, and set aside (see :meth:`_decoded`)."""
        self._epoch: str | None = None
        """The name of the epoch (``<prefix>epoch``) this store's last heartbeat saw."""
        self._held_off_until = -math.inf
        """Until when (Trio's clock) acquisitions are held off: Redis lost its data."""
        register = client.register_script
        self._add = register(_JOURNAL_ADD)
        self._done = register(_JOURNAL_DONE)
        self._prune = register(_JOURNAL_PRUNE)
        self._pending = register(_JOURNAL_PENDING)
        self._entry = register(_JOURNAL_ENTRY)
        self._kv_write = register(_KV_WRITE)
        self._kv_read = register(_KV_READ)
        self._acquire = register(_LEASE_ACQUIRE)
        self._renew = register(_LEASE_RENEW)
        self._release = register(_LEASE_RELEASE)
        self._heartbeat = register(_HEARTBEAT)
        self._check_epoch = register(_EPOCH)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        cluster: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        wall_clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RedisStore:
        """A store on the Redis at ``url``: ``redis://[user:password@]host:port/db``, or
        ``rediss://…`` for TLS. ``cluster=True``: ``url`` names one node of a Redis Cluster.
        ``timeout`` (seconds) bounds connecting and each reply, so a stalled Redis is an
        error, not a hang.

        TLS verifies Redis's certificate and that it is for the URL's host, as a browser
        would; the URL's options ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
        ``ssl_check_hostname`` and ``ssl_cert_reqs`` change that (docs/stores.md), or
        ``ssl_context`` replaces it with a context of your own."""
        try:  # the 'redis' extra
            import coredis
            from coredis.exceptions import ClusterDownError
            from coredis.exceptions import ConnectionError as Disconnected
            from coredis.retry import CompositeRetryPolicy, ConstantRetryPolicy
        except ImportError as exc:
            raise ConfigurationError(
                "RedisStore needs coredis: pip install 'trio_chatbridge[redis]'"
            ) from exc
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise StoreError(f"a Redis URL starts with redis:// or rediss://, got {parts.scheme!r}")
        options = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        shown = _redact(parts)
        tls: dict[str, str] = {n: options.pop(n) for n in _tls.OPTIONS if n in options}
        if parts.scheme == "redis" and (tls or ssl_context is not None):
            raise ConfigurationError(
                f"the Redis URL {shown!r} has TLS options but no TLS: start it with rediss://"
            )
        if parts.scheme == "rediss" and ssl_context is None:
            ssl_context = _tls.tls_context(tls, shown)
        elif tls:
            raise ConfigurationError(
                f"the Redis URL {shown!r} has TLS options ({', '.join(tls)}) and an "
                "ssl_context was given too: set TLS up in one place"
            )
        parts = parts._replace(query=urllib.parse.urlencode(options))
        database = parts.path.strip("/")
        if database and not (database.isascii() and database.isdigit()):
            raise ConfigurationError(
                f"the database in the Redis URL {shown!r} is not a number: "
                "redis://[user:password@]host:port/<number>"
            )
        if cluster and database not in ("", "0"):
            raise ConfigurationError(
                f"Redis Cluster has only database 0; the URL {shown!r} names another"
            )
        settings: dict[str, Any] = {
            "decode_responses": True,
            "connect_timeout": timeout,
            "stream_timeout": timeout,
            "ssl_context": ssl_context,
        }
        # coredis sends a command again after a timeout by default. The command was sent: a
        # journal write that landed the first time found its messages journaled already and
        # called them duplicates, so nobody handled them. A timeout is a StoreError at once
        # instead (journal_add remembers what it may have written). A connection found closed
        # (most often a pooled one, nothing sent on it) is still tried again, as is a
        # cluster's CLUSTERDOWN, which ran nothing. So is a connection lost before the reply
        # came, the request sent: the journal write answers a rerun with what it did first.
        again = ConstantRetryPolicy((Disconnected,), retries=2, delay=0.01)
        client: Client
        if cluster:
            # Built from the URL's parts: coredis's RedisCluster.from_url warns (6.9).
            client = coredis.RedisCluster(
                parts.hostname or "localhost",
                parts.port or 6379,
                username=_unquote(parts.username),
                password=_unquote(parts.password),
                retry_policy=CompositeRetryPolicy(
                    ConstantRetryPolicy((ClusterDownError,), retries=2, delay=0.1), again
                ),
                **settings,
            )
        else:
            # coredis reads the URL with its TLS options taken out: the context is ours.
            client = coredis.Redis.from_url(parts.geturl(), retry_policy=again, **settings)
        return cls(client, prefix=prefix, description=shown, wall_clock=wall_clock)

    def __repr__(self) -> str:
        return f"RedisStore({self._description!r}, prefix={self.prefix!r})"

    async def open(self) -> None:
        """Connect, and check that Redis answers. Call :meth:`aclose` from the same task
        (the bridge does both): the client's connections live in a task group of its own.
        Cancelled: not open, and whatever it had connected is closed again.

        Credentials Redis refuses, a database it does not have, or a user its ACL does not
        let run the store's scripts (checked by one read script) raise
        :class:`ConfigurationError` saying what to fix: retrying would not help.

        Not idempotent, unlike other stores: opening a store that is open, or being opened
        (two bridges started together), raises :class:`ConfigurationError`. A bridge opens
        its store itself, and two bridges on one object would share its fencing tokens (the
        second acquisition's token would let the first holder's late writes through) and its
        connections (the first to stop would close them under the other). Each bridge gets a
        store of its own; they share Redis."""
        if self._stack is not None or self._opening:
            raise ConfigurationError(
                f"{self!r} is open already: is it given to two bridges, or opened before "
                "being given to one? A bridge opens and closes its store itself, and needs one "
                "store object per bridge: build one RedisStore.from_url(...) for each bridge "
                "(they share Redis, not the object)"
            )
        self._opening = True  # before the first await: two bridges starting together
        try:
            with self._refused_configuration(), self._translated("connect to"):
                async with AsyncExitStack() as stack:
                    await stack.enter_async_context(self._client)
                    await self._client.ping()
                    # A read script: the ACL lets this user run scripts on the prefix's keys.
                    await self._entry(self._keys("-", "body", "state", "recv"), ["-"])
                    self._stack = stack.pop_all()
        finally:  # failed or cancelled: not open, and may be opened again (a restart)
            self._opening = False

    async def aclose(self) -> None:
        """Disconnect. Must run at the nesting level :meth:`open` ran at, never inside a cancel
        scope opened since (the client's task group would be exited from inside it).
        Cancelled: the store is closed all the same (its client's task group cancels what
        it still runs as it exits); open it again to use it."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _mapped(self, exc: Exception, doing: str) -> StoreError | None:
        """What coredis or the network raised (alone, or in a group from the client's task
        group) as a StoreError, or None when it is neither: the one place errors are mapped."""
        import coredis.exceptions  # loaded already: the client came from coredis

        refused = find_error(exc, coredis.exceptions.ResponseError)
        if refused is not None and str(refused).startswith(STALE):
            return StaleLeaseError(
                f"{self!r} refused a write ({refused}): another process holds the lease "
                "now, or Redis lost it (restarted without persistence); this process writes "
                "for the account again once it acquired the lease again"
            )
        forbidden = find_error(exc, coredis.exceptions.AuthorizationError)
        if forbidden is not None:
            return StoreError(f"could not {doing} {self!r}: {_FORBIDDEN} ({forbidden})")
        wrong = find_error(exc, coredis.exceptions.WrongTypeError)
        if wrong is not None:
            return StoreError(
                f"could not {doing} {self!r}: a key under the prefix {self.prefix!r} holds "
                f"another kind of value ({wrong}): does another application write under that "
                "prefix? Give the bridges a prefix of their own, or delete that application's "
                "keys; retrying with backoff"
            )
        for kind in (coredis.exceptions.RedisError, OSError, TimeoutError):
            cause = find_error(exc, kind)
            if cause is not None:
                # coredis's "Unable to establish a connection" says why only in its cause
                why = "" if cause.__cause__ is None else _said(cause.__cause__)
                return StoreError(
                    f"could not {doing} {self!r}: {_said(cause)}{why and f' ({why})'}; "
                    "retrying with backoff"
                )
        return None

    @contextmanager
    def _refused_configuration(self) -> Iterator[None]:
        """Raise a :class:`ConfigurationError` for what the block raised that retrying cannot
        fix: refused credentials or permissions, a database Redis does not have."""
        import coredis.exceptions

        try:
            yield
        except StoreError as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            denied = find_error(cause, coredis.exceptions.AuthenticationError)
            if denied is not None:
                raise ConfigurationError(
                    f"{self!r} refused the credentials ({denied}): check the user and password "
                    "in the URL (redis://user:password@host:port/db, each percent-encoded) and "
                    "that the user is enabled"
                ) from None
            forbidden = find_error(cause, coredis.exceptions.AuthorizationError)
            if forbidden is not None:
                raise ConfigurationError(f"{self!r}: {_FORBIDDEN} ({forbidden})") from None
            lost = find_error(cause, coredis.exceptions.ConnectionError)
            untrusted = None if lost is None else lost.__cause__
            if isinstance(untrusted, ssl.SSLCertVerificationError):
                raise ConfigurationError(
                    f"{self!r} refused Redis's TLS certificate ({untrusted.verify_message}): "
                    "name the authority that issued it with ?ssl_ca_certs=/path/to/ca.pem "
                    "and reach Redis by a host name the certificate is for (docs/stores.md)"
                ) from None
            refused = find_error(cause, coredis.exceptions.ResponseError)
            if refused is not None and "DB index" in str(refused):
                raise ConfigurationError(
                    f"{self!r}: Redis has no such database ({refused}): the number after the "
                    "port must be below Redis's 'databases' setting (16 by default)"
                ) from None
            raise

    def _check_open(self) -> None:
        if self._stack is None:
            raise StoreError(
                f"{self!r} is not open: use 'async with store:' or pass it to a Bridge"
            )

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """Raise what coredis or the network raised in the block as a StoreError."""
        try:
            yield
        except Exception as exc:
            mapped = self._mapped(exc, doing)
            if mapped is None:
                raise
            raise mapped from exc

    async def _call(self, doing: str, request: Awaitable[T]) -> T:
        self._check_open()
        with self._translated(doing):
            return await request

    def _key(self, tag: str, what: str) -> str:
        return f"{self.prefix}{{{tag}}}:{what}"

    def _keys(self, tag: str, *what: str) -> list[str]:
        return [self._key(tag, w) for w in what]

    def _token(self, tag: str) -> str:
        return str(self._fences.get(tag, 0))

    async def _remember(self, tag: str, *, again: bool = False) -> None:
        """Record the account in ``<prefix>accounts`` (once per store, unless ``again``: Redis
        lost its keys), to find its journal."""
        if again or tag not in self._known:
            await self._call("write to", self._client.sadd(self.prefix + "accounts", [tag]))
            self._known.add(tag)

    async def _accounts(self) -> list[str]:
        members = await self._call("read from", self._client.smembers(self.prefix + "accounts"))
        return sorted(members)

    # -- journal ---------------------------------------------------------------------------

    async def journal_add(self, messages: Sequence[Message]) -> list[bool]:
        """As :meth:`Store.journal_add`: one fenced script per account in ``messages``. A
        connection lost before the reply came: coredis sends the script again, and the rerun
        answers what the first run did (kept 60 s under a key of the call's own).

        Cancelled, or failed (a reply that timed out): each account's script ran whole or not
        at all, unknown which, and the caller queued none of its messages. The store
        remembers their ids (the last 10,000): a redelivery of one that it then finds
        journaled and still pending is new, not a duplicate, so that this process handles it
        (a redelivery taken for a duplicate left it pending until the account's lease
        changed hands, for good on a process that kept it). Past 10,000 the oldest ids are
        forgotten, and their account with them: until then, every redelivery of one of that
        account's pending messages is new. Acquiring the account's lease forgets them: the
        acquisition's replay queues them. At least once: a message of such a page (or, past
        the bound, of such an account) that this process was handling already (a redelivery
        of it) may run twice; none is lost."""
        now = repr(self.wall_clock())
        by_account: dict[str, list[int]] = {}
        for i, message in enumerate(messages):
            by_account.setdefault(account_name(message.platform, message.account), []).append(i)
        added = [False] * len(messages)
        set_aside = 0  # counted once the put succeeds: a failed one is redelivered, counted then
        try:
            for tag, indexes in by_account.items():
                try:
                    bodies = [encode_message(messages[i]) for i in indexes]
                except UnicodeEncodeError:  # set aside alone (not new), the others journaled
                    aside = unencodable([messages[i] for i in indexes])
                    set_aside += len(aside)
                    indexes[:] = [i for k, i in enumerate(indexes) if k not in aside]
                    bodies = [encode_message(messages[i]) for i in indexes]
                    if not indexes:
                        continue
                await self._remember(tag)
                args = [self._token(tag), now, str(ANSWER_KEPT)]
                for i, body in zip(indexes, bodies, strict=True):
                    args += [messages[i].id, body]
                call = f"add:{secrets.token_hex(16)}"  # this call's, kept for a rerun
                keys = self._keys(tag, "fence", "body", "pending", "recv", "seq", call)
                reply: object = await self._call("write to", self._add(keys, args))
                *flags, started = _list(reply)
                for i, flag in zip(indexes, flags, strict=True):
                    added[i] = flag == 1
                if started == 1:  # the set of accounts may have been lost with the sequence
                    await self._remember(tag, again=True)
                if self._unsure or tag in self._overflowed:
                    await self._settle(tag, [messages[i].id for i in indexes], added, indexes)
        except BaseException:  # the caller queues none of them: a redelivery may be new
            for tag, indexes in by_account.items():
                self._doubt(tag, [messages[i].id for i in indexes])
            raise
        self.undecodable += set_aside
        return added

    def _doubt(self, tag: str, ids: Sequence[str]) -> None:
        """Remember that the journal writes of ``ids`` ended unknown."""
        for message_id in ids:
            self._unsure.pop((tag, message_id), None)
            self._unsure[(tag, message_id)] = None
        # One at a time, not in halves (_fifo.trim): each forgotten id's account is noted, and
        # forgetting 5,000 at once would flag many more accounts. 5-7 us a doubt past the
        # bound (process_time, 10,000 ids), on a path only a failed write (a timeout) takes.
        while len(self._unsure) > UNSURE_AT_MOST:
            forgotten = next(iter(self._unsure))
            del self._unsure[forgotten]
            self._overflowed.add(forgotten[0])

    async def _settle(
        self, tag: str, ids: Sequence[str], added: list[bool], indexes: Sequence[int]
    ) -> None:
        """Of ``ids`` just written (``added[indexes[k]]`` for ``ids[k]``), count as new each
        duplicate whose earlier write ended unknown (any, past the bound: see
        :meth:`journal_add`) and that is still pending; forget them."""
        pending = self._key(tag, "pending")
        overflowed = tag in self._overflowed
        for message_id, i in zip(ids, indexes, strict=True):
            doubted = (tag, message_id) in self._unsure
            if (doubted or overflowed) and not added[i]:
                score = await self._call("read from", self._client.zscore(pending, message_id))
                added[i] = score is not None
            if doubted:
                del self._unsure[(tag, message_id)]

    async def journal_done(self, messages: Sequence[Message], *, error: str | None = None) -> None:
        """As :meth:`Store.journal_done`: one fenced script per account in ``messages``.

        Cancelled: each account's messages are marked whole or not at all; those not marked
        stay pending and are replayed by the account's next owner (at least once)."""
        state = "d" if error is None else "f" + error
        by_account: dict[str, list[str]] = {}
        for message in messages:
            by_account.setdefault(account_name(message.platform, message.account), []).append(
                message.id
            )
        for tag, ids in by_account.items():
            keys = self._keys(tag, "fence", "body", "state", "pending", "recv", "done")
            args = [self._token(tag), state, *ids]
            await self._call("write to", self._done(keys, args))

    async def journal_pending(self) -> list[Message]:
        """Every account's pending messages, oldest first: one script per account, sent
        200 accounts to a pipeline, the pipelines sent together (see :meth:`_pipelined`);
        records that do not decode are set aside (see :meth:`_decoded`). Cancelled: it
        changed nothing, or set some of those records aside."""
        found: list[tuple[float, int, Message]] = []
        tags = await self._accounts()
        replies = await self._pipelined(
            "read from",
            tags,
            lambda tag, pipe: self._pending(
                self._keys(tag, "pending", "body", "recv"), [], client=pipe
            ),
        )
        for tag, reply in zip(tags, replies, strict=True):
            for seq, (received, message) in enumerate(await self._decoded(tag, reply)):
                found.append((received, seq, message))
        return [message for _, _, message in sorted(found, key=lambda f: (f[0], f[1]))]

    async def _pipelined(
        self,
        doing: str,
        items: Sequence[str],
        call: Callable[[str, Any], Awaitable[object]],
    ) -> list[object]:
        """``call(item, pipe)`` for each item, :data:`BATCH` to a pipeline, the pipelines
        sent :data:`PIPELINES_AT_ONCE` at a time; the replies in the items' order. A failure
        is the :class:`StoreError` of the first pipeline that failed (the others are
        cancelled). Cancelled: each pipeline was sent or not, unknown which. A store not
        open raises StoreError, as :meth:`_call` does (coredis's own error was a RuntimeError)."""
        self._check_open()
        batches = [items[first : first + BATCH] for first in range(0, len(items), BATCH)]
        replies: list[list[object]] = [[] for _ in batches]
        room = trio.CapacityLimiter(PIPELINES_AT_ONCE)

        async def send(index: int) -> None:
            async with room:
                with self._translated(doing):
                    async with self._client.pipeline(transaction=False) as pipe:
                        requests = [call(item, pipe) for item in batches[index]]
                    replies[index] = [await request for request in requests]

        if len(batches) == 1:  # (the common case: no task to start)
            await send(0)
        else:
            try:
                async with trio.open_nursery() as nursery:
                    for index in range(len(batches)):
                        nursery.start_soon(send, index)
            except BaseExceptionGroup as group:
                failed = find_error(group, StoreError)
                if failed is None:
                    raise
                raise failed from None
        return [reply for batch in replies for reply in batch]

    async def journal_pending_of(self, platform: str, account: str) -> list[Message]:
        """The account's pending messages, oldest first, in one script (and one more to set
        aside records that do not decode, see :meth:`_decoded`). Cancelled: it changed
        nothing, or set those records aside."""
        tag = account_name(platform, account)
        keys = self._keys(tag, "pending", "body", "recv")
        reply: object = await self._call("read from", self._pending(keys, []))
        return [message for _, message in await self._decoded(tag, reply)]

    async def journal_entry(self, key: JournalKey) -> JournalEntry | None:
        """As :meth:`Store.journal_entry`, in one script. A read: cancelled, it changed
        nothing."""
        platform, account, message_id = key
        tag = account_name(platform, account)
        keys = self._keys(tag, "body", "state", "recv")
        body, state, received = _list(
            await self._call("read from", self._entry(keys, [message_id]))
        )
        if body is None:
            return None
        try:
            message = decode_message(body)
        except (ProtocolError, ValueError) as exc:  # ValueError: msgspec's, see _decoded
            raise StoreError(
                f"{self!r}: the journal record {message_id!r} of {keys[0]!r} is not a "
                f"serialised message ({exc}); it is not replayed"
            ) from None
        outcome: JournalState = "pending"
        error = None
        if state is not None:
            outcome = "done" if state == "d" else "failed"
            error = None if state == "d" else str(state)[1:]
        return JournalEntry(message, outcome, error, self._received(tag, message_id, received))

    async def journal_prune(self, before: float) -> int:
        """As :meth:`Store.journal_prune`: one script per account. Cancelled: some accounts
        were pruned (each whole), the others are pruned by the next call."""
        limit = repr(before)  # 'inf' and '-inf' are scores Redis reads too
        pruned = 0
        for tag in await self._accounts():
            keys = self._keys(tag, "body", "state", "recv", "done")
            count: object = await self._call("write to", self._prune(keys, [limit]))
            pruned += int(str(count))
        return pruned

    async def _decoded(self, tag: str, reply: object) -> list[tuple[float, Message]]:
        """What ``_JOURNAL_PENDING`` answered for account ``tag``: (time accepted, message),
        oldest first. A record that does not decode (a corrupted value, another application's
        data under our prefix) must not stop the account's other messages, nor crash every
        process that acquires the account: it is logged with its key and the reason, marked
        failed (``undecodable journal record``, the reason left to the log and to
        :meth:`journal_entry`, so a mark's size does not grow with the number of bad records;
        not replayed again, and pruned in time), counted in :attr:`undecodable`, and left out.
        A time of receipt that is not a number, its message good, is logged and taken as 0:
        the message is replayed."""
        ids, bodies, received = _list(reply)
        found: list[tuple[float, Message]] = []
        bad: list[str] = []
        for message_id, body, at in zip(_list(ids), _list(bodies), _list(received), strict=True):
            if body is not None:
                try:
                    message = decode_message(body)
                except (ProtocolError, ValueError) as exc:  # the codec lets a DecodeError out
                    log.warning(
                        "journal record %r of %r is not a serialised message (%s): marked "
                        "failed, not replayed; if another application writes under the prefix "
                        "%r, give the bridges a prefix of their own",
                        message_id,
                        self._key(tag, "body"),
                        exc,
                        self.prefix,
                    )
                    bad.append(str(message_id))
                else:
                    found.append((self._received(tag, str(message_id), at), message))
        if bad:
            keys = self._keys(tag, "fence", "body", "state", "pending", "recv", "done")
            state = f"f{UNDECODABLE}"
            await self._call("write to", self._done(keys, [self._token(tag), state, *bad]))
            self.undecodable += len(bad)
        return found

    def _received(self, tag: str, message_id: str, at: object) -> float:
        """The time of receipt ``at`` read from account ``tag``'s journal, or 0 (logged) when it
        is missing or not a finite number (a corrupted record): its message is still good."""
        try:
            received = float(str(at))
        except ValueError:
            received = math.nan
        if math.isfinite(received):
            return received
        log.warning(
            "journal record %r of %r has no valid time of receipt (%.40r): taken as 0, the "
            "message is kept",
            message_id,
            self._key(tag, "recv"),
            at,
        )
        return 0.0

    # -- key-value space, per account --------------------------------------------------------

    async def get(self, platform: str, account: str, key: str) -> str | None:
        """As :meth:`Store.get`, in one script. A read: cancelled, it changed nothing."""
        tag = account_name(platform, account)
        keys = [self._key(tag, "kv"), self._key(tag, f"kv:{key}")]
        value: object = await self._call("read from", self._kv_read(keys, [key]))
        return None if value is None else str(value)

    async def _write_values(
        self,
        platform: str,
        account: str,
        values: Mapping[str, str | None],
        ttl: float | None,
        cursor: str | None = None,
    ) -> None:
        """``values`` (None deletes), each with ``ttl``, and ``cursor`` (none) if given, in
        one fenced script: a value with a TTL is a key of its own, which Redis expires."""
        ttl = checked_ttl(ttl)
        if not values and cursor is None:
            return
        tag = account_name(platform, account)
        flag = "1" if ttl is None else "2"
        args = [self._token(tag), "0" if ttl is None else _ms(ttl)]
        keys = self._keys(tag, "fence", "kv")
        for key, value in values.items():
            args += [key, "0", ""] if value is None else [key, flag, value]
            keys.append(self._key(tag, f"kv:{key}"))
        if cursor is not None:
            args += [CURSOR_KEY, "1", cursor]
            keys.append(self._key(tag, f"kv:{CURSOR_KEY}"))
        await self._call("write to", self._kv_write(keys, args))

    # -- leases and membership ---------------------------------------------------------------

    async def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """As :meth:`Store.acquire_lease`; remembers the acquisition's fencing token. Refused
        while acquisitions are held off (see :meth:`acquire_leases`).

        Cancelled: Redis may have given the lease (and a new token) all the same, unknown
        here: acquiring it again returns it with that token; otherwise it expires after
        ``ttl``. Until then this store's writes for the account carry its old token, which
        Redis refuses if someone else acquired the lease since."""
        return (await self.acquire_leases([name], owner, ttl))[0]

    async def acquire_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        """Each lease tried by the acquire script, 200 to a pipeline, the pipelines sent
        together (see :meth:`_pipelined`); remembers each acquisition's token.

        Every one is refused while acquisitions are held off: a :meth:`heartbeat` found that
        Redis lost its data (see ``_EPOCH``), and a holder from before may still run its
        account until its next renewal finds the lease gone. Once this store saw the epoch,
        it reads it again after the acquisitions: changed (Redis lost its data meanwhile),
        what was acquired is released and refused, and acquisitions are held off.
        Cancelled: as :meth:`acquire_lease`, for each lease."""
        if self.acquisitions_held_off():
            return [False] * len(names)
        seen = self._epoch
        args = [owner, _ms(ttl)]
        tokens = await self._pipelined(
            "write to",
            names,
            lambda name, pipe: self._acquire(self._keys(name, "lease", "fence"), args, client=pipe),
        )
        if seen is not None and await self._epoch_changed(seen, ttl):
            for name, token in zip(names, tokens, strict=True):
                if token != 0:
                    await self.release_lease(name, owner)
            return [False] * len(names)
        for name, token in zip(names, tokens, strict=True):
            if token != 0:
                self._acquired(name, token)
        return [token != 0 for token in tokens]

    async def _epoch_changed(self, seen: str, ttl: float) -> bool:
        """Whether the epoch is no longer ``seen`` (Redis lost its data since this store saw
        it): then acquisitions are held off as the epoch says."""
        value = await self._call("read from", self._client.get(self.prefix + "epoch"))
        if value is not None and str(value).rpartition(":")[0] == seen:
            return False
        await self._beat_epoch(ttl)
        return True

    async def _beat_epoch(self, ttl: float) -> None:
        """Read the epoch (written if missing, see ``_EPOCH``); hold acquisitions off for what
        is left of its hold-off."""
        args = [secrets.token_hex(8), _ms(ttl), self._epoch or ""]
        name, left = _list(
            await self._call("write to", self._check_epoch([self.prefix + "epoch"], args))
        )
        lost = self._epoch is not None and name != self._epoch
        self._epoch = str(name)
        now = trio.current_time()
        if int(left) > 0 and (lost or now >= self._held_off_until):
            # Sure of a loss when the epoch this store saw is gone; else a process found the
            # key missing less than a TTL ago: Redis lost its data, or the prefix is new.
            log.log(
                logging.WARNING if lost else logging.INFO,
                "%r: acquiring no lease for %.1f s: %s, and every process that held a lease "
                "before must have stopped first (see docs/deploying.md)",
                self,
                int(left) / 1000,
                f"Redis lost its data (the key {self.prefix + 'epoch'!r} changed)"
                if lost
                else f"the key {self.prefix + 'epoch'!r} was found missing less than a "
                "lease's TTL ago (Redis lost its data, or the prefix is new: a new prefix "
                "waits one TTL, once)",
            )
        if int(left) > 0:
            self._held_off_until = max(self._held_off_until, now + int(left) / 1000)

    def _acquired(self, name: str, token: object) -> None:
        """Lease ``name`` acquired with ``token``: its writes carry it from now on. The
        account's journal writes that ended unknown are forgotten: whatever of them landed
        is pending, and the acquisition's replay queues it (so are those of an account
        past the bound)."""
        self._fences[name] = int(str(token))
        self._overflowed.discard(name)
        if self._unsure:
            self._unsure = {key: None for key in self._unsure if key[0] != name}

    async def renew_lease(self, name: str, owner: str, ttl: float) -> bool:
        """As :meth:`Store.renew_lease`, by a compare-and-set script. Cancelled: extended
        or not; count on the expiry of the last renewal that returned (the keeper does)."""
        keys = [self._key(name, "lease")]
        return await self._call("write to", self._renew(keys, [owner, _ms(ttl)])) == 1

    async def renew_leases(self, names: Sequence[str], owner: str, ttl: float) -> list[bool]:
        """Each lease renewed by the compare-and-set script, 200 to a pipeline, the
        pipelines sent together (see :meth:`_pipelined`). Cancelled: each extended or
        not; count on the expiry of the last renewal that returned."""
        args = [owner, _ms(ttl)]
        replies = await self._pipelined(
            "write to",
            names,
            lambda name, pipe: self._renew([self._key(name, "lease")], args, client=pipe),
        )
        return [reply == 1 for reply in replies]

    async def release_lease(self, name: str, owner: str) -> None:
        """As :meth:`Store.release_lease`; a release is published to the prefix's watchers.
        Cancelled: released (and told) or not; if not, the lease expires at its TTL."""
        # The fencing token stays: whatever this store still writes for the account is
        # refused once another process acquired the lease.
        keys = [self._key(name, "lease")]
        await self._call("write to", self._release(keys, [owner, self._channel]))

    async def lease_remaining(self, name: str) -> float | None:
        """Seconds until lease ``name`` expires (0: free), by Redis's clock, or until
        acquisitions are no longer held off if that is later; None for a key without an
        expiry (not one of ours). A read: cancelled, it changed nothing."""
        return (await self.leases_remaining([name]))[0]

    async def leases_remaining(self, names: Sequence[str]) -> list[float | None]:
        """:meth:`lease_remaining` of each of ``names``: a ``PTTL`` each, 200 to a pipeline,
        the pipelines sent together (see :meth:`_pipelined`), so 1,000 leases cost one
        round trip, not 1,000. A read: cancelled, it changed nothing."""
        replies = await self._pipelined(
            "read from", names, lambda name, pipe: pipe.pttl(self._key(name, "lease"))
        )
        held_off = self.acquisitions_held_off()
        return [None if left == -1 else max(int(str(left)) / 1000, held_off) for left in replies]

    def acquisitions_held_off(self) -> float:
        """As :meth:`Store.acquisitions_held_off`: what is left of the hold-off the last
        :meth:`heartbeat` (or acquisition) found, on Trio's clock (see ``_EPOCH``)."""
        return max(0.0, self._held_off_until - trio.current_time())

    def lease_token(self, name: str) -> int | None:
        """The fencing token of this store's last acquisition of lease ``name``, or None."""
        return self._fences.get(name)

    async def heartbeat(self, group: str, member: str, ttl: float) -> dict[str, float]:
        """As :meth:`Store.heartbeat`, on Redis's clock; a leave (``ttl`` 0) is published
        to the prefix's watchers. A beat reads the epoch first: found missing or changed
        (Redis lost its data), lease acquisitions are held off (see :meth:`acquire_leases`).
        Cancelled: beaten (or left) or not; a member that did
        not beat expires at the end of its previous TTL."""
        if ttl > 0:
            await self._beat_epoch(ttl)
        key = f"{self.prefix}members:{group}"
        ttl_ms = str(max(0, math.ceil(ttl * 1000)))
        reply = _list(
            await self._call("write to", self._heartbeat([key], [member, ttl_ms, self._channel]))
        )
        left = {str(m): int(ms) / 1000 for m, ms in zip(reply[::2], reply[1::2], strict=True)}
        return {m: left[m] for m in sorted(left)}

    async def watch_releases(
        self,
        notify: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe to the prefix's channel, on a connection of its own, on which a lease
        release and a member's leave are published (in their scripts); call ``notify`` for
        each message until cancelled. A lost connection is a :class:`StoreError` (the caller
        subscribes again later; rounds cover what was missed meanwhile). Cancelled: the
        subscription is closed."""
        self._check_open()
        with self._translated("listen to"):
            async with self._client.pubsub(
                channels=[self._channel], ignore_subscribe_messages=True
            ) as pubsub:
                task_status.started()
                async for _ in pubsub:
                    notify()


def _ms(seconds: float) -> str:
    return str(max(1, math.ceil(seconds * 1000)))


def _list(reply: object) -> list[Any]:
    if not isinstance(reply, list | tuple):
        raise StoreError(f"unexpected reply from Redis: {type(reply).__name__}")
    return list(reply)


def _said(error: BaseException) -> str:
    """An error as a log line quotes it: its type and its text."""
    return f"{type(error).__name__}: {error}"


def _unquote(part: str | None) -> str | None:
    return None if part is None else urllib.parse.unquote(part)


def _redact(parts: urllib.parse.SplitResult) -> str:
    """The URL without its credentials, for reprs and errors."""
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))

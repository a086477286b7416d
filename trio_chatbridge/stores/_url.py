"""Stores named by URL, as a configuration file names them: the one place such URLs are read."""

from __future__ import annotations

import os
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .._errors import ConfigurationError, StoreError
from ._base import Store
from ._memory import MemoryStore
from ._redis import DEFAULT_PREFIX, RedisStore
from ._sqlite import SQLiteStore

SCHEMES = ("sqlite", "memory", "redis", "rediss")
"""The URL schemes :func:`store_from_url` knows."""


def store_from_url(url: str) -> Store:
    """The store a URL names (not opened yet; the bridge opens it).

    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's form:
      the path follows the third slash), also ``sqlite:relative.db``; ``sqlite:///~/bot.db``
      is in the home directory (a leading ``~`` or ``~user``, as a shell reads it);
    - ``memory://``: nothing survives the process;
    - ``redis://[user:password@]host:port/db`` or ``rediss://…`` (TLS): a
      :class:`RedisStore`, shared by several processes; ``?prefix=chatbridge:`` sets the key
      prefix, ``?cluster=true`` names one node of a Redis Cluster.

    Raises :class:`ConfigurationError` naming what is wrong.
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": urllib's text never quotes the URL
        raise ConfigurationError(f"store URL is malformed: {exc}") from None
    shown = _shown(parts)  # what errors quote: never the password
    try:
        return _store(url, parts, shown)
    except ConfigurationError:
        raise
    except (ValueError, StoreError) as exc:  # a bad port, a prefix with braces...
        raise ConfigurationError(f"store URL {shown!r}: {exc}") from None


def _store(url: str, parts: SplitResult, shown: str) -> Store:
    if parts.scheme == "memory":
        if parts.netloc or parts.path or parts.query:
            raise ConfigurationError(f"store URL {shown!r}: memory:// takes nothing after it")
        return MemoryStore()
    if parts.scheme == "sqlite":
        if parts.netloc:
            raise ConfigurationError(
                f"store URL {shown!r}: a SQLite URL has no host; write sqlite:///path/to/file.db"
            )
        path = unquote(parts.path)
        if url.startswith("sqlite:///"):
            path = path[1:]  # the third slash separates the empty host from the path
        if not path:
            raise ConfigurationError(f"store URL {shown!r}: name the file: sqlite:///chatbridge.db")
        # ~ first: the home directory, as a shell reads it (not a directory named "~")
        return SQLiteStore(os.path.expanduser(path))
    if parts.scheme in ("redis", "rediss"):
        return _redis(url)
    known = ", ".join(f"{s}://" for s in SCHEMES)
    raise ConfigurationError(f"store URL {shown!r}: unknown scheme; use one of {known}")


def _redis(url: str) -> RedisStore:
    parts = urlsplit(url)
    # blank values kept: RedisStore.from_url refuses a blank ssl_check_hostname, say; dropped
    # here, the same URL would be refused or taken by where it was written
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    prefix = options.pop("prefix", DEFAULT_PREFIX)
    if not prefix:  # (read as the default before blank values were kept: not a new keyspace)
        raise ConfigurationError(
            "store URL: prefix is blank; name one (prefix=bridge) or leave the option out "
            f"for the default, {DEFAULT_PREFIX!r}"
        )
    cluster = options.pop("cluster", "false").lower()
    if cluster not in ("true", "false"):
        raise ConfigurationError(f"store URL: cluster must be true or false, got {cluster!r}")
    rest = urlunsplit(parts._replace(query=urlencode(options)))
    return RedisStore.from_url(rest, prefix=prefix, cluster=cluster == "true")


def _shown(parts: SplitResult) -> str:
    """The URL for an error message: its password and query values replaced by ``***``."""
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(netloc=netloc, query=query))

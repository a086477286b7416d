"""Stores named by URL, as a configuration file names them: the one place such URLs are read."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .._errors import ConfigurationError
from ._base import Store
from ._memory import MemoryStore
from ._sqlite import SQLiteStore

SCHEMES = ("sqlite", "memory")
"""The URL schemes :func:`store_from_url` knows."""


def store_from_url(url: str) -> Store:
    """The store a URL names (not opened yet; the bridge opens it).

    - ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's form:
      the path follows the third slash), also ``sqlite:relative.db``;
    - ``memory://``: nothing survives the process.

    Raises :class:`ConfigurationError` naming what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        if parts.netloc or parts.path or parts.query:
            raise ConfigurationError(f"store URL {url!r}: memory:// takes nothing after it")
        return MemoryStore()
    if parts.scheme == "sqlite":
        if parts.netloc:
            raise ConfigurationError(
                f"store URL {url!r}: a SQLite URL has no host; write sqlite:///path/to/file.db"
            )
        path = unquote(parts.path)
        if url.startswith("sqlite:///"):
            path = path[1:]  # the third slash separates the empty host from the path
        if not path:
            raise ConfigurationError(f"store URL {url!r}: name the file: sqlite:///chatbridge.db")
        return SQLiteStore(path)
    known = ", ".join(f"{s}://" for s in SCHEMES)
    raise ConfigurationError(f"store URL {url!r}: unknown scheme; use one of {known}")

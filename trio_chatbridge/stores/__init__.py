"""Where a bridge keeps its journal, cursors, per-account values and leases."""

from ._base import JournalEntry as JournalEntry
from ._base import JournalKey as JournalKey
from ._base import Store as Store
from ._base import journal_key as journal_key
from ._memory import MemoryStore as MemoryStore
from ._redis import RedisStore as RedisStore
from ._redis import StaleLeaseError as StaleLeaseError
from ._sqlite import SQLiteStore as SQLiteStore
from ._url import store_from_url as store_from_url

__all__ = [
    "JournalEntry",
    "JournalKey",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "StaleLeaseError",
    "Store",
    "journal_key",
    "store_from_url",
]

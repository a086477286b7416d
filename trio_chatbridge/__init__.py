"""trio_chatbridge: connect chat platforms to your bot or agent, on Trio.

Everything a bot author uses is re-exported here; the modules behind it are private. What a
connector author needs is in :mod:`trio_chatbridge.connectors`, test tools in
:mod:`trio_chatbridge.testing`, the platforms in ``trio_chatbridge.platforms.<name>``.
"""

import typing as _typing

from ._asyncio import AsyncioAgent as AsyncioAgent
from ._asyncio import AsyncioBridge as AsyncioBridge
from ._asyncio import AsyncioReply as AsyncioReply
from ._asyncio import AsyncioStream as AsyncioStream
from ._asyncio import asyncio_agent as asyncio_agent
from ._asyncio import asyncio_bridge as asyncio_bridge
from ._bridge import Bridge as Bridge
from ._bridge import open_bridge as open_bridge
from ._connector import ConnectorState as ConnectorState
from ._connector import ConnectorStatus as ConnectorStatus
from ._connector import LeaseState as LeaseState
from ._content import Attachment as Attachment
from ._content import Card as Card
from ._content import Content as Content
from ._content import Markdown as Markdown
from ._content import Post as Post
from ._content import Sent as Sent
from ._debounce import Debounce as Debounce
from ._debounce import Debouncer as Debouncer
from ._debounce import session_key as session_key
from ._dispatch import Agent as Agent
from ._dispatch import OnBusy as OnBusy
from ._errors import ChatBridgeError as ChatBridgeError
from ._errors import ConfigurationError as ConfigurationError
from ._errors import ConnectorError as ConnectorError
from ._errors import FatalConnectorError as FatalConnectorError
from ._errors import MediaError as MediaError
from ._errors import PlatformError as PlatformError
from ._errors import ProtocolError as ProtocolError
from ._errors import SendError as SendError
from ._errors import StoreError as StoreError
from ._http import HTTPRefusedError as HTTPRefusedError
from ._http import HTTPStatusError as HTTPStatusError
from ._lease import Leases as Leases
from ._logs import configure_logging as configure_logging
from ._media import MediaPolicy as MediaPolicy
from ._messages import Batch as Batch
from ._messages import Chat as Chat
from ._messages import File as File
from ._messages import Handle as Handle
from ._messages import Image as Image
from ._messages import Media as Media
from ._messages import Mention as Mention
from ._messages import Message as Message
from ._messages import Part as Part
from ._messages import Quote as Quote
from ._messages import Sender as Sender
from ._messages import Text as Text
from ._messages import Video as Video
from ._messages import Voice as Voice
from ._redact import install as _install_redaction
from ._reply import Reply as Reply
from ._serve import serve as serve
from ._stats import Stats as Stats
from ._status import StatusChanges as StatusChanges
from ._supervise import Backoff as Backoff
from .stores import JournalEntry as JournalEntry
from .stores import MemoryStore as MemoryStore
from .stores import RedisStore as RedisStore
from .stores import SQLiteStore as SQLiteStore
from .stores import Store as Store

_install_redaction()  # credentials out of our and our dependencies' log records (_redact.py)

# Type checkers see the names above only: ``cb.Typo`` stays their error.
if not _typing.TYPE_CHECKING:
    import importlib as _importlib
    import sys as _sys

    def __getattr__(name: str) -> object:
        """Say where a connector author's name is when it is asked of this package:
        ``cb.Connector`` is ``trio_chatbridge.connectors.Connector`` (docs/connectors.md), and
        Python's own error suggested the private ``_connector`` module. Any other missing
        name gets Python's error, with its name (Python suggests a near one from it)."""
        this = _sys.modules[__name__]
        if not name.startswith("_"):
            # import_module, not ``from . import``: that asks this function for the name first
            connectors = _importlib.import_module(f"{__name__}.connectors")
            if name in connectors.__all__:
                # Without ``name``, Python appends no "Did you mean" (and, given ``obj``, adds
                # no name of its own): the message says it all.
                raise AttributeError(
                    f"module {__name__!r} has no attribute {name!r}: it is for connector "
                    f"authors, in {connectors.__name__} (from {connectors.__name__} import "
                    f"{name})",
                    obj=this,
                )
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}", name=name, obj=this)


__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Attachment",
    "AsyncioAgent",
    "AsyncioBridge",
    "AsyncioReply",
    "AsyncioStream",
    "Backoff",
    "Batch",
    "Bridge",
    "Card",
    "Chat",
    "ChatBridgeError",
    "ConfigurationError",
    "ConnectorError",
    "ConnectorState",
    "ConnectorStatus",
    "Content",
    "Debounce",
    "Debouncer",
    "FatalConnectorError",
    "File",
    "Handle",
    "HTTPRefusedError",
    "HTTPStatusError",
    "Image",
    "JournalEntry",
    "LeaseState",
    "Leases",
    "Markdown",
    "Media",
    "MediaError",
    "MediaPolicy",
    "Mention",
    "Message",
    "MemoryStore",
    "RedisStore",
    "OnBusy",
    "Part",
    "Post",
    "PlatformError",
    "ProtocolError",
    "Quote",
    "Reply",
    "SQLiteStore",
    "SendError",
    "Sent",
    "Sender",
    "Stats",
    "StatusChanges",
    "Store",
    "StoreError",
    "Text",
    "Video",
    "Voice",
    "asyncio_agent",
    "asyncio_bridge",
    "configure_logging",
    "open_bridge",
    "serve",
    "session_key",
]

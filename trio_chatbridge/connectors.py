"""What a connector author needs: the contract a platform connector implements.

A bot author never needs this namespace; it is to ``trio_chatbridge`` what ``trio.abc`` and
``trio.lowlevel`` are to ``trio``. Subclass :class:`Connector` for a new platform; its ``ctx``
(a :class:`ConnectorContext`) is the bridge's side of the contract. Replies are written through
a :class:`ReplyStream`: :class:`BufferedReplyStream` sends once at the end, and a
:class:`CoalescingStream` driven by :func:`streaming` suits platforms that show a reply growing
in place. Every retry loop counts its failures in a :class:`Retries` under the bridge's one
policy, :class:`trio_chatbridge.Backoff`.
"""

from ._connector import BufferedReplyStream as BufferedReplyStream
from ._connector import CoalescingStream as CoalescingStream
from ._connector import Connector as Connector
from ._connector import ConnectorContext as ConnectorContext
from ._connector import ReplyStream as ReplyStream
from ._connector import streaming as streaming
from ._supervise import Retries as Retries

__all__ = [
    "BufferedReplyStream",
    "CoalescingStream",
    "Connector",
    "ConnectorContext",
    "ReplyStream",
    "Retries",
    "streaming",
]

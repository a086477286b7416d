"""What a connector author needs: the contract a platform connector implements.

A bot author never needs this namespace; it is to ``trio_chatbridge`` what ``trio.abc`` and
``trio.lowlevel`` are to ``trio``. Subclass :class:`Connector` for a new platform; its ``ctx``
(a :class:`ConnectorContext`) is the bridge's side of the contract. Replies are written through
a :class:`ReplyStream`: :class:`BufferedReplyStream` sends once at the end, and a
:class:`CoalescingStream` driven by :func:`streaming` suits platforms that show a reply growing
in place. Every retry loop counts its failures in a :class:`Retries` under the bridge's one
policy, :class:`trio_chatbridge.Backoff`. A platform that long-polls over HTTP writes a
sans-I/O :class:`PollCore` (requests out as :class:`HTTPRequest`, answers in, :class:`Page`,
:class:`Retry` or :class:`Paused` out) and runs it with :func:`long_poll`, the driver that does
the I/O, the inbox hand-off and the retries.
"""

from ._connector import BufferedReplyStream as BufferedReplyStream
from ._connector import CoalescingStream as CoalescingStream
from ._connector import Connector as Connector
from ._connector import ConnectorContext as ConnectorContext
from ._connector import ReplyStream as ReplyStream
from ._connector import streaming as streaming
from ._longpoll import long_poll as long_poll
from ._poll_events import HTTPRequest as HTTPRequest
from ._poll_events import Page as Page
from ._poll_events import Paused as Paused
from ._poll_events import PollCore as PollCore
from ._poll_events import Retry as Retry
from ._supervise import Retries as Retries

__all__ = [
    "BufferedReplyStream",
    "CoalescingStream",
    "Connector",
    "ConnectorContext",
    "ReplyStream",
    "Retries",
    "streaming",
    "HTTPRequest",
    "Page",
    "Paused",
    "PollCore",
    "Retry",
    "long_poll",
]

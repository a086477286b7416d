"""What a connector author needs: the contract a platform connector implements.

A bot author never needs this namespace; it is to ``trio_chatbridge`` what ``trio.abc`` and
``trio.lowlevel`` are to ``trio``. Subclass :class:`Connector` for a new platform; its ``ctx``
(a :class:`ConnectorContext`) is the bridge's side of the contract. Replies are written through
a :class:`ReplyStream`: :class:`BufferedReplyStream` sends once at the end, and a
:class:`CoalescingStream` driven by :func:`streaming` suits platforms that show a reply growing
in place. Every retry loop counts its failures in a :class:`Retries` under the bridge's one
policy, :class:`trio_chatbridge.Backoff`. A platform that long-polls over HTTP writes a
sans-I/O :class:`PollCore` (requests out as :class:`HTTPRequest`, answers in, a
:class:`PollEvent` out: :class:`Page`, :class:`RetryLater` or :class:`Paused`) and runs it with
:func:`long_poll`, the driver that does the I/O, the inbox hand-off and the retries. A failed
send becomes a ``SendError`` in one place, :func:`send_errors`.

A push platform on a WebSocket is a sans-I/O protocol core (a :class:`WebSocketCore`: frames
in, events out -- :class:`Inbound`, :class:`Answer`, :class:`Send`, :class:`Notice`,
:class:`Close`, :class:`Retimed`, :class:`Counted`, :class:`Bad` -- and
:class:`Send`/:class:`Request` out) run by a :class:`WebSocketDriver`, which owns the
connection, the watchdog, the heartbeat, bounded backpressure, put-then-ACK and the mapping of
errors (see docs/connectors.md). It connects through an :data:`OpenWebSocket` (the library's own
:func:`open_websocket`, the push platforms' default, whose :class:`WebSocketClient` reads in
its caller with no reader task; ``trio_websocket.open_websocket_url``; or an emulator's), which
yields a :class:`WebSocket`.
"""

from ._connector import BufferedReplyStream as BufferedReplyStream
from ._connector import CoalescingStream as CoalescingStream
from ._connector import Connector as Connector
from ._connector import ConnectorContext as ConnectorContext
from ._connector import ReplyStream as ReplyStream
from ._connector import send_errors as send_errors
from ._connector import streaming as streaming
from ._longpoll import long_poll as long_poll
from ._poll_events import HTTPRequest as HTTPRequest
from ._poll_events import Page as Page
from ._poll_events import Paused as Paused
from ._poll_events import PollCore as PollCore
from ._poll_events import PollEvent as PollEvent
from ._poll_events import RetryLater as RetryLater
from ._supervise import Retries as Retries
from ._websocket import AckTimeout as AckTimeout
from ._websocket import Disconnected as Disconnected
from ._websocket import OpenWebSocket as OpenWebSocket
from ._websocket import WebSocket as WebSocket
from ._websocket import WebSocketDriver as WebSocketDriver
from ._ws_client import SendFailed as SendFailed
from ._ws_client import WebSocketClient as WebSocketClient
from ._ws_client import open_websocket as open_websocket
from ._ws_core import Answer as Answer
from ._ws_core import Bad as Bad
from ._ws_core import Close as Close
from ._ws_core import Counted as Counted
from ._ws_core import Data as Data
from ._ws_core import Event as Event
from ._ws_core import Inbound as Inbound
from ._ws_core import Notice as Notice
from ._ws_core import Outgoing as Outgoing
from ._ws_core import Request as Request
from ._ws_core import Retimed as Retimed
from ._ws_core import Send as Send
from ._ws_core import WebSocketCore as WebSocketCore

__all__ = [
    "AckTimeout",
    "Answer",
    "Bad",
    "BufferedReplyStream",
    "Close",
    "CoalescingStream",
    "Connector",
    "ConnectorContext",
    "Counted",
    "Data",
    "Disconnected",
    "Event",
    "HTTPRequest",
    "Inbound",
    "Notice",
    "OpenWebSocket",
    "Outgoing",
    "Page",
    "Paused",
    "PollCore",
    "PollEvent",
    "ReplyStream",
    "Request",
    "Retimed",
    "Retries",
    "RetryLater",
    "Send",
    "SendFailed",
    "WebSocket",
    "WebSocketClient",
    "WebSocketCore",
    "WebSocketDriver",
    "long_poll",
    "open_websocket",
    "send_errors",
    "streaming",
]

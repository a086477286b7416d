"""What a WebSocket protocol core speaks with the driver: frames to send, events received.

A platform's protocol core (``platforms/<name>/_protocol.py``) implements :class:`WebSocketCore`
and builds these values; the driver (``trio_chatbridge._websocket``) performs them. Nothing
here does I/O: a core that imports only this module, the codecs it needs and the message types
stays free of trio, httpx and trio_websocket, and its tests feed it bytes and compare events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Generic, Protocol, TypeAlias, TypeVar, final

import attrs

from ._messages import Message

N = TypeVar("N")
N_co = TypeVar("N_co", covariant=True)

Data: TypeAlias = str | bytes
"""One WebSocket message: text or binary."""

REJECTION_BODY_BYTES: Final = 1024
"""Bytes of a refused upgrade's body a core is given (enough for a reason, no more)."""


# -- what goes out ---------------------------------------------------------------------------


@final
@attrs.frozen
class Send:
    """A frame that expects no answer: part of the handshake or a heartbeat, or, among the
    events of a frame received, one the reader sends at once (a pong to the server's ping)."""

    data: Data = attrs.field(repr=False)


@final
@attrs.frozen
class Request:
    """A frame the platform answers with an :class:`Answer` carrying the same ``key``."""

    key: str
    """What correlates the answer (a ``req_id``)."""
    data: Data = attrs.field(repr=False)
    refused: Callable[[Answer], Exception] = attrs.field(repr=False)
    """The error a refusal (an answer with a non-zero ``code``) raises: the core's choice, a
    :class:`FatalConnectorError` for a refused handshake, a platform error for a command."""
    within: float | None = None
    """Seconds to wait for the answer (None: the driver's ``answer_within``)."""
    busy_retries: int = 0
    """How many "busy" answers (:attr:`Answer.busy`) are retried, under the driver's backoff."""
    name: str = ""
    """What it is, for errors and logs (a command's name)."""


Outgoing: TypeAlias = Send | Request
"""A frame to send: a :class:`Send` (no answer expected) or a :class:`Request` (answered)."""


# -- what comes in ---------------------------------------------------------------------------


@final
@attrs.frozen
class Inbound:
    """A message to put in the inbox, and the ACK to send once it is durable."""

    message: Message | None
    """None for a frame that brings nothing to put but wants its ACK in turn."""
    ack: Callable[[float], Data] | None = attrs.field(default=None, repr=False)
    """Builds the ACK frame, given the seconds the put took (None: the platform wants none)."""


@final
@attrs.frozen
class Answer:
    """The platform's answer to a :class:`Request`."""

    key: str
    code: int = 0
    """0 when the request was done; anything else is a refusal (``Request.refused``)."""
    text: str | None = None
    """The platform's words on it."""
    body: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    busy: bool = False
    """The platform refused for now only (WeCom's 6000): the request may go again."""


@final
@attrs.frozen
class Notice(Generic[N_co]):
    """Something for the connector's handler (an event callback), run in a task of its own."""

    item: N_co
    busy: Callable[[], Counted] | None = attrs.field(default=None, repr=False)
    """Called instead of the handler when every handler slot is busy, for an item the platform
    pushes again unless answered (a Lark card action): the core takes back what it recorded
    of the item, so that the re-push is handled, and names the counter to count it in. None:
    the item is dropped, counted in ``events_dropped``."""


@final
@attrs.frozen
class Counted:
    """What the core only counts (a duplicate, a filtered message, fragments that expired)."""

    name: str
    """The connector's counter (shown as ``"<platform>.<name>"``)."""
    n: int = 1


@final
@attrs.frozen
class Bad:
    """Bad input inside a good frame (an event that does not parse): counted in
    ``protocol_errors`` and logged once, like a frame :meth:`WebSocketCore.receive` raised on,
    while the frame's other events (its ACK) still go."""

    what: str
    """What it was, for the log (``"Lark event"``)."""
    error: Exception


@final
@attrs.frozen
class Close:
    """The platform ends this connection: ``fatal`` (never reconnect), or with a hint."""

    reason: str
    fatal: bool = False
    retry_after: float | None = None
    """Seconds the platform asks to wait before reconnecting (a hint to the backoff)."""


@final
@attrs.frozen
class Retimed:
    """The core's :attr:`~WebSocketCore.heartbeat_interval` changed: re-arm the heartbeat."""


Event: TypeAlias = Inbound | Answer | Send | Notice[N] | Close | Retimed | Counted | Bad
"""What :meth:`WebSocketCore.receive` makes of one frame, each handled by the driver at once
(docs/connectors.md lists what it does with each); ``N`` is the type of the core's notices."""


class WebSocketCore(Protocol[N_co]):
    """A platform's sans-I/O protocol: bytes in, events out; frames to send built here.

    The driver calls :meth:`open` on each new connection, :meth:`receive` with every frame,
    :meth:`heartbeat` every :attr:`heartbeat_interval`, and :meth:`rejected` when the server
    refuses the WebSocket upgrade. Nothing here may do I/O or read a clock: time comes in as
    ``now`` (seconds on the driver's clock).
    """

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats."""
        ...

    @property
    def silence(self) -> float:
        """Seconds without any frame after which the connection is dead."""
        ...

    def open(self) -> Sequence[Outgoing]:
        """A new connection: reset the per-connection state; the handshake to send first.

        The driver reports the connection up once every :class:`Request` here was answered.
        """
        ...

    def receive(self, data: Data, now: float) -> Sequence[Event[N_co]]:
        """The events one frame brings. Raise for a bad frame (:class:`ProtocolError`, or
        anything: the driver counts it in ``protocol_errors``, logs it once and goes on)."""
        ...

    def heartbeat(self) -> Outgoing | None:
        """The heartbeat frame to send now (None: none this time)."""
        ...

    def rejected(self, status: int | None, headers: Mapping[str, str], body: bytes) -> Exception:
        """The error a refused WebSocket upgrade means (``headers`` lower-cased; ``body`` its
        first 1,024 bytes, which may say why): a :class:`FatalConnectorError` when retrying
        cannot help."""
        ...

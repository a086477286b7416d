"""What an HTTP long-poll protocol core and the driver that runs it say to each other.

A platform's core (``platforms/<name>/_protocol.py``) is sans-I/O: it describes each request as
an :class:`HTTPRequest` and turns the bytes of each answer into one event: a :class:`Page` of
messages, a :class:`RetryLater` (the platform refused this poll), or a :class:`Paused` (the
platform asked for a pause). The driver (``_longpoll.py``) does the I/O and the policy: it sends
the request, reads the answer with a cap, puts the page's messages into the inbox, and only
then tells the core the page is durable (:meth:`PollCore.commit`). Nothing here imports an I/O
library, so a core's tests feed bytes and compare events, with no clock and no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol, final

import attrs

from ._errors import ChatBridgeError, ProtocolError
from ._messages import Message

MAX_PAGE_BYTES: Final = 8 * 1024 * 1024
"""The default cap on one long-poll answer, in bytes."""


@final
@attrs.frozen
class HTTPRequest:
    """One request, described: the driver sends it as it is."""

    name: str
    """What it is, for errors and logs (``"iLink getupdates"``); never a credential."""
    method: str
    """``"GET"``, ``"POST"``..."""
    url: str = attrs.field(repr=False)
    """Never shown in a repr: a URL may carry credentials."""
    headers: Mapping[str, str] = attrs.field(repr=False)
    """Credentials included: never shown in a repr."""
    body: bytes = attrs.field(repr=False)
    """Sent as it is (``b""``: no body)."""
    timeout: float
    """Seconds the whole exchange may take; past it the poll counts as empty (nothing new)."""
    max_bytes: int = MAX_PAGE_BYTES
    """The answer is refused (a :class:`ProtocolError`) past this many bytes."""


@final
@attrs.frozen
class Page:
    """A successful answer: messages to put, then a cursor and values to save with it."""

    messages: Sequence[Message] = ()
    """Put into the inbox in one ``ctx.put`` (duplicates of journaled ones are dropped there)."""
    skipped: Sequence[ProtocolError] = ()
    """Messages of the page that could not be read: each is counted, logged and skipped."""
    filtered: int = 0
    """How many messages of the page the core left out on purpose, not meant for the agent
    (the bot's own, recalled ones...): the driver adds them to the ``filtered`` counter."""
    cursor: str | None = None
    """The cursor to save once the messages are durable; None keeps the saved one."""
    values: Mapping[str, str | None] = attrs.Factory(dict)
    """Per-account values (key -> value, None deletes) to store with the cursor, in the same
    write, once the messages are durable (WeChat's context tokens, needed to answer each
    chat); read back with ``ctx.get(key)``. Without a new cursor they are stored alone."""
    values_ttl: float | None = None
    """Seconds after which the store forgets ``values`` (None: kept until changed)."""


@final
@attrs.frozen
class RetryLater:
    """The platform refused this poll: a failure, retried after the driver's backoff (see
    :meth:`PollCore.retry_hint`)."""

    error: ChatBridgeError
    """Why: counted in ``poll_failures`` (and ``protocol_errors`` for a
    :class:`ProtocolError`), logged, and shown in the connector's ``backoff`` status."""


@final
@attrs.frozen
class Paused:
    """The platform asked for a pause: no poll before ``until`` (on the clock of ``now``)."""

    until: float
    """When polling may resume, in seconds on the clock of ``now`` (Trio's)."""
    detail: str
    """Why, and what a person can do about it."""
    counter: str | None = "paused"
    """The name of the connector's counter the driver adds one to for each such pause
    (shown as ``"<platform>.<counter>"``; WeChat's expired session counts in
    ``session_expired``); None for a pause already in force and counted (the driver then
    neither counts nor logs it again)."""


PollEvent = Page | RetryLater | Paused
"""What :meth:`PollCore.receive` makes of one answer: a :class:`Page`, a :class:`RetryLater`
or a :class:`Paused` (``connectors.Event`` is the WebSocket cores' union)."""


class PollCore(Protocol):
    """A platform's long-poll protocol, without I/O: what the driver calls."""

    def start(self, cursor: str | None) -> None:
        """A run begins from ``cursor`` (the saved one, None at the very first)."""

    def paused(self, now: float) -> Paused | None:
        """The pause in force at ``now``, if any: the driver sends no poll before its end."""

    def request(self) -> HTTPRequest:
        """The next poll."""

    def receive(self, body: bytes, now: float) -> PollEvent:
        """What the answer ``body`` (HTTP 2xx) means. Raises :class:`ProtocolError` (only)
        for an answer that cannot be read at all; a bad message only lands in
        :attr:`Page.skipped`."""

    def commit(self, page: Page) -> None:
        """``page``'s messages are durable and its cursor saved: poll on from there."""

    def retry_hint(self, failures: int) -> float | None:
        """The platform's word on the wait after ``failures`` failed polls in a row (1 for the
        first): the driver's :class:`~trio_chatbridge.Backoff` waits at least this long. None:
        the platform says nothing."""

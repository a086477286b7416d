"""The connector contract: what a platform implements so the bridge can run it.

A connector owns one platform account. The bridge hands it a :class:`ConnectorContext`
(``bind``), then the supervisor calls ``run`` again and again until it stops for good:

- ``run`` connects, calls ``task_status.started()`` once it receives messages, and passes
  each inbound message to ``ctx.put`` *before* it acknowledges it to the platform (advances a
  cursor, sends an ACK). It raises :class:`FatalConnectorError` when retrying cannot help,
  and anything else when it can.
- ``send(target, text)`` answers an inbound message with one message; ``stream(target)``
  answers it progressively where the platform can (else it sends once at the end);
  ``running(batch)`` is held while the agent runs on a batch: a typing indicator, closing a
  batch's earlier callbacks, whatever the platform wants around a run.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, final

import attrs
import trio

from ._content import Attachment, Card, Content, Markdown, Sent, kind_of, unsupported
from ._errors import (
    ChatBridgeError,
    ConfigurationError,
    ConnectorError,
    PlatformError,
    ProtocolError,
    SendError,
)
from ._messages import Batch, Chat, Handle, Message
from ._names import account_name
from ._redact import guard
from .stores import Store

if TYPE_CHECKING:
    from ._supervise import Backoff

log = logging.getLogger("trio_chatbridge.connector")
NOTHING: Final = nullcontext()  # what a connector holds while its agent runs, by default
# the connector's methods that check the content, then call the platform's part: its hook
_CHECKED: Final = {"send_first": "_send_first", "edit": "_edit"}
_FIELD_KINDS: Final[tuple[tuple[str, type, str], ...]] = (
    ("chat", Chat, "a Chat (Chat(id))"),
    ("parts", tuple, "a tuple (tuple(parts))"),
    ("reply_handle", Handle, "a Handle (Handle.of(...))"),
)
"""The fields ``put`` checks the type of, each with what to give instead: the chat, which the
bridge reads (a session is a chat), and the two that could hold a container the collector
would not see in an untracked record. (The sender, which only the agent reads, is not
checked: every check is a step per message on every connector's path.)"""

ConnectorState: TypeAlias = Literal["starting", "running", "paused", "backoff", "failed", "stopped"]
"""What a connector is doing. ``starting``: connecting (first, or again after a wait);
``running``: up, receiving (WeChat: since its last successful poll); ``paused``: not polling or
not connected on purpose, for now (the platform asked for a pause, an expired WeChat session,
another process holds the account's lease); ``backoff``: it failed and waits before retrying
(``detail`` says how long); ``failed``: it failed for good (a fatal error such as bad
credentials: never retried, ``last_error`` says why); ``stopped``: the bridge stopped it."""
LeaseState: TypeAlias = Literal["held", "standby", "lost"]
"""``held``: this process runs the connector; ``standby``: another process does (or nobody
yet); ``lost``: this process held the lease and could not renew it in time."""


@final
@attrs.frozen
class ConnectorStatus:
    """What one connector is doing, as ``bridge.status()`` reports it."""

    name: str
    """``platform:account``."""
    state: ConnectorState
    detail: str | None = None
    """Why it is in that state, in words a person can act on."""
    restarts: int = 0
    """How many times the supervisor restarted it after a transient failure."""
    last_error: str | None = None
    connects: int = 0
    """How many times it came up: connected, or polled successfully (``running`` since)."""
    lease: LeaseState | None = None
    """On a shared store, whether this process holds the account's lease (None: no leases)."""


def _default_backoff() -> Backoff:
    """A ``Backoff()`` for a context built outside a bridge (``_supervise`` imports this
    module, so it is imported when needed)."""
    from ._supervise import Backoff

    return Backoff()


@final
@attrs.define(eq=False)
class ConnectorContext:
    """What the bridge gives a connector: the inbox, its slice of the store, counters, status."""

    platform: str
    account: str
    store: Store
    _put: Callable[[Sequence[Message]], Awaitable[list[Message]]]
    _count: Callable[[str, int], None]
    _set_state: Callable[[ConnectorState, str | None], None]
    backoff: Backoff = attrs.field(factory=_default_backoff, kw_only=True)
    """The bridge's retry policy (``Bridge(backoff=...)``): pace a connector's own retry
    loops with it (``backoff.retries()``); :func:`~trio_chatbridge.connectors.long_poll`'s
    default."""

    @property
    def log(self) -> logging.Logger:
        return guard(logging.getLogger(f"trio_chatbridge.{self.platform}.{self.account}"))

    async def put(self, messages: Sequence[Message]) -> list[Message]:
        """Journal the messages and queue the new ones; returns the new ones.

        When this returns they are durable: acknowledge them to the platform only now.
        If cancelled, acknowledge nothing; what was journaled is delivered all the same.
        Raises :class:`ConfigurationError`, before journaling any, for a message of another
        platform or account than this connector's (no connector could answer it), or one whose
        ``chat`` is not a :class:`~trio_chatbridge.Chat`, ``parts`` not a tuple or
        ``reply_handle`` not a :class:`~trio_chatbridge.Handle` (checked here, where every
        message enters, rather than in each construction: a chat of another type stopped the
        whole bridge).
        """
        platform, account = self.platform, self.account
        for message in messages:
            if message.account != account or message.platform != platform:
                raise ConfigurationError(
                    f"connector {self.platform}:{self.account} put a message of "
                    f"{message.platform}:{message.account} (id {message.id}); build its "
                    f"messages with platform={self.platform!r}, account={self.account!r}"
                )
            if (
                type(message.chat) is not Chat
                or type(message.parts) is not tuple
                or type(message.reply_handle) is not Handle
            ):
                raise ConfigurationError(self._malformed(message))
        return await self._put(messages)

    def _malformed(self, message: Message) -> str:
        """What is wrong with ``message``'s chat, parts or reply handle (the first of them
        that is wrong), and what to write."""
        field, given, should = next(
            (field, getattr(message, field), should)
            for field, kind, should in _FIELD_KINDS
            if type(getattr(message, field)) is not kind
        )
        return (
            f"connector {self.platform}:{self.account} put message {message.id} whose {field} "
            f"is a {type(given).__name__}: give {should}"
        )

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``"<platform>.<name>"`` (``name`` if a bridge counter)."""
        self._count(name, n)

    def set_state(self, state: ConnectorState, detail: str | None = None) -> None:
        """Report a state the supervisor cannot see (``"paused"`` and back to ``"running"``)."""
        self._set_state(state, detail)

    async def get(self, key: str) -> str | None:
        """A value this account stored under ``key``. If cancelled, nothing changed."""
        return await self.store.get(self.platform, self.account, key)

    async def set(self, key: str, value: str | None, *, ttl: float | None = None) -> None:
        """Store a value for this account (None deletes), forgotten after ``ttl`` seconds if
        given (:meth:`Store.set`). If cancelled, the value may or may not have been stored."""
        await self.store.set(self.platform, self.account, key, value, ttl=ttl)

    async def set_many(self, values: Mapping[str, str | None], *, ttl: float | None = None) -> None:
        """Store several values for this account in one write, each forgotten after ``ttl``
        seconds if given. If cancelled, all of them or none may have been stored (one
        write)."""
        await self.store.set_many(self.platform, self.account, values, ttl=ttl)

    async def get_cursor(self) -> str | None:
        """This account's saved cursor. If cancelled, nothing changed."""
        return await self.store.get_cursor(self.platform, self.account)

    async def set_cursor(
        self,
        cursor: str,
        *,
        with_values: Mapping[str, str | None] | None = None,
        values_ttl: float | None = None,
    ) -> None:
        """Save this account's cursor (and ``with_values`` in the same write, forgotten after
        ``values_ttl`` seconds if given), after the messages before it were put. If
        cancelled, the cursor and values may or may not have been saved (together, in one
        write)."""
        await self.store.set_cursor(
            self.platform, self.account, cursor, with_values=with_values, values_ttl=values_ttl
        )


@contextmanager
def send_errors(what: str) -> Iterator[None]:
    """The one place where a failed send becomes a :class:`SendError`, whatever failed.

    A platform's refusal (:class:`PlatformError`), a lost or failing connection
    (:class:`ConnectorError`) and a bad answer (:class:`ProtocolError`) inside the block are
    raised as a :class:`SendError` saying ``what`` failed, the original as its cause; a
    ``SendError`` already (``wecom.WeComError`` is one) goes on unchanged, so that a caller can
    still read its code.
    """
    try:
        yield
    except SendError:
        raise
    except (PlatformError, ConnectorError, ProtocolError) as exc:
        raise SendError(f"{what} failed: {exc}") from exc


def text_of(content: Content) -> str:
    """The text of ``content`` that goes on the wire as text: a ``str`` or
    :class:`Markdown`'s text, an attachment's file name, a card's or post's JSON."""
    if isinstance(content, str):
        return content
    if isinstance(content, Markdown):
        return content.text
    if isinstance(content, Attachment):
        return content.filename
    return json.dumps(content.as_dict(), ensure_ascii=False)


def refuse_no_text(text: str, kind: str, what: Callable[[], str]) -> None:
    """:class:`SendError` if ``text`` (``kind``: what of ``what()`` it is) holds half a
    surrogate pair (``"\\ud800"``, which an agent gets from ``surrogateescape`` decoding or
    a JSON escape): no text, so the platform's request would fail to encode it (or carry an
    escape no client can show), with an error naming neither the message nor what to do.
    Nearly free for the common text (``str.isascii``; ``what`` is called only to say what
    was refused)."""
    if text.isascii():
        return
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        code = ord(exc.object[exc.start])
        raise SendError(
            f"{what()} not sent: its {kind} holds a lone surrogate (\\u{code:x} at "
            f"{exc.start}), which is no text; replace it "
            "(text.encode('utf-8', 'replace').decode()) or drop it"
        ) from exc


class ReplyStream(ABC):
    """A reply being written: each ``write`` appends text."""

    @abstractmethod
    async def write(self, text: str) -> None:
        """Append ``text`` to the reply. If cancelled, ``text`` may or may not have been
        appended (what the platform shows follows at the stream's end)."""

    @property
    @abstractmethod
    def text(self) -> str:
        """Everything written so far."""


class BufferedReplyStream(ReplyStream):
    """Collects the text; the connector sends it once the stream closes without error."""

    def __init__(self) -> None:
        self._pieces: list[str] = []

    async def write(self, text: str) -> None:
        """Append ``text`` to what is sent at the end. It neither blocks nor checkpoints, so
        cancellation cannot interrupt it: ``text`` is always appended."""
        self._pieces.append(text)

    @property
    def text(self) -> str:
        return "".join(self._pieces)


class CoalescingStream(ReplyStream):
    """A stream shown as a whole that grows: one update in flight, at most one per interval.

    Writes only mark the text dirty; :meth:`pump` shows the whole text so far, waits for that
    update to finish, then for ``interval``, and shows whatever accumulated meanwhile in one
    go. :meth:`close` waits for an update in flight, then shows the final text. Subclasses say
    how: :meth:`update` (an intermediate update; failures are logged, the final one follows)
    and :meth:`final`. Use it through :func:`streaming`.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._pieces: list[str] = []
        self._dirty = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    async def write(self, text: str) -> None:
        """Append ``text``; the pump shows it with the next update. If cancelled (at its
        checkpoint, after appending), ``text`` was appended."""
        self._pieces.append(text)
        self._dirty.set()
        await trio.lowlevel.checkpoint()

    @abstractmethod
    async def update(self, text: str) -> None:
        """Show ``text`` (the whole text so far) as an intermediate state. If cancelled, it
        may or may not show; the final update follows in any case."""

    @abstractmethod
    async def final(self, text: str) -> None:
        """Show ``text`` as the complete reply (always called, even for an empty text). It
        runs shielded under :func:`streaming`, so is cancelled only by its time limit: then
        the reply may end short of it."""

    async def pump(self) -> None:
        """Show the text as it grows, until cancelled (run by :func:`streaming`); when
        cancelled, an update in flight may or may not have shown."""
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            self._idle = trio.Event()
            try:
                await self.update(self.text)
            except ChatBridgeError as exc:
                log.info("stream update not delivered (the final one follows): %s", exc)
            finally:
                self._idle.set()
            await trio.sleep(self.interval)

    async def close(self) -> None:
        """Wait for an update in flight, then show the final text. If cancelled, the final
        text may or may not have shown (:func:`streaming` shields it, with a time limit)."""
        await self._idle.wait()
        await self.final(self.text)


@asynccontextmanager
async def streaming(stream: CoalescingStream, *, final_within: float) -> AsyncIterator[ReplyStream]:
    """Run ``stream``'s pump while the body writes; the final update is always attempted.

    It is attempted even when the body raises or is cancelled (shielded, for at most
    ``final_within`` seconds): a platform may keep an unfinished stream open against the user.
    Then its failure is only logged: it must not hide what the body raised, least of all a
    :class:`trio.Cancelled`.
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.pump)
        try:
            yield stream
        except BaseException:
            try:
                await _final(stream, final_within)
            except Exception as exc:
                log.warning("could not finish a reply stream that ended early: %s", exc)
            raise
        else:
            await _final(stream, final_within)
        finally:
            nursery.cancel_scope.cancel()


async def _final(stream: CoalescingStream, within: float) -> None:
    """``stream.close()``, shielded, for at most ``within`` seconds; :class:`SendError` when
    that was not enough (the end of the reply may not have reached the user: never "done")."""
    with trio.CancelScope(shield=True), trio.move_on_after(within) as timer:
        await stream.close()
    if timer.cancelled_caught:
        raise SendError(f"the end of a reply stream was not delivered within {within:.0f} s")


class Connector(ABC):
    """Base class of every connector. Subclasses set ``platform`` and ``account``."""

    platform: str
    account: str
    _ctx: ConnectorContext | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that overrides :meth:`send_first` or :meth:`edit`: they check
        the content, then call the platform's part (:meth:`_send_first`, :meth:`_edit`); an
        override would skip the check, silently. Raises :class:`TypeError` naming the hook."""
        super().__init_subclass__(**kwargs)
        for public, hook in _CHECKED.items():
            if public in vars(cls):
                raise TypeError(
                    f"{cls.__qualname__} overrides Connector.{public}, which checks the "
                    f"content first: override {hook} instead (same arguments, same return; "
                    f"{public} calls it with the content checked)"
                )

    @property
    def name(self) -> str:
        """``platform:account``, the connector's name in status, stats and logs, and its
        lease's (``%`` and ``:`` in either part percent-encoded, see :func:`account_name`)."""
        platform = getattr(self, "platform", None)
        account = getattr(self, "account", None)
        if not isinstance(platform, str) or not isinstance(account, str):
            raise ConfigurationError(
                f"{type(self).__name__} must set self.platform and self.account (strings: "
                "the platform's name and the bot account) before it is given to a Bridge"
            )
        return account_name(platform, account)

    def bind(self, ctx: ConnectorContext) -> None:
        """Called once by the bridge before the first ``run``."""
        self._ctx = ctx

    @contextmanager
    def counting(
        self, name: str, errors: type[BaseException] | tuple[type[BaseException], ...]
    ) -> Iterator[None]:
        """Count ``name`` (as ``ctx.count``) when the block raises one of ``errors``, which goes
        on as it was: a failed reply, a failed download. A cancellation counts nothing, and
        neither does a connector outside a bridge (a download by hand)."""
        try:
            yield
        except errors:
            if self._ctx is not None:
                self._ctx.count(name)
            raise

    @property
    def ctx(self) -> ConnectorContext:
        if self._ctx is None:
            raise ChatBridgeError(
                f"connector {self.name} is not part of a running Bridge; pass it to "
                "Bridge(connectors=[...]) and start the bridge first"
            )
        return self._ctx

    @abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive messages until cancelled (see the module docstring for the contract). When
        cancelled, messages whose ``ctx.put`` returned are durable; the platform offers the
        others again (they were not acknowledged)."""

    @abstractmethod
    async def send(self, target: Message, text: str) -> None:
        """Answer ``target`` with one message. Raises :class:`SendError` when it was refused.
        If cancelled, it may or may not have been sent (a platform that sends a long text in
        pieces says in its own docstring whether it can stop part-way)."""

    def stream(self, target: Message) -> AbstractAsyncContextManager[ReplyStream]:
        """Answer ``target`` progressively. By default: collect, then ``send`` once at the end.

        If the body raises (or is cancelled), nothing is sent.
        """
        return self._buffered_stream(target)

    @asynccontextmanager
    async def _buffered_stream(self, target: Message) -> AsyncIterator[ReplyStream]:
        out = BufferedReplyStream()
        yield out
        if out.text:
            await self.send(target, out.text)

    def running(self, batch: Batch) -> AbstractAsyncContextManager[None]:
        """Held while the agent runs on ``batch`` (typing indicators...). By default: nothing.

        A run that raised, or that ``run_timeout`` ended, leaves it with an exception (close
        what a failed run leaves open); an interrupted run, or one the bridge's stop ended,
        leaves it with :class:`trio.Cancelled` (leave that: another run answers its messages).
        Entering and leaving it count in ``run_timeout``, with 10 s more to leave."""
        return NOTHING

    async def send_media(
        self, target: Message, data: bytes, *, filename: str, kind: str | None = None
    ) -> None:
        """Send a file or image in answer to ``target``; by default the platform cannot. If
        cancelled, it may or may not have been sent."""
        raise SendError(f"connector {self.name} cannot send media")

    async def send_content(self, target: Message, content: Content) -> Sent:
        """Answer ``target`` with ``content`` (text, Markdown, an attachment, a card, a post).

        By default text goes through :meth:`send` and an attachment through
        :meth:`send_media`; anything else raises :class:`SendError`. Platforms override it.
        If cancelled, it may or may not have been sent.
        """
        if isinstance(content, str):
            await self.send(target, content)
        elif isinstance(content, Attachment):
            await self.send_media(
                target, content.data, filename=content.filename, kind=content.media_kind
            )
        else:
            raise unsupported(self.platform, self.account, content, "send text instead")
        return Sent(self.platform, target.chat.id, kind_of(content))

    async def send_first(self, chat_id: str, content: Content) -> Sent:
        """Send ``content`` to a chat unprompted (no message to answer). If cancelled, it may
        or may not have been sent.

        Text holding half a surrogate pair (``"\\ud800"``) raises :class:`SendError` before
        anything is sent, on every platform (as ``reply.send`` does); then it calls
        :meth:`_send_first`, the platform's part. Not overridable (see :meth:`_send_first`)."""
        refuse_no_text(
            text_of(content), kind_of(content), lambda: f"message to {chat_id} via {self.name}"
        )
        return await self._send_first(chat_id, content)

    async def _send_first(self, chat_id: str, content: Content) -> Sent:
        """The platform's part of :meth:`send_first`: override it where the platform can send
        to ``chat_id`` unprompted. ``content``'s text is checked already (UTF-8 can encode it).
        Return the :class:`Sent` that :meth:`edit` takes; raise :class:`SendError` when the
        platform refused (:func:`send_errors` maps the library's errors to it). If cancelled,
        it may or may not have been sent. By default the platform cannot: :class:`SendError`.
        """
        raise SendError(f"connector {self.name} cannot send a message unprompted")

    async def edit(self, sent: Sent, content: Content) -> None:
        """Replace what an earlier message shows. If cancelled, the message shows the old
        content or the new one.

        Text holding half a surrogate pair raises :class:`SendError` before anything is sent,
        as in :meth:`send_first`; then it calls :meth:`_edit`, the platform's part. Not
        overridable (see :meth:`_edit`)."""
        refuse_no_text(text_of(content), kind_of(content), lambda: f"edit via {self.name}")
        await self._edit(sent, content)

    async def _edit(self, sent: Sent, content: Content) -> None:
        """The platform's part of :meth:`edit`: override it where the platform edits a sent
        message in place. ``content``'s text is checked already. Raise :class:`SendError`
        when the platform refused or cannot edit ``sent`` (an attachment, say). If cancelled,
        the message must show the old content or the new one, never a mix. By default the
        platform cannot: :class:`SendError`."""
        raise SendError(f"connector {self.name} cannot edit a sent message")

    def stream_with_card(
        self, target: Message, card: Card
    ) -> AbstractAsyncContextManager[ReplyStream]:
        """Stream an answer that shows ``card`` with it; by default the platform cannot."""
        raise SendError(
            f"connector {self.name} cannot stream with a card: send the card, then stream"
        )

    def restart_delay(self, failures: int) -> float | None:
        """The platform's hint for restart number ``failures`` (1 for the first): seconds the
        bridge's :class:`Backoff` waits at least (None, the default: no hint). Raise
        :class:`FatalConnectorError` when the platform's schedule says to give up."""
        return None

    def stopped(self) -> None:  # noqa: B027 - optional hook
        """Called by the supervisor when the connector stops, whether a ``run`` was in
        progress or it was waiting to run again (cancelled, a lost lease, or a failure for
        good): give up what a run left for the next one (WeCom: replies carried over to the
        next connection). It may run again later (a lease taken again). It must not raise,
        nor block."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the connector holds across runs (HTTP clients); called by the bridge.
        If cancelled, what was not released yet is left to the garbage collector."""

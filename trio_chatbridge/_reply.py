"""The ``reply`` handed to the agent: answers the batch's latest message on its platform."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import final

from ._connector import Connector, ReplyStream, refuse_no_text, text_of
from ._construction import NoPublicConstructor
from ._content import Attachment, Card, Content, Sent, kind_of, media_kind
from ._messages import Batch, Message


@final
class Reply(metaclass=NoPublicConstructor):
    """Sends the agent's answer to the chat a batch came from.

    ``await reply.send(content)`` sends one message: a ``str``, or :class:`Markdown`,
    :class:`Attachment`, :class:`Card`, :class:`Post` where the platform has them (else
    :class:`SendError` says what to send instead). ``async with reply.stream() as out``
    streams where the platform can and sends one message at the end where it cannot.
    ``connector`` gives platform-specific calls. The bridge builds it for each run; it
    cannot be built by hand.
    """

    # one per run: no instance dict; a weak reference may be taken (a test's watch does)
    __slots__ = ("__weakref__", "_on_sent", "batch", "connector")
    batch: Batch
    """The messages this run answers."""
    connector: Connector
    """The connector of their account: what the replies go through."""
    _on_sent: Callable[[], None]

    def __init__(self, batch: Batch, connector: Connector, on_sent: Callable[[], None]) -> None:
        self.batch = batch
        self.connector = connector
        self._on_sent = on_sent

    def __repr__(self) -> str:
        return f"<Reply to {self.batch.session} via {self.connector.name}>"

    @property
    def target(self) -> Message:
        """The message a reply answers: the newest of the batch."""
        return self.batch.latest

    async def send(self, content: Content) -> Sent:
        """Send ``content`` as one reply (text split by the connector where the platform
        limits length). Returns what the platform said about it (its id, where it has one).

        If cancelled, it may or may not have been sent (a request in flight cannot be taken
        back); an attachment cancelled during its upload is not sent.

        On WeCom, a run's final reply (its whole text in one frame, to a message this process
        received, sent before the run ends) returns once its frame is written: the platform's
        acknowledgement confirms it after the run, and the batch is journaled done only then.
        A refusal (or no acknowledgement in time) is counted in ``replies_refused``, logged,
        and sent again proactively; if that fails too, it is counted in ``replies_failed``,
        logged, and the batch is journaled as failed (docs/wecom.md).

        Text holding half a surrogate pair (``"\\ud800"``: no text, no platform can be sent
        it) raises :class:`SendError` before anything is sent."""
        self._check_text(content)
        sent = await self.connector.send_content(self.target, content)
        self._on_sent()
        return sent

    async def send_media(self, data: bytes, *, filename: str, kind: str | None = None) -> Sent:
        """Send a file (``kind`` "image", "file", "video", "voice"; by default from the name).

        Cancelled during the upload, nothing is sent; after it, as :meth:`send`."""
        return await self.send(Attachment(data, filename, media_kind(kind)))

    async def edit(self, sent: Sent, content: Content) -> None:
        """Change what an earlier reply shows, where the platform edits in place (Lark:
        text and posts, and cards updated by ``PATCH``). If cancelled, the message shows the
        old content or the new one, never a mix. Text holding half a surrogate pair raises
        :class:`SendError`, as in :meth:`send`."""
        self._check_text(content)
        await self.connector.edit(sent, content)

    @asynccontextmanager
    async def stream(self, *, card: Card | None = None) -> AsyncIterator[ReplyStream]:
        """Write the reply piece by piece; it is complete when the block exits.

        ``card`` shows a platform card with the streamed text (WeCom's stream with template
        card); where a platform cannot, :class:`SendError` is raised before anything is sent.

        If the block is cancelled (or raises), the stream ends as failed: a platform that
        streams is told it ended (what it already shows stays), one that sends at the end
        sends nothing, and the reply does not count as sent. A write holding half a surrogate
        pair raises :class:`SendError` and appends nothing; the stream goes on.
        """
        if card is None:
            async with self.connector.stream(self.target) as out:
                yield _TextOnly(out, self)
        else:
            self._check_text(card)
            async with self.connector.stream_with_card(self.target, card) as out:
                yield _TextOnly(out, self)
        self._on_sent()

    def _check_text(self, content: Content) -> None:
        """Refuse ``content`` whose text UTF-8 cannot encode (see :func:`refuse_no_text`)."""
        refuse_no_text(text_of(content), kind_of(content), self._what)

    def _what(self) -> str:
        """What a refusal names (built only then: ``Connector.name`` is computed)."""
        return f"reply to {self.batch.session} via {self.connector.name}"


@final
class _TextOnly(ReplyStream):
    """The connector's stream, each write refused (before it reaches the platform) when it
    holds half a surrogate pair; a refused write appends nothing."""

    def __init__(self, out: ReplyStream, reply: Reply) -> None:
        self._out = out
        self._reply = reply

    async def write(self, text: str) -> None:
        refuse_no_text(text, "streamed text", self._reply._what)
        await self._out.write(text)

    @property
    def text(self) -> str:
        return self._out.text

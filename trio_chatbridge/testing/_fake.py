"""A connector a test drives by hand: users say things, the bot's replies are recorded.

It behaves like a platform with at-least-once delivery: a message stays queued until the
inbox accepted it, so a restart in between delivers it again (and the journal drops the copy).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

import attrs
import trio

from .._connector import Connector, ReplyStream
from .._errors import SendError
from .._messages import Chat, Handle, Message, Part, Sender, Text
from ._record import Record


@final
@attrs.frozen
class SentReply:
    """One reply the bot sent through a :class:`FakeConnector`."""

    chat: str
    """The chat it went to."""
    text: str
    """The whole text."""
    reply_to: str
    """The id of the message it answers."""
    chunks: tuple[str, ...] = ()
    """For a streamed reply, each ``write`` in order; empty for ``send``."""

    @property
    def streamed(self) -> bool:
        return bool(self.chunks)


class _RecordingStream(ReplyStream):
    def __init__(self, connector: FakeConnector, target: Message) -> None:
        self.chunks: list[str] = []
        self._connector = connector
        self._target = target

    async def write(self, text: str) -> None:
        self.chunks.append(text)
        self._connector._written(self._target, text)
        await trio.lowlevel.checkpoint()

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class FakeConnector(Connector):
    """A connector for tests and demos: ``say(...)`` speaks as a user, ``sent`` keeps replies.

    Faults: :meth:`crash` makes the running ``run`` raise (the supervisor restarts it),
    :meth:`fail_sends` makes the next sends raise :class:`SendError`.
    """

    def __init__(
        self,
        account: str = "bot",
        *,
        platform: str = "fake",
        on_write: Callable[[Message, str], None] | None = None,
    ) -> None:
        self.platform = platform
        self.account = account
        self.on_write = on_write
        """Called with (target, text) at each streamed write and each send, as it happens."""
        self.sent: Record[SentReply] = Record()
        self.runs: int = 0
        """How many times ``run`` was started (restarts included)."""
        self._queue: deque[Message] = deque()
        self._wakeup = trio.Event()
        self._crash: BaseException | None = None
        self._send_failures = 0
        self._accepted = trio.Event()  # set (and replaced) each time the inbox took a message
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"FakeConnector({self.account!r}, platform={self.platform!r})"

    # -- the user's side ---------------------------------------------------------------------

    def message(
        self,
        text: str = "",
        *,
        chat: str = "chat",
        user: str = "user",
        id: str | None = None,
        group: bool = False,
        parts: Sequence[Part] | None = None,
    ) -> Message:
        """Build the message a user would send (without sending it)."""
        return Message(
            platform=self.platform,
            account=self.account,
            id=id if id is not None else f"m{next(self._ids)}",
            chat=Chat(chat, "group" if group else "direct"),
            sender=Sender(user),
            parts=tuple(parts) if parts is not None else (Text(text),),
            timestamp=time.time(),
            reply_handle=Handle.of(chat=chat),
        )

    def deliver(self, *messages: Message) -> None:
        """Queue messages as the platform would push them (a message may be delivered twice)."""
        self._queue.extend(messages)
        self._wakeup.set()

    async def say(
        self, text: str, *, chat: str = "chat", user: str = "user", id: str | None = None
    ) -> Message:
        """A user says ``text`` in ``chat``; returns once the bridge's inbox took the message.

        Cancelled while waiting, the message stays queued: the bridge still takes it."""
        message = self.message(text, chat=chat, user=user, id=id)
        self.deliver(message)
        while message in self._queue:
            await self._accepted.wait()
        return message

    async def next_reply(self) -> SentReply:
        """The next reply the bot sent that this method has not returned yet (waits for it).

        Cancelled, no reply is consumed: the next call returns it."""
        return await self.sent.next()

    def crash(self, error: BaseException | None = None) -> None:
        """Make the running ``run`` raise ``error`` (default: a ConnectionError)."""
        self._crash = error or ConnectionError("injected crash")
        self._wakeup.set()

    def fail_sends(self, count: int = 1) -> None:
        """Make the next ``count`` sends raise :class:`SendError`."""
        self._send_failures = count

    # -- the connector contract ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        task_status.started()
        while True:
            if self._crash is not None:
                error, self._crash = self._crash, None
                raise error
            if self._queue:
                await self.ctx.put([self._queue[0]])
                self._queue.popleft()  # acknowledged only after the inbox accepted it
                self._accepted.set()
                self._accepted = trio.Event()
                continue
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def send(self, target: Message, text: str) -> None:
        """Record a reply in :attr:`sent` (or fail, after :meth:`fail_sends`).

        Cancelled (at its one checkpoint, before recording), nothing is sent."""
        self._check_send(target)
        await trio.lowlevel.checkpoint()
        self._written(target, text)
        self.sent.append(SentReply(target.chat.id, text, target.id))

    def stream(self, target: Message) -> AbstractAsyncContextManager[ReplyStream]:
        return self._stream(target)

    @asynccontextmanager
    async def _stream(self, target: Message) -> AsyncIterator[ReplyStream]:
        self._check_send(target)
        out = _RecordingStream(self, target)
        yield out
        self.sent.append(SentReply(target.chat.id, out.text, target.id, tuple(out.chunks)))

    def _check_send(self, target: Message) -> None:
        if self._send_failures > 0:
            self._send_failures -= 1
            raise SendError(f"{self.name}: injected send failure to chat {target.chat.id}")

    def _written(self, target: Message, text: str) -> None:
        if self.on_write is not None:
            self.on_write(target, text)

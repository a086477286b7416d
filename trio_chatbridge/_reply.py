"""The ``reply`` handed to the agent: answers the batch's latest message on its platform."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import final

from ._connector import Connector, ReplyStream
from ._construction import NoPublicConstructor
from ._messages import Batch, Message


@final
class Reply(metaclass=NoPublicConstructor):
    """Sends the agent's answer to the chat a batch came from.

    ``await reply.send(text)`` sends one message; ``async with reply.stream() as out`` streams
    where the platform can and sends one message at the end where it cannot. ``connector``
    gives platform-specific calls (media upload, proactive sends). The bridge builds it for each
    run; it cannot be built by hand.
    """

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

    async def send(self, text: str) -> None:
        """Send ``text`` as one reply (split by the connector where the platform limits length)."""
        await self.connector.send(self.target, text)
        self._on_sent()

    async def send_media(self, data: bytes, *, filename: str, kind: str | None = None) -> None:
        """Send a file (``kind`` "image", "file", "video", "voice"; by default from the name)."""
        await self.connector.send_media(self.target, data, filename=filename, kind=kind)
        self._on_sent()

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[ReplyStream]:
        """Write the reply piece by piece; it is complete when the block exits."""
        async with self.connector.stream(self.target) as out:
            yield out
        self._on_sent()

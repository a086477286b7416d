"""A list a test can also wait on: what a fake platform saw, oldest first."""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


class Record(list[T]):
    """A plain list (compare it, index it, count it) whose :meth:`next` waits for new items."""

    def __init__(self) -> None:
        super().__init__()
        self._added = trio.Event()
        self._read = 0

    def append(self, item: T) -> None:
        super().append(item)
        self._added.set()
        self._added = trio.Event()

    async def next(self) -> T:
        """The oldest item this method has not returned yet; waits until there is one."""
        while self._read >= len(self):
            await self._added.wait()
        self._read += 1
        return self[self._read - 1]

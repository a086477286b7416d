"""A list a test can also wait on: what a fake platform saw, oldest first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, final

import attrs
import trio

T = TypeVar("T")


@final
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
        """The oldest item this method has not returned yet; waits until there is one.

        Cancelled, nothing is consumed: the next call returns the same item."""
        while self._read >= len(self):
            await self._added.wait()
        self._read += 1
        return self[self._read - 1]


@final
@attrs.frozen
class MediaRecord:
    """Media the bot uploaded, as an emulator stored it."""

    media_id: str
    """The platform's reference (WeCom ``media_id``, Lark ``image_key``/``file_key``, the
    WeChat CDN's download parameter)."""
    kind: str
    """``"image"``, ``"file"``, ``"video"`` or ``"voice"``."""
    size: int
    """Bytes, in the clear."""
    sha256: str
    """Hex digest of the bytes in the clear."""
    filename: str | None = None


@final
@attrs.frozen
class Activity:
    """One thing a bot did on an emulated platform: a message, an edit, typing, a notice.

    Every emulator keeps these in ``activity`` (a :class:`Record`) and ``GET {admin_url}/sent``
    lists the same entries as JSON (:meth:`as_json`), on all three platforms alike.
    """

    platform: str
    kind: str
    """What it was: ``"text"``, ``"markdown"``, ``"stream"``, ``"card"``, ``"post"``, a media
    kind, ``"card_update"``, ``"card_answer"``, ``"typing"``, ``"notify"``, ``"upload"``, or
    ``"refused"`` (a command the platform answered with an error; ``detail`` has the code)."""
    via: str
    """The call that did it (``"reply"``, ``"send"``, ``"proactive"``, ``"welcome"``,
    ``"edit"``, ``"patch"``, ``"sendmessage"``, ...)."""
    to: str | None = None
    """The user or chat it reached."""
    text: str | None = None
    card: Mapping[str, Any] | None = None
    """The card's JSON, as the bot sent it."""
    media: MediaRecord | None = None
    id: str | None = None
    """The message id (Lark, WeChat) or req_id (WeCom) it went out as or answered."""
    detail: Mapping[str, Any] = attrs.field(factory=dict)
    """Whatever else the platform call carried (a typing status, a context token...)."""

    def as_json(self) -> dict[str, Any]:
        """This entry as a JSON object (what the admin API answers)."""
        return attrs.asdict(self)

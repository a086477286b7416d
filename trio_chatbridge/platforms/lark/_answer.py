"""What a bot answers a Lark card action with, carried in the event's ACK
(docs/protocols/lark.md#card-actions)."""

from __future__ import annotations

import base64
from typing import Literal, final

import attrs

from ..._content import Card
from ._send_policy import compact_json

ToastType = Literal["info", "success", "error", "warning"]


@final
@attrs.frozen
class CardAnswer:
    """A card action's answer: a toast shown to the user who acted, and/or a card that
    replaces the one acted on (for that user, or everyone's if sent with ``update_multi``).

    Returned by ``LongConnection(on_card_action=...)``; an answer with neither shows nothing.
    """

    toast: str | None = None
    toast_type: ToastType = "info"
    card: Card | None = None

    def ack(self) -> bytes:
        """The ACK payload: ``{"code": 200, "data": base64 of the answer's JSON}``."""
        answer: dict[str, object] = {}
        if self.toast is not None:
            answer["toast"] = {"type": self.toast_type, "content": self.toast}
        if self.card is not None:
            answer["card"] = {"type": "raw", "data": self.card.as_dict()}
        data = base64.b64encode(compact_json(answer).encode()).decode()
        return compact_json({"code": 200, "data": data}).encode()

"""What a bot answers a Lark card action with, carried in the event's ACK
(docs/protocols/lark.md#card-actions)."""

from __future__ import annotations

import base64
from typing import Final, Literal, final

import attrs

from ..._content import Card
from ..._errors import SendError
from ._send_policy import compact_json

ToastType = Literal["info", "success", "error", "warning"]
# bytes of a card's JSON: Lark's limit for a card message, which we hold an answered card to
# (docs/protocols/lark.md#card-actions)
MAX_CARD_BYTES: Final = 30 * 1024


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

    def card_json(self) -> bytes:
        """The card's JSON as the answer carries it (compact, UTF-8); empty without a card."""
        return b"" if self.card is None else compact_json(self.card.as_dict()).encode()

    def ack(self) -> bytes:
        """The ACK payload: ``{"code": 200, "data": base64 of the answer's JSON}``.

        A card whose JSON is over 30 KB (30,720 bytes) is a :class:`SendError` naming the
        limit: the platform takes no card that big."""
        answer: dict[str, object] = {}
        if self.toast is not None:
            answer["toast"] = {"type": self.toast_type, "content": self.toast}
        if self.card is not None:
            size = len(self.card_json())
            if size > MAX_CARD_BYTES:
                raise SendError(
                    f"Lark card answer: the card is {size} bytes of JSON, over the "
                    f"{MAX_CARD_BYTES} Lark takes (30 KB, a card's limit): answer with a smaller "
                    "card, or a toast and send the card as a message"
                )
            answer["card"] = {"type": "raw", "data": self.card.as_dict()}
        data = base64.b64encode(compact_json(answer).encode()).decode()
        return compact_json({"code": 200, "data": data}).encode()

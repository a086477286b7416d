"""A Lark bot answers a card action in the event's ACK: a toast and/or a replacement card."""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from support import echo, emulator_bridge

import trio_chatbridge as cb
from trio_chatbridge._receive import MAX_HANDLERS
from trio_chatbridge.platforms import lark
from trio_chatbridge.platforms.lark._answer import MAX_CARD_BYTES
from trio_chatbridge.testing import LarkEmulator

CARD = {"config": {"update_multi": True}, "elements": [{"tag": "markdown", "content": "done"}]}


def card_action(event_id: str) -> dict[str, Any]:
    return {
        "schema": "2.0",
        "header": {"event_id": event_id, "event_type": "card.action.trigger"},
        "event": {"operator": {"open_id": "ou_ann"}, "action": {"value": {"ok": 1}}},
    }


@asynccontextmanager
async def answering(
    on_card_action: lark._connector.CardHandler, **options: Any
) -> AsyncIterator[tuple[LarkEmulator, cb.Bridge]]:
    emu = LarkEmulator()
    connector = {"random": lambda: 0.0, "on_card_action": on_card_action, **options}
    async with emulator_bridge(emu, lambda: emu.connector(**connector), echo) as bridge:
        yield emu, bridge


def answers(emu: LarkEmulator) -> list[Any]:
    return [a.detail for a in emu.activity if a.kind == "card_answer"]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            lark.CardAnswer("saved", "success", cb.Card(CARD)),
            {
                "toast": {"type": "success", "content": "saved"},
                "card": {"type": "raw", "data": CARD},
            },
        ),
        (lark.CardAnswer("noted"), {"toast": {"type": "info", "content": "noted"}}),
        (lark.CardAnswer(card=cb.Card(CARD)), {"card": {"type": "raw", "data": CARD}}),
    ],
)
async def test_the_answer_rides_on_the_ack(
    autojump_clock: trio.testing.MockClock, answer: lark.CardAnswer, expected: Any
) -> None:
    seen: list[Mapping[str, Any]] = []
    other: list[Any] = []

    async def on_card_action(envelope: Mapping[str, Any]) -> lark.CardAnswer:
        seen.append(envelope)
        await trio.sleep(1.5)  # within the bound
        return answer

    async def on_event(envelope: Any) -> None:
        other.append(envelope)

    async with answering(on_card_action, on_event=on_event) as (emu, _):
        frame_id = emu.push_event(card_action("ev-1"))
        await trio.sleep(5)  # past the platform's 3 s: a late ACK would have brought a re-push
        assert [(a.id, a.detail) for a in emu.activity if a.kind == "card_answer"] == [
            (frame_id, expected)
        ]
    assert [e["header"]["event_id"] for e in seen] == ["ev-1"]
    assert other == []  # card actions go to on_card_action, not on_event
    assert emu.acks == [200]


def test_the_ack_payload_is_the_platforms_shape() -> None:
    payload = json.loads(lark.CardAnswer("hi", "warning").ack())
    assert payload["code"] == 200
    assert json.loads(base64.b64decode(payload["data"])) == {
        "toast": {"type": "warning", "content": "hi"}
    }
    assert json.loads(base64.b64decode(json.loads(lark.CardAnswer().ack())["data"])) == {}


async def test_a_slow_answer_is_dropped_and_blocks_no_other_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled: list[bool] = []

    async def on_card_action(envelope: Mapping[str, Any]) -> lark.CardAnswer:
        try:
            await trio.sleep(60)
        except trio.Cancelled:
            cancelled.append(True)
            raise
        return lark.CardAnswer("too late")

    async with answering(on_card_action, card_answer_within=2.5) as (emu, bridge):
        start = trio.current_time()
        emu.push_event(card_action("ev-slow"))
        emu.user_says("ou_ann", "hello")
        assert (await emu.next_sent()).text == "hello"
        assert emu.acks == [200]  # the message's, while the card action's answer is awaited
        await trio.sleep_until(start + 2.4)
        assert emu.acks == [200]  # 2.4 s in: still waiting for the answer
        await trio.sleep_until(start + 2.6)
        assert emu.acks == [200, 200]  # 2.6 s in: the bound is over, ACKed plain
        await trio.sleep(5)
        assert bridge.stats().other["lark.card_answers_late"] == 1
    assert emu.acks == [200, 200]  # plain, in time: no re-push
    assert answers(emu) == [] and cancelled == [True]


async def test_a_failed_answer_leaves_the_ack_plain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def on_card_action(envelope: Mapping[str, Any]) -> lark.CardAnswer | None:
        if envelope["header"]["event_id"] == "ev-none":
            return None
        raise ValueError("bug in the bot")

    async with answering(on_card_action) as (emu, bridge):
        emu.push_event(card_action("ev-bad"))
        emu.push_event(card_action("ev-none"))
        emu.push_event(card_action("ev-bad"))  # a re-push: answered once, ACKed plain
        await trio.sleep(5)
        assert bridge.stats().other["lark.card_answer_failures"] == 1
        assert bridge.stats().other["lark.duplicate_events"] == 1
    assert emu.acks == [200, 200, 200]
    assert answers(emu) == []


async def test_answers_share_the_bound_on_event_handlers_and_none_is_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answered: list[str] = []

    async def on_card_action(envelope: Mapping[str, Any]) -> lark.CardAnswer:
        await trio.sleep(1)
        answered.append(envelope["header"]["event_id"])
        return lark.CardAnswer("ok")

    async with answering(on_card_action) as (emu, bridge):
        for n in range(MAX_HANDLERS + 3):
            emu.push_event(card_action(f"ev-{n}"))
        await trio.sleep(0.5)
        assert emu.acks == []  # beyond the bound: not ACKed, so the platform pushes it again
        assert bridge.stats().other["lark.card_actions_deferred"] == 3
        await trio.sleep(1)
        assert emu.acks == [200] * MAX_HANDLERS
        await trio.sleep(4)  # past the platform's 3 s: the three are pushed again, answered
        assert bridge.stats().other["lark.card_actions_deferred"] == 3
    assert emu.acks == [200] * (MAX_HANDLERS + 3)
    assert len(answers(emu)) == MAX_HANDLERS + 3
    assert sorted(answered) == sorted(f"ev-{n}" for n in range(MAX_HANDLERS + 3))


async def test_a_card_action_whose_ack_was_lost_with_its_connection_is_answered_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    started: list[str] = []

    async def on_card_action(envelope: Mapping[str, Any]) -> lark.CardAnswer:
        started.append(envelope["header"]["event_id"])
        await trio.sleep(1)
        return lark.CardAnswer("ok")

    async with answering(on_card_action) as (emu, _):
        emu.push_event(card_action("ev-cut"))
        await trio.sleep(0.5)
        await emu.drop_connections()  # the handler dies with its connection: no ACK went
        await trio.sleep(10)  # reconnected; the platform pushed it again past its 3 s
        assert emu.acks == [200]
        assert answers(emu) == [{"toast": {"type": "info", "content": "ok"}}]
    assert started == ["ev-cut", "ev-cut"]  # not dropped as a duplicate the second time


def _card_of(size: int) -> cb.Card:
    """A card whose JSON (as the answer carries it, compact) is ``size`` bytes."""
    empty = len(lark.CardAnswer(card=cb.Card({"elements": []})).card_json())
    text = "x" * (size - empty - len('{"tag":"markdown","content":""}'))
    return cb.Card({"elements": [{"tag": "markdown", "content": text}]})


async def test_a_card_answer_over_the_card_limit_is_refused_counted_and_acked_plain(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A card over Lark's 30 KB went out in the ACK whole: the platform drops it, or refuses
    the frame (a 1009 close, the action pushed again, the link closed again). It is refused
    before it is sent, with the limit named, counted; the ACK goes plain, and a card at the
    limit still goes."""
    at_limit = _card_of(MAX_CARD_BYTES)
    assert len(lark.CardAnswer(card=at_limit).card_json()) == MAX_CARD_BYTES

    async def on_card_action(envelope: Mapping[str, Any]) -> lark.CardAnswer:
        over = envelope["header"]["event_id"] == "ev-big"
        return lark.CardAnswer(card=_card_of(MAX_CARD_BYTES + int(over)))

    async with answering(on_card_action) as (emu, bridge):
        emu.push_event(card_action("ev-big"))
        emu.push_event(card_action("ev-fits"))
        await trio.sleep(5)
        stats = bridge.stats()
    assert emu.acks == [200, 200]
    assert answers(emu) == [{"card": {"type": "raw", "data": at_limit.as_dict()}}]
    assert stats.other["lark.card_answers_too_big"] == 1
    assert "lark.card_answer_failures" not in stats.other
    (record,) = [r for r in caplog.records if "card answer" in r.getMessage()]
    assert "30720" in record.getMessage() and "cli_emulator" in record.getMessage()
    with pytest.raises(cb.SendError, match=r"30721 bytes.*30720"):
        lark.CardAnswer(card=_card_of(MAX_CARD_BYTES + 1)).ack()


async def test_an_answer_that_cannot_be_encoded_is_counted_and_acked_plain(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A card answer whose card JSON cannot encode (a datetime in it) or a handler returning
    something not a CardAnswer raised past the handler's guard: the connection died, the
    action was un-seen and pushed again, and crashed it again. Each is counted as a failed
    answer, logged with its traceback, ACKed plain; the connection lives, and the messages
    around them are each handled once."""
    asked: list[str] = []
    handled: list[str] = []

    async def on_card_action(envelope: Mapping[str, Any]) -> Any:
        event_id = envelope["header"]["event_id"]
        asked.append(event_id)
        if event_id == "ev-datetime":
            return lark.CardAnswer("saved", card=cb.Card({"when": datetime.datetime(2026, 1, 2)}))
        return {"toast": "not a CardAnswer"}

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        handled.extend(message.text for message in batch.messages)

    emu = LarkEmulator()
    connector = lambda: emu.connector(random=lambda: 0.0, on_card_action=on_card_action)  # noqa: E731
    async with emulator_bridge(emu, connector, agent) as bridge:
        await trio.sleep(1)
        emu.user_says("ou_bob", "before")
        await trio.sleep(1)
        emu.push_event(card_action("ev-datetime"))
        emu.push_event(card_action("ev-not-an-answer"))
        await trio.sleep(1)
        emu.user_says("ou_bob", "after")
        await trio.sleep(10)  # past the platform's 3 s: an action not ACKed would come again
        stats = bridge.stats()
    assert handled == ["before", "after"]
    assert asked == ["ev-datetime", "ev-not-an-answer"]
    assert emu.acks == [200] * 4 and answers(emu) == []
    assert emu.connections == 1
    assert stats.other["lark.card_answer_failures"] == 2
    failures = [r for r in caplog.records if r.exc_info and "card answer" in r.getMessage()]
    assert len(failures) == 2
    assert all("cli_emulator" in r.getMessage() for r in failures)
    assert emu.app_secret not in caplog.text

"""WeChat's send policy without I/O: pacing, the reply quota, typing tickets, reply plans.

Times are plain numbers passed in (no clock); the expected schedules are worked out by hand
from the token bucket's definition (a burst, then one message per ``1 / per_second`` seconds).
"""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
from hypothesis import given
from support import modules_a_core_runs

import trio_chatbridge as cb
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _protocol as p
from trio_chatbridge.platforms.weixin import _sending as s


def test_the_bucket_lets_a_burst_through_then_paces() -> None:
    bucket = s.Bucket(weixin.RateLimit(burst=3, per_second=0.5))
    assert bucket.book(5, now=100.0) == [100.0, 100.0, 100.0, 102.0, 104.0]
    assert bucket.book(1, now=101.0) == [106.0]  # queued behind the others: first come first
    # idle long enough to refill the whole burst, and no more
    assert bucket.book(4, now=1000.0) == [1000.0, 1000.0, 1000.0, 1002.0]


def test_the_bucket_refills_at_its_rate_between_bookings() -> None:
    bucket = s.Bucket(weixin.RateLimit(burst=2, per_second=0.25))
    assert bucket.book(2, now=0.0) == [0.0, 0.0]
    assert bucket.book(2, now=6.0) == [6.0, 8.0]  # 1.5 tokens back at 6 s: one now, one at 8


# a burst and a rate, and bookings: (count, seconds since the previous booking)
limits = st.builds(weixin.RateLimit, st.integers(1, 6), st.sampled_from([0.1, 0.2, 0.5, 1.0, 3.0]))
bookings = st.lists(st.tuples(st.integers(0, 5), st.floats(0, 20)), max_size=25)


@given(limits, bookings)
def test_no_window_ever_holds_more_than_the_bucket_allows(
    limit: weixin.RateLimit, steps: list[tuple[int, float]]
) -> None:
    bucket = s.Bucket(limit)
    now, times = 0.0, []
    for count, wait in steps:
        now += wait
        booked = bucket.book(count, now)
        assert len(booked) == count and all(t >= now for t in booked)
        times += booked
    assert times == sorted(times)  # booked in order, first come first served
    slack = 1e-6  # float sums
    for i, j in itertools.combinations(range(len(times)), 2):
        window = times[j] - times[i]
        assert j - i + 1 <= limit.burst + window * limit.per_second + slack


def test_the_quota_is_ten_per_inbound_message_reserved_all_or_none() -> None:
    quota = s.ReplyQuota("bot-1")
    quota.reserve("ctx-a", 8)
    with pytest.raises(cb.SendError, match=r"bot-1.*needs 3 messages, 2 left"):
        quota.reserve("ctx-a", 3)
    assert quota.left("ctx-a") == 2  # the refused reply took nothing
    quota.reserve("ctx-b", 10)  # another message's quota is its own
    quota.reserve("ctx-a", 2)
    with pytest.raises(cb.SendError, match="0 left"):
        quota.reserve("ctx-a", 1)
    quota.release("ctx-a", 1)  # one never went out
    quota.reserve("ctx-a", 1)


def test_the_quota_forgets_the_least_recent_message_past_its_memory() -> None:
    quota = s.ReplyQuota("bot", memory=2)
    quota.reserve("a", 10)
    quota.reserve("b", 10)
    quota.reserve("a", 0)  # "a" is now the most recent
    quota.reserve("c", 1)  # "b" goes
    assert (quota.left("a"), quota.left("b"), quota.left("c")) == (0, 10, 9)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.integers(0, 12)), max_size=40))
def test_no_message_is_ever_answered_more_than_ten_times(
    steps: list[tuple[str, bool, int]],
) -> None:
    quota = s.ReplyQuota("bot")
    sent = dict.fromkeys("abc", 0)  # what went out: reserved and never released
    for key, reserve, count in steps:
        if reserve:
            try:
                quota.reserve(key, count)
            except cb.SendError:
                continue
            sent[key] += count
        else:
            count = min(count, sent[key])  # only what was reserved can come back
            quota.release(key, count)
            sent[key] -= count
        assert sent[key] <= p.MAX_REPLIES_PER_MESSAGE
        assert quota.left(key) == p.MAX_REPLIES_PER_MESSAGE - sent[key]


def test_a_typing_ticket_is_kept_for_a_random_fraction_of_a_day() -> None:
    tickets = s.TypingTickets(lambda: 0.5)
    assert tickets.cached("amy", now=0.0) is None  # never fetched
    assert tickets.fetched("amy", {"ret": 0, "typing_ticket": "t-1"}, now=0.0) == "t-1"
    assert tickets.cached("amy", now=12 * 3600 - 1) == "t-1"
    assert tickets.cached("amy", now=12 * 3600) is None  # due again


def test_a_failed_fetch_keeps_the_old_ticket_and_backs_off_doubling() -> None:
    tickets = s.TypingTickets(lambda: 0.0)  # every ticket due at once
    assert tickets.failed("new", now=0.0) == ""  # none yet: no typing, retried in 2 s
    assert tickets.cached("new", now=1.0) == "" and tickets.cached("new", now=2.0) is None
    tickets.fetched("amy", {"typing_ticket": "t-1"}, now=0.0)
    for now in (0.0, 100.0, 200.0):
        assert tickets.failed("amy", now) == "t-1"
    # retries after 4, 8, 16 s; the delay stops at an hour
    assert tickets.cached("amy", now=200.0 + 15) == "t-1"
    assert tickets.cached("amy", now=200.0 + 16) is None
    for _ in range(20):
        tickets.failed("amy", 0.0)
    assert tickets.cached("amy", now=p.CONFIG_RETRY_MAX - 1) == "t-1"
    assert tickets.cached("amy", now=p.CONFIG_RETRY_MAX) is None


def test_typing_tickets_are_kept_for_a_bounded_number_of_peers() -> None:
    tickets = s.TypingTickets(lambda: 0.5, size=2)
    tickets.fetched("amy", {"typing_ticket": "a"}, now=0.0)
    tickets.fetched("ben", {"typing_ticket": "b"}, now=0.0)
    assert tickets.cached("amy", now=1.0) == "a"  # now the most recent
    tickets.fetched("cat", {"typing_ticket": "c"}, now=1.0)  # over the bound: ben goes
    assert [tickets.cached(peer, now=2.0) for peer in ("amy", "ben", "cat")] == ["a", None, "c"]


def test_a_reply_is_planned_quota_first_then_paced_and_shielded_at_most_120_s() -> None:
    outbox = s.Outbox("bot", weixin.RateLimit(burst=2, per_second=0.2))
    items = s.text_items("x" * 9000)  # three pieces
    assert [len(i["text_item"]["text"]) for i in items] == [4000, 4000, 1000]
    plan = outbox.plan("ctx-1", "message:7", items, now=50.0)
    assert (plan.key, plan.slots) == ("ctx-1", (50.0, 50.0, 55.0))
    # the last slot, a request timeout each, and a second each for that timeout to say so
    assert plan.within == 5.0 + 3 * (p.API_TIMEOUT + s.SHIELD_MARGIN)
    outbox.cancelled(plan)  # none went out: the quota is back, the slots stay booked
    assert outbox.quota.left("ctx-1") == 10
    long = outbox.plan(None, "message:7", s.text_items("y" * 40_000), now=50.0)
    assert long.key == "message:7" and long.slots[0] == 60.0
    assert long.within == s.REPLY_SHIELD_MAX
    with pytest.raises(cb.SendError, match="needs 2 messages, 0 left"):
        outbox.plan(None, "message:7", s.text_items("z" * 5000), now=50.0)
    assert outbox.plan("ctx-2", "m", [], now=0.0).items == ()  # nothing to send, nothing spent


def test_the_sendmessage_body_is_one_finished_bot_message() -> None:
    item = {"type": 1, "text_item": {"text": "hi"}}
    assert s.sendmessage_body("amy@im.wechat", "ctx-1", item, "c-1") == {
        "from_user_id": "",
        "to_user_id": "amy@im.wechat",
        "client_id": "c-1",
        "message_type": 2,
        "message_state": 2,
        "item_list": [item],
        "context_token": "ctx-1",
    }
    assert "context_token" not in s.sendmessage_body("amy", None, item, "c-2")


def test_a_refusal_says_what_the_platform_said_and_what_to_do() -> None:
    declined = s.refusal("bot-1", weixin.ILinkError("sendmessage", ret=-2, errmsg="prepare failed"))
    assert (
        "bot-1" in str(declined) and "ret=-2" in str(declined) and "wait and try" in str(declined)
    )
    other = s.refusal("bot-1", weixin.ILinkError("sendmessage", ret=-1))
    assert "ret=-1" in str(other) and "wait" not in str(other)


def test_the_send_policy_imports_no_io_library_directly_or_through_ours() -> None:
    seen = modules_a_core_runs("trio_chatbridge.platforms.weixin._sending")
    assert "trio_chatbridge.platforms.weixin._protocol" in seen

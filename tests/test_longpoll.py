"""The HTTP long-poll driver (``connectors.long_poll``), on its own: a small core of the test's,
or WeChat's, over ``httpx.MockTransport``, with a context whose inbox the test controls."""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, get_args, get_type_hints

import attrs
import httpx
import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge._longpoll import MAX_CURSOR_CHARS
from trio_chatbridge._receive import LOG_BURST, LOG_WINDOW
from trio_chatbridge.connectors import (
    ConnectorContext,
    HTTPRequest,
    Page,
    Paused,
    PollCore,
    RetryLater,
    long_poll,
)
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _protocol as weixin_protocol


@attrs.define
class Echo:
    """A core whose answers are the next cursor: the driver's behaviour, with no platform."""

    cursor: str = ""
    hint: float | None = None

    def start(self, cursor: str | None) -> None:
        self.cursor = cursor or ""

    def paused(self, now: float) -> Paused | None:
        return None

    def request(self) -> HTTPRequest:
        return HTTPRequest("echo poll", "POST", "http://echo.invalid/", {}, b"", timeout=30.0)

    def receive(self, body: bytes, now: float) -> Page | RetryLater | Paused:
        return Page(cursor=body.decode() or None)

    def commit(self, page: Page) -> None:
        self.cursor = page.cursor or self.cursor

    def retry_hint(self, failures: int) -> float | None:
        return self.hint


@attrs.define
class Recorder:
    """What the driver told the bridge: states, counters, puts; and whether it started."""

    store: cb.MemoryStore = attrs.Factory(cb.MemoryStore)
    states: list[tuple[str, str | None]] = attrs.Factory(list)
    counts: Counter[str] = attrs.Factory(Counter)
    put: list[cb.Message] = attrs.Factory(list)
    started: int = 0

    def context(
        self, platform: str, put: Callable[[Sequence[cb.Message]], Awaitable[Any]] | None = None
    ) -> ConnectorContext:
        async def keep(messages: Sequence[cb.Message]) -> list[cb.Message]:
            self.put.extend(messages)
            return list(messages)

        return ConnectorContext(
            platform,
            "a1",
            self.store,
            put or keep,
            lambda name, n: self.counts.update({name: n}),
            lambda state, detail: self.states.append((state, detail)),
        )

    def count(self, name: str) -> int:
        return self.counts[name]


class Started:
    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def started(self, value: object = None) -> None:
        self._recorder.started += 1


Answer = Callable[[], httpx.Response] | BaseException | None


def transport(answers: list[Answer], asked: list[float]) -> httpx.MockTransport:
    """Answers each request with the next item (a response, an exception raised, or None:
    no answer ever); the last one answers every request after it."""

    async def handle(request: httpx.Request) -> httpx.Response:
        asked.append(trio.current_time())
        answer = answers[min(len(asked), len(answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            await trio.sleep_forever()
        assert answer is not None
        return answer()

    return httpx.MockTransport(handle)


def ok(body: bytes) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(200, content=body)


async def poll_for(
    seconds: float,
    answers: list[Answer],
    core: PollCore,
    recorder: Recorder,
    platform: str = "echo",
) -> list[float]:
    """Poll with ``core`` for ``seconds`` under a backoff of 1 s doubling, without jitter;
    returns when each poll was asked."""
    asked: list[float] = []
    backoff = cb.Backoff(initial=1.0, multiplier=2.0, jitter=0.0)
    async with httpx.AsyncClient(transport=transport(answers, asked)) as http:
        with trio.move_on_after(seconds):
            await long_poll(
                recorder.context(platform),
                core,
                http,
                backoff=backoff,
                task_status=Started(recorder),
            )
    return asked


async def test_failures_are_mapped_once_and_paced_by_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    answers: list[Answer] = [
        httpx.ConnectError("refused"),
        OSError("network is unreachable"),
        lambda: httpx.Response(503, content=b"busy"),
        lambda: httpx.Response(200, content=b"x" * 100),  # over the cap below
        ok(b"c1"),
        None,
    ]

    @attrs.define
    class Capped(Echo):
        def request(self) -> HTTPRequest:
            return attrs.evolve(super().request(), max_bytes=10)

    asked = await poll_for(20, answers, Capped(), recorder)
    assert asked == [0, 1, 3, 7, 15, 15]  # 1, 2, 4, 8 s, then at once after success
    assert recorder.count("poll_failures") == 4
    assert recorder.count("protocol_errors") == 1  # the answer over its cap
    details = [detail or "" for state, detail in recorder.states if state == "backoff"]
    assert "ConnectError: refused" in details[0] and "retrying in 1 s" in details[0]
    assert "OSError" in details[1] and "HTTP 503 b'busy'" in details[2]
    assert recorder.started == 1  # after the first good answer, once
    assert await recorder.store.get_cursor("echo", "a1") == "c1"


async def test_a_refused_poll_is_retried_and_shown_as_a_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A poll loop must not die on a proxy's 404: the one mapping calls it refused, and the
    loop retries it with backoff all the same, saying so in its status."""
    recorder = Recorder()
    answers: list[Answer] = [
        lambda: httpx.Response(404, content=b"<html>Not Found</html>"),
        lambda: httpx.Response(401),
        lambda: httpx.Response(408),
        lambda: httpx.Response(429, headers={"Retry-After": "99999999"}),
        ok(b"c1"),
        None,
    ]
    asked = await poll_for(4000, answers, Echo(), recorder)
    assert asked[:6] == [0, 1, 3, 7, 3607, 3607]  # the Retry-After held to an hour
    assert recorder.count("poll_failures") == 4 and recorder.started == 1
    details = [detail or "" for state, detail in recorder.states if state == "backoff"]
    assert "echo poll: refused, HTTP 404 b'<html>Not Found</html>'" in details[0]
    assert "retrying cannot help" in details[0] and "refused, HTTP 401" in details[1]
    assert "HTTP 408" in details[2] and "server failed" not in details[2]
    assert "Retry-After 3600 s" in details[3] and "rate limited" in details[3]
    assert await recorder.store.get_cursor("echo", "a1") == "c1"


async def test_the_cores_hint_and_the_servers_retry_after_are_least_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder, asked = Recorder(), list[float]()
    answers: list[Answer] = [
        lambda: httpx.Response(503, headers={"Retry-After": "7"}),
        lambda: httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}),
        ok(b""),
        None,
    ]
    backoff = cb.Backoff(initial=1.0, multiplier=2.0, jitter=0.0)
    async with httpx.AsyncClient(transport=transport(answers, asked)) as http:
        with trio.move_on_after(30):
            await long_poll(recorder.context("echo"), Echo(hint=5.0), http, backoff=backoff)
    assert asked[:3] == [0, 7, 12]  # max(1, 5, 7), then max(2, 5): a date is no hint


async def test_a_poll_past_its_deadline_is_empty_not_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder, asked = Recorder(), list[float]()
    async with httpx.AsyncClient(transport=transport([None], asked)) as http:
        with trio.move_on_after(100):
            await long_poll(recorder.context("echo"), Echo(), http, task_status=Started(recorder))
    assert asked == [0, 30, 60, 90]
    assert recorder.count("poll_failures") == 0
    assert recorder.started == 1  # the server held the poll: it is there


PAGE = (
    b'{"ret":0,"get_updates_buf":"c1","msgs":[{"message_id":1,"from_user_id":"u@im.wechat",'
    b'"message_type":1,"context_token":"t1","item_list":[{"type":1,"text_item":{"text":"hi"}}]}]}'
)


def wechat_core() -> weixin_protocol.Poller:
    return weixin_protocol.Poller(
        "tok", weixin.DEFAULT_BASE_URL, functools.partial(weixin.to_message, "a1")
    )


@pytest.mark.parametrize("cancelled", [False, True])
async def test_the_cursor_is_saved_only_once_the_page_is_durable(
    cancelled: bool, autojump_clock: trio.testing.MockClock
) -> None:
    recorder, asked = Recorder(), list[float]()
    accepted = trio.Event()
    release = trio.Event()
    bodies: list[bytes] = []

    async def slow_put(messages: Sequence[cb.Message]) -> list[cb.Message]:
        accepted.set()
        await release.wait()
        recorder.put.extend(messages)
        return list(messages)

    async def handle(request: httpx.Request) -> httpx.Response:
        asked.append(trio.current_time())
        bodies.append(request.content)
        if len(asked) > 1:
            await trio.sleep_forever()
        return httpx.Response(200, content=PAGE)

    ctx = recorder.context("weixin", put=slow_put)
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(functools.partial(long_poll, ctx, wechat_core(), http))
        await accepted.wait()
        await trio.sleep(10)
        assert await recorder.store.get_cursor("weixin", "a1") is None  # not yet durable
        assert len(asked) == 1  # and no poll presents the new cursor meanwhile
        if cancelled:
            nursery.cancel_scope.cancel()
        else:
            release.set()
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    if cancelled:
        assert await recorder.store.get_cursor("weixin", "a1") is None
        assert recorder.put == []
    else:
        assert await recorder.store.get_cursor("weixin", "a1") == "c1"
        assert await recorder.store.get("weixin", "a1", "context_token:u@im.wechat") == "t1"
        assert [m.text for m in recorder.put] == ["hi"]
        assert json.loads(bodies[1])["get_updates_buf"] == "c1"


async def test_bad_messages_are_counted_and_logged_once_each(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, asked = Recorder(), list[float]()
    page = b'{"msgs":[["bad"], {"message_id":2,"message_type":2}, "worse"],"get_updates_buf":"c"}'
    answers: list[Answer] = [ok(page), None]
    async with httpx.AsyncClient(transport=transport(answers, asked)) as http:
        with trio.move_on_after(5):
            await long_poll(recorder.context("weixin"), wechat_core(), http)
    assert recorder.count("protocol_errors") == 2
    assert recorder.count("filtered") == 1  # the bot's own message
    skipped = [r for r in caplog.records if "bad message skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert await recorder.store.get_cursor("weixin", "a1") == "c"


async def test_a_pause_holds_every_poll_until_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder, asked = Recorder(), list[float]()
    answers: list[Answer] = [ok(b'{"errcode":-14}'), ok(b'{"ret":0}'), None]
    async with httpx.AsyncClient(transport=transport(answers, asked)) as http:
        with trio.move_on_after(3700):
            await long_poll(
                recorder.context("weixin"), wechat_core(), http, task_status=Started(recorder)
            )
    assert asked[:3] == [0, 3600, 3600]  # then one empty poll every 40 s
    assert recorder.count("session_expired") == 1
    assert recorder.states[0][0] == "paused"
    assert recorder.states[1] == ("starting", None)  # not up before a good answer
    assert recorder.started == 1


async def test_a_bug_in_a_core_is_a_counted_retried_protocol_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, asked = Recorder(), list[float]()

    @attrs.define
    class Buggy(Echo):
        raised: int = 0

        def receive(self, body: bytes, now: float) -> Page | RetryLater | Paused:
            if not self.raised:
                self.raised += 1
                raise KeyError("ret")
            return super().receive(body, now)

    backoff = cb.Backoff(initial=1.0, multiplier=2.0, jitter=0.0)
    async with httpx.AsyncClient(transport=transport([ok(b"c1"), ok(b"c1"), None], asked)) as http:
        with trio.move_on_after(5):
            await long_poll(
                recorder.context("echo"),
                Buggy(),
                http,
                backoff=backoff,
                task_status=Started(recorder),
            )
    assert asked[:2] == [0, 1]  # retried after the backoff's first wait, not the end
    assert recorder.count("poll_failures") == 1
    assert recorder.count("protocol_errors") == 1
    assert recorder.started == 1
    assert await recorder.store.get_cursor("echo", "a1") == "c1"
    logged = [r for r in caplog.records if "KeyError: 'ret'" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with the traceback


async def test_an_unchanged_cursor_is_not_written_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder, asked = Recorder(), list[float]()
    writes: list[str] = []

    class Counting(cb.MemoryStore):
        async def set_cursor(
            self,
            platform: str,
            account: str,
            cursor: str,
            *,
            with_values: Mapping[str, str | None] | None = None,
            values_ttl: float | None = None,
        ) -> None:
            writes.append(cursor)
            await super().set_cursor(
                platform, account, cursor, with_values=with_values, values_ttl=values_ttl
            )

    recorder.store = Counting()
    await recorder.store.set_cursor("echo", "a1", "c0")
    writes.clear()
    cursors = [b"c0", b"c0", b"c1"]  # then "c1" on every idle poll

    async def handle(request: httpx.Request) -> httpx.Response:
        asked.append(trio.current_time())
        await trio.sleep(1)  # a long poll's wait, shortened
        return httpx.Response(200, content=cursors[min(len(asked), len(cursors)) - 1])

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        with trio.move_on_after(30):
            await long_poll(recorder.context("echo"), Echo(), http)
    assert len(asked) >= 20  # idle polls went on
    assert writes == ["c1"]  # the one cursor that changed, once
    assert await recorder.store.get_cursor("echo", "a1") == "c1"


async def test_the_bridges_backoff_is_the_default(autojump_clock: trio.testing.MockClock) -> None:
    recorder, asked = Recorder(), list[float]()
    answers: list[Answer] = [httpx.ConnectError("refused"), httpx.ConnectError("refused"), None]
    ctx = recorder.context("echo")
    ctx.backoff = cb.Backoff(initial=3.0, multiplier=2.0, jitter=0.0)
    async with httpx.AsyncClient(transport=transport(answers, asked)) as http:
        with trio.move_on_after(20):
            await long_poll(ctx, Echo(), http)
    assert asked == [0, 3, 9]  # the context's 3 s, then 6 s


def test_a_poll_cores_answer_is_typed_as_the_poll_event_union() -> None:
    from trio_chatbridge import connectors

    answer = get_type_hints(connectors.PollCore.receive)["return"]
    assert answer == connectors.PollEvent != connectors.Event  # not the WebSocket events
    assert set(get_args(connectors.PollEvent)) == {Page, RetryLater, Paused}


def good_entry(n: int) -> bytes:
    return (
        b'{"message_id":%d,"from_user_id":"u@im.wechat","message_type":1,'
        b'"item_list":[{"type":1,"text_item":{"text":"m%d"}}]}' % (n, n)
    )


async def test_a_flood_of_bad_messages_logs_a_few_lines_and_a_summary_but_counts_each(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A hostile page of 10,000 bad entries around two good ones: every bad one counted, both
    # good ones delivered, but only the first few logged; the rest summed up in one line
    # when the next bad one comes after the window (on Trio's clock).
    flood = b",".join([b'"bad"'] * 10_000)
    first = b'{"msgs":[%s,%s,%s],"get_updates_buf":"c1"}' % (good_entry(1), flood, good_entry(2))
    later = b'{"msgs":["bad",%s],"get_updates_buf":"c2"}' % good_entry(3)
    asked: list[float] = []
    sent: list[bytes] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        asked.append(trio.current_time())
        if len(asked) == 1:
            return httpx.Response(200, content=first)
        if not sent:
            # held (polls time out as empty) until the window is over, then the later page
            await trio.sleep_until(asked[0] + LOG_WINDOW + 1)
            sent.append(later)
            return httpx.Response(200, content=later)
        await trio.sleep_forever()
        raise AssertionError

    recorder = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        with trio.move_on_after(LOG_WINDOW * 3):
            await long_poll(recorder.context("weixin"), wechat_core(), http)
    assert recorder.count("protocol_errors") == 10_001
    assert [m.text for m in recorder.put] == ["m1", "m2", "m3"]
    assert await recorder.store.get_cursor("weixin", "a1") == "c2"
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("trio_chatbridge")]
    skipped = [line for line in lines if "bad message skipped:" in line]
    assert len(skipped) == LOG_BURST + 1  # the first few, then the later one
    summary = [line for line in lines if "more like 'bad message skipped'" in line]
    assert len(summary) == 1
    assert f"{10_000 - LOG_BURST} more" in summary[0]
    assert len(lines) < 20


@pytest.mark.parametrize(
    ("cursor", "why"),
    [
        (b'"' + b"A" * (MAX_CURSOR_CHARS + 1) + b'"', f"over {MAX_CURSOR_CHARS:,}"),
        (b'"c\\ud800"', "not storable"),  # a lone surrogate: SQLite cannot encode it
    ],
)
async def test_a_cursor_too_large_or_unstorable_is_refused_and_the_previous_one_kept(
    cursor: bytes,
    why: str,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pages = [
        b'{"msgs":[%s],"get_updates_buf":"c1"}' % good_entry(1),
        b'{"msgs":[%s],"get_updates_buf":%s}' % (good_entry(2), cursor),
        b'{"msgs":[%s],"get_updates_buf":"c3"}' % good_entry(3),
    ]
    bodies: list[bytes] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) <= len(pages):
            return httpx.Response(200, content=pages[len(bodies) - 1])
        await trio.sleep_forever()
        raise AssertionError

    recorder = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http:
        with trio.move_on_after(5):
            await long_poll(recorder.context("weixin"), wechat_core(), http)
    sent = [json.loads(body)["get_updates_buf"] for body in bodies]
    assert sent == ["", "c1", "c1", "c3"]  # the refused cursor never stored nor sent back
    assert [m.text for m in recorder.put] == ["m1", "m2", "m3"]  # its page's message delivered
    assert recorder.count("protocol_errors") == 1
    assert await recorder.store.get_cursor("weixin", "a1") == "c3"
    [line] = [r.getMessage() for r in caplog.records if "bad cursor skipped" in r.getMessage()]
    assert why in line and "AAAA" * 100 not in line


async def test_a_cursor_refused_again_and_again_is_a_failing_poll_paced_by_the_backoff(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # A server that answers the kept cursor with the same page and the same refused cursor,
    # every time: the first refusal is a bad cursor (its page delivered at once), each one
    # after it a failed poll under the backoff, never a loop polling flat out.
    page = b'{"msgs":[%s],"get_updates_buf":"c\\ud800"}' % good_entry(1)
    recorder = Recorder()
    # 50 answers, then silence: on a loop polling flat out, time stands still until then.
    asked = await poll_for(60, [ok(page)] * 50 + [None], wechat_core(), recorder, "weixin")
    assert asked == [0, 0, 1, 3, 33, 41, 57]  # 1 s doubling; 30 s after 3 (the core's hint)
    assert recorder.started == 1
    assert recorder.count("poll_failures") == 6  # each refusal after the first
    assert recorder.count("protocol_errors") == 7  # each refusal, once
    assert recorder.states[-1][0] == "backoff"
    assert "cursor not storable" in (recorder.states[-1][1] or "")
    assert [m.text for m in recorder.put][:1] == ["m1"]  # the page delivered all the same
    assert await recorder.store.get_cursor("weixin", "a1") is None  # nothing refused stored
    lines = [r.getMessage() for r in caplog.records if "weixin:a1" in r.getMessage()]
    assert len(lines) == 7 and "retrying in 32 s" in lines[-1]

"""WeCom webhook: a message whose stream is gone is answered through its ``response_url``."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from support import echo, quick_bridge, streamer

import trio_chatbridge as cb
from trio_chatbridge.platforms import wecom
from trio_chatbridge.platforms.wecom._webhook import RESPONSE_URL_WITHIN, STREAM_TTL
from trio_chatbridge.testing import WeComEmulator, running_bridge
from trio_chatbridge.testing._wecom import RESPONSE_URL_TTL


def message(emu: WeComEmulator, msgid: str, text: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "msgid": msgid,
        "from": {"userid": "ana"},
        "chattype": "single",
        "msgtype": "text",
        "text": {"content": text},
        "response_url": emu.response_url("ana", msgid),
    }
    return body | fields


async def journaled(
    emu: WeComEmulator,
    callback: dict[str, Any] | list[dict[str, Any]],
    store: cb.Store,
    **options: Any,
) -> None:
    """``callback`` (or each of a list, one batch) journaled in ``store`` by a bridge whose
    agent never answers, then that bridge stopped: its streams are lost with it."""
    running = trio.Event()

    async def never(batch: cb.Batch, reply: cb.Reply) -> None:
        running.set()
        await trio.sleep_forever()

    first = emu.webhook(**options)
    async with running_bridge(quick_bridge(first, never, store=store)):
        for one in callback if isinstance(callback, list) else [callback]:
            answer = emu.webhook_open(await emu.webhook_post(first.asgi, one))
            assert answer["stream"]["finish"] is False  # opened; the restart loses it
        await running.wait()


async def journaled_then_restarted(
    emu: WeComEmulator,
    agent: cb.Agent,
    callback: dict[str, Any] | list[dict[str, Any]],
    **options: Any,
) -> cb.Bridge:
    """``callback`` :func:`journaled`, and a second bridge (a new webhook, the same store)
    run with ``agent``: it answers the message replayed from the journal."""
    store = cb.MemoryStore()
    await journaled(emu, callback, store, **options)
    second = quick_bridge(emu.webhook(**options), agent, store=store)
    async with running_bridge(second):
        await trio.sleep(30)
    return second


@pytest.mark.parametrize("agent", [echo, streamer(0.5)], ids=["send", "stream"])
async def test_an_answer_after_a_restart_reaches_the_user_through_the_response_url(
    autojump_clock: trio.testing.MockClock, agent: cb.Agent
) -> None:
    emu = WeComEmulator()
    bridge = await journaled_then_restarted(emu, agent, message(emu, "m1", "still here"))
    [answer] = [a for a in emu.activity if a.via == "response_url"]
    assert (answer.kind, answer.to, answer.id) == ("markdown", "ana", "m1")
    assert answer.text is not None and answer.text.strip() == "still here"
    assert bridge.stats().other["wecom.replies_via_response_url"] == 1
    assert bridge.stats().failures == 0


@pytest.mark.parametrize(
    "delay", [STREAM_TTL + 60, STREAM_TTL - 5], ids=["expired", "in-the-last-seconds"]
)
async def test_an_answer_after_the_stream_expired_goes_through_the_response_url(
    autojump_clock: trio.testing.MockClock, delay: float
) -> None:
    """Also an answer set in the stream's last seconds: it went into a stream WeCom no longer
    polls (counted as sent, lost). A stream is gone for new answers FINISH_MARGIN early."""

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(delay)  # longer than WeCom polls, or nearly
        await reply.send("late but here")

    emu = WeComEmulator()
    hook = emu.webhook()
    bridge = quick_bridge(hook, slow, run_timeout=3600)
    async with running_bridge(bridge):
        await emu.webhook_post(hook.asgi, message(emu, "m1", "take your time"))
        await trio.sleep(STREAM_TTL + 120)  # nothing polled after the window: it lapsed
    assert [(a.via, a.text) for a in emu.activity] == [("response_url", "late but here")]
    assert bridge.stats().other["wecom.replies_via_response_url"] == 1


async def test_an_answer_in_the_last_seconds_without_a_response_url_goes_into_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With no URL to answer through, a stream in its last seconds is still the best chance:
    a late poll gets the answer (it was a SendError, the answer lost for certain)."""

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(STREAM_TTL - 5)
        await reply.send("just in time")

    emu = WeComEmulator()
    hook = emu.webhook()
    callback = message(emu, "m1", "no url")
    del callback["response_url"]
    bridge = quick_bridge(hook, slow, run_timeout=3600)
    async with running_bridge(bridge):
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, callback))
        await trio.sleep(STREAM_TTL - 3)  # the agent answered two seconds ago
        poll = {"msgtype": "stream", "stream": {"id": opened["stream"]["id"]}}
        stream = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
    assert (stream["finish"], stream["content"]) == (True, "just in time")
    assert bridge.stats().failures == 0


async def test_a_response_url_is_used_once_and_not_after_an_hour(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The emulator refuses as WeCom would; the webhook refuses a second use itself, and a
    message without a URL or past its hour fails with a SendError naming why."""
    emu = WeComEmulator()
    sent: list[str] = []
    errors: list[str] = []

    async def twice(batch: cb.Batch, reply: cb.Reply) -> None:
        for text in ("first", "second"):
            try:
                await reply.send(text)
                sent.append(text)
            except cb.SendError as exc:
                errors.append(str(exc))

    await journaled_then_restarted(emu, twice, message(emu, "m1", "hi"))
    assert sent == ["first"]
    assert "response_url was used already" in errors[0]

    url = emu.response_url("ana", "m2")
    await trio.sleep(RESPONSE_URL_TTL + 1)
    await journaled_then_restarted(emu, twice, message(emu, "m2", "hi", response_url=url))
    assert len(sent) == 1 and "errcode=846608" in errors[1]

    no_url = message(emu, "m3", "hi")
    del no_url["response_url"]
    await journaled_then_restarted(emu, twice, no_url)
    assert "has no response_url: nothing can answer it" in errors[3]
    kinds = [a.kind for a in emu.activity if a.via == "response_url"]
    assert kinds == ["markdown", "refused", "refused"]  # the expired URL, refused each time


async def test_a_response_url_outside_the_policy_is_not_called_nor_logged(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    emu = WeComEmulator()
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send("answer")
        except cb.SendError as exc:
            errors.append(str(exc))

    capability = "https://internal.example/cgi-bin/aibot/response?response_code=s3cr3t"
    callback = message(emu, "m1", "hi", response_url=capability)
    await journaled_then_restarted(emu, agent, callback)
    assert len(errors) == 1 and "not an allowed host" in errors[0]
    assert "s3cr3t" not in errors[0]
    assert "s3cr3t" not in caplog.text
    assert not [a for a in emu.activity if a.via == "response_url"]


async def test_the_emulator_refuses_what_is_not_one_markdown_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    url = emu.response_url("ana", "m1")
    transport = emu.webhook()._transport
    assert transport is not None

    async with httpx.AsyncClient(transport=transport) as http:
        bad = await http.post(url, json={"msgtype": "stream", "stream": {"content": "x"}})
        unknown = await http.post(url + "x", json={"msgtype": "markdown"})
        assert "response_code=" in url
        good = await http.post(
            url, content=json.dumps({"msgtype": "text", "text": {"content": "ok"}})
        )
    assert bad.json()["errcode"] == 40058
    assert unknown.status_code == 404
    assert good.json() == {"errcode": 0, "errmsg": "ok"}


async def test_a_redelivery_of_a_journaled_message_gets_a_stream_finished_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a restart, WeCom's redelivery of a message journaled before (same msgid, a new
    stream) was dropped as a duplicate and its stream left open: WeCom polled it for six
    minutes and it held one of the user's in-flight slots. It is finished at once, empty,
    and counted; the answer reaches the user through the first delivery's response_url."""
    emu = WeComEmulator()
    store = cb.MemoryStore()
    callback = message(emu, "m1", "once")
    await journaled(emu, callback, store)
    hook = emu.webhook()
    bridge = quick_bridge(hook, echo, store=store)
    async with running_bridge(bridge):
        again = dict(callback, response_url=emu.response_url("ana", "m1"))
        first = emu.webhook_open(await emu.webhook_post(hook.asgi, again))
        await trio.sleep(30)
    assert first["stream"]["finish"] is True and first["stream"]["content"] == ""
    assert bridge.stats().duplicates == 1
    assert bridge.stats().other["wecom.duplicate_callbacks_closed"] == 1
    assert [(a.via, a.text) for a in emu.activity] == [("response_url", "once")]


class Recorder:
    """An agent sending ``texts`` one after another (``together``: all at once), keeping
    what was sent and the error of each send that failed."""

    def __init__(self, *texts: str, together: bool = False) -> None:
        self.texts, self.together = texts, together
        self.sent: list[str] = []
        self.errors: list[str] = []

    async def __call__(self, batch: cb.Batch, reply: cb.Reply) -> None:
        if self.together:
            async with trio.open_nursery() as nursery:
                for text in self.texts:
                    nursery.start_soon(self.send, reply, text)
        else:
            for text in self.texts:
                await self.send(reply, text)

    async def send(self, reply: cb.Reply, text: str) -> None:
        try:
            await reply.send(text)
            self.sent.append(text)
        except cb.SendError as exc:
            self.errors.append(str(exc))


@pytest.mark.parametrize(
    ("status", "body"),
    [(403, {"message": "forbidden"}), (200, {}), (200, {"errcode": "0"})],
    ids=["4xx-without-errcode", "empty-2xx", "errcode-not-a-number"],
)
async def test_an_answer_without_errcode_0_on_a_2xx_is_not_delivered(
    autojump_clock: trio.testing.MockClock, status: int, body: dict[str, Any]
) -> None:
    """A proxy's refusal or an empty ``{}`` read as errcode 0: recorded as answered, counted,
    and a later send refused. Now it is a WeComError naming the status (never the URL), and
    the URL stays free for the next send."""
    emu = WeComEmulator()
    answers = [httpx.Response(status, json=body), httpx.Response(200, json={"errcode": 0})]
    posted: list[str] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        posted.append(str(request.url))
        return answers[len(posted) - 1]

    agent = Recorder("first", "second")
    bridge = await journaled_then_restarted(
        emu, agent, message(emu, "m1", "hi"), transport=httpx.MockTransport(proxy)
    )
    assert len(posted) == 2
    assert agent.sent == ["second"]
    [error] = agent.errors
    assert f"HTTP {status}" in error and "errcode=-1" in error
    assert "response_code" not in error
    assert bridge.stats().other["wecom.replies_via_response_url"] == 1


async def test_two_concurrent_sends_post_to_the_response_url_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeComEmulator()
    posted = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal posted
        posted += 1
        await trio.sleep(1)
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    agent = Recorder("one", "two", together=True)
    await journaled_then_restarted(
        emu, agent, message(emu, "m1", "hi"), transport=httpx.MockTransport(slow)
    )
    assert posted == 1
    assert len(agent.sent) == 1
    [error] = agent.errors
    assert "response_url was used already" in error


class Stalled(trio.abc.HostnameResolver):
    """A resolver that never answers (``fails``: that says the name is unknown)."""

    def __init__(self, fails: bool) -> None:
        self.fails = fails

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        if self.fails:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        await trio.sleep_forever()

    async def getnameinfo(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize("fails", [False, True], ids=["stalled", "unknown"])
async def test_the_response_url_bound_covers_the_lookup_and_its_error_names_it(
    autojump_clock: trio.testing.MockClock, fails: bool
) -> None:
    """The 15 s bound began after the host's lookup: a stalled resolver held the send for
    as long as the run lasted. A lookup that fails says what the host was for."""
    trio.socket.set_custom_hostname_resolver(Stalled(fails))
    emu = WeComEmulator()
    url = "https://wecom.test/cgi-bin/aibot/response?response_code=s3cr3t"
    agent = Recorder("answer")
    options: dict[str, Any] = {"transport": None, "media": cb.MediaPolicy(("wecom.test",))}
    start = trio.current_time()
    await journaled_then_restarted(
        emu, agent, message(emu, "m1", "hi", response_url=url), **options
    )
    assert agent.sent == []
    [error] = agent.errors
    assert "s3cr3t" not in error and "media host" not in error
    if fails:
        assert "cannot answer through a response_url at 'wecom.test'" in error
    else:
        assert f"got no answer within {RESPONSE_URL_WITHIN:.0f} s" in error
        assert "it may or may not have been sent" in error
    assert trio.current_time() - start < 600  # bounded, not held for the run's length


async def test_a_reply_streaming_past_the_window_sends_the_rest_through_the_response_url(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream whose state expired while it was written wrote to a detached state: the
    rest was lost, the run marked done. The polls' part stays; the rest goes through the URL."""

    async def long_winded(batch: cb.Batch, reply: cb.Reply) -> None:
        async with reply.stream() as out:
            await out.write("first ")
            await trio.sleep(STREAM_TTL + 30)
            await out.write("and the rest")

    emu = WeComEmulator()
    hook = emu.webhook()
    bridge = quick_bridge(hook, long_winded, run_timeout=3600)
    async with running_bridge(bridge):
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, message(emu, "m1", "go")))
        refresh = {"msgtype": "stream", "stream": {"id": opened["stream"]["id"]}}
        await trio.sleep(5)
        polled = emu.webhook_open(await emu.webhook_post(hook.asgi, refresh))
        await trio.sleep(STREAM_TTL)
        gone = emu.webhook_open(await emu.webhook_post(hook.asgi, refresh))
        await trio.sleep(120)
    assert polled["stream"] == dict(opened["stream"], content="first ")
    assert gone["stream"]["finish"] is True
    assert [(a.via, a.text) for a in emu.activity] == [("response_url", "and the rest")]


async def test_a_replayed_batchs_earlier_messages_get_the_earlier_reply_through_their_urls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As on a live stream and the long connection: each earlier message is answered with
    ``earlier_reply``, here through its own response_url (it was never answered at all)."""
    emu = WeComEmulator()
    callbacks = [message(emu, "m1", "first"), message(emu, "m2", "second")]
    bridge = await journaled_then_restarted(emu, echo, callbacks, earlier_reply="(see below)")
    answers = {a.id: a.text for a in emu.activity if a.via == "response_url"}
    assert answers == {"m1": "(see below)", "m2": "first\nsecond"}
    assert bridge.stats().other["wecom.replies_via_response_url"] == 2
    assert bridge.stats().failures == 0


async def test_a_replayed_earlier_message_that_cannot_be_answered_costs_only_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A refused earlier answer is counted and logged; the agent still runs and answers the
    latest message. With no ``earlier_reply`` nothing is posted for the earlier ones."""
    emu = WeComEmulator()
    spent = message(emu, "m1", "first")
    spent["response_url"] += "-unknown"  # the emulator answers 404
    callbacks = [spent, message(emu, "m2", "second"), message(emu, "m3", "third")]
    bridge = await journaled_then_restarted(emu, echo, callbacks, earlier_reply="(merged)")
    answers = {a.id: a.text for a in emu.activity if a.via == "response_url"}
    assert answers == {"m2": "(merged)", "m3": "first\nsecond\nthird"}
    assert bridge.stats().other["wecom.earlier_replies_failed"] == 1

    emu = WeComEmulator()
    callbacks = [message(emu, "m1", "first"), message(emu, "m2", "second")]
    await journaled_then_restarted(emu, echo, callbacks)
    assert [a.id for a in emu.activity if a.via == "response_url"] == ["m2"]


async def test_a_card_goes_through_the_response_url_and_media_is_refused_naming_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A response_url takes a template card; it cannot take media: a SendError saying so,
    counted (docs/protocols/wecom.md#answering-through-response_url)."""
    emu = WeComEmulator()
    card = cb.Card({"card_type": "text_notice", "main_title": {"title": "done"}})
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send_media(b"\x89PNG", filename="a.png")
        except cb.SendError as exc:
            errors.append(str(exc))
        await reply.send(card)

    bridge = await journaled_then_restarted(emu, agent, message(emu, "m1", "hi"))
    [answer] = [a for a in emu.activity if a.via == "response_url"]
    assert (answer.kind, answer.id) == ("card", "m1")
    [sent] = [s for s in emu.sent if s.kind == "response_url"]
    assert sent.card is not None and sent.card["main_title"] == {"title": "done"}
    assert len(errors) == 1 and "cannot carry media" in errors[0]
    assert bridge.stats().other["wecom.replies_unsupported"] == 1
    assert bridge.stats().other["wecom.replies_via_response_url"] == 1


async def test_a_card_answer_to_a_live_stream_goes_through_the_url_and_ends_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream cannot carry a card once opened; the URL can. Without a URL: a SendError,
    and Markdown goes into the stream."""
    emu = WeComEmulator()
    hook = emu.webhook()
    card = cb.Card({"card_type": "text_notice", "main_title": {"title": "done"}})
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send(card)
        except cb.SendError as exc:
            errors.append(str(exc))
            await reply.send(cb.Markdown("**text** instead"))  # (was refused in this mode)

    no_url = message(emu, "m2", "no url", **{"from": {"userid": "bo"}})
    del no_url["response_url"]
    async with running_bridge(quick_bridge(hook, agent)):
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, message(emu, "m1", "hi")))
        other = emu.webhook_open(await emu.webhook_post(hook.asgi, no_url))
        await trio.sleep(5)
        frames = []
        for answer in (opened, other):
            poll = {"msgtype": "stream", "stream": {"id": answer["stream"]["id"]}}
            frames.append(emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"])
    [by_url] = [a for a in emu.activity if a.via == "response_url"]
    assert (by_url.kind, by_url.id) == ("card", "m1")
    assert [(f["finish"], f["content"]) for f in frames] == [(True, ""), (True, "**text** instead")]
    assert len(errors) == 1 and "no response_url" in errors[0]


async def test_a_stream_dropped_while_written_finishes_with_what_was_shown(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_STREAMS over while a reply is streamed: the next poll of the dropped stream
    finishes it with what the user saw (not an empty finish that blanks it), and the rest
    goes through the URL: every word shown once."""
    from trio_chatbridge.platforms.wecom import _webhook

    monkeypatch.setattr(_webhook, "MAX_STREAMS", 3)
    emu = WeComEmulator()
    hook = emu.webhook()
    wrote, go_on = trio.Event(), trio.Event()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        if batch.latest.sender.id != "ana":
            return
        async with reply.stream() as out:
            await out.write("shown ")
            wrote.set()
            await go_on.wait()
            await out.write("rest")

    async with running_bridge(quick_bridge(hook, agent)):
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, message(emu, "m1", "hi")))
        poll = {"msgtype": "stream", "stream": {"id": opened["stream"]["id"]}}
        await wrote.wait()
        first = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
        for n in range(3):  # three newer streams: m1's is dropped
            other = message(emu, f"o{n}", "x", **{"from": {"userid": f"u{n}"}})
            await emu.webhook_post(hook.asgi, other)
        last = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
        go_on.set()
        await trio.sleep(5)
    assert (first["finish"], first["content"]) == (False, "shown ")
    assert (last["finish"], last["content"]) == (True, "shown ")
    assert [a.text for a in emu.activity if a.via == "response_url"] == ["rest"]


async def test_an_answer_set_but_not_yet_polled_survives_its_stream_being_dropped(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer was counted as sent; an empty finish on the next poll would lose it. A
    second answer is refused as before the drop (not sent through the URL: shown twice)."""
    from trio_chatbridge.platforms.wecom import _webhook

    monkeypatch.setattr(_webhook, "MAX_STREAMS", 3)
    emu = WeComEmulator()
    hook = emu.webhook()

    kept: list[cb.Reply] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        if batch.latest.sender.id == "ana":
            await reply.send("the answer")
            kept.append(reply)

    async with running_bridge(quick_bridge(hook, agent)):
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, message(emu, "m1", "hi")))
        await trio.sleep(5)  # answered, not yet polled
        for n in range(3):
            other = message(emu, f"o{n}", "x", **{"from": {"userid": f"u{n}"}})
            await emu.webhook_post(hook.asgi, other)
        poll = {"msgtype": "stream", "stream": {"id": opened["stream"]["id"]}}
        with pytest.raises(cb.SendError, match="answered already"):
            await kept[0].send("again")
        last = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
    assert (last["finish"], last["content"]) == (True, "the answer")
    assert not [a for a in emu.activity if a.via == "response_url"]


async def test_an_earlier_message_answered_through_its_url_is_not_answered_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An interrupt reruns a replayed batch: its earlier message, answered through its URL by
    the first run, is no longer refused as "used already", counted and logged as failed."""
    emu = WeComEmulator()
    store = cb.MemoryStore()
    options: dict[str, Any] = {"earlier_reply": "(see below)"}
    await journaled(
        emu, [message(emu, "m1", "first"), message(emu, "m2", "second")], store, **options
    )
    hook = emu.webhook(**options)
    runs: list[list[str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        runs.append([m.id for m in batch.messages])
        if len(runs) == 1:
            await trio.sleep_forever()  # interrupted by m3
        await reply.send("the answer")

    bridge = quick_bridge(hook, agent, store=store, on_busy="interrupt")
    async with running_bridge(bridge):
        await trio.sleep(5)
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, message(emu, "m3", "third")))
        await trio.sleep(5)
        poll = {"msgtype": "stream", "stream": {"id": opened["stream"]["id"]}}
        last = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
    assert runs == [["m1", "m2"], ["m1", "m2", "m3"]]
    answers = [(a.id, a.text) for a in emu.activity if a.via == "response_url"]
    assert answers == [("m1", "(see below)"), ("m2", "(see below)")]
    assert (last["finish"], last["content"]) == (True, "the answer")
    assert "wecom.earlier_replies_failed" not in bridge.stats().other
    assert "not answered" not in caplog.text


@asynccontextmanager
async def m1_answered_and_running_on(
    emu: WeComEmulator,
) -> AsyncIterator[tuple[wecom.Webhook, dict[str, Any]]]:
    """A webhook bridge (``earlier_reply="(merged)"``, ``on_busy="interrupt"``) whose run of m1
    has answered it and goes on; yields the hook and the poll of m1's stream."""
    hook = emu.webhook(earlier_reply="(merged)")
    async with running_bridge(quick_bridge(hook, answers_ana_m1_runs_on, on_busy="interrupt")):
        opened = emu.webhook_open(await emu.webhook_post(hook.asgi, message(emu, "m1", "hi")))
        await trio.sleep(5)  # answered
        yield hook, {"msgtype": "stream", "stream": {"id": opened["stream"]["id"]}}


async def answers_ana_m1_runs_on(batch: cb.Batch, reply: cb.Reply) -> None:
    """Answers ana's latest message (others' batches are left unanswered); m1's run then goes
    on until an interrupt (m2) cuts it."""
    if batch.latest.sender.id != "ana":
        return
    await reply.send(f"answer to {batch.latest.id}")
    if batch.latest.id == "m1":
        await trio.sleep_forever()


@pytest.mark.parametrize("polled", [False, True], ids=["not-polled", "polled"])
async def test_an_answered_stream_dropped_before_a_rerun_gets_no_earlier_reply(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, polled: bool
) -> None:
    """MAX_STREAMS over drops an answered stream; an interrupt then reruns its message as an
    earlier one: the earlier_reply went through its URL, the user shown two answers."""
    from trio_chatbridge.platforms.wecom import _webhook

    monkeypatch.setattr(_webhook, "MAX_STREAMS", 3)
    emu = WeComEmulator()
    async with m1_answered_and_running_on(emu) as (hook, poll):
        if polled:
            first = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
            assert (first["finish"], first["content"]) == (True, "answer to m1")
        for n in range(3):  # three newer streams: m1's is dropped
            other = message(emu, f"o{n}", "x", **{"from": {"userid": f"u{n}"}})
            await emu.webhook_post(hook.asgi, other)
        await emu.webhook_post(hook.asgi, message(emu, "m2", "again"))
        await trio.sleep(5)
        last = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
    assert not [a for a in emu.activity if a.via == "response_url"]
    assert (last["finish"], last["content"]) == (True, "answer to m1")


async def test_a_dropped_stream_is_forgotten_with_its_window(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped streams were kept until 10,000 more were dropped, hours after WeCom stopped
    polling them; they go with their six minutes, as kept streams do."""
    from trio_chatbridge.platforms.wecom import _webhook

    monkeypatch.setattr(_webhook, "MAX_STREAMS", 3)
    emu = WeComEmulator()
    hook = emu.webhook()

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass  # unanswered: kept while dropped, to finish with what was shown

    async with running_bridge(quick_bridge(hook, agent)):
        for n in range(5):  # five streams, three kept: two dropped
            await emu.webhook_post(
                hook.asgi, message(emu, f"m{n}", "x", **{"from": {"userid": f"u{n}"}})
            )
        assert len(hook._dropped) == 2
        await trio.sleep(STREAM_TTL + 1)
        await emu.webhook_post(hook.asgi, message(emu, "late", "x"))
        assert len(hook._dropped) == 0  # (the private state is the point: memory)


async def test_earlier_replies_to_a_host_that_never_answers_leave_the_agent_its_run_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twelve earlier messages of a replayed batch, their URL host silent: answered four at a
    time, 15 s each, before the agent ran, they used up a 30 s run_timeout; the latest
    message was never answered and the batch journaled failed."""
    emu = WeComEmulator()
    callbacks = [message(emu, f"m{n}", f"say {n}") for n in range(13)]
    silent = {c["response_url"] for c in callbacks[:-1]}

    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) in silent:
            await trio.sleep_forever()
        return await emu.handle_http(request)

    answered: list[float] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await echo(batch, reply)
        answered.append(trio.current_time())

    store = cb.MemoryStore()
    options: dict[str, Any] = {"earlier_reply": "(see below)"}
    await journaled(emu, callbacks, store, **options)
    hook = emu.webhook(transport=httpx.MockTransport(handler), **options)
    bridge = quick_bridge(hook, agent, store=store, run_timeout=30)
    start = trio.current_time()
    async with running_bridge(bridge):
        await trio.sleep(60)
    [answer] = [a for a in emu.activity if a.via == "response_url"]
    assert (answer.id, answer.text) == ("m12", "\n".join(f"say {n}" for n in range(13)))
    stats = bridge.stats()
    assert (stats.failures, stats.other["wecom.earlier_replies_failed"]) == (0, 12)
    [at] = answered
    assert at - start < RESPONSE_URL_WITHIN  # the agent did not wait for them


async def replayed(
    emu: WeComEmulator,
    callbacks: list[dict[str, Any]],
    handler: Callable[[httpx.Request], Coroutine[None, None, httpx.Response]],
    agent: cb.Agent,
) -> tuple[cb.Bridge, cb.MemoryStore]:
    """A bridge over a webhook (``earlier_reply`` set, its HTTP through ``handler``) whose
    ``callbacks`` were journaled by a process since gone: their streams lost with it."""
    store = cb.MemoryStore()
    options: dict[str, Any] = {"earlier_reply": "(see below)"}
    await journaled(emu, callbacks, store, **options)
    hook = emu.webhook(transport=httpx.MockTransport(handler), **options)
    return quick_bridge(hook, agent, store=store), store


async def test_an_agent_failing_while_earlier_replies_are_under_way_cuts_none_of_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The earlier answers go on in the connector's tasks: the agent's error fails its run
    (counted) and the earlier message is still answered through its URL (cancelled with the
    run, it was never answered: a failed run is not run again)."""
    emu = WeComEmulator()
    callbacks = [message(emu, "m1", "first"), message(emu, "m2", "second")]

    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(5)
        return await emu.handle_http(request)

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise RuntimeError("agent bug")

    bridge, _ = await replayed(emu, callbacks, slow, agent)
    async with running_bridge(bridge, fail_on_agent_error=False):
        await trio.sleep(30)
    sent = [(a.id, a.text) for a in emu.activity if a.via == "response_url"]
    assert sent == [("m1", "(see below)")]
    stats = bridge.stats()
    assert (stats.runs, stats.failures) == (1, 1)
    assert "wecom.earlier_replies_failed" not in stats.other


async def test_earlier_replies_cut_by_the_connector_stopping_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The run is over (its agent answered, the batch done) while an earlier answer waits on
    a silent host; the bridge stopping cancels it: counted as not answered (it was neither
    counted nor tried again while it held the run open)."""
    emu = WeComEmulator()
    callbacks = [message(emu, "m1", "first"), message(emu, "m2", "second")]
    silent = callbacks[0]["response_url"]

    async def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == silent:
            await trio.sleep_forever()
        return await emu.handle_http(request)

    bridge, store = await replayed(emu, callbacks, handler, echo)
    async with running_bridge(bridge):
        await trio.sleep(5)
        assert bridge.stats().runs == 1  # done, its earlier answer still under way
        assert not await store.journal_pending()
    [answer] = [a for a in emu.activity if a.via == "response_url"]
    assert answer.id == "m2"
    assert bridge.stats().other["wecom.earlier_replies_failed"] == 1


async def test_an_answered_stream_past_its_window_gets_no_earlier_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A run answers m1 and goes on past m1's six minutes; its stream expires and is
    forgotten. m2 then interrupts it and the rerun carries m1 as an earlier message: m1 was
    sent ``earlier_reply`` through its URL, a second answer to it."""
    emu = WeComEmulator()
    async with m1_answered_and_running_on(emu) as (hook, poll):
        first = emu.webhook_open(await emu.webhook_post(hook.asgi, poll))["stream"]
        assert (first["finish"], first["content"]) == (True, "answer to m1")
        await trio.sleep(7 * 60)  # m1's window is over; its run goes on
        await emu.webhook_post(hook.asgi, message(emu, "m2", "again"))
        await trio.sleep(30)
    assert not [a for a in emu.activity if a.via == "response_url"]

"""Hostile WeChat servers and pages: what a bot loses (nothing), what it counts, what it says."""

from __future__ import annotations

import base64
import functools
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given
from test_weixin import CONFIRMED as CONFIRMED_LOGIN
from test_weixin import scripted_login

import trio_chatbridge as cb
from trio_chatbridge._redact import redact_body
from trio_chatbridge.platforms import weixin
from trio_chatbridge.platforms.weixin import _crypto as weixin_crypto
from trio_chatbridge.platforms.weixin import _login as weixin_login
from trio_chatbridge.testing import WeixinEmulator, WeixinFault, running_bridge


@asynccontextmanager
async def bridged(emu: WeixinEmulator, agent: cb.Agent, **options: Any) -> AsyncIterator[cb.Bridge]:
    bridge = cb.Bridge(
        connectors=[emu.connector(**options)],
        agent=agent,
        store=cb.MemoryStore(),
        debounce=cb.Debounce(window=1.0),
    )
    async with running_bridge(bridge):
        yield bridge


@pytest.mark.parametrize(
    ("fault", "gone"),
    [
        (WeixinFault(drop=True), "may have reached"),  # cut off after the request went out
        (WeixinFault.http(502), "may have reached"),  # a gateway that lost the answer
        (WeixinFault(body=b"<html>proxy</html>"), "may have reached"),  # unreadable 200
        (WeixinFault.slow(60), "may have reached"),  # no answer within the request's 15 s
        (WeixinFault.http(403), "was not sent"),  # refused: it never went out
        (WeixinFault.http(429), "was not sent"),  # rate limited: not taken
        (WeixinFault.declined(), "ret=-2"),  # the platform's own refusal
    ],
    ids=["dropped", "502", "unreadable", "silent", "403", "429", "ret-2"],
)
async def test_a_failed_send_is_never_sent_again_says_what_may_have_gone_and_is_counted(
    autojump_clock: trio.testing.MockClock, fault: WeixinFault, gone: str
) -> None:
    """WeChat has no way to drop a second copy of a message (each has a new ``client_id``),
    so a send whose outcome is unknown is not repeated: the error says it may have arrived,
    promises no retry, and the bridge counts the reply that failed."""
    emu = WeixinEmulator()
    emu.fail("sendmessage", fault)
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send("once")
        except cb.SendError as exc:
            errors.append(str(exc))

    async with bridged(emu, agent) as bridge:
        emu.user_says("ann", "hello")
        await trio.sleep(120)  # the send's 15 s, and time for any retry to show
        stats = bridge.stats()
    assert len(emu.calls("sendmessage")) == 1
    [error] = errors
    assert gone in error and "retried" not in error, error
    assert stats.other["weixin.replies_failed"] == 1


class Drip(httpx.AsyncByteStream):
    """A body that begins at once, then gives one byte a second, for ever."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"ret": 0, "msgs": ['
        while True:
            await trio.sleep(1)
            yield b" "


class Dripping(httpx.AsyncBaseTransport):
    """The emulator, but the first ``times`` answers of ``endpoint`` drip (a slowloris)."""

    def __init__(self, emu: WeixinEmulator, endpoint: str, times: int) -> None:
        self._inner = emu.transport()
        self._endpoint = endpoint
        self.left = times

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(self._endpoint) and self.left:
            self.left -= 1
            await request.aread()
            return httpx.Response(200, stream=Drip())
        return await self._inner.handle_async_request(request)


async def test_a_poll_whose_answer_drips_past_its_deadline_is_a_counted_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A long poll with no answer by its deadline is empty (the server had nothing); one
    whose answer began and never ended is a failure: counted, shown as ``backoff``, logged.
    The messages behind it still come, once."""
    emu = WeixinEmulator()
    transport = Dripping(emu, "getupdates", times=2)
    seen: list[str] = []
    states: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(m.text for m in batch.messages)

    async with bridged(emu, agent, transport=transport) as bridge:
        emu.user_says("ann", "hello")
        for _ in range(100):
            await trio.sleep(1)
            states.append(bridge.status()["weixin:bot"].state)
        stats = bridge.stats()
    assert transport.left == 0
    assert seen == ["hello"]
    assert stats.other["weixin.poll_failures"] == 2
    assert "backoff" in states and states[-1] == "running"


async def test_a_send_whose_answer_drips_fails_within_its_time_and_is_not_sent_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emu = WeixinEmulator()
    transport = Dripping(emu, "sendmessage", times=1)
    errors: list[tuple[float, str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        started = trio.current_time()
        try:
            await reply.send("once")
        except cb.SendError as exc:
            errors.append((trio.current_time() - started, str(exc)))

    async with bridged(emu, agent, transport=transport) as bridge:
        emu.user_says("ann", "hello")
        await trio.sleep(120)
        stats = bridge.stats()
    [(took, error)] = errors
    assert took == pytest.approx(15) and "may have reached" in error, error
    assert "did not end" in error
    assert stats.other["weixin.replies_failed"] == 1


@pytest.mark.parametrize(
    "sender", [None, "", [], {"id": "ann"}], ids=["null", "empty", "list", "object"]
)
async def test_a_message_without_a_sender_is_a_counted_bad_message_beside_good_ones(
    autojump_clock: trio.testing.MockClock, sender: object
) -> None:
    """A message nobody can be answered for (no ``from_user_id``) would become a chat ``""``
    shared by every such message, whose replies the platform refuses: it is skipped, counted
    and logged like any bad message, and the messages beside it are handled once each."""
    emu = WeixinEmulator()
    seen: list[tuple[str, str]] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend((m.chat.id, m.text) for m in batch.messages)

    async with bridged(emu, agent) as bridge:
        emu.user_says("ann", "before")
        nobody = emu.user_message("x", [{"type": 1, "text_item": {"text": "from nobody"}}])
        emu.push({**nobody, "from_user_id": sender})
        emu.user_says("bob", "after")
        await trio.sleep(30)
        stats = bridge.stats()
    assert sorted(seen) == [("ann", "before"), ("bob", "after")]
    assert stats.protocol_errors == 1


@pytest.mark.parametrize(("draw", "wait"), [(0.0, 1.6), (0.999, 2.3992)])
async def test_a_storm_of_failed_polls_is_retried_with_jitter_and_at_least_30_s_every_third(
    autojump_clock: trio.testing.MockClock, draw: float, wait: float
) -> None:
    """The accounts of one process that an outage (a 503 or 429 storm) hit together must not
    poll again in lockstep: the 2 s between retries is jittered by a fifth either way; the
    reference clients' 30 s after every third failure in a row stays a floor."""
    emu = WeixinEmulator()
    emu.fail("getupdates", WeixinFault.http(503), times=4)

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    async with bridged(emu, agent, random=lambda: draw):
        await trio.sleep(60)
    times = [call.at for call in emu.calls("getupdates")[:5]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps == pytest.approx([wait, wait, 30.0, wait])


class Redirecting(httpx.AsyncBaseTransport):
    """The emulator, but its first answer to each of ``endpoints`` sends the client to
    another host; every host asked is recorded."""

    def __init__(self, emu: WeixinEmulator, *endpoints: str) -> None:
        self._inner = emu.transport()
        self._left = set(endpoints)
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        endpoint = request.url.path.rsplit("/", 1)[-1]
        if endpoint in self._left:
            self._left.discard(endpoint)
            await request.aread()
            elsewhere = request.url.copy_with(host="elsewhere.example")
            return httpx.Response(307, headers={"Location": str(elsewhere)})
        return await self._inner.handle_async_request(request)


async def test_a_redirect_is_never_followed_even_by_a_client_that_follows_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 307 would send the poll's or the reply's body (the context token, the text) to
    whatever host the answer names: the library follows no redirect, whatever the
    ``http=`` client a user shares says. The poll is a counted failure, retried; the reply a
    ``SendError`` saying it was not sent."""
    emu = WeixinEmulator()
    transport = Redirecting(emu, "getupdates", "sendmessage", "download")
    errors: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        [image] = batch.latest.parts
        assert isinstance(image, cb.Image) and isinstance(reply.connector, weixin.LongPoll)
        with pytest.raises(cb.MediaError) as refused:  # past the media guard's checked host
            await reply.connector.download(image.media)
        errors.append(str(refused.value))
        try:
            await reply.send("once")
        except cb.SendError as exc:
            errors.append(str(exc))

    http = httpx.AsyncClient(transport=transport, follow_redirects=True)
    async with http, bridged(emu, agent, http=http) as bridge:
        emu.user_sends_media("ann", b"a picture")
        await trio.sleep(60)
        stats = bridge.stats()
    assert "elsewhere.example" not in transport.hosts
    assert stats.other["weixin.poll_failures"] == 1
    downloading, sending = errors
    assert "HTTP 307" in downloading, downloading
    assert "was not sent" in sending and "HTTP 307" in sending, sending
    assert "a redirect, never followed" in sending


CONFIRMED: Final = b'{"status":"confirmed","ilink_bot_id":"b@im.bot","bot_token":"secret-tok\\"en"'


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, CONFIRMED),  # cut off: not JSON
        (200, CONFIRMED + b',"aes_key":"a2V5a2V5",]}'),  # broken further on
        (502, CONFIRMED + b"}"),  # a gateway's error page quoting what it got
        (404, b'{"context_token": "ctx-secret", "typing_ticket":"tk"'),
    ],
    ids=["cut", "broken", "502", "404"],
)
async def test_an_unreadable_answer_is_quoted_in_its_error_without_its_secrets(
    autojump_clock: trio.testing.MockClock, status: int, body: bytes
) -> None:
    """The error that quotes a bad answer (shown to a person, logged) shows none of the
    secrets the answer holds: a login's bot token, a media key, a context token."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("get_bot_qrcode"):
            return httpx.Response(200, json={"qrcode": "q1", "qrcode_img_content": "img"})
        return httpx.Response(status, content=body)

    client = weixin.ILinkClient(None, transport=httpx.MockTransport(handle))
    with pytest.raises(cb.ChatBridgeError) as failed:
        if status != 200:
            await client.send_message({"to_user_id": "ann"})
        else:
            await weixin.login(cb.MemoryStore(), "bot", client=client, show=lambda line: None)
    await client.aclose()
    text = str(failed.value)
    for secret in ("secret-tok", "a2V5a2V5", "ctx-secret", '"tk"'):
        assert secret not in text, text
    assert "***" in text, text  # what the answer held is still told, its values masked


@given(
    st.sampled_from(["bot_token", "aes_key", "aeskey", "context_token", "app_secret", "Ticket"]),
    st.text(st.characters(max_codepoint=0x7FF, exclude_characters='"\\'), min_size=8, max_size=30)
    | st.just('a"quoted\\\\secret'),
    st.integers(0, 200),
    st.sampled_from([":", " : ", ":\n"]),
)
def test_a_quoted_answer_never_shows_a_secret_fields_value_wherever_it_is_cut(
    field: str, value: str, cut: int, colon: str
) -> None:
    head = f'{{"ret":-1,"{field}"{colon}"'.encode()
    body = head + json.dumps(value)[1:].encode() + b',"errmsg":"x"}'
    end = body.index(b'",', len(head))  # the value's closing quote
    # the value's opening quote cut off: nothing of it shown; else what is shown is masked
    expected = body[:cut] if cut < len(head) else head + b"***" + body[end:cut]
    assert redact_body(body[:cut]) == expected
    assert redact_body(body[:cut].decode(errors="ignore")) == expected.decode(errors="ignore")


async def test_the_login_deadline_holds_while_the_verification_code_is_awaited(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that asks for the phone's verification code, and nobody types it: the
    login's deadline ends the login (the prompt's thread is left to the process's end)
    instead of waiting on the terminal for good."""
    answered = threading.Event()
    monkeypatch.setattr("builtins.input", lambda prompt="": "123456" if answered.wait(10) else "")

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("get_bot_qrcode"):
            return httpx.Response(200, json={"qrcode": "q1", "qrcode_img_content": "img"})
        return httpx.Response(200, json={"status": "need_verifycode"})

    client = weixin.ILinkClient(None, transport=httpx.MockTransport(handle))
    started = time.monotonic()
    try:
        with pytest.raises(weixin.LoginError, match="not confirmed within 60 s"):
            await weixin.login(
                cb.MemoryStore(), "bot", client=client, show=lambda line: None, deadline=60
            )
        assert time.monotonic() - started < 5  # not the terminal's 10 s
    finally:
        answered.set()
        await client.aclose()


async def test_a_huge_error_message_from_the_server_is_cut_in_the_error_and_the_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An error answer's ``errmsg`` is quoted in the error, the log and the status: a
    server's megabyte of it is cut to a line (the error keeps it whole as ``errmsg``)."""
    emu = WeixinEmulator()
    emu.fail("getupdates", WeixinFault(body={"ret": 1, "errmsg": "x" * 1_000_000}))
    details: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        pass

    async with bridged(emu, agent) as bridge:
        await trio.sleep(1)
        details.append(bridge.status()["weixin:bot"].detail or "")
        emu.user_says("ann", "hello")
        await trio.sleep(10)
        assert bridge.stats().received == 1
    [detail] = details
    assert "ret=1" in detail and "xxx" in detail and len(detail) < 1000, len(detail)


LONE_SURROGATE: Final = b"\\ud800"  # a JSON escape of half a pair: Python's decoder takes it


@pytest.mark.parametrize("where", ["text", "repaired", "id"])
async def test_a_lone_surrogate_escape_spoils_no_good_message_of_its_page(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, where: str
) -> None:
    """A lone surrogate escape (``\\ud800``) is read by Python's decoder (the page's repair)
    into a string UTF-8 cannot encode: the message failed the SQLite journal's write with
    every good message of its page, and the page came again at each poll. It is a bad entry
    now, counted and skipped; the good messages beside it are handled once each."""
    emu = WeixinEmulator()
    seen: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(m.text for m in batch.messages)

    bad = emu.user_message("eve", [{"type": 1, "text_item": {"text": "bad PLACEHOLDER"}}])
    if where == "repaired":  # a field of the wrong type too: the entry goes through the repair
        bad["seq"] = "not a number"
    elif where == "id":  # where a number belongs: the repair's conversion meets it
        bad["seq"] = "PLACEHOLDER"
    page = {
        "ret": 0,
        "msgs": [
            emu.user_message("ann", [{"type": 1, "text_item": {"text": "before"}}]),
            bad,
            emu.user_message("bob", [{"type": 1, "text_item": {"text": "after"}}]),
        ],
        "get_updates_buf": "",
    }
    body = json.dumps(page).encode().replace(b"PLACEHOLDER", LONE_SURROGATE)
    emu.fail("getupdates", WeixinFault(body=body))
    bridge = cb.Bridge(
        connectors=[emu.connector()],
        agent=agent,
        store=cb.SQLiteStore(tmp_path / "journal.db", threaded=False),  # on the test clock
        debounce=cb.Debounce(window=1.0),
    )
    async with running_bridge(bridge):
        await trio.sleep(30)
        stats = bridge.stats()
    assert sorted(seen) == ["after", "before"]
    assert stats.protocol_errors == 1
    assert stats.reconnects == 0


async def assert_paused_once(emu: WeixinEmulator, bridge: cb.Bridge) -> None:
    """After 10 s, the account is paused: no poll for the next ten minutes, the status says
    to log in again, and the expiry was counted once."""
    await trio.sleep(10)
    polls = len(emu.calls("getupdates"))
    await trio.sleep(600)
    assert len(emu.calls("getupdates")) == polls  # paused: no poll
    status = bridge.status()["weixin:bot"]
    assert status.state == "paused" and "weixin-login" in (status.detail or "")
    assert bridge.stats().other["weixin.session_expired"] == 1


@pytest.mark.parametrize("how", ["send", "send_media", "stream"])
async def test_a_session_expiry_met_while_sending_pauses_the_account_like_one_met_polling(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """errcode -14 on ``sendmessage`` or ``getuploadurl``, or when a reply stream closes: a
    :class:`~weixin.SessionPausedError` saying to log in again, counted, and the account paused
    (later sends fail fast, without a request; polls wait) as a -14 from a poll does."""
    emu = WeixinEmulator()
    emu.fail(
        "getuploadurl" if how == "send_media" else "sendmessage", WeixinFault.session_expired()
    )
    errors: list[BaseException] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            if how == "send":
                await reply.send("first")
            elif how == "send_media":
                await reply.send_media(b"data", filename="a.txt")
            else:
                async with reply.stream() as stream:
                    await stream.write("partial ")
                    await stream.write("answer")
        except Exception as exc:
            errors.append(exc)
        try:
            await reply.send("second")
        except Exception as exc:
            errors.append(exc)

    async with bridged(emu, agent) as bridge:
        emu.user_says("u", "hi")
        await assert_paused_once(emu, bridge)
    assert len(errors) == 2, errors
    assert all(isinstance(e, weixin.SessionPausedError) for e in errors), errors
    assert "weixin-login" in str(errors[0]) and "weixin-login" in str(errors[1])
    assert len(emu.calls("sendmessage")) == (1 if how != "send_media" else 0)


async def test_already_bound_is_no_login_when_this_account_has_no_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``binded_redirect`` answers a login that sent its earlier tokens: with none stored
    (none sent), "already bound" would report a login that left the account without a token,
    and the connector would then fail for want of one."""
    store = cb.MemoryStore()
    client, _ = scripted_login({"status": "scaned"}, {"status": "binded_redirect"})
    with pytest.raises(weixin.LoginError, match="no token is stored") as info:
        await weixin.login(store, "bot", client=client, show=lambda line: None)
    assert "log in again" in str(info.value)
    assert await store.get("weixin", "bot", "token") is None
    # with a token stored (and sent), the same answer keeps it: a success
    await store.set("weixin", "bot", "token", "old-token")
    client, _ = scripted_login({"status": "binded_redirect"})
    result = await weixin.login(store, "bot", client=client, show=lambda line: None)
    assert result.already_bound and await store.get("weixin", "bot", "token") == "old-token"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _cdn_answers() -> dict[str, bytes]:
    key = bytes(range(16))
    body = weixin_crypto.encrypt(key, b"the picture")
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
    return {
        "good": head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        "short": head + b"Content-Length: %d\r\n\r\n%s" % (len(body) + 100, body),
        "longer": head + b"Content-Length: %d\r\n\r\n%s" % (len(body) - 16, body),
        "endless": head + b"Transfer-Encoding: chunked\r\n\r\n",  # then chunks, forever
        "bad padding": head + b"Content-Length: 16\r\n\r\n" + b"\x00" * 16,
        "not blocks": head + b"Content-Length: 17\r\n\r\n" + b"\x00" * 17,
    }


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ("good", None),
        ("short", "RemoteProtocolError"),  # closes before its Content-Length
        ("longer", "cannot decrypt"),  # the bytes past Content-Length are never read
        ("endless", "runs over the 65536-byte cap"),
        ("bad padding", "bad PKCS#7 padding"),
        ("not blocks", "not whole AES blocks"),
    ],
)
# An answer abandoned at the cap leaves httpcore's nested body generators to the collector,
# which trio reports: httpcore's, not ours; the connection itself is closed
# (https://github.com/encode/httpx/issues/3686).
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <async_generator object \w+\.(__aiter__|_receive_response_body)"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_cdn_media_that_lies_about_its_length_or_is_damaged_is_a_clear_media_error(
    answer: str, says: str | None
) -> None:
    """A CDN (or a host pretending to be one) on a loopback socket: a body cut short of its
    Content-Length, longer than it, endless, or not a valid ciphertext is a MediaError saying
    why, within the policy's cap and deadline; a good one decrypts."""
    raw = _cdn_answers()[answer]

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the request (small: one read)
        await stream.send_all(raw)
        while answer == "endless":
            await stream.send_all(b"4000\r\n" + b"\x00" * 0x4000 + b"\r\n")
        await stream.aclose()

    policy = cb.MediaPolicy(
        allowed_hosts=("127.0.0.1",), private_addresses=True, max_bytes=65536, timeout=5
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1")
            )
            port = listener.socket.getsockname()[1]
            connector = weixin.LongPoll(account="bot", token="t", media=policy)
            media = cb.Media(
                "file",
                ref=cb.Handle.of(
                    {"full_url": f"http://127.0.0.1:{port}/x", "aes_key": b64(bytes(range(16)))}
                ),
            )
            try:
                if says is None:
                    assert await connector.download(media) == b"the picture"
                else:
                    with pytest.raises(cb.MediaError, match=says):
                        await connector.download(media)
            finally:
                await connector.aclose()
                nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bad", [2, 3])
async def test_an_unreadable_status_answer_mid_login_costs_a_poll_not_the_login(
    autojump_clock: trio.testing.MockClock, bad: int
) -> None:
    """A proxy's HTML page or a cut answer to one status poll, while the owner is scanning:
    the login polls again; only answers unreadable time after time end it, saying why."""
    answers = [b'{"status":"scaned"}'] + [b"<html>gateway</html>"] * bad
    answers.append(json.dumps(CONFIRMED_LOGIN).encode())

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("get_bot_qrcode"):
            return httpx.Response(200, json={"qrcode": "q1", "qrcode_img_content": "img"})
        return httpx.Response(200, content=answers.pop(0))

    store = cb.MemoryStore()
    client = weixin.ILinkClient(None, transport=httpx.MockTransport(handle))
    try:
        if bad < weixin_login.MAX_BAD_ANSWERS:
            result = await weixin.login(store, "bot", client=client, show=lambda line: None)
            assert result.bot_id == "b@im.bot"
            assert await store.get("weixin", "bot", "token") == "secret-token"
        else:
            with pytest.raises(weixin.LoginError, match="3 unreadable answers in a row"):
                await weixin.login(store, "bot", client=client, show=lambda line: None)
            assert await store.get("weixin", "bot", "token") is None
    finally:
        await client.aclose()


@pytest.mark.parametrize("endpoint", ["getconfig", "sendtyping", "notifystart"])
async def test_a_session_expiry_on_any_call_pauses_the_account_through_the_one_guard(
    autojump_clock: trio.testing.MockClock, endpoint: str
) -> None:
    """errcode -14 on the typing ticket (``getconfig``), the typing indicator (``sendtyping``)
    or ``notifystart`` pauses the account as one on a poll or a send does: counted once, no
    poll for the hour, and the agent's reply fails fast (no request) saying to log in again.
    The message itself is kept: the agent ran, its reply is what the pause refused."""
    emu = WeixinEmulator()
    emu.fail(endpoint, WeixinFault.session_expired())
    errors: list[BaseException] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(1)  # the typing indicator is shown meanwhile
        try:
            await reply.send("answer")
        except Exception as exc:
            errors.append(exc)

    async with bridged(emu, agent) as bridge:
        if endpoint != "notifystart":
            emu.user_says("u", "hi")
        await assert_paused_once(emu, bridge)
    assert emu.calls("sendmessage") == []
    if endpoint != "notifystart":
        assert len(errors) == 1 and isinstance(errors[0], weixin.SessionPausedError), errors
        assert "weixin-login" in str(errors[0])


async def test_a_second_session_expiry_within_the_pause_neither_counts_nor_extends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A poll in flight when a send met errcode -14 answers -14 too, 9 s later: the same
    expiry, so ``session_expired`` stays 1 and polling resumes one hour after the first -14
    (not after the second)."""
    emu = WeixinEmulator()
    expired = WeixinFault.session_expired()
    emu.fail("getupdates", WeixinFault(body=expired.body, delay=10))  # answers at t=10
    emu.fail("sendmessage", expired)
    connector = emu.connector()
    target = weixin.to_message("bot", emu.user_message("u", []))
    assert target is not None

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        raise AssertionError("no message is polled in this test")

    bridge = cb.Bridge(connectors=[connector], agent=agent, store=cb.MemoryStore())
    async with running_bridge(bridge):
        start = trio.current_time()
        await trio.sleep(1)
        with pytest.raises(weixin.SessionPausedError, match="weixin-login"):
            await connector.send(target, "hello")
        await trio.sleep(3599 + 5)  # the hour from the send's -14 has ended, plus 5 s
        polls = [r.at - start for r in emu.calls("getupdates")]
        stats = bridge.stats()
    assert stats.other["weixin.session_expired"] == 1
    assert polls[0] == 0
    assert len(polls) >= 2 and 3601 <= polls[1] < 3605, polls


async def test_a_server_asking_for_the_verification_code_forever_ends_the_login(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server (or a script) answering ``need_verifycode`` to every poll, whatever the code:
    the login asks again only after a pause on Trio's clock, and at most
    ``MAX_VERIFY_CODES`` times for one QR code, then ends with a :class:`LoginError` saying
    what to do (never a poll loop without pause, nor a prompt forever)."""
    client, asked = scripted_login(*[{"status": "need_verifycode"}] * 100)
    codes: list[float] = []

    async def code() -> str:
        codes.append(trio.current_time())
        assert len(codes) <= 20, "asked for the code without end"
        return "000000"

    with pytest.raises(weixin.LoginError, match="verification code") as info:
        await weixin.login(
            cb.MemoryStore(), "bot", client=client, show=lambda line: None, ask_code=code
        )
    await client.aclose()
    assert len(codes) == weixin_login.MAX_VERIFY_CODES
    gaps = [b - a for a, b in itertools.pairwise(codes)]
    assert all(gap >= weixin_login.POLL_PAUSE for gap in gaps), gaps
    assert "bot" in str(info.value) and "log in again" in str(info.value)
    # each code was sent once, on the poll right after it was asked for
    polls = [url for url in asked if "get_qrcode_status" in url]
    assert len(polls) == weixin_login.MAX_VERIFY_CODES + 1


@pytest.mark.parametrize(
    "fault",
    [
        ("cdn_upload", WeixinFault.http(413)),  # the CDN refuses it for good
        ("cdn_upload", WeixinFault.http(500)),  # three attempts, all failed
        ("getuploadurl", WeixinFault(body={"upload_full_url": "http://169.254.169.254/up"})),
    ],
    ids=["refused", "failing", "off-policy"],
)
async def test_a_reply_that_failed_at_its_media_upload_is_a_failed_reply(
    autojump_clock: trio.testing.MockClock, fault: tuple[str, WeixinFault]
) -> None:
    """An upload the CDN refuses or fails, or one the media policy refuses (a server-named
    URL off it): the agent gets the :class:`MediaError` saying why, and the reply is counted
    in ``weixin.replies_failed`` as any reply that did not reach the user; nothing is sent."""
    emu = WeixinEmulator()
    emu.fail(*fault, times=3)
    errors: list[BaseException] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        try:
            await reply.send_media(b"data", filename="a.txt")
        except Exception as exc:
            errors.append(exc)

    async with bridged(emu, agent) as bridge:
        emu.user_says("u", "file")
        await trio.sleep(30)
        stats = bridge.stats()
    assert len(errors) == 1 and isinstance(errors[0], cb.MediaError), errors
    assert stats.other["weixin.replies_failed"] == 1
    assert emu.calls("sendmessage") == []


@pytest.mark.parametrize(
    "cursors",
    [("c1", "c2", "c3"), ("c2", "c1", "c0")],
    ids=["same page, new cursors", "cursor going backwards"],
)
async def test_a_page_served_again_under_another_cursor_reaches_the_agent_once(
    autojump_clock: trio.testing.MockClock, cursors: tuple[str, str, str]
) -> None:
    """A server that sends the same messages again under a new cursor, or moves the cursor
    back and sends older messages again with a new one: each message reaches the agent once
    (the journal drops the repeats, counted in ``duplicates``), and the cursor saved is the
    server's last."""
    emu = WeixinEmulator()
    first, second, third = (
        emu.user_message(u, [{"type": 1, "text_item": {"text": u}}]) for u in "abc"
    )
    pages = iter(
        [
            {"ret": 0, "msgs": [first, second], "get_updates_buf": cursors[0]},
            {"ret": 0, "msgs": [first, second], "get_updates_buf": cursors[1]},
            {"ret": 0, "msgs": [first, second, third], "get_updates_buf": cursors[2]},
        ]
    )

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("getupdates"):
            page = next(pages, None)
            if page is None:
                await trio.sleep(35)
                page = {"ret": 0, "msgs": [], "get_updates_buf": cursors[2]}
            return httpx.Response(200, json=page)
        return httpx.Response(200, json={"ret": 0})

    seen: list[str] = []

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        seen.extend(m.text for m in batch.messages)

    store = cb.MemoryStore()
    connector = weixin.LongPoll(
        account="bot",
        token="t",
        base_url="http://hostile.invalid/",
        transport=httpx.MockTransport(handle),
    )
    bridge = cb.Bridge(connectors=[connector], agent=agent, store=store)
    async with running_bridge(bridge):
        await trio.sleep(60)
        stats = bridge.stats()
    assert sorted(seen) == ["a", "b", "c"]
    assert stats.duplicates == 4
    assert await store.get_cursor("weixin", "bot") == cursors[2]

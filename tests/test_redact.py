"""No credential in any log record, ours or our dependencies': the redacting filter, and the
check every test runs under (conftest.py)."""

from __future__ import annotations

import gc
import logging
import string
import weakref
from typing import Final

import httpx
import pytest
import trio
import trio.lowlevel
import trio.testing
import trio_websocket
from hypothesis import given
from hypothesis import strategies as st
from leaks import COMPACT_AT, PUBLIC_CLASSES, SecretWatch

import trio_chatbridge as cb
from trio_chatbridge._redact import redact
from trio_chatbridge.testing import FakeConnector, running_bridge


async def test_the_websocket_url_trio_websocket_logs_has_its_credentials_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Lark WebSocket URL carries the connection's access key and ticket in its query;
    trio-websocket logs it at DEBUG when it connects."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        await request.accept()

    caplog.set_level(logging.DEBUG)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None
            )
            port = server.port
            url = f"ws://127.0.0.1:{port}/ws?device_id=7&access_key=AK-SECRET&ticket=TK-SECRET"
            async with trio_websocket.open_websocket_url(url):
                pass
            nursery.cancel_scope.cancel()
    connecting = [r.getMessage() for r in caplog.records if r.name == "trio-websocket"]
    assert (
        f"Connecting to ws://127.0.0.1:{port}/ws?device_id=***&access_key=***&ticket=***"
        in connecting
    )
    assert "SECRET" not in caplog.text


async def test_the_urls_httpx_logs_have_their_query_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    transport = httpx.MockTransport(lambda request: httpx.Response(404))
    async with httpx.AsyncClient(transport=transport) as http:
        url = "https://novac2c.cdn.weixin.qq.com/c2c/download?encrypted_query_param=EQP-SECRET"
        response = await http.get(url)
    with pytest.raises(httpx.HTTPStatusError) as failure:  # its text quotes the URL too
        response.raise_for_status()
    logging.getLogger("trio_chatbridge").error("download failed", exc_info=failure.value)
    assert "encrypted_query_param=***" in caplog.text
    assert "EQP-SECRET" not in caplog.text


async def _no_agent(batch: cb.Batch, reply: cb.Reply) -> None:
    pass


async def test_loggers_made_after_import_are_guarded_once_a_bridge_runs(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    later = logging.getLogger("trio_chatbridge.made.later")
    async with running_bridge(cb.Bridge([FakeConnector()], _no_agent, store=cb.MemoryStore())):
        later.warning("fetching https://example.invalid/x?ticket=TK-SECRET")
    assert "ticket=***" in caplog.text
    assert "TK-SECRET" not in caplog.text


def test_redaction_leaves_text_without_urls_alone() -> None:
    record = logging.LogRecord("httpx", logging.INFO, "f", 1, "status %s of %s", (200, "a=b"), None)
    logging.getLogger("httpx").handle(record)
    assert record.getMessage() == "status 200 of a=b"


class _Leaky:
    def __init__(self, name: str, token: str) -> None:
        self.name, self.token = name, token

    def __repr__(self) -> str:
        return f"_Leaky({self.name}, {self.token})"


def test_the_check_every_test_runs_under_can_fail() -> None:
    """What conftest.py's fixture catches: a configured secret in a record or a repr, and a
    credential-bearing URL that was not redacted."""
    watch = SecretWatch()
    make = watch.watching(_Leaky)
    leaky = _Leaky.__new__(_Leaky)
    make(leaky, "short", token="token-for-the-check")
    assert (watch.secrets, watch.made()) == ({"token-for-the-check"}, [leaky])
    assert watch.leaks == ["repr of a _Leaky: _Leaky(short, token-for-the-check)"]
    for text in ("token is token-for-the-check", "wss://h/ws?access_key=abc", "all fine"):
        watch.handle(logging.LogRecord("x", logging.DEBUG, "f", 1, text, None, None))
    assert len(watch.leaks) == 3


def test_the_check_keeps_nothing_alive_and_still_sees_what_is_gone() -> None:
    """The check holds what a test made weakly: a long test (the soak: a reply per run, and
    through it its messages) would otherwise have every object it ever made measured as the
    bridge's memory. An object gone before the end was checked when it was made."""
    watch = SecretWatch()
    make = watch.watching(_Leaky)
    leaky = _Leaky.__new__(_Leaky)
    make(leaky, "gone", token="token-for-the-check")
    gone = weakref.ref(leaky)
    del leaky
    gc.collect()
    assert gone() is None
    assert watch.made() == []
    assert watch.leaks == ["repr of a _Leaky: _Leaky(gone, token-for-the-check)"]
    for _ in range(3 * COMPACT_AT):  # many made and dropped: their references go too
        make(_Leaky.__new__(_Leaky), "gone", token="token-for-the-check")
    assert len(watch._made) <= COMPACT_AT


def test_every_object_the_check_watches_can_be_held_weakly() -> None:
    """The check keeps an object that cannot be held weakly (no ``__weakref__`` slot) alive
    to the end of the test: since `Reply` got ``__slots__`` without one, the soak kept every
    run's reply and, through it, its batch's messages (10,000 sessions: +106 % live memory
    in five rounds, read as the bridge's). Every public class must take a weak reference."""
    strong = [cls.__qualname__ for cls in PUBLIC_CLASSES if cls.__weakrefoffset__ == 0]
    assert strong == []


async def test_a_memory_store_shows_nothing_it_holds() -> None:
    store = cb.MemoryStore()
    await store.set("weixin", "bot", "token", "bot-token-in-the-store")
    assert "bot-token-in-the-store" not in repr(store)


_URL_CHARS: Final = string.ascii_letters + string.digits + "-._~%!$&'()*+,;="


@given(
    scheme=st.from_regex(r"[A-Za-z][A-Za-z0-9+.\-]{0,12}", fullmatch=True),
    # (a quote in the user name ends the URL for the query's redaction, not the password's)
    user=st.text(_URL_CHARS.replace("'", "") + "@", max_size=8),
    password=st.text(_URL_CHARS + "@:", min_size=1, max_size=24),  # urlsplit takes a raw @
    rest=st.sampled_from(["", "/", "/db", ":5672/vhost", "?prefix=a", "/x?y=1#f", "/x@y"]),
    around=st.sampled_from(["cannot connect to {} (refused)", '{{"url": "{}"}}', "url={}"]),
)
def test_no_password_of_any_scheme_survives_redaction(
    scheme: str, user: str, password: str, rest: str, around: str
) -> None:
    """``amqp://user:pw@host``, ``postgresql+asyncpg://...``: any scheme, not only the ones
    the library speaks (an error or a config value may quote any URL)."""
    rest_clean = rest.replace("y=1", "y=***").replace("prefix=a", "prefix=***")
    text = around.format(f"{scheme}://{user}:{password}@host.example{rest}")
    assert redact(text) == around.format(f"{scheme}://{user}:***@host.example{rest_clean}")


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("amqp://guest:s3cret@rabbit:5672/", "amqp://guest:***@rabbit:5672/"),
        ("postgresql://app:pw,with,commas@db/app", "postgresql://app:***@db/app"),
        (
            "postgresql+asyncpg://app:p@ss@db/app?ssl=1",
            "postgresql+asyncpg://app:***@db/app?ssl=***",
        ),
        ("mongodb+srv://u:p:w@cluster0.example/x", "mongodb+srv://u:***@cluster0.example/x"),
        ("nats://us@er:pw@nats:4222", "nats://us@er:***@nats:4222"),  # urlsplit's user: 'us@er'
    ],
)
def test_urls_of_other_schemes_lose_their_password(text: str, clean: str) -> None:
    assert redact(text) == clean

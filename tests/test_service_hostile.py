"""The service under a hostile operator and hostile HTTP clients: what it shows, how it fails
at start, and what its endpoint answers."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import string
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import httpx
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trio_chatbridge as cb
from trio_chatbridge import _health
from trio_chatbridge._asgi import ASGIApp
from trio_chatbridge._config import HttpConfig, InvalidConfig, load_config
from trio_chatbridge._redact import redact
from trio_chatbridge._service import ExitCode, run_service
from trio_chatbridge.platforms import wecom
from trio_chatbridge.testing import FakeConnector, WeComEmulator

ROOT: Final = Path(__file__).resolve().parent.parent
URL_PASSWORD: Final = "pw-in-the-url-7Qx"
AGENT: Final = """\
import trio_chatbridge as cb


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)
"""
CONFIG: Final = """\
agent = "hostilebot:agent"
store = "{store}"
{http}
[[connectors]]
platform = "wecom"
bot_id = "bot-1"
secret = "wecom-secret"
url = "ws://127.0.0.1:9/"
"""


async def _echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


async def test_a_password_in_a_connector_url_shows_neither_in_the_log_nor_in_readyz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WebSocket URL with a user part (``wss://user:password@host/``) failing to connect:
    its password reached the WARNING line and /readyz's ``last_error`` before."""
    caplog.set_level(logging.INFO)
    connector = wecom.LongConnection(
        bot_id="bot-1", secret="wecom-secret", url=f"ws://proxy:{URL_PASSWORD}@127.0.0.1:1/"
    )
    bridge = cb.Bridge([connector], _echo, store=cb.MemoryStore())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            service = await nursery.start(
                lambda task_status: run_service(
                    bridge, http=HttpConfig(listen="127.0.0.1:0"), task_status=task_status
                )
            )
            await bridge.wait_status(lambda s: s[connector.name].last_error is not None)
            ready = await client.get(service[0] + "/readyz")
            nursery.cancel_scope.cancel()
    error = ready.json()["connectors"][connector.name]["last_error"]
    assert "ws://proxy:***@127.0.0.1:1/" in error
    assert URL_PASSWORD not in ready.text
    assert "ws://proxy:***@127.0.0.1:1/" in caplog.text
    assert URL_PASSWORD not in caplog.text


_URL_CHARS = string.ascii_letters + string.digits + "-._~%!$&'()*+,;="


@given(
    scheme=st.sampled_from(["http", "https", "ws", "wss", "redis", "rediss", "WSS"]),
    user=st.text(_URL_CHARS.replace("&", ""), max_size=8),
    password=st.text(_URL_CHARS + "@:", min_size=1, max_size=20),  # urlsplit takes a raw @
    rest=st.sampled_from(["", "/", "/path", ":6379/0", "?prefix=a", "/x?y=1#f"]),
)
def test_no_url_password_survives_redaction(
    scheme: str, user: str, password: str, rest: str
) -> None:
    url = f"{scheme}://{user}:{password}@host.example{rest}"
    clean = redact(f"cannot connect to {url} (refused)")
    assert clean.startswith(f"cannot connect to {scheme}://{user}:***@host.example")
    assert clean.endswith(" (refused)")


def test_a_password_holding_an_at_sign_is_redacted_to_the_host() -> None:
    """urlsplit and coredis take the user part to the last ``@``: it leaked past the first."""
    assert redact("redis://:p@ss@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("wss://u:a@b:c@host/x@y?k=v@w") == "wss://u:***@host/x@y?k=***"
    # A ``;`` and ``=`` in the user part were taken for a query parameter, the host with it.
    assert redact("redis://;a=:pw@host/0?x=1") == "redis://;a=:***@host/0?x=***"


# -- failing at start: one line naming what to fix, never a traceback --------------------------


@pytest.mark.parametrize(
    ("store", "said"),
    [
        ("sqlite:///{dir}/missing/bot.db", "the directory {dir}/missing does not exist"),
        ("sqlite:///{dir}", "{dir} is a directory: name a file in it"),
    ],
)
def test_a_sqlite_store_that_cannot_be_created_is_a_problem_of_the_store_key(
    tmp_path: Path, store: str, said: str
) -> None:
    (tmp_path / "hostilebot.py").write_text(AGENT)
    config = tmp_path / "bot.toml"
    config.write_text(CONFIG.format(store=store.format(dir=tmp_path), http=""))
    with pytest.raises(InvalidConfig) as problems:
        load_config(config, {})
    assert [
        (p.path, p.message.startswith(said.format(dir=tmp_path))) for p in problems.value.problems
    ] == [("store", True)]


async def test_a_taken_http_port_is_named_and_nothing_is_accepted_meanwhile() -> None:
    chat = FakeConnector()
    bridge = cb.Bridge([chat], _echo, store=cb.MemoryStore())
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with (
            trio.fail_after(10),
            pytest.RaisesGroup(
                pytest.RaisesExc(
                    cb.ChatBridgeError, match=rf"^http\.listen: cannot listen on {listen}: "
                ),
                flatten_subgroups=True,
            ),
        ):
            await run_service(bridge, http=HttpConfig(listen=listen))
    assert bridge.status()[chat.name].state == "starting"  # never run: nothing accepted


@pytest.mark.timeout(120)
def test_a_store_that_cannot_be_opened_stops_run_and_check_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "hostilebot.py").write_text(AGENT)
    (tmp_path / "bot.db").write_text("not a database\n")
    config = tmp_path / "bot.toml"
    config.write_text(CONFIG.format(store=f"sqlite:///{tmp_path}/bot.db", http=""))
    for args, code in ((["run"], 1), (["check", "--timeout", "5"], 1)):
        result = subprocess.run(
            [sys.executable, "-m", "trio_chatbridge", *args, str(config)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=50,
        )
        assert result.returncode == code, result.stderr
        assert "Traceback" not in result.stderr
        assert re.search(
            rf"(stopped|store): StoreError: cannot open {tmp_path}/bot.db .*not a database$",
            result.stderr,
            re.M,
        ), result.stderr


# -- signals ------------------------------------------------------------------------------------


class _LockedStore(cb.MemoryStore):
    """A store whose opening waits, as one held by another process does (cancellable)."""

    async def open(self) -> None:
        await trio.sleep_forever()


async def test_a_signal_while_the_store_is_still_opening_stops_at_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bridge = cb.Bridge([FakeConnector()], _echo, store=_LockedStore())
    codes: list[int] = []

    async def program() -> None:
        codes.append(await run_service(bridge))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(program)
            await trio.sleep(5)
            os.kill(os.getpid(), signal.SIGTERM)
    assert codes == [ExitCode.OK]
    assert trio.current_time() < 6  # not after the store, which never opens
    assert "SIGTERM while starting: stopping" in caplog.text


# -- the endpoint under hostile HTTP -------------------------------------------------------------


async def test_the_endpoint_refuses_other_methods_and_outlives_hostile_clients() -> None:
    bridge = cb.Bridge([FakeConnector()], _echo, store=cb.MemoryStore())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            urls = await nursery.start(
                lambda task_status: run_service(
                    bridge, http=HttpConfig(listen="127.0.0.1:0"), task_status=task_status
                )
            )
            url = urls[0]
            assert url.startswith("http://127.0.0.1:")  # where [http] listen said
            port = int(url.rsplit(":", 1)[1])
            for method in ("POST", "DELETE", "PUT"):
                refused = await client.request(method, url + "/readyz", content=b"x" * 10_000)
                assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
            head = await client.head(url + "/healthz")
            assert (head.status_code, head.content) == (200, b"")
            # Clients that hold connections open mid-request, and one with a 200 kB header.
            idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(50)]
            for stream in idle:
                await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            huge = await trio.open_tcp_stream("127.0.0.1", port)
            try:  # refused with 431, or reset before the answer could be read
                await huge.send_all(b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 200_000 + b"\r\n\r\n")
                answer = await huge.receive_some(100)
            except trio.BrokenResourceError:
                answer = b""
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
            assert (await client.get(url + "/healthz")).text == "ok\n"
            assert (await client.get(url + "/nothing/here")).status_code == 404
            for stream in [*idle, huge]:
                await stream.aclose()
            nursery.cancel_scope.cancel()


def test_a_credential_written_in_the_file_is_named_and_one_from_outside_is_not(
    tmp_path: Path,
) -> None:
    (tmp_path / "hostilebot.py").write_text(AGENT)
    (tmp_path / "aes_key").write_text("k" * 43 + "\n")
    config = tmp_path / "bot.toml"
    config.write_text(
        CONFIG.format(store="memory://", http="")  # connectors[0].secret is inline
        + '\n[[connectors]]\nplatform = "wecom-webhook"\nbot_id = "bot-2"\n'
        'token = "${HOOK_TOKEN}"\nencoding_aes_key = "${file:aes_key}"\n'
        '\n[[connectors]]\nplatform = "lark"\napp_id = "cli_1"\napp_secret = "inline$$dollar"\n'
    )
    loaded = load_config(config, {"HOOK_TOKEN": "from-the-environment"})
    assert loaded.inline_secrets == ("connectors[0].secret", "connectors[2].app_secret")


@asynccontextmanager
async def _endpoint(
    bridge: cb.Bridge, mounted: Mapping[str, ASGIApp] | None = None
) -> AsyncIterator[tuple[str, int]]:
    """The service running ``bridge`` with an endpoint on a free port: its URL and port."""
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: run_service(
                bridge,
                http=HttpConfig(listen="127.0.0.1:0"),
                mounted=mounted,
                task_status=task_status,
            )
        )
        yield urls[0], int(urls[0].rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def _exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; everything answered until the server closes it
    (a test's bound fails one that never closes)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("path", ["/healthz", "/hooks/wecom?echostr=x"])
async def test_a_request_with_both_body_lengths_is_refused_and_its_connection_closed(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Content-Length and Transfer-Encoding together, the shape of request smuggling: a proxy
    in front that trusts the other header than we do would see a second request in this
    one's body. It is refused (400) and the connection closed (RFC 9112 section 6.3), so the
    request pipelined after it is never answered; before, both were answered with 200."""
    emulator = WeComEmulator()
    webhook = wecom.Webhook(
        bot_id=emulator.bot_id, token=emulator.token, encoding_aes_key=emulator.encoding_aes_key
    )
    bridge = cb.Bridge([webhook], _echo, store=cb.MemoryStore())
    with trio.fail_after(20):
        async with _endpoint(bridge, {"/hooks/wecom": webhook.asgi}) as (url, port):
            answer = await _exchange(
                port,
                f"GET {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\n".encode()
                + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            assert answer.count(b"HTTP/1.1 ") == 1, answer  # the smuggled GET went unanswered
            assert b"Content-Length and Transfer-Encoding" in answer
            async with httpx.AsyncClient() as client:  # the endpoint goes on
                assert (await client.get(url + "/healthz")).text == "ok\n"
    # Answering while hypercorn still parsed the body raced its close (BusyResourceError).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_body_sent_to_the_endpoints_own_paths_is_not_waited_for() -> None:
    """/healthz and the others take no body: one announced is not read (a client dripping it
    held the connection, and its answer, for as long as it liked); the answer comes at once,
    and the connection closes after it instead of being reused."""
    bridge = cb.Bridge([FakeConnector()], _echo, store=cb.MemoryStore())
    with trio.fail_after(20):
        async with _endpoint(bridge) as (_, port):
            # 100 MB announced, one byte sent: before, the answer waited for the rest.
            answer = await _exchange(
                port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\na"
            )
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert b"\r\nok\n\r\n" in answer, answer  # the one chunk of the answer's body
            chunked = await _exchange(
                port,
                b"GET /readyz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            )
            assert chunked.startswith(b"HTTP/1.1 200 "), chunked


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux's TCP_USER_TIMEOUT")
async def test_a_client_that_never_reads_cannot_hold_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client pipelines requests and never reads the answers: once the socket's buffers are
    full, hypercorn's send waits, shielded from cancellation, and the service's stop (even a
    second signal) waited with it for good. The kernel now drops such a connection after
    ``SEND_WITHIN`` (TCP_USER_TIMEOUT), and the stop ends."""
    monkeypatch.setattr(_health, "SEND_WITHIN", 2.0)
    bridge = cb.Bridge([FakeConnector()], _echo, store=cb.MemoryStore())
    stopped = trio.Event()
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await run_service(
                bridge, http=HttpConfig(listen="127.0.0.1:0"), task_status=task_status
            )
            stopped.set()

        urls = await nursery.start(serve)
        port = int(urls[0].rsplit(":", 1)[1])
        greedy = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError):
            # Until both sides' buffers are full (or the server has dropped it already).
            await greedy.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200_000)
        bridge.shutdown()
        with trio.move_on_after(10):  # the bound if the stop still waits: then it fails
            await stopped.wait()
        held = not stopped.is_set()
        await greedy.aclose()  # lets a stop that waited for it end
    assert not held, "the stop waited for a client that never reads"

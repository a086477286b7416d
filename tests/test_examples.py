"""The examples in examples/ run, against emulators, and do what their comments say."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.testing import WeComEmulator, running_bridge

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
LIMIT = 20.0  # seconds any one real-time test may take
QUICK = cb.Debounce(window=0.05, max_delay=1.0)


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ModuleType]]:
    """Import an example by name, as running it from examples/ would."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str) -> ModuleType:
        __import__(name)
        return sys.modules[name]

    yield load


async def test_the_users_own_test_file_passes(
    examples: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    tests = examples("test_my_bot")
    names = [name for name in vars(tests) if name.startswith("test_")]
    assert len(names) == 2
    for name in names:
        await getattr(tests, name)(autojump_clock)


@asynccontextmanager
async def echo_bot_on_loopback(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, cb.Bridge, trio.Nursery]]:
    """A loopback WeCom emulator, the environment naming it as a user would set it, and
    echo_bot's bridge built from that environment (not started); the emulator stops after."""
    echo_bot, wecom_env = examples("echo_bot"), examples("wecom_env")
    monkeypatch.setattr(echo_bot, "DEBOUNCE", QUICK)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            emulator = await nursery.start(WeComEmulator().serve)
            monkeypatch.setenv("WECOM_BOT_ID", emulator.bot_id)
            monkeypatch.setenv("WECOM_SECRET", emulator.secret)
            monkeypatch.setenv("WECOM_URL", emulator.ws_url)
            yield emulator, echo_bot.make_bridge(wecom_env.from_env(), cb.MemoryStore()), nursery
            nursery.cancel_scope.cancel()


async def test_echo_bot_answers_on_a_loopback_emulator_named_by_the_environment(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        echo_bot_on_loopback(examples, monkeypatch) as (emulator, bridge, _),
        running_bridge(bridge),
    ):
        emulator.user_says("alice", "hi")
        sent = await emulator.next_sent()
    assert (sent.to, sent.text) == ("alice", "you said: hi")


async def test_echo_bot_says_once_that_it_is_up_where_and_how_to_write_to_it(
    examples: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python examples/echo_bot.py`` printed nothing once connected: a newcomer could not
    tell a bot that is up from one still connecting, nor what to do next."""
    async with echo_bot_on_loopback(examples, monkeypatch) as (emulator, bridge, nursery):
        assert capsys.readouterr().out == ""
        nursery.start_soon(examples("wecom_env").serve, bridge, "echo_bot")  # what __main__ runs
        await bridge.wait_status(lambda s: s["wecom:emulator-bot"].state == "running")
        emulator.user_says("alice", "hi")
        assert (await emulator.next_sent()).text == "you said: hi"
    assert capsys.readouterr().out == (
        f"echo_bot is up: wecom:emulator-bot on {emulator.ws_url}; write to it through the "
        f"""emulator: curl -d '{{"user": "alice", "text": "hi"}}' ADMIN_URL/messages. """
        "Ctrl-C stops it.\n"
    )


def test_the_examples_say_which_variables_are_missing(
    examples: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WECOM_BOT_ID", raising=False)
    monkeypatch.setenv("WECOM_SECRET", "s")
    with pytest.raises(SystemExit, match="set WECOM_BOT_ID first"):
        examples("wecom_env").from_env()


async def test_streaming_llm_streams_and_a_new_message_interrupts_it(
    examples: Callable[[str], ModuleType], autojump_clock: trio.testing.MockClock
) -> None:
    llm = examples("streaming_llm")
    async with trio.open_nursery() as nursery:
        emulator = await nursery.start(WeComEmulator().run)
        bridge = llm.make_bridge([emulator.connector()], cb.MemoryStore())
        async with running_bridge(bridge):
            emulator.user_says("carol", "tell me about trio")
            await trio.sleep(llm.DEBOUNCE.window + 1.0)  # the answer is streaming now
            emulator.user_says("carol", "and asyncio")
            while "word by word" not in (sent := await emulator.next_sent()).text:
                pass
        nursery.cancel_scope.cancel()
    assert sent.text.startswith("You asked about 'tell me about trio / and asyncio'.")
    assert sent.frames > 1  # it grew on the user's screen
    stats = bridge.stats()
    assert (stats.interrupts, stats.runs, stats.failures) == (1, 2, 0)


async def test_trio_app_runs_the_bridge_next_to_its_own_server_and_stops_on_sigterm(
    examples: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app, echo_bot = examples("trio_app"), examples("echo_bot")
    # A quiet window longer than the test: only the graceful stop can answer the message.
    monkeypatch.setattr(echo_bot, "DEBOUNCE", cb.Debounce(window=3600.0, max_delay=None))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            emulator = await nursery.start(WeComEmulator().run)
            connector = emulator.connector()
            async with trio.open_nursery() as application:
                serve = partial(app.serve, [connector], 0, store=cb.MemoryStore())
                bridge, port = await application.start(serve)
                await bridge.wait_status(lambda s: s[connector.name].state == "running")
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    line = b""
                    while not line.endswith(b"\n"):
                        line += await stream.receive_some()
                emulator.user_says("dave", "hi")
                for _ in range(int(LIMIT / 0.01)):  # until the bridge has the message
                    if bridge.stats().received:
                        break
                    await trio.sleep(0.01)
                os.kill(os.getpid(), signal.SIGTERM)  # as systemd or `docker stop` would
            # serve() returned by itself, once the pending message was answered.
            sent = list(emulator.sent)
            nursery.cancel_scope.cancel()
    assert json.loads(line) == {connector.name: "running"}
    assert [(s.to, s.text) for s in sent] == [("dave", "you said: hi")]
    said = capsys.readouterr().out.splitlines()
    up = f"trio_app (status: nc 127.0.0.1 {port}) is up: {connector.name} on {connector.url}; "
    assert said[0].startswith(up) and said[1:] == ["SIGTERM: stopping gracefully"]
    assert bridge.stats().replies == 1


async def _eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something true (asyncio side, real time)."""
    for _ in range(int(LIMIT / 0.02)):
        if result := await check():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_asgi_app_answers_from_asyncio_and_stops_cleanly(
    examples: Callable[[str], ModuleType],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import hypercorn.asyncio
    from hypercorn.config import Config

    asgi_app, wecom_env = examples("asgi_app"), examples("wecom_env")
    monkeypatch.setattr(asgi_app, "DEBOUNCE", QUICK)
    store_path = tmp_path / "app.db"

    async def main() -> None:
        # The emulator as a user runs it: `python -m trio_chatbridge emulate wecom`.
        emulate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trio_chatbridge",
            "emulate",
            "wecom",
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            assert emulate.stdout is not None
            described = json.loads(await emulate.stdout.readline())
            monkeypatch.setenv("WECOM_BOT_ID", described["bot_id"])
            monkeypatch.setenv("WECOM_SECRET", described["secret"])
            monkeypatch.setenv("WECOM_URL", described["ws_url"])
            await serve_app(described["admin_url"])
        finally:
            emulate.terminate()
            await emulate.wait()

    async def serve_app(admin: str) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        config = Config()
        config.bind = [f"fd://{listener.detach()}"]  # hypercorn owns the socket from here
        stop = asyncio.Event()
        app = asgi_app.make_app(wecom_env.from_env, cb.SQLiteStore(store_path))
        server = asyncio.create_task(
            hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)
        )
        async with httpx.AsyncClient(trust_env=False) as http:

            async def running() -> Any:
                try:
                    status = (await http.get(f"http://127.0.0.1:{port}/status")).json()
                except httpx.TransportError:  # not listening yet
                    return None
                return status if "running" in status.values() else None

            async def answered() -> Any:
                sent = (await http.get(admin + "/sent")).json()
                return [s for s in sent if s["text"]]

            assert await _eventually(running, "the bridge to connect") == {
                "wecom:emulator-bot": "running"
            }
            await http.post(admin + "/messages", json={"user": "erin", "text": "hi"})
            sent = await _eventually(answered, "the answer")
        stop.set()
        await server  # hypercorn ran the lifespan's shutdown: the bridge stopped gracefully
        assert [(s["to"], s["text"]) for s in sent] == [("erin", "asyncio here. you said: hi")]

    async def bounded() -> None:
        async with asyncio.timeout(LIMIT):
            await main()

    with caplog.at_level(logging.WARNING):
        asyncio.run(bounded())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    [said] = capsys.readouterr().out.splitlines()
    assert said.startswith("asgi_app is up: wecom:emulator-bot on ws://127.0.0.1:")

    async def pending_after_restart() -> list[cb.Message]:
        async with cb.SQLiteStore(store_path) as store:
            return await store.journal_pending()

    assert trio.run(pending_after_restart) == []  # the answered message was marked done

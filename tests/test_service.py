"""The service: signals and exit codes in process, then ``run``, ``check`` and ``init`` as a
user runs them (subprocesses, against emulators on loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge._cli import AGENT_TEMPLATE
from trio_chatbridge._config import HttpConfig
from trio_chatbridge._service import ExitCode, run_service
from trio_chatbridge.connectors import Connector
from trio_chatbridge.platforms.weixin._connector import TOKEN_KEY
from trio_chatbridge.stores import store_from_url
from trio_chatbridge.testing import FakeConnector, LarkEmulator, WeComEmulator, WeixinEmulator

ROOT: Final = Path(__file__).resolve().parent.parent
ENV: Final = {**os.environ, "PYTHONPATH": str(ROOT)}
# A test that starts the command line in subprocesses gets CLI_LIMIT seconds of real time (its
# pytest timeout), and its waits WAIT of them together: one deadline per test, each wait given
# what is left of it, so a slow machine fails a wait with a clear error before the limit ends
# the whole run. Generous: importing the package costs about 0.9 s of CPU, and a Python
# process starting it took 5 s at a load average of 10 here (init's test starts three).
CLI_LIMIT: Final = 180.0
WAIT: Final = 0.8 * CLI_LIMIT
cli = pytest.mark.timeout(CLI_LIMIT)


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def fake_bridge(agent: cb.Agent = echo, *connectors: Connector) -> cb.Bridge:
    return cb.Bridge(
        connectors or [FakeConnector()],
        agent,
        store=cb.MemoryStore(),
        debounce=cb.Debounce(window=30.0),
        shutdown_grace=10.0,
    )


def signal_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


# -- in process: signals and exit codes --------------------------------------------------------


async def test_sigterm_flushes_pending_batches_answers_them_and_exits_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = FakeConnector()
    bridge = fake_bridge(echo, chat)
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            codes.append(await run_service(bridge, task_status=task_status))

        await nursery.start(serve)
        await bridge.wait_status(lambda s: s["fake:bot"].state == "running")
        await chat.say("pending in a 30 s window")
        signal_self(signal.SIGTERM)
    assert codes == [ExitCode.OK]
    assert [r.text for r in chat.sent] == ["pending in a 30 s window"]
    assert trio.current_time() < 30  # flushed at once, not after the window


async def test_cb_serve_stops_gracefully_on_ctrl_c_and_returns_0(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``trio.run(cb.serve, bridge)`` is what a program writes: Ctrl-C answers what is pending."""
    chat = FakeConnector()
    bridge = fake_bridge(echo, chat)
    codes: list[int] = []

    async def program() -> None:
        codes.append(await cb.serve(bridge))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(program)
        await bridge.wait_status(lambda s: s["fake:bot"].state == "running")
        await chat.say("pending in a 30 s window")
        signal_self(signal.SIGINT)
    assert codes == [0]
    assert [r.text for r in chat.sent] == ["pending in a 30 s window"]


async def test_a_second_signal_stops_at_once(autojump_clock: trio.testing.MockClock) -> None:
    started = trio.Event()

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        started.set()
        await trio.sleep(1000)

    chat = FakeConnector()
    bridge = fake_bridge(slow, chat)
    codes: list[int] = []
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            codes.append(await run_service(bridge, task_status=task_status))

        await nursery.start(serve)
        await chat.say("takes long")
        signal_self(signal.SIGINT)  # graceful: the batch is released, its run starts
        await started.wait()
        signal_self(signal.SIGINT)
    assert codes == [128 + signal.SIGINT]
    assert trio.current_time() < 5  # neither the run nor its grace was waited for
    assert list(chat.sent) == []


class HangsOnClose(FakeConnector):
    """A platform that never answers our goodbye: closing waits until cancelled."""

    async def aclose(self) -> None:
        await trio.sleep_forever()


async def test_a_close_that_hangs_after_the_second_signal_is_cut_short(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The second signal's immediate stop still closes the connectors, but within
    close_timeout: a hung close is abandoned (and said), and the service exits."""
    started = trio.Event()

    async def slow(batch: cb.Batch, reply: cb.Reply) -> None:
        started.set()
        await trio.sleep(1000)

    hung, fine = HangsOnClose("hung"), FakeConnector("fine")
    bridge = fake_bridge(slow, hung, fine)
    codes: list[int] = []
    async with trio.open_nursery() as nursery:

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            codes.append(await run_service(bridge, task_status=task_status))

        await nursery.start(serve)
        await hung.say("takes long")
        signal_self(signal.SIGINT)
        await started.wait()
        stopped_at = trio.current_time()
        signal_self(signal.SIGINT)
    assert codes == [128 + signal.SIGINT]
    assert trio.current_time() - stopped_at == pytest.approx(bridge.close_timeout)
    abandoned = [r.getMessage() for r in caplog.records if "abandoned" in r.getMessage()]
    assert abandoned == [
        "closing fake:hung took longer than close_timeout (5.0 s): abandoned, its connections "
        "go when the process exits"
    ]


class Refused(Connector):
    def __init__(self, account: str) -> None:
        self.platform = "refused"
        self.account = account

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise cb.FatalConnectorError(f"account {self.account}: wrong secret, fix the config")

    async def send(self, target: cb.Message, text: str) -> None:
        raise AssertionError("never called")


async def test_when_every_connector_failed_for_good_the_service_exits_3(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = fake_bridge(echo, Refused("a"), Refused("b"))
    assert await run_service(bridge) == ExitCode.ALL_FAILED


async def test_one_connector_left_keeps_the_service_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = fake_bridge(echo, Refused("a"), FakeConnector())
    with trio.move_on_after(3600) as waited:
        await run_service(bridge)
    assert waited.cancelled_caught
    bridge = fake_bridge(echo, Refused("a"))
    with trio.move_on_after(3600) as waited:
        await run_service(bridge, exit_when_all_failed=False)  # configured to stay
    assert waited.cancelled_caught


# -- as a user runs it: subprocesses against emulators on loopback -----------------------------


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_chatbridge", *args]


@pytest.fixture
def until() -> float:
    """When (``time.monotonic()``) the test's subprocesses must all be done: :data:`WAIT`
    from its start."""
    return time.monotonic() + WAIT


def finish(args: list[str], until: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """Run ``args`` to the end (text output captured, the repository importable), within
    what is left until ``until``."""
    left = max(0.0, until - time.monotonic())
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=left, **options)


SERVICE_CONFIG: Final = """\
agent = "svcbot:agent"
store = "memory://"

[debounce]
window = 30.0

[http]
listen = "127.0.0.1:0"

[[connectors]]
platform = "wecom"
bot_id = "emulator-bot"
secret = "${{WECOM_SECRET}}"
url = "{ws_url}"
"""
SVC_AGENT: Final = AGENT_TEMPLATE  # the bot init writes: "you said: " and the batch's texts


@asynccontextmanager
async def loopback_wecom() -> AsyncIterator[WeComEmulator]:
    emulator = WeComEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.serve, "127.0.0.1", 0)
        yield emulator
        nursery.cancel_scope.cancel()


async def read_until(stream: trio.abc.ReceiveStream, pattern: str, seen: bytearray) -> str:
    """Read ``stream`` (collecting into ``seen``) until ``pattern`` matches; its first group."""
    while (found := re.search(pattern, seen.decode(errors="replace"))) is None:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"{pattern!r} never came; output: {seen.decode()}")
        seen += chunk
    return found.group(1)


async def scrape(client: httpx.AsyncClient, url: str, metric: str, at_least: float) -> str:
    """``/metrics`` once ``metric`` reached ``at_least`` (scraped again every 50 ms)."""
    while True:
        text = (await client.get(url + "/metrics")).text
        found = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.M)
        if found and float(found.group(1)) >= at_least:
            return text
        await trio.sleep(0.05)


async def run_process(
    tmp_path: Path, emulator: WeComEmulator, agent: str, config: str
) -> trio.Process:
    """``run`` as a user runs it: ``agent`` as ``svcbot.py``, ``config`` as ``svc.toml`` in
    ``tmp_path``, the emulator's secret in the environment; its stderr piped."""
    (tmp_path / "svcbot.py").write_text(agent)
    path = tmp_path / "svc.toml"
    path.write_text(config)
    env = {**ENV, "WECOM_SECRET": emulator.secret}
    return await trio.lowlevel.open_process(
        command("run", str(path)), stderr=subprocess.PIPE, env=env
    )


@cli
async def test_run_answers_pending_batches_on_sigterm_and_exits_0(tmp_path: Path) -> None:
    with trio.fail_after(WAIT):
        async with loopback_wecom() as emulator, httpx.AsyncClient() as client:
            config = SERVICE_CONFIG.format(ws_url=emulator.ws_url)
            process = await run_process(tmp_path, emulator, SVC_AGENT, config)
            assert process.stderr is not None
            output = bytearray()
            try:
                url = await read_until(process.stderr, r"endpoint on (http://\S+) ", output)
                ready = await client.get(url + "/readyz")
                while ready.status_code != 200:  # the connector comes up after the start
                    assert ready.json()["connectors"]["wecom:emulator-bot"]["state"] in (
                        "starting",
                        "running",
                    )
                    await trio.sleep(0.05)
                    ready = await client.get(url + "/readyz")
                assert ready.json()["connectors"]["wecom:emulator-bot"]["connects"] == 1
                assert (await client.get(url + "/healthz")).text == "ok\n"

                emulator.user_says("alice", "hello")
                metrics = await scrape(client, url, "chatbridge_received_total", 1)
                assert (
                    'chatbridge_connector_state{connector="wecom:emulator-bot",state="running"} 1.0'
                    in metrics
                )
                assert "chatbridge_runs_total 0.0" in metrics  # pending: a 30 s window

                process.send_signal(signal.SIGTERM)
                sent = await emulator.next_sent()
                assert sent.text == "you said: hello"
                output += await _rest(process.stderr)
                assert await process.wait() == 0
            finally:
                process.kill()
    log = output.decode()
    assert "SIGTERM: stopping gracefully" in log and "stopped (exit code 0)" in log
    assert emulator.secret not in log


EXITING_AGENT: Final = """\
import trio_chatbridge as cb


async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
    text = batch.messages[-1].text
    if text == "interrupt":
        raise KeyboardInterrupt
    raise SystemExit(int(text) if text.isdigit() else text)
"""


@cli
@pytest.mark.parametrize(
    ("says", "code", "line"),
    [
        ("7", 7, "stopped: SystemExit: 7 raised in the bridge"),
        ("interrupt", 130, "stopped: KeyboardInterrupt raised in the bridge"),
        ("bye", 1, "stopped: SystemExit: bye raised in the bridge"),
    ],
)
async def test_an_agent_raising_systemexit_or_keyboardinterrupt_exits_with_its_code_in_one_line(
    tmp_path: Path, says: str, code: int, line: str
) -> None:
    """Trio hands an agent's SystemExit/KeyboardInterrupt out of its nurseries in an exception
    group: the process exits with the code Python would give it, saying so in one line (no
    traceback)."""
    with trio.fail_after(WAIT):
        async with loopback_wecom() as emulator:
            config = SERVICE_CONFIG.format(ws_url=emulator.ws_url).replace("30.0", "0.0")
            process = await run_process(tmp_path, emulator, EXITING_AGENT, config)
            assert process.stderr is not None
            output = bytearray()
            try:
                await read_until(process.stderr, r"(endpoint on http://\S+) ", output)
                emulator.user_says("alice", says)
                output += await _rest(process.stderr)
                assert await process.wait() == code
            finally:
                process.kill()
    log = output.decode()
    assert line in log and "Traceback" not in log
    assert "unanswered messages stay pending" in log


@cli
@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc (Linux)")
async def test_run_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """Each connection is a file, the endpoint's and the accounts': a soft limit of 1,024 (a
    systemd service's) let a crowd of clients, or 1,000 accounts, starve the process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    if hard == resource.RLIM_INFINITY or hard <= low:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")

    def lowered() -> None:  # in the child, before it runs: a low soft limit, as systemd's
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    with trio.fail_after(WAIT):
        async with loopback_wecom() as emulator:
            (tmp_path / "svcbot.py").write_text(SVC_AGENT)
            config = tmp_path / "svc.toml"
            config.write_text(SERVICE_CONFIG.format(ws_url=emulator.ws_url))
            process = await trio.lowlevel.open_process(
                command("run", str(config)),
                stderr=subprocess.PIPE,
                env={**ENV, "WECOM_SECRET": emulator.secret},
                preexec_fn=lowered,
            )
            assert process.stderr is not None
            output = bytearray()
            try:
                await read_until(process.stderr, r"endpoint on (http://\S+) ", output)
                limits = await trio.Path(f"/proc/{process.pid}/limits").read_text()
            finally:
                process.kill()
                await process.wait()
                await process.stderr.aclose()
    assert f"open files limit raised from {low} to {hard} (the hard limit)" in output.decode()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert row.split()[3:5] == [str(hard), str(hard)]


async def _rest(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


@cli
async def test_metrics_and_readiness_while_messages_flow(tmp_path: Path) -> None:
    with trio.fail_after(WAIT):
        async with loopback_wecom() as emulator, httpx.AsyncClient() as client:
            (tmp_path / "svcbot.py").write_text(SVC_AGENT)
            config = tmp_path / "svc.toml"
            text = SERVICE_CONFIG.format(ws_url=emulator.ws_url).replace("30.0", "0.2")
            config.write_text(text)
            process = await trio.lowlevel.open_process(
                command("run", str(config), "--log-json"),
                stderr=subprocess.PIPE,
                env={**ENV, "WECOM_SECRET": emulator.secret},
            )
            assert process.stderr is not None
            output = bytearray()
            try:
                url = await read_until(process.stderr, r"endpoint on (http://[\d.:]+) ", output)
                for n in range(3):
                    emulator.user_says(f"user{n}", f"message {n}")
                    assert (await emulator.next_sent()).text == f"you said: message {n}"
                metrics = await scrape(client, url, "chatbridge_replies_total", 3)
                ready = (await client.get(url + "/readyz")).json()
                process.send_signal(signal.SIGINT)
                output += await _rest(process.stderr)
                assert await process.wait() == 0
            finally:
                process.kill()
    for line in ("chatbridge_received_total 3.0", "chatbridge_runs_total 3.0"):
        assert line in metrics
    assert "chatbridge_agent_start_latency_seconds_count 3.0" in metrics
    assert "chatbridge_reply_latency_seconds_count 3.0" in metrics
    assert ready["ready"] is True
    assert ready["connectors"]["wecom:emulator-bot"]["state"] == "running"
    records = [json.loads(line) for line in output.decode().splitlines()]  # one object a line
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["message"].startswith("SIGINT: stopping gracefully") for r in records)


@cli
async def test_check_reports_each_connector_against_emulators(tmp_path: Path) -> None:
    wecom, lark = WeComEmulator(), LarkEmulator()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(wecom.serve, "127.0.0.1", 0)
            await nursery.start(lark.serve, "127.0.0.1", 0)
            (tmp_path / "svcbot.py").write_text(SVC_AGENT)
            config = tmp_path / "check.toml"
            config.write_text(
                textwrap.dedent(
                    f"""\
                    agent = "svcbot:agent"
                    store = "memory://"

                    [[connectors]]
                    platform = "wecom"
                    bot_id = "{wecom.bot_id}"
                    secret = "{wecom.secret}"
                    url = "{wecom.ws_url}"

                    [[connectors]]
                    platform = "lark"
                    app_id = "{lark.app_id}"
                    app_secret = "{lark.app_secret}"
                    domain = "{lark.http_base}"

                    [[connectors]]
                    platform = "wecom"
                    bot_id = "other-bot"
                    secret = "wrong-secret"
                    url = "{wecom.ws_url}"

                    [[connectors]]
                    platform = "lark"
                    app_id = "cli_other"
                    app_secret = "wrong-secret"
                    domain = "{lark.http_base}"
                    """
                )
            )
            result = await trio.run_process(
                command("check", str(config), "--timeout", "10"),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=ENV,
            )
            nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    lines = [line for line in out.splitlines() if not line.startswith("note: ")]
    assert [note.split()[1] for note in notes] == [  # each secret is written in the file
        "connectors[0].secret",
        "connectors[1].app_secret",
        "connectors[2].secret",
        "connectors[3].app_secret",
    ]
    assert lines[0] == f"{config}: configuration valid"
    assert re.match(rf"ok +wecom:{wecom.bot_id} +connected", lines[1])
    assert re.match(rf"ok +lark:{lark.app_id} +connected", lines[2])
    assert re.match(r"FAILED +wecom:other-bot +FatalConnectorError: .*subscribe refused", lines[3])
    assert re.match(r"FAILED +lark:cli_other +FatalConnectorError: .*refused", lines[4])
    assert "wrong-secret" not in out


@cli
async def test_check_names_an_unreachable_platform(tmp_path: Path) -> None:
    (tmp_path / "svcbot.py").write_text(SVC_AGENT)
    config = tmp_path / "check.toml"
    config.write_text(
        'agent = "svcbot:agent"\nstore = "memory://"\n\n[[connectors]]\nplatform = "wecom"\n'
        'bot_id = "emulator-bot"\nsecret = "s"\nurl = "ws://127.0.0.1:9/"\n'
    )
    with trio.fail_after(WAIT):
        result = await trio.run_process(
            command("check", str(config)),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=ENV,
        )
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    assert re.search(r"FAILED +wecom:emulator-bot +ConnectorError: .*ws://127\.0\.0\.1:9/", out)


@cli
@pytest.mark.parametrize("given", ["sqlite:///{dir}/login.db", "{dir}/login.db"])
async def test_weixin_login_takes_the_store_url_a_config_takes_or_a_bare_sqlite_path(
    tmp_path: Path, given: str
) -> None:
    emulator = WeixinEmulator(qr_script=("confirmed",))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(emulator.serve, "127.0.0.1", 0)
            store = given.format(dir=tmp_path)
            login = command("weixin-login", "--account", "bot-1", "--store", store)
            result = await trio.run_process(
                [*login, "--base-url", base_url], capture_stdout=True, capture_stderr=True, env=ENV
            )
            nursery.cancel_scope.cancel()
        assert "token stored in SQLiteStore(" in result.stdout.decode()
        # the store the configuration's ``store = "sqlite:///..."`` names
        async with store_from_url(f"sqlite:///{tmp_path}/login.db") as kept:
            assert await kept.get("weixin", "bot-1", TOKEN_KEY) == emulator.token


@cli
async def test_weixin_login_with_a_config_logs_into_the_store_run_opens(tmp_path: Path) -> None:
    """``--store chatbridge.db`` is the working directory's; ``run`` reads the config's
    relative path beside the file: ``--config`` takes the file's store, as ``run`` opens it,
    and needs no other connector's secret to be set."""
    bot = tmp_path / "mybot"
    bot.mkdir()
    (bot / "chatbridge.toml").write_text(
        'agent = "bot:agent"\nstore = "sqlite:///state/chatbridge.db"\n\n[[connectors]]\n'
        'platform = "wecom"\nbot_id = "b"\nsecret = "${UNSET_FOR_THE_LOGIN}"\n'
    )
    (bot / "state").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    emulator = WeixinEmulator(qr_script=("confirmed",))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(emulator.serve, "127.0.0.1", 0)
            login = command(
                "weixin-login", "--account", "bot-1", "--config", "../mybot/chatbridge.toml"
            )
            result = await trio.run_process(
                [*login, "--base-url", base_url],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=ENV,
                cwd=elsewhere,
            )
            nursery.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr.decode()
    assert not (elsewhere / "state").exists()
    async with store_from_url(f"sqlite:///{bot}/state/chatbridge.db") as kept:
        assert await kept.get("weixin", "bot-1", TOKEN_KEY) == emulator.token


@cli
def test_weixin_login_takes_a_store_or_a_config_not_both(tmp_path: Path, until: float) -> None:
    both = ["--store", "x.db", "--config", str(tmp_path / "chatbridge.toml")]
    result = finish(command("weixin-login", "--account", "bot-1", *both), until)
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
    (tmp_path / "chatbridge.toml").write_text('store = "${NO_SUCH_VARIABLE}"\n')
    result = finish(command("weixin-login", "--account", "bot-1", *both[2:]), until)
    assert result.returncode == 2
    assert "store: the environment variable NO_SUCH_VARIABLE is not set" in result.stderr


@cli
def test_weixin_login_names_a_store_url_it_cannot_use(until: float) -> None:
    login = command("weixin-login", "--account", "bot-1", "--store", "postgres://db/x")
    result = finish(login, until)
    assert result.returncode == 2
    assert "store URL 'postgres://db/x': unknown scheme" in result.stderr


@cli
def test_init_writes_a_bot_whose_test_passes(tmp_path: Path, until: float) -> None:
    target = tmp_path / "mybot"
    done = finish(command("init", str(target)), until)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == ["bot.py", "chatbridge.toml", "test_bot.py"]
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    tested = finish([*pytest_command, "test_bot.py"], until, cwd=target)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "1 passed" in tested.stdout
    again = finish(command("init", str(target)), until)
    assert again.returncode == 1 and "not overwriting" in again.stderr


def test_the_config_init_writes_is_valid(tmp_path: Path) -> None:
    from trio_chatbridge.__main__ import main

    assert main(["init", str(tmp_path)]) == 0
    from trio_chatbridge._config import load_config

    config = load_config(tmp_path / "chatbridge.toml", {"WECOM_BOT_ID": "b", "WECOM_SECRET": "s"})
    assert config.http == HttpConfig(listen="127.0.0.1:8080")


@cli
def test_help_shows_the_name_it_was_called_by_and_version_its_version(until: float) -> None:
    script = (
        "import sys; sys.argv[0] = '/usr/local/bin/trio-chatbridge'; "
        "from trio_chatbridge.__main__ import main; main(sys.argv[1:])"
    )
    shown = finish([sys.executable, "-c", script, "--help"], until)
    assert shown.stdout.startswith("usage: trio-chatbridge ")
    for name in ("run", "check", "init", "demo", "emulate"):
        assert name in shown.stdout
    version = finish(command("--version"), until)
    assert version.stdout.strip() == f"python -m trio_chatbridge {cb.__version__}"


# -- graceful stop under load -----------------------------------------------------------------


class JournalWatch(cb.SQLiteStore):
    """A SQLite store that keeps the text of every message it newly journaled."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.journaled: list[str] = []

    async def journal_add(self, messages: Sequence[cb.Message]) -> list[bool]:
        added = await super().journal_add(messages)
        self.journaled.extend(m.text for m, new in zip(messages, added, strict=True) if new)
        return added


@pytest.mark.parametrize("signals", [1, 2])
async def test_sigterm_with_1000_messages_in_flight_loses_none_journaled(
    signals: int, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """SIGTERM while 1,000 WeCom messages wait and agents run, some past the grace: the stop
    ends within its grace and exits 0 (a second SIGTERM 1 s later: at once, 128 + 15), and
    every message journaled was either handled before it or is replayed at the next start;
    none handled is handled again."""
    grace = 5.0
    emu = WeComEmulator(in_flight_limit=1000)
    handled: list[list[str]] = [[], []]  # per start: texts of runs that finished
    all_handled = trio.Event()

    def agent_of(start: int) -> cb.Agent:
        async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
            # 0 to 9.5 s of work: some runs end in the grace, the others are cut short.
            await trio.sleep(int(batch.messages[0].text.split()[1]) % 20 / 2)
            with contextlib.suppress(cb.SendError):  # a callback gone stale at the restart
                await reply.send("done")
            handled[start].extend(m.text for m in batch.messages)
            if len(handled[0]) + len(handled[1]) >= len(first.journaled):
                all_handled.set()

        return agent

    def bridge_for(start: int, store: cb.Store) -> cb.Bridge:
        return cb.Bridge(
            [emu.connector()],
            agent_of(start),
            store=store,
            debounce=cb.Debounce(window=0.5),
            shutdown_grace=grace,
        )

    first = JournalWatch(tmp_path / "bridge.db")
    async with trio.open_nursery() as outer:
        await outer.start(emu.run)
        codes: list[int] = []
        bridge = bridge_for(0, first)
        async with trio.open_nursery() as nursery:

            async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
                codes.append(await run_service(bridge, task_status=task_status))

            await nursery.start(serve)
            await emu.wait_connected()
            for i in range(1000):
                emu.user_says(f"user{i % 200}", f"message {i}")
            await trio.sleep(1.0)  # journaled; the first runs under way, the rest waiting
            assert bridge.stats().received > 0
            signal_self(signal.SIGTERM)
            stop_at = trio.current_time()
            if signals == 2:
                await trio.sleep(1.0)
                signal_self(signal.SIGTERM)
        assert codes == [ExitCode.OK if signals == 1 else 128 + signal.SIGTERM]
        assert trio.current_time() - stop_at <= (grace if signals == 1 else 1.0) + 1.0
        assert first.journaled and handled[0]
        assert len(first.journaled) < 1000 or len(handled[0]) < 1000  # the stop cut something

        again = bridge_for(1, cb.SQLiteStore(tmp_path / "bridge.db"))
        async with trio.open_nursery() as nursery:
            await nursery.start(again.run)
            with trio.fail_after(600):  # virtual: 16 runs at a time, up to 9.5 s each
                await all_handled.wait()
            again.shutdown()
        outer.cancel_scope.cancel()
    assert sorted(handled[0] + handled[1]) == sorted(first.journaled)  # each once

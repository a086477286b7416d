"""The service's pieces in process: the endpoint, its metrics, latencies and the log preset."""

from __future__ import annotations

import io
import json
import logging
import textwrap
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge._check import check_all
from trio_chatbridge._config import HttpConfig, load_config
from trio_chatbridge._health import ServiceApp
from trio_chatbridge._logs import configure_logging
from trio_chatbridge._service import mounts, run_service
from trio_chatbridge.testing import FakeConnector, WeComEmulator, WeixinEmulator, running_bridge


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


def asgi_client(app: ServiceApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


async def test_latencies_run_from_receipt_to_agent_start_and_first_reply(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def thinks(batch: cb.Batch, reply: cb.Reply) -> None:
        await trio.sleep(2)
        await reply.send("one")
        await reply.send("two")  # only the first reply is measured

    chat = FakeConnector()
    bridge = cb.Bridge([chat], thinks, store=cb.MemoryStore(), debounce=cb.Debounce(window=3.0))
    seen: list[tuple[str, float]] = []
    bridge.add_latency_listener(lambda kind, seconds: seen.append((kind, seconds)))
    async with running_bridge(bridge):
        await chat.say("first")
        await trio.sleep(1)
        await chat.say("second")  # re-arms the window: the batch leaves 4 s after "first"
        await chat.next_reply()
        await chat.next_reply()
    assert [kind for kind, _ in seen] == ["agent_start", "reply"]
    assert [seconds for _, seconds in seen] == pytest.approx([4.0, 6.0])
    with pytest.raises(cb.ChatBridgeError, match="before the bridge runs"):
        bridge.add_latency_listener(lambda kind, seconds: None)


async def test_metrics_show_counters_connector_states_and_platform_counters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = FakeConnector()
    bridge = cb.Bridge([chat], echo, store=cb.MemoryStore(), debounce=cb.Debounce(window=1.0))
    app = ServiceApp(bridge)
    async with running_bridge(bridge), asgi_client(app) as client:
        message = await chat.say("hi")
        chat.deliver(message)  # redelivered: a duplicate
        await chat.next_reply()
        chat.crash()
        await bridge.wait_status(lambda s: s["fake:bot"].state == "backoff")
        metrics = (await client.get("/metrics")).text
        ready = await client.get("/readyz")
    for line in [
        "chatbridge_received_total 1.0",
        "chatbridge_duplicates_total 1.0",
        "chatbridge_batches_total 1.0",
        "chatbridge_replies_total 1.0",
        "chatbridge_reconnects_total 1.0",
        'chatbridge_connector_state{connector="fake:bot",state="backoff"} 1.0',
        'chatbridge_connector_state{connector="fake:bot",state="running"} 0.0',
        'chatbridge_connector_restarts_total{connector="fake:bot"} 1.0',
        "chatbridge_agent_start_latency_seconds_count 1.0",
        'chatbridge_agent_start_latency_seconds_bucket{le="1.0"} 1.0',
    ]:
        assert line in metrics.splitlines(), line
    assert ready.status_code == 503  # not accepting (nobody said so), and a connector down
    assert ready.json()["connectors"]["fake:bot"]["last_error"] == "ConnectionError: injected crash"


async def test_readiness_needs_the_bridge_accepting_and_every_connector_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    app = ServiceApp(bridge)
    async with running_bridge(bridge), asgi_client(app) as client:
        assert (await client.get("/readyz")).status_code == 503
        app.accepting = True
        answer = await client.get("/readyz")
        assert answer.status_code == 200 and answer.json()["ready"] is True
        assert (await client.get("/healthz")).text == "ok\n"
        assert (await client.get("/elsewhere")).status_code == 404


async def test_the_wecom_webhook_is_served_on_the_same_endpoint(tmp_path: Path) -> None:
    emulator = WeComEmulator()
    (tmp_path / "hookbot.py").write_text(
        "async def agent(batch, reply):\n    await reply.send('hook: ' + batch.text)\n"
    )
    config_file = tmp_path / "hook.toml"
    config_file.write_text(
        textwrap.dedent(
            f"""\
            agent = "hookbot:agent"
            store = "memory://"

            [debounce]
            window = 0.05

            [[connectors]]
            platform = "wecom-webhook"
            bot_id = "{emulator.bot_id}"
            token = "{emulator.token}"
            encoding_aes_key = "{emulator.encoding_aes_key}"
            path = "/hooks/wecom"
            """
        )
    )
    config = load_config(config_file)
    bridge = config.build_bridge(config.load_agent())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_service(
                    bridge,
                    http=HttpConfig(listen="127.0.0.1:0"),
                    mounted=mounts(config, bridge),
                    task_status=task_status,
                )
            )
            base = urls[0]
            assert (await emulator.webhook_verify(base + "/hooks/wecom")).status_code == 200
            sent = await emulator.webhook_user_says(
                base + "/hooks/wecom", "alice", "over the hook", refresh=0.05
            )
            async with httpx.AsyncClient() as client:
                assert (await client.get(base + "/healthz")).status_code == 200
            bridge.shutdown()
    assert sent.text == "hook: over the hook"


def test_the_log_preset_writes_one_line_per_event_with_its_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = io.StringIO()
    handler = configure_logging("INFO", stream=out)
    try:
        chat = FakeConnector()

        async def failing(batch: cb.Batch, reply: cb.Reply) -> None:
            logging.getLogger("mybot").info("thinking about %s", batch.text)

        async def main() -> None:
            bridge = cb.Bridge([chat], failing, store=cb.MemoryStore())
            async with running_bridge(bridge):
                await chat.say("hello")
                chat.crash()
                await bridge.wait_status(lambda s: s["fake:bot"].state == "backoff")
                await trio.sleep(5)

        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        logging.getLogger("httpx").info("HTTP Request: POST https://example.invalid 200")
        logging.getLogger("coredis").info("Retry attempt 1 due to error: No matching script")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = out.getvalue().splitlines()
    agent_line = next(line for line in lines if "thinking about hello" in line)
    assert "mybot [session=fake:bot:chat] thinking about hello" in agent_line
    retry = next(line for line in lines if "failed:" in line)
    assert "WARNING trio_chatbridge.supervise [fake:bot] connector fake:bot failed:" in retry
    assert not any("Traceback" in line for line in lines)  # at DEBUG only
    assert not any("HTTP Request" in line for line in lines)  # httpx is quieted
    assert not any("No matching script" in line for line in lines)  # and coredis


def test_the_json_preset_writes_one_object_per_line() -> None:
    out = io.StringIO()
    handler = configure_logging(logging.DEBUG, json_lines=True, stream=out)
    try:
        try:
            raise OSError("disk gone")
        except OSError:
            logging.getLogger("trio_chatbridge.x").exception("could not write")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert record["level"] == "ERROR" and record["message"] == "could not write"
    assert "OSError: disk gone" in record["traceback"]


async def test_check_tells_an_expired_wechat_session_from_a_good_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    good, stale = WeixinEmulator(), WeixinEmulator()
    stale.session_valid = False  # every authenticated call answers errcode -14
    results = await check_all(
        [good.connector("good"), stale.connector("stale")], cb.MemoryStore(), 30.0
    )
    assert [(r.name, r.ok) for r in results] == [("weixin:good", True), ("weixin:stale", False)]
    assert results[1].detail.startswith("paused: ")
    assert "log in again" in results[1].detail


async def test_check_accepts_no_message_so_none_is_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emulator = WeComEmulator()
    async with trio.open_nursery() as nursery:
        await nursery.start(emulator.run)
        emulator.user_says("alice", "waiting for the real run")
        (result,) = await check_all([emulator.connector()], cb.MemoryStore(), 30.0)
        nursery.cancel_scope.cancel()
    assert result.ok and result.detail == "connected"
    assert emulator.commands("aibot_respond_msg") == []  # nothing answered, nothing taken


def test_the_preset_prints_tracebacks_as_the_redacting_filter_left_them() -> None:
    out = io.StringIO()
    handler = configure_logging(logging.DEBUG, stream=out)
    try:
        try:
            raise OSError("cannot reach wss://example.invalid/ws?ticket=s3cret-ticket")
        except OSError:
            logging.getLogger("httpx").exception("connect failed")  # a filtered logger
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)
    assert "ticket=***" in out.getvalue()
    assert "s3cret-ticket" not in out.getvalue()


async def test_the_endpoint_url_is_logged_once_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Hypercorn's own "Running on ..." line would double ours ("endpoint on ...")."""
    caplog.set_level(logging.INFO)
    bridge = cb.Bridge([FakeConnector()], echo, store=cb.MemoryStore())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(
                lambda task_status: run_service(
                    bridge, http=HttpConfig(listen="127.0.0.1:0"), task_status=task_status
                )
            )
            async with httpx.AsyncClient() as client:  # hypercorn has surely started by now
                assert (await client.get(urls[0] + "/healthz")).status_code == 200
            bridge.shutdown()
    port = urls[0].rsplit(":", 1)[1]
    mentions = [
        r.getMessage()
        for r in caplog.records
        if f":{port}" in r.getMessage() and not r.name.startswith("httpx")  # our client's
    ]
    assert mentions == [f"endpoint on {urls[0]} (/healthz, /readyz, /metrics)"]

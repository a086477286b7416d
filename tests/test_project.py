"""The project's own promises: public surface, demo, docs, command line."""

from __future__ import annotations

import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import emulated_connector

from trio_chatbridge.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def test_demo_shows_bursts_becoming_batches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "batch dm:alice   <- 3 message(s)" in out
    assert "alice, I got 3 message(s) from you: hi! | quick question" in out
    assert "1 duplicate dropped" in out


def test_docs_check_passes() -> None:
    result = runpy.run_path(str(ROOT / "docs" / "check_docs.py"))
    assert result["main"]([]) == 0


def test_command_line_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_chatbridge", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "demo" in result.stdout


async def test_secrets_never_reach_logs_or_reprs(
    caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    import logging

    import trio

    import trio_chatbridge as cb
    from trio_chatbridge.connectors import Connector
    from trio_chatbridge.platforms import lark, wecom
    from trio_chatbridge.testing import (
        LarkEmulator,
        WeComEmulator,
        WeixinEmulator,
        running_bridge,
    )

    secrets = ["weixin-secret-token", "wecom-secret-value", "lark-secret-value", "wecom-hook-tok"]
    caplog.set_level(logging.DEBUG)

    async def agent(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send("ok")

    async with trio.open_nursery() as nursery:
        weixin_emu = WeixinEmulator(token=secrets[0])
        wecom_emu = await nursery.start(WeComEmulator(secret=secrets[1]).run)
        lark_emu = await nursery.start(LarkEmulator(app_secret=secrets[2]).run)
        hook = wecom.Webhook(
            bot_id="hook", token=secrets[3], encoding_aes_key=wecom_emu.encoding_aes_key
        )
        connectors: list[Connector] = [
            weixin_emu.connector(),
            wecom_emu.connector(),
            lark_emu.connector(),
            hook,
        ]
        bridge = cb.Bridge(connectors, agent, store=cb.MemoryStore())
        async with running_bridge(bridge):
            weixin_emu.user_says("u", "hi")
            wecom_emu.user_says("u", "hi")
            lark_emu.user_says("ou_u", "hi")
            await weixin_emu.next_sent()
            await wecom_emu.next_sent()
            await lark_emu.next_sent()
            shown = " ".join(repr(c) for c in connectors) + repr(bridge) + repr(hook.crypto)
            shown += repr(lark.OpenAPI("cli", secrets[2]))
        nursery.cancel_scope.cancel()
    everything = shown + "\n".join(r.getMessage() for r in caplog.records)
    assert not [s for s in secrets if s in everything]


@pytest.mark.parametrize("platform", ["weixin", "wecom", "lark"])
def test_emulate_prints_one_json_line_first(platform: str) -> None:
    import json

    with subprocess.Popen(
        [sys.executable, "-m", "trio_chatbridge", "emulate", platform, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            info = json.loads(child.stdout.readline())
        finally:
            child.terminate()
    assert info["platform"] == platform
    assert info["admin_url"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize("platform", ["weixin", "wecom", "lark"])
async def test_emulate_admin_api_makes_users_speak_and_lists_what_the_bot_sent(
    platform: str,
) -> None:
    import json

    import httpx
    import trio

    import trio_chatbridge as cb
    from trio_chatbridge.testing import running_bridge
    from trio_chatbridge.testing._emulate import emulate

    async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
        await reply.send(batch.text)

    lines: list[str] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            emu = await nursery.start(
                lambda task_status: emulate(platform, out=lines.append, task_status=task_status)
            )
            info = json.loads(lines[0])
            bridge = cb.Bridge(
                [emulated_connector(info)],
                echo,
                store=cb.MemoryStore(),
                debounce=cb.Debounce(window=0.05),
            )
            async with running_bridge(bridge), httpx.AsyncClient() as http:
                said = await http.post(
                    info["admin_url"] + "/messages", json={"user": "quinn", "text": "from outside"}
                )
                assert said.status_code == 200
                await emu.next_sent()
                sent = (await http.get(info["admin_url"] + "/sent")).json()
            nursery.cancel_scope.cancel()
    messages = [s for s in sent if s["via"] in ("reply", "sendmessage")]
    assert [(s["platform"], s["text"]) for s in messages] == [(platform, "from outside")]
    platform_fields: dict[str, Callable[[dict[str, Any]], object]] = {
        "weixin": lambda s: (
            (s["kind"], s["to"]) == ("text", "quinn") and s["detail"]["context_token"]
        ),
        "wecom": lambda s: (s["kind"], s["to"]) == ("stream", "quinn"),
        "lark": lambda s: (s["kind"], s["to"]) == ("text", "oc_p2p_quinn"),
    }
    assert platform_fields[platform](messages[0])

"""What a newcomer runs on loopback: ``demo --loopback``, and ``emulate``'s line used as is."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_chatbridge as cb
from trio_chatbridge.platforms import wecom
from trio_chatbridge.testing import WeComEmulator, running_bridge

ROOT = Path(__file__).resolve().parent.parent
PROMISED = 30.0  # seconds: what docs and --help promise for the whole loopback demo


@pytest.mark.slow
def test_demo_loopback_plays_the_script_over_loopback_sockets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_chatbridge", "demo", "--loopback"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=PROMISED,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    served = re.findall(r"(weixin|wecom|lark) emulator on loopback: (\S+)", out)
    assert [platform for platform, _ in served] == ["weixin", "wecom", "lark"]
    assert all(url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:")) for _, url in served)
    # Each scene of the script happened, on the same virtual timeline as the in-memory demo.
    assert "alice, I got 3 message(s) from you: hi! | quick question" in out
    assert "I got 2 message(s) from you: ni hao | is the shop open today?" in out
    assert "status: paused; messages wait on the server" in out
    assert "an hour later: status running" in out
    assert "bot -> erin streamed in" in out
    assert "first connection: failed: wecom bot emulator-bot: replaced" in out
    assert "edited" in out and "what's the status?" in out


async def echo(batch: cb.Batch, reply: cb.Reply) -> None:
    await reply.send(batch.text)


async def test_the_wecom_emulate_line_names_the_webhook_options(
    autojump_clock: trio.testing.MockClock,
) -> None:
    emulator = WeComEmulator()
    line = emulator.describe()  # what `emulate wecom` prints
    hook = wecom.Webhook(**{key: line[key] for key in ("bot_id", "token", "encoding_aes_key")})
    bridge = cb.Bridge([hook], echo, store=cb.MemoryStore())
    async with running_bridge(bridge):
        verified = await emulator.webhook_verify(hook.asgi, "echo-me")
    assert (verified.status_code, verified.text) == (200, "echo-me")


async def test_wecom_serve_without_hypercorn_says_to_install_from_a_checkout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "hypercorn.trio", None)  # as if hypercorn were missing
    emulator = WeComEmulator()
    hook = wecom.Webhook(
        bot_id=emulator.bot_id, token=emulator.token, encoding_aes_key=emulator.encoding_aes_key
    )
    with pytest.raises(cb.ConfigurationError, match=r"python -m pip install -e '\.\[webhook\]'"):
        await wecom.serve(hook, "127.0.0.1", 0)


async def test_wecom_serve_is_the_service_endpoint_server() -> None:
    """wecom.serve built hypercorn's default Config: none of the service endpoint's limits
    (docs/service.md), and a taken address was hypercorn's bare OSError. It serves through
    the endpoint's own function now: the address is named, with what to do."""
    emulator = WeComEmulator()
    hook = wecom.Webhook(
        bot_id=emulator.bot_id, token=emulator.token, encoding_aes_key=emulator.encoding_aes_key
    )
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(cb.ChatBridgeError, match=f"cannot listen on 127.0.0.1:{port}"):
            with trio.fail_after(30):
                await wecom.serve(hook, "127.0.0.1", port)

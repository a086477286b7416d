"""``python -m trio_chatbridge demo --loopback``: the demo's script over real loopback sockets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMISED = 30.0  # seconds: what docs and --help promise for the whole loopback demo


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

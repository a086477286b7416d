"""The platforms' official clients against our emulators (benchmarks/official_clients.py).

They are not dependencies of this project: set ``OFFICIAL_NODE_MODULES`` (a node_modules with
``@wecom/aibot-node-sdk`` and ``@tencent-weixin/openclaw-weixin``) and/or
``OFFICIAL_LARK_PYTHON`` (a Python with ``lark-oapi``) to run them; without either the test
is skipped, saying so.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.official_clients import main


@pytest.mark.official_clients
@pytest.mark.timeout(300)
@pytest.mark.skipif(
    not (os.environ.get("OFFICIAL_NODE_MODULES") or os.environ.get("OFFICIAL_LARK_PYTHON")),
    reason="no official client: set OFFICIAL_NODE_MODULES and/or OFFICIAL_LARK_PYTHON",
)
def test_official_clients_work_against_the_emulators(capsys: pytest.CaptureFixture[str]) -> None:
    failed = main([])
    printed = capsys.readouterr().out
    assert failed == 0, printed
    assert " passed, 0 failed" in printed

"""The project's own promises: public surface, demo, docs, command line."""

from __future__ import annotations

import inspect
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import trio_chatbridge
import trio_chatbridge.stores
import trio_chatbridge.testing
from trio_chatbridge.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "module", [trio_chatbridge, trio_chatbridge.stores, trio_chatbridge.testing]
)
def test_public_names_are_exactly_all(module: object) -> None:
    exported = set(module.__all__)  # type: ignore[attr-defined]
    defined = {n for n in vars(module) if not n.startswith("_") and n != "annotations"}
    submodules = {"stores", "testing", "platforms"}
    assert exported == defined - submodules
    for name in exported:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):  # type aliases have no module
            assert obj.__module__.startswith("trio_chatbridge"), name


def test_demo_shows_bursts_becoming_batches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "batch dm:alice   <- 3 message(s)" in out
    assert "alice, I got 3 message(s) from you: hi! | quick question" in out
    assert "1 duplicate dropped" in out


def test_docs_check_passes() -> None:
    result = runpy.run_path(str(ROOT / "docs" / "check_docs.py"))
    assert result["main"]() == 0


def test_command_line_help_lists_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_chatbridge", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "demo" in result.stdout

"""The command line as a person meets it: ``--help`` and Ctrl-C."""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from trio_chatbridge.__main__ import build_parser


def test_every_argument_of_every_command_has_a_help_text() -> None:
    parser = build_parser()
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"run", "check", "init", "demo", "emulate"}
    undocumented = [
        f"{name} {action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert undocumented == []


def default_sigint() -> None:
    """In the child: Ctrl-C as in a terminal (a background shell would have it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def killed_at(child: subprocess.Popen[Any], deadline: float) -> Iterator[None]:
    """Kill ``child`` at ``deadline`` (``time.monotonic()``), which ends every wait on it (a
    read of its output, ``communicate``), and then fail: no guess at how long it may take,
    only the test's own limit, whatever the load."""
    late = threading.Event()

    def kill() -> None:
        late.set()
        child.kill()

    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), kill)
    if deadline < math.inf:  # inf: the run has no time limit (-o timeout=0)
        timer.start()
    try:
        yield
    finally:
        timer.cancel()
        child.kill()  # a no-op once it has exited
        if late.is_set():  # whatever the block raised once its child was gone, this is why
            pytest.fail(f"{child.args!r} was still running at the test's deadline: killed")


def test_ctrl_c_stops_an_emulator_quietly_with_exit_code_0(real_deadline: float) -> None:
    with (
        subprocess.Popen(
            [sys.executable, "-m", "trio_chatbridge", "emulate", "wecom"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        ) as child,
        killed_at(child, real_deadline),
    ):
        assert child.stdout is not None
        assert json.loads(child.stdout.readline())["platform"] == "wecom"
        child.send_signal(signal.SIGINT)
        _, errors = child.communicate()
    assert (child.returncode, errors) == (0, "")


def test_a_child_still_running_at_the_deadline_is_killed_and_fails_the_test() -> None:
    with (
        pytest.raises(pytest.fail.Exception, match="still running at the test's deadline"),
        subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], stdout=subprocess.PIPE
        ) as child,
        killed_at(child, time.monotonic() + 0.1),
    ):
        assert child.stdout is not None
        assert json.loads(child.stdout.readline())  # blocks until killed, then fails to parse
    assert child.returncode == -signal.SIGKILL

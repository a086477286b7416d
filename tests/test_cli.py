"""The command line as a person meets it: ``--help`` and Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys

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


def test_ctrl_c_stops_an_emulator_quietly_with_exit_code_0() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trio_chatbridge", "emulate", "wecom"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    ) as child:
        try:
            assert child.stdout is not None
            assert json.loads(child.stdout.readline())["platform"] == "wecom"
            child.send_signal(signal.SIGINT)
            _, errors = child.communicate(timeout=30)
        finally:
            child.kill()
    assert (child.returncode, errors) == (0, "")

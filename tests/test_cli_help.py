"""``--help`` says what every command's arguments and options are for."""

from __future__ import annotations

import argparse

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

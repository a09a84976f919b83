"""`rbp --help` and every command's help: a line per command, help and defaults on every option, and
examples that parse and name files the repository holds."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rbp.cli import main
from rbp.cli.parser import build_parser
from rbp.config.load import load_config

ROOT = Path(__file__).resolve().parents[2]
# The first words of a shell line that end the rbp command (a redirection, a pipe, the next command).
SHELL_BREAKS = {">", "|", "&&", ";"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # one line per option: a default is never split over two
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_rbp_help_describes_rbp_and_every_command_in_a_line(capsys, monkeypatch):
    text = _help([], capsys, monkeypatch)
    assert "robust binary subnetworks" in text and "examples:" in text and "rbp completion bash" in text
    for name, command in _commands().items():
        (line,) = [line for line in text.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) > 3, f"{name} has no one-line description"
        assert command.description and command.description.startswith(line.split(maxsplit=1)[1])


def test_every_option_has_help_and_shows_its_default(capsys, monkeypatch):
    for name, command in {"": build_parser(), **_commands()}.items():
        for action in command._actions:
            assert action.help, f"rbp {name} {action.dest} has no help"
        text = _help([name] if name else [], capsys, monkeypatch)
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
    eval_help = _help(["eval"], capsys, monkeypatch)
    assert "(default: pgd)" in eval_help and "(default: 20)" in eval_help and "(default: test)" in eval_help
    # A help that states its default already is left alone, not followed by a second one.
    assert "results folder (default: results)\n" in _help(["tune"], capsys, monkeypatch)


def _examples(epilog: str) -> list[list[str]]:
    """The rbp command lines of an epilog's examples, each cut where the shell takes over."""
    lines = [shlex.split(line, comments=True) for line in epilog.split("examples:\n")[1].splitlines()]
    commands = []
    for words in (w for w in lines if w[:1] == ["rbp"]):
        cut = next((i for i, word in enumerate(words) if word in SHELL_BREAKS), len(words))
        commands.append(words[1:cut])
    return commands


def test_every_command_has_examples_that_parse_and_name_real_files():
    parser, default_run_id = build_parser(), load_config().run_id()
    for name, command in _commands().items():
        examples = command.epilog.split("examples:\n")[1].splitlines()
        assert 2 <= len(examples) <= 4, f"rbp {name}: {len(examples)} examples"
    for epilog in [parser.epilog, *(command.epilog for command in _commands().values())]:
        for argv in _examples(epilog):
            parser.parse_args(argv)  # an unknown option or a bad choice raises RbpError
            for word in argv:
                if word.startswith(("results/", "ablations/", "tune/")):
                    assert (ROOT / word).exists(), f"`rbp {shlex.join(argv)}` names {word}, which is missing"
                if word.startswith("runs/"):  # the folder of the default `rbp train`
                    assert word.split("/")[1] == default_run_id, f"`rbp {shlex.join(argv)}`: not the default run"


def test_python_m_rbp_help_runs():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "rbp", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "usage: rbp" in proc.stdout
    assert all(name in proc.stdout for name in _commands())

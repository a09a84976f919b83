"""`rbp completion`: the printed bash script, sourced in a real bash, completes as bash would call it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rbp.cli import main

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# Bash's protocol for `complete -F`: COMP_WORDS and COMP_CWORD set, then FUNCTION COMMAND WORD PREVIOUS.
COMPLETE = """\
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_rbp rbp "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
echo "${COMPREPLY[*]}"
"""


def _script(shell: str, capsys) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> Path:
    from rbp.cli.completion import bash_script
    from rbp.cli.parser import build_parser

    path = tmp_path_factory.mktemp("completion") / "rbp.bash"
    path.write_text(bash_script(build_parser()))
    return path


def _complete(script: Path, line: str) -> str:
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    proc = subprocess.run(["bash", "-c", COMPLETE, "bash", str(script), *words], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize(
    "line,expected",
    [
        ("rbp tr", "train"),
        ("rbp ta", "tables"),
        ("rbp -v con", "config"),
        ("rbp eval --at", "--attack"),
        ("rbp eval model.rbpz --attack a", "autoattack"),
        ("rbp eval model.rbpz --norm ", "linf l2"),
        ("rbp train --print", "--print-config"),
        ("rbp config --sc", "--schema"),
        ("rbp completion ", "bash zsh"),
        ("rbp best --mode m", "max min"),
        ("rbp eval ", ""),  # the checkpoint: nothing from rbp, so bash completes file names
        ("rbp train --config ", ""),  # an option's value: file names too
    ],
)
def test_bash_completes_commands_options_and_choices(bash_script, line, expected):
    assert _complete(bash_script, line) == expected


def test_the_script_registers_itself_for_rbp(bash_script):
    proc = subprocess.run(["bash", "-c", f"source {shlex.quote(str(bash_script))}; complete -p rbp"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.stdout.strip() == "complete -o default -F _rbp rbp"


def test_the_scripts_are_printed_from_the_parser(bash_script, capsys):
    bash = _script("bash", capsys)
    assert bash == bash_script.read_text()
    zsh = _script("zsh", capsys)
    # zsh runs the same function through its bash layer, loaded first.
    assert zsh.endswith(bash) and "bashcompinit" in zsh.removesuffix(bash)

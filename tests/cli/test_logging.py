"""The CLI shows rbp's log lines on stderr through the ``rbp`` logger only: the root logger is left alone."""

import json
import logging
import subprocess
import sys

from rbp.cli import main

TINY = [
    "--set", "data.name=synthetic", "--set", "data.synthetic_size=32", "--set", "data.synthetic_shape=[1,8,8]",
    "--set", "data.batch_size=16",
    "--set", "train.epochs=1", "--set", "model.width=4", "--set", "attack.steps=1", "--set", "eval.val_pgd_steps=1",
    "--set", "eval.test_pgd_steps=1", "--set", "run.progress=false",
]  # fmt: skip

# In a fresh interpreter (no handler of pytest's on the root logger): a command, then the root
# logger's handlers and level, and what the rbp logger does once the command has returned.
COMMAND_THEN_ROOT = """
import json, logging, sys
from rbp.cli import main
code = main(sys.argv[1:])
logging.getLogger("rbp.after").info("after the command")
root = logging.getLogger()
print(json.dumps({"code": code, "root_handlers": len(root.handlers), "root_level": root.level}))
"""


def test_a_command_configures_the_rbp_logger_only(tmp_path):
    argv = ["train", *TINY, "--set", f"run.out_dir={tmp_path}"]
    done = subprocess.run([sys.executable, "-c", COMMAND_THEN_ROOT, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"code": 0, "root_handlers": 0, "root_level": logging.WARNING}
    assert "data synthetic: 31 train" in done.stderr and "epoch 1/1" in done.stderr  # rbp's lines, as before
    assert "after the command" not in done.stderr  # the handler went with the command


def test_commands_in_one_process_neither_stack_handlers_nor_keep_quiet(tmp_path, capsys):
    root, rbp = logging.getLogger(), logging.getLogger("rbp")
    before = (list(root.handlers), root.level, list(rbp.handlers), rbp.level)
    for index, quiet in enumerate([True, False, False]):
        argv = ["train", *TINY, "--set", f"run.out_dir={tmp_path / str(index)}", *(["--quiet"] if quiet else [])]
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert err.count("data synthetic: ") == (0 if quiet else 1), err  # once: one handler, not one per call
    assert (list(root.handlers), root.level, list(rbp.handlers), rbp.level) == before

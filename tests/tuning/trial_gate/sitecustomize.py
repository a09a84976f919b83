"""A gate for the trials of a search a test runs in subprocesses (on ``PYTHONPATH`` via the test).

With ``RBP_TEST_GATE=<folder>`` in the environment, the first trial to train an epoch claims
``<folder>/claimed`` (writing its run folder there) and runs freely; every other trial waits
before each epoch until the test creates ``<folder>/open``. So a test that interrupts the search
after the first finished trial finds the others unfinished however fast the machine is (a
precondition by construction, not by timing). Without the variable this module does nothing.
Python imports ``sitecustomize`` at start in every process, Ray's workers included (they inherit
the driver's environment); the patch is applied when ``rbp.runs.epochs`` is first imported, so
processes that never train stay untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

GATE = os.environ.get("RBP_TEST_GATE")


def _holds_the_claim(gate: Path, run_folder: object) -> bool:
    """Whether the trial training in ``run_folder`` is the first one (it claims the gate if no one has)."""
    claim = gate / "claimed"
    try:
        with open(claim, "x") as file:
            file.write(str(run_folder))
    except FileExistsError:
        pass
    return claim.read_text() == str(run_folder)


def _gated(train_epoch):
    folder = Path(GATE)

    def train_epoch_behind_the_gate(trainer, run_folder, *args, **kwargs):
        if not _holds_the_claim(folder, run_folder.dir):
            while not (folder / "open").exists():  # waits on the test's signal, not on a duration
                time.sleep(0.1)
        return train_epoch(trainer, run_folder, *args, **kwargs)

    return train_epoch_behind_the_gate


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``rbp.runs.epochs`` with the normal machinery and wraps its ``train_epoch`` once loaded."""

    def find_spec(self, name, path, target=None):
        if name != "rbp.runs.epochs":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            module.train_epoch = _gated(module.train_epoch)

        spec.loader.exec_module = exec_module
        return spec


if GATE:
    sys.meta_path.insert(0, _PatchOnImport())

"""Runs that lose nothing: a failure at any write point resumes bit-identically, one writer per
run folder, non-finite numbers are errors, and tampered checkpoints are refused."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import rbp.base.atomic
from rbp.artefacts.checkpoint import load_model, save_checkpoint
from rbp.artefacts.export import export_run
from rbp.base.errors import RbpError
from rbp.config.load import load_config
from rbp.runs.epochs import train_run
from rbp.runs.folder import read_metrics, run_dir_of
from rbp.training.trainer import Diverged, Trainer

FAST = [
    "train.epochs=3",
    "model.arch=mlp",
    "model.width=16",
    "attack.steps=2",
    "eval.val_pgd_steps=2",
    "eval.test_pgd_steps=2",
    "run.progress=false",
]


class Killed(Exception):
    """Stands for a kill: the process stops right after a write completed."""


def _cfg(out, *overrides):
    return load_config(None, [*FAST, f"run.out_dir={out}", *overrides])


def _outcome(cfg) -> dict:
    """Everything a finished run leaves that must not depend on interruptions."""
    run_dir = run_dir_of(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("run_dir")
    models = {name: load_model(run_dir / name)[0].state_dict() for name in ("best.pt", "last.pt")}
    return {"summary": summary, "metrics": read_metrics(run_dir / "metrics.jsonl"), "models": models}


def _same(a: dict, b: dict) -> bool:
    tensors_equal = all(torch.equal(a["models"][f][k], b["models"][f][k]) for f in a["models"] for k in a["models"][f])
    return a["summary"] == b["summary"] and a["metrics"] == b["metrics"] and tensors_equal


_REPLACE = os.replace  # the real one: the tests patch os.replace itself


class _FailingReplace:
    """``os.replace`` that fails at its ``at``-th call: ``before`` the rename (a full disk: the write
    is lost) or ``after`` it (a kill right after the write landed)."""

    def __init__(self, at: int, when: str) -> None:
        self.at, self.when, self.calls = at, when, 0

    def __call__(self, src, dst):
        self.calls += 1
        if self.calls == self.at and self.when == "before":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _REPLACE(src, dst)
        if self.calls == self.at:
            raise Killed(dst)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run and the number of atomic writes it makes."""
    counter = _FailingReplace(at=0, when="never")
    cfg = _cfg(tmp_path_factory.mktemp("reference"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rbp.base.atomic.os, "replace", counter)
        train_run(cfg)
    return _outcome(cfg), counter.calls


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failure_at_every_write_point_resumes_bit_identically(reference, tmp_path, monkeypatch, when):
    outcome, writes = reference
    assert writes >= 3 + 3 * 2 + 1 + 1  # config, densities, determinism, per epoch last + metrics, best.pt, summary
    for at in range(1, writes + 1):
        cfg = _cfg(tmp_path / f"{when}{at}")
        with monkeypatch.context() as mp:
            mp.setattr(rbp.base.atomic.os, "replace", _FailingReplace(at, when))
            with pytest.raises(RbpError if when == "before" else Killed):
                train_run(cfg)
        assert train_run(cfg, resume=True)["run_id"] == cfg.run_id()
        assert _same(_outcome(cfg), outcome), f"write {at} failing {when} the rename changed the result"


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_earlier_epochs(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    monkeypatch.setattr(rbp.base.atomic.os, "replace", _FailingReplace(at=7, when="before"))  # epoch 2's last.pt
    with pytest.raises(RbpError, match=r"cannot write .*last\.pt: No space left on device") as caught:
        train_run(cfg)
    assert "\n" not in str(caught.value)
    run_dir = run_dir_of(cfg)
    assert [m["epoch"] for m in read_metrics(run_dir / "metrics.jsonl")] == [1]
    assert load_model(run_dir / "last.pt")[2]["metrics"]["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp")), "temporary files left behind"


def test_a_torn_metrics_line_does_not_stop_a_resume(tmp_path):
    cfg = _cfg(tmp_path)

    def stop_at_two(metrics):
        if metrics["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        train_run(cfg, callback=stop_at_two)
    metrics = run_dir_of(cfg) / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "train_lo')  # a half-written line
    train_run(cfg, resume=True)
    assert [m["epoch"] for m in read_metrics(metrics)] == [1, 2, 3]


def test_a_second_writer_stops_with_one_line_naming_the_first(tmp_path):
    cfg = _cfg(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from rbp.runs.folder import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); sys.stdin.read()",
         str(run_dir_of(cfg))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RbpError, match=f"being written by process {holder.pid} on"):
            train_run(cfg)
        assert not (run_dir_of(cfg) / "metrics.jsonl").exists()
    finally:
        holder.communicate("")
    train_run(cfg)  # the lock went with its holder


def test_a_data_set_that_fails_to_load_leaves_no_run_folder(tmp_path):
    cfg = _cfg(tmp_path / "runs", "data.name=cifar10", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(RbpError):
        train_run(cfg)
    assert not (tmp_path / "runs").exists()


def test_non_finite_bn_statistics_end_the_run_as_diverged(tmp_path, monkeypatch):
    trainer = Trainer(_cfg(tmp_path))
    original = Trainer.train_epoch

    def poisoned(self, progress=False):
        out = original(self, progress)
        self.model.body[2].running_var[0] = float("nan")  # loss finite, a BN statistic not
        return out

    monkeypatch.setattr(Trainer, "train_epoch", poisoned)
    with pytest.raises(Diverged, match=r"body\.2\.running_var holds non-finite values after epoch 1"):
        trainer.run_epoch()


def test_export_refuses_a_non_finite_model(tmp_path):
    trainer = Trainer(_cfg(tmp_path))
    with torch.no_grad():
        trainer.model.body[2].running_mean[0] = float("inf")
    path = tmp_path / "best.pt"
    save_checkpoint(path, trainer.cfg, asdict(trainer.splits.info), trainer.model)
    with pytest.raises(RbpError, match="non-finite"):
        export_run(path, tmp_path / "m.rbpz")
    assert not (tmp_path / "m.rbpz").exists()


@pytest.mark.parametrize(
    "key,value",
    [("mean", [0.5, 0.5]), ("std", [0.0]), ("std", "x"), ("num_classes", "ten"), ("input_shape", [1, 8])],
)
def test_a_checkpoint_with_tampered_data_info_is_refused(tmp_path, key, value):
    trainer = Trainer(_cfg(tmp_path))
    path = tmp_path / "m.pt"
    save_checkpoint(path, trainer.cfg, asdict(trainer.splits.info), trainer.model)
    payload = torch.load(path, weights_only=True)
    payload["data_info"][key] = value
    torch.save(payload, path)
    with pytest.raises(RbpError, match="is tampered"):
        load_model(path)


def test_a_checkpoint_with_forged_metrics_is_refused(tmp_path):
    trainer = Trainer(_cfg(tmp_path))
    path = tmp_path / "m.pt"
    save_checkpoint(path, trainer.cfg, asdict(trainer.splits.info), trainer.model, metrics={"val_pgd_acc": 0.5})
    payload = torch.load(path, weights_only=True)
    payload["metrics"]["val_pgd_acc"] = 0.99
    torch.save(payload, path)
    with pytest.raises(RbpError, match="is tampered"):
        load_model(path)

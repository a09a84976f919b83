"""The Ray Tune function trainable: one trial = the core Trainer, epoch by epoch.

After every epoch the trial reports its metrics with a checkpoint (``last.pt``: model + trainer
state for an exact resume; ``best.pt``: the model with the best validation PGD accuracy so far).
When Ray restarts a trial (its worker died, or the search is resumed) it passes the last checkpoint
back and training continues after that epoch, not from epoch 0. The last epoch's report also
holds the test metrics of the best model. A NaN loss (:class:`~rbp.train.Diverged`) ends the trial
with one final report marked ``diverged`` and its reason; the search goes on.

:func:`run_trial` is the loop, free of Ray's session, so tests can drive it directly.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from rbp.checkpoint import load_model, read_checkpoint, save_checkpoint
from rbp.config import Config, from_dict, nested
from rbp.models import kept_parameters
from rbp.run import test_metrics
from rbp.train import Diverged, Trainer

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"
# Metrics that are NaN in a diverged trial's final report (the epoch never finished).
_EPOCH_VALUES = ("train_loss", "train_acc", "val_clean_acc", "val_pgd_acc")


class CheckpointLike(Protocol):
    """What :func:`run_trial` needs of ``ray.tune.Checkpoint``."""

    def as_directory(self): ...  # context manager yielding a local folder


def trial_config(config: dict[str, Any]) -> Config:
    """The core Config of a trial's flat dotted config (RbpError on a key the core lacks).

    ``None`` values are left out: they mark conditional parameters the trial did not draw, and
    every optional core-config field defaults to ``None`` anyway.
    """
    cfg = from_dict(nested({k: v for k, v in config.items() if v is not None}))
    cfg.run.progress = False  # Ray's reporter shows progress; no per-batch bars in worker logs
    return cfg


def _final_metrics(trainer: Trainer, best_path: Path) -> dict[str, Any]:
    """Test metrics of the best model (as ``rbp train`` reports them) and the parameter counts."""
    current = trainer.model
    trainer.model, _, _ = load_model(best_path, trainer.device)
    try:
        metrics = test_metrics(trainer)
    finally:
        trainer.model = current
    _, total = kept_parameters(current)
    return {**metrics, "total_params": total, "best_epoch": trainer.best["epoch"]}


def _diverged_result(trainer: Trainer, error: Diverged, train_seconds: float) -> dict[str, Any]:
    kept, total = kept_parameters(trainer.model)
    best = trainer.best["val_pgd_acc"]
    return {
        **dict.fromkeys(_EPOCH_VALUES, math.nan),
        "epoch": trainer.epoch + 1,
        "epochs_done": trainer.epoch,
        "kept_params": kept,
        "density": kept / total,
        "best_val_pgd_acc": best if best >= 0 else math.nan,
        "train_seconds": train_seconds,
        "diverged": True,
        "reason": str(error),
    }


def run_trial(
    config: dict[str, Any],
    report: Callable[[dict[str, Any], Path | None], None],
    checkpoint: CheckpointLike | None = None,
    workdir: Path | None = None,
) -> None:
    """Train the trial ``config`` to its last epoch, calling ``report(metrics, checkpoint_dir)`` per epoch.

    ``checkpoint_dir`` is a folder holding ``last.pt`` and ``best.pt`` that is valid only during
    the call (the caller copies it). With ``checkpoint`` (a previous report's folder) training
    resumes after that epoch; a checkpoint of the final epoch re-reports its metrics and returns.
    ``workdir`` keeps ``best.pt`` between epochs (a temporary folder if not given).
    """
    cfg = trial_config(config)
    trainer = Trainer(cfg)
    data_info = asdict(trainer.splits.info)
    with tempfile.TemporaryDirectory(prefix="rbp-trial-") as tmp:
        work = Path(workdir or tmp)
        best_path = work / BEST
        train_seconds = 0.0
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                payload, _ = read_checkpoint(Path(folder) / LAST)
                shutil.copyfile(Path(folder) / BEST, best_path)
            trainer.load_state_dict({**payload["trainer"], "model": payload["model"]})
            train_seconds = float(payload["metrics"].get("train_seconds", 0.0))
            log.info("trial resumes after epoch %d of %d", trainer.epoch, cfg.train.epochs)
            if trainer.epoch >= cfg.train.epochs:
                report(dict(payload["metrics"]), None)  # finished before the restart: say so again
                return

        while trainer.epoch < cfg.train.epochs:
            start = time.perf_counter()
            try:
                metrics = trainer.run_epoch()
            except Diverged as error:
                log.warning("trial diverged: %s", error)
                report(_diverged_result(trainer, error, train_seconds), None)
                return
            train_seconds += time.perf_counter() - start
            if metrics["is_best"]:
                save_checkpoint(best_path, cfg, data_info, trainer.model, metrics=metrics)
            state = trainer.state_dict()  # before the test evaluation draws random starts
            metrics.update(
                epochs_done=trainer.epoch,
                best_val_pgd_acc=trainer.best["val_pgd_acc"],
                train_seconds=train_seconds,
            )
            if trainer.epoch == cfg.train.epochs:
                metrics.update(_final_metrics(trainer, best_path))
            with tempfile.TemporaryDirectory(prefix="rbp-ckpt-", dir=work) as folder:
                trainer_state = {k: v for k, v in state.items() if k != "model"}
                save_checkpoint(Path(folder) / LAST, cfg, data_info, trainer.model, trainer_state, metrics)
                shutil.copyfile(best_path, Path(folder) / BEST)
                report(metrics, Path(folder))


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: :func:`run_trial` with ``tune.report`` and ``tune.get_checkpoint``."""
    from ray import tune

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # trials share the machine: one thread per reserved core

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
        tune.report(metrics, checkpoint=checkpoint)

    run_trial(config, report, tune.get_checkpoint())

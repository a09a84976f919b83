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
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from rbp.checkpoint import load_model, read_checkpoint, save_checkpoint
from rbp.config.io import nested
from rbp.config.load import from_dict
from rbp.config.schema import Config
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


REPEATS_KEY = "_repeats"  # seeds per sampled config (the spec's ``repeats``), not a core-config key


def trial_config(config: dict[str, Any]) -> Config:
    """The core Config of a trial's flat dotted config (RbpError on a key the core lacks).

    ``None`` values are left out: they mark conditional parameters the trial did not draw, and
    every optional core-config field defaults to ``None`` anyway. Keys starting with ``_`` are the
    search's own (repeats, the study's trial number), not core-config keys.
    """
    core = {k: v for k, v in config.items() if v is not None and not k.startswith("_")}
    cfg = from_dict(nested(core))
    cfg.run.progress = False  # Ray's reporter shows progress; no per-batch bars in worker logs
    return cfg


def repeat_configs(config: dict[str, Any]) -> list[Config]:
    """The trial's configs, one per repeat: seeds ``seed, seed + 1, ...`` of the sampled config."""
    base = trial_config(config)
    repeats = int(config.get(REPEATS_KEY) or 1)
    return [base.model_copy(update={"seed": base.seed + i}, deep=True) for i in range(repeats)]


def seed_folder(folder: Path, cfg: Config, repeats: int) -> Path:
    """Where one repeat's files live in a checkpoint folder: the folder itself for a single seed."""
    return folder if repeats == 1 else folder / f"seed{cfg.seed}"


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


def combine(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the repeats' metrics: the mean of every number, ``<key>_std`` beside it.

    A single seed's metrics pass through unchanged. Per-seed values stay in ``per_seed`` (the
    recorder writes one Parquet row per seed); ``train_seconds`` is their sum (the trial's cost).
    """
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out: dict[str, Any] = {}
    for key, value in per_seed[0].items():
        values = [m.get(key) for m in per_seed]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if key == "train_seconds":
            out[key] = float(sum(values))
        elif numeric and key not in ("epoch", "epochs_done", "seed"):
            out[key] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.stdev(values)
        else:
            out[key] = value
    out["repeats"] = len(per_seed)
    out["per_seed"] = [dict(m) for m in per_seed]
    return out


def run_trial(
    config: dict[str, Any],
    report: Callable[[dict[str, Any], Path | None], None],
    checkpoint: CheckpointLike | None = None,
    workdir: Path | None = None,
) -> None:
    """Train the trial ``config`` to its last epoch, calling ``report(metrics, checkpoint_dir)`` per epoch.

    With ``_repeats: R`` in the config, R copies with seeds ``seed .. seed + R - 1`` train epoch by
    epoch side by side and each report is :func:`combine` of theirs (the objective is the mean).
    ``checkpoint_dir`` holds ``last.pt`` and ``best.pt`` (per seed in ``seed<S>/`` when R > 1) and
    is valid only during the call (the caller copies it). With ``checkpoint`` (a previous report's
    folder) training resumes after that epoch; a checkpoint of the final epoch re-reports its
    metrics and returns. ``workdir`` keeps the best models between epochs (a temporary folder if not given).
    """
    cfgs = repeat_configs(config)
    repeats, epochs = len(cfgs), cfgs[0].train.epochs
    trainers = [Trainer(cfg) for cfg in cfgs]
    data_info = asdict(trainers[0].splits.info)
    with tempfile.TemporaryDirectory(prefix="rbp-trial-") as tmp:
        work = Path(workdir or tmp)
        best_paths = [seed_folder(work, cfg, repeats) / BEST for cfg in cfgs]
        for path in best_paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        seconds = [0.0] * repeats
        if checkpoint is not None:
            last_reports: list[dict[str, Any]] = []
            with checkpoint.as_directory() as folder:
                for i, (trainer, cfg) in enumerate(zip(trainers, cfgs, strict=True)):
                    source = seed_folder(Path(folder), cfg, repeats)
                    payload, _ = read_checkpoint(source / LAST)
                    shutil.copyfile(source / BEST, best_paths[i])
                    trainer.load_state_dict({**payload["trainer"], "model": payload["model"]})
                    seconds[i] = float(payload["metrics"].get("train_seconds", 0.0))
                    last_reports.append(payload["metrics"])
            log.info("trial resumes after epoch %d of %d", trainers[0].epoch, epochs)
            if trainers[0].epoch >= epochs:
                report(combine(last_reports), None)  # finished before the restart: say so again
                return

        while trainers[0].epoch < epochs:
            per_seed, states = [], []
            for i, (trainer, cfg) in enumerate(zip(trainers, cfgs, strict=True)):
                start = time.perf_counter()
                try:
                    metrics = trainer.run_epoch()
                except Diverged as error:
                    log.warning("trial diverged (seed %d): %s", cfg.seed, error)
                    report(_diverged_result(trainer, error, sum(seconds)), None)
                    return
                seconds[i] += time.perf_counter() - start
                if metrics.pop("is_best"):
                    save_checkpoint(best_paths[i], cfg, data_info, trainer.model, metrics=metrics)
                states.append(trainer.state_dict())  # before the test evaluation draws random starts
                metrics.update(epochs_done=trainer.epoch, best_val_pgd_acc=trainer.best["val_pgd_acc"],
                               train_seconds=seconds[i])  # fmt: skip
                if trainer.epoch == epochs:
                    metrics.update(_final_metrics(trainer, best_paths[i]), seed=cfg.seed)
                per_seed.append(metrics)
            combined = combine(per_seed)
            with tempfile.TemporaryDirectory(prefix="rbp-ckpt-", dir=work) as folder:
                for i, (trainer, cfg) in enumerate(zip(trainers, cfgs, strict=True)):
                    target = seed_folder(Path(folder), cfg, repeats)
                    target.mkdir(parents=True, exist_ok=True)
                    trainer_state = {k: v for k, v in states[i].items() if k != "model"}
                    save_checkpoint(target / LAST, cfg, data_info, trainer.model, trainer_state, per_seed[i])
                    shutil.copyfile(best_paths[i], target / BEST)
                report(combined, Path(folder))


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: :func:`run_trial` with ``tune.report`` and ``tune.get_checkpoint``."""
    from ray import tune

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # trials share the machine: one thread per reserved core

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
        tune.report(metrics, checkpoint=checkpoint)

    run_trial(config, report, tune.get_checkpoint())

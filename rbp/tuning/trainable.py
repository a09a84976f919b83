"""The Ray Tune function trainable: one trial = the core Trainer, epoch by epoch.

After every epoch the trial reports its metrics with a checkpoint: a copy of its run folder, the
same files as ``rbp train`` writes (``last.pt`` for an exact resume, ``best.pt``, ``metrics.jsonl``,
``summary.json`` once finished), so ``rbp export`` and ``rbp eval`` read it like any run.
When Ray restarts a trial (its worker died, or the search is resumed) it passes the last checkpoint
back and training continues after that epoch, not from epoch 0. The last epoch's report also
holds the test metrics of the best model. A NaN loss (:class:`~rbp.training.trainer.Diverged`) ends the trial
with one final report marked ``diverged`` and its reason; the search goes on.

:func:`run_trial` is the loop, free of Ray's session, so tests can drive it directly.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from rbp.base import files
from rbp.config.io import nested
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.models import kept_parameters
from rbp.runs.epochs import make_trainer, summarise, train_epoch
from rbp.runs.folder import RunFolder
from rbp.training.trainer import Diverged, Trainer
from rbp.tuning.keys import REPEATS_KEY

log = logging.getLogger(__name__)

# Metrics that are NaN in a diverged trial's final report (the epoch never finished).
_EPOCH_VALUES = ("train_loss", "train_acc", "val_clean_acc", "val_pgd_acc")


class CheckpointLike(Protocol):
    """What :func:`run_trial` needs of ``ray.tune.Checkpoint``."""

    def as_directory(self): ...  # context manager yielding a local folder


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


def _epoch_report(trainer: Trainer, record: dict[str, Any]) -> dict[str, Any]:
    """What a trial reports for an epoch: the epoch's record and the running best."""
    report = {k: v for k, v in record.items() if k != "is_best"}
    return {**report, "epochs_done": trainer.epoch, "best_val_pgd_acc": trainer.best["val_pgd_acc"]}


def _final_report(summary: dict[str, Any]) -> dict[str, Any]:
    """The run summary's numbers (test metrics of the best model, sizes), reported with the last epoch."""
    return {k: v for k, v in summary.items() if k not in ("run_id", "run_dir")}


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

    A single seed's metrics pass through unchanged. Per-seed values stay in ``per_seed``, a dict
    ``seed<S>`` -> metrics in the repeats' order (the recorder writes one Parquet row per seed; Ray's
    loggers flatten a dict into numbers, ``per_seed/seed1/val_pgd_acc``, where a list is no value to
    TensorBoard); ``train_seconds`` is their sum (the trial's cost).
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
    out["per_seed"] = {f"seed{m.get('seed', i)}": dict(m) for i, m in enumerate(per_seed)}
    return out


def run_trial(
    config: dict[str, Any],
    report: Callable[[dict[str, Any], Path | None], None],
    checkpoint: CheckpointLike | None = None,
    workdir: Path | None = None,
) -> None:
    """Train the trial ``config`` to its last epoch, calling ``report(metrics, checkpoint_dir)`` per epoch.

    Each seed trains in a run folder of its own through the epoch path ``rbp train`` uses
    (:mod:`rbp.runs.epochs`): ``checkpoint_dir`` is a copy of those folders (the folder itself for a
    single seed, ``seed<S>/`` in it when R > 1), valid only during the call (the caller copies it).
    With ``_repeats: R`` in the config, R copies with seeds ``seed .. seed + R - 1`` train epoch by
    epoch side by side and each report is :func:`combine` of theirs (the objective is the mean).
    With ``checkpoint`` (a previous report's folder) training resumes after that epoch; a
    checkpoint of the final epoch re-reports its metrics and returns. ``workdir`` holds the run
    folders between epochs (a temporary folder if not given).
    """
    cfgs = repeat_configs(config)
    repeats, epochs = len(cfgs), cfgs[0].train.epochs
    trainers = [make_trainer(cfg) for cfg in cfgs]
    data_info = asdict(trainers[0].splits.info)
    with tempfile.TemporaryDirectory(prefix="rbp-trial-") as tmp:
        work = Path(workdir or tmp)
        folders = [RunFolder(seed_folder(work, cfg, repeats), cfg, data_info) for cfg in cfgs]
        histories: list[list[dict[str, Any]]] = [[] for _ in cfgs]
        if checkpoint is not None:
            with checkpoint.as_directory() as source:
                shutil.copytree(source, work, dirs_exist_ok=True)
            histories = [folder.restore(trainer) for folder, trainer in zip(folders, trainers, strict=True)]
            log.info("trial resumes after epoch %d of %d", trainers[0].epoch, epochs)
            if trainers[0].epoch >= epochs:  # finished before the restart: say so again
                reports = []
                for trainer, folder, history in zip(trainers, folders, histories, strict=True):
                    done = json.loads(folder.summary.read_text()) if folder.summary.exists() else {}
                    final = {**_final_report(done), "seed": trainer.cfg.seed} if done else {}
                    record = {**history[-1], "train_seconds": folder.train_seconds}
                    reports.append({**_epoch_report(trainer, record), **final})
                report(combine(reports), None)
                return
        for folder, trainer in zip(folders, trainers, strict=True):
            folder.start(trainer)

        while trainers[0].epoch < epochs:
            per_seed = []
            for trainer, folder, history in zip(trainers, folders, histories, strict=True):
                try:
                    record = train_epoch(trainer, folder, history)
                except Diverged as error:
                    log.warning("trial diverged (seed %d): %s", trainer.cfg.seed, error)
                    seconds = sum(folder.train_seconds for folder in folders)
                    report(_diverged_result(trainer, error, seconds), None)
                    return
                result = _epoch_report(trainer, record)
                if trainer.epoch == epochs:
                    result.update(_final_report(summarise(trainer, folder)), seed=trainer.cfg.seed)
                per_seed.append(result)
            with tempfile.TemporaryDirectory(prefix="rbp-ckpt-", dir=work.parent) as folder:
                shutil.copytree(work, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(files.LOCK))
                report(combine(per_seed), Path(folder))


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: :func:`run_trial` with ``tune.report`` and ``tune.get_checkpoint``."""
    from ray import tune

    cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))  # trials share the machine: one thread per reserved core

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder is not None else None
        tune.report(metrics, checkpoint=checkpoint)

    run_trial(config, report, tune.get_checkpoint())

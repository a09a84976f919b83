"""The one epoch path: train a config epoch by epoch in a run folder, keep the best model, summarise.

``rbp train`` (:func:`train_run`) and a Ray trial (:mod:`rbp.tuning.trainable`) both call
:func:`train_epoch` for every epoch and :func:`summarise` at the end, so their run folders hold
the same files in the same schema (:mod:`rbp.base.files`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rbp.artefacts.checkpoint import load_model, pretrained_weights
from rbp.artefacts.sizes import storage_bits
from rbp.base.errors import RbpError
from rbp.base.metrics import pgd_key
from rbp.config.schema import Config
from rbp.data import to_unit_float
from rbp.evaluation import autoattack_accuracy
from rbp.models import kept_parameters
from rbp.runs.folder import RunFolder, run_dir_of, run_lock, write_json
from rbp.training.trainer import Trainer

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any]], None]


def make_trainer(cfg: Config) -> Trainer:
    """The Trainer of ``cfg``, handed the dense weights a HYDRA-style config starts from."""
    return Trainer(cfg, pretrained=pretrained_weights(cfg))


def train_epoch(trainer: Trainer, folder: RunFolder, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Train one epoch, append its record to ``history`` and commit it to ``folder``.

    Returns the record (:meth:`Trainer.run_epoch`'s metrics) with ``train_seconds``, the wall-clock
    seconds of training and validation so far, summed over resumes (``folder.train_seconds``).
    """
    start = time.perf_counter()
    record = trainer.run_epoch(progress=trainer.cfg.run.progress)
    folder.train_seconds += time.perf_counter() - start
    history.append(record)
    folder.commit(trainer, history)
    return {**record, "train_seconds": folder.train_seconds}


def format_epoch(m: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {m['epoch']}/{epochs}", f"loss {m['train_loss']:.4f}", f"train_acc {m['train_acc']:.3f}"]
    parts += [f"{k} {m[k]:.3f}" for k in ("val_clean_acc", "val_pgd_acc") if k in m]
    parts.append(f"lr {m['lr']:.4g}")
    return "  ".join(parts) + ("  *best" if m["is_best"] else "")


def test_metrics(trainer: Trainer, folder: RunFolder) -> dict[str, Any]:
    """Clean, PGD (eval.test_pgd_steps, restarts) and optionally AutoAttack on the test split.

    Each part is written to ``folder`` once measured (clean and PGD to ``test.json``, AutoAttack's
    progress after each of its attacks to ``autoattack.json``), and a call that finds them measures
    only the rest: a stopped evaluation, hours of AutoAttack on a CPU, resumes where it was.
    """
    cfg = trainer.cfg
    metrics = _measured(folder.test_progress)
    if metrics is None:
        steps = cfg.eval.test_pgd_steps
        result = trainer.evaluate("test", steps=steps, restarts=cfg.eval.test_restarts)
        metrics = {"test_clean_acc": result["clean_acc"], pgd_key(steps): result["pgd_acc"]}
        write_json(folder.test_progress, metrics)
    if cfg.eval.autoattack:
        test = trainer.splits.test
        n = min(cfg.eval.autoattack_samples or len(test), len(test))
        x, y = to_unit_float(test.x[:n]), test.y[:n]
        aa = autoattack_accuracy(
            trainer.model,
            x,
            y,
            eps=cfg.attack.eps,
            norm=cfg.attack.norm,
            batch_size=cfg.data.eval_batch_size,
            seed=cfg.seed,
            device=trainer.device,
            state_path=folder.autoattack_progress,
        )
        metrics.update(test_autoattack_acc=aa["autoattack_acc"], test_autoattack_samples=n)
    return metrics


def _measured(path: Path) -> dict[str, Any] | None:
    """The test metrics an earlier, stopped evaluation wrote to ``path``; None if there are none."""
    if not path.exists():
        return None
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        log.warning("%s is unreadable (%s): measuring again", path, error)
        return None
    log.info("test clean and PGD accuracy measured before, read from %s", path)
    return metrics


def summarise(trainer: Trainer, folder: RunFolder) -> dict[str, Any]:
    """Test metrics of ``best.pt`` and the model's size, written to ``summary.json``; the summary.

    The trainer's model stays the last epoch's (a trial's checkpoint is written from it).
    """
    cfg = trainer.cfg
    current = trainer.model
    trainer.model, _, payload = load_model(folder.best, trainer.device)
    try:
        kept, total = kept_parameters(trainer.model)
        size = storage_bits(trainer.model, cfg, folder.data_info)
        summary = {
            "run_id": cfg.run_id(),
            "run_dir": str(folder.dir),
            "best_epoch": payload["metrics"]["epoch"],
            "best_val_pgd_acc": payload["metrics"].get("val_pgd_acc"),
            **test_metrics(trainer, folder),
            "kept_params": kept,
            "total_params": total,
            "density": kept / total,
            "size_bits": size,
            "size_kb": size / 8 / 1000,
        }
    finally:
        trainer.model = current
    write_json(folder.summary, summary)
    folder.drop_evaluation_progress()  # summary.json holds what it measured
    return summary


def train_run(
    cfg: Config, *, resume: bool = False, overwrite: bool = False, callback: EpochCallback | None = None
) -> dict[str, Any]:
    """Train ``cfg`` in its run folder and return the summary (also written to ``summary.json``).

    A folder that already holds a run is never overwritten unless ``overwrite``; with ``resume``
    training continues from ``last.pt`` (or starts, if there is none yet), and a finished run
    returns its summary without training again. One process at a time writes a folder.
    """
    run_dir = run_dir_of(cfg)
    existing = next(path for path in (run_dir, *run_dir.parents) if path.exists())
    if not existing.is_dir():
        raise RbpError(f"run.out_dir: {existing} is a file, not a folder; choose another run.out_dir")
    trainer = make_trainer(cfg)  # loads the data first: a data set that fails to load leaves no folder behind
    folder = RunFolder(run_dir, cfg, asdict(trainer.splits.info))
    with run_lock(run_dir):
        if folder.last.exists() and not (resume or overwrite):
            raise RbpError(
                f"run folder {run_dir} already holds this run; "
                "pass --resume to continue it or --overwrite to start again"
            )
        if resume and folder.summary.exists():
            log.info("run %s is already finished", run_dir)
            return json.loads(folder.summary.read_text())
        if overwrite and not resume:
            folder.clear()
        history: list[dict[str, Any]] = []
        if resume and folder.last.exists():
            history = folder.restore(trainer)
        elif resume:
            log.info("nothing to resume in %s: starting", run_dir)
        folder.start(trainer)
        m = cfg.model
        log.info("run %s: %s %s on %s, %d epochs", run_dir, m.mode, m.arch, cfg.data.name, cfg.train.epochs)
        while trainer.epoch < cfg.train.epochs:
            record = train_epoch(trainer, folder, history)
            log.info(format_epoch(record, cfg.train.epochs))
            if callback is not None:
                callback(record)
        return summarise(trainer, folder)

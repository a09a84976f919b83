"""A training run on disk: ``<out_dir>/<run id>/`` with config, densities, metrics and checkpoints.

Files of a run folder:
- ``config.yaml``     the resolved config (``rbp train --config`` accepts it as is)
- ``densities.json``  per-layer shape, weights, density and kept count
- ``metrics.jsonl``   one JSON object per finished epoch
- ``last.pt``         the latest epoch's model + trainer state (``--resume`` continues from it)
- ``best.pt``         the model of the epoch with the best validation PGD accuracy
- ``summary.json``    test metrics of ``best.pt`` and the kept-parameter count, when finished

Every file is written to a temporary name and renamed, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rbp.atomic import atomic_path
from rbp.checkpoint import load_model, read_checkpoint, save_checkpoint
from rbp.config import Config
from rbp.data import to_unit_float
from rbp.errors import RbpError
from rbp.evaluate import autoattack_accuracy
from rbp.export import storage_bits
from rbp.models import kept_parameters, layer_report
from rbp.train import EpochCallback, Trainer

log = logging.getLogger(__name__)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _keep_metrics_until(path: Path, epoch: int) -> None:
    """Drop epochs after ``epoch`` (written before a kill interrupted their checkpoint)."""
    rows = [row for row in read_metrics(path) if row["epoch"] <= epoch]
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _format_epoch(m: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {m['epoch']}/{epochs}", f"loss {m['train_loss']:.4f}", f"train_acc {m['train_acc']:.3f}"]
    parts += [f"{k} {m[k]:.3f}" for k in ("val_clean_acc", "val_pgd_acc") if k in m]
    parts.append(f"lr {m['lr']:.4g}")
    return "  ".join(parts) + ("  *best" if m["is_best"] else "")


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.out_dir).expanduser() / cfg.run_id()


def test_metrics(trainer: Trainer) -> dict[str, Any]:
    """Clean, PGD (eval.test_pgd_steps, restarts) and optionally AutoAttack on the test split."""
    cfg = trainer.cfg
    steps = cfg.eval.test_pgd_steps
    result = trainer.evaluate("test", steps=steps, restarts=cfg.eval.test_restarts)
    metrics = {"test_clean_acc": result["clean_acc"], f"test_pgd{steps}_acc": result["pgd_acc"]}
    if cfg.eval.autoattack:
        test = trainer.splits.test
        n = min(cfg.eval.autoattack_samples or len(test), len(test))
        x, y = to_unit_float(test.x[:n].to(trainer.device)), test.y[:n].to(trainer.device)
        aa = autoattack_accuracy(
            trainer.model,
            x,
            y,
            eps=cfg.attack.eps,
            norm=cfg.attack.norm,
            batch_size=cfg.data.eval_batch_size,
            seed=cfg.seed,
        )
        metrics.update(test_autoattack_acc=aa["autoattack_acc"], test_autoattack_samples=n)
    return metrics


def train_run(
    cfg: Config, *, resume: bool = False, overwrite: bool = False, callback: EpochCallback | None = None
) -> dict[str, Any]:
    """Train ``cfg`` in its run folder and return the summary (also written to ``summary.json``).

    A folder that already holds a run is never overwritten unless ``overwrite``; with ``resume``
    training continues from ``last.pt`` (or starts, if there is none yet), and a finished run
    returns its summary without training again.
    """
    run_dir = run_dir_of(cfg)
    last, best, metrics_path, summary_path = (
        run_dir / n for n in ("last.pt", "best.pt", "metrics.jsonl", "summary.json")
    )
    if last.exists() and not (resume or overwrite):
        raise RbpError(
            f"run folder {run_dir} already holds this run; pass --resume to continue it or --overwrite to start again"
        )
    if resume and summary_path.exists():
        log.info("run %s is already finished", run_dir)
        return json.loads(summary_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume:
        for path in (last, best, metrics_path, summary_path):
            path.unlink(missing_ok=True)

    trainer = Trainer(cfg)
    data_info = asdict(trainer.splits.info)
    if resume and last.exists():
        payload, _ = read_checkpoint(last)
        if payload.get("trainer") is None:
            raise RbpError(f"checkpoint {last} has no trainer state to resume from; use --overwrite")
        trainer.load_state_dict({**payload["trainer"], "model": payload["model"]})
        _keep_metrics_until(metrics_path, trainer.epoch)
        log.info("resuming %s after epoch %d", run_dir, trainer.epoch)
    elif resume:
        log.info("nothing to resume in %s: starting", run_dir)
    write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
    write_json(run_dir / "densities.json", layer_report(trainer.model))
    log.info("run %s: %s %s on %s, %d epochs", run_dir, cfg.model.mode, cfg.model.arch, cfg.data.name, cfg.train.epochs)

    while trainer.epoch < cfg.train.epochs:
        metrics = trainer.run_epoch(progress=cfg.run.progress)
        with metrics_path.open("a") as f:  # before the checkpoint: a resume trims what it lacks
            f.write(json.dumps(metrics) + "\n")
        state = trainer.state_dict()
        save_checkpoint(last, cfg, data_info, trainer.model, {k: v for k, v in state.items() if k != "model"}, metrics)
        if metrics["is_best"]:
            save_checkpoint(best, cfg, data_info, trainer.model, metrics=metrics)
        log.info(_format_epoch(metrics, cfg.train.epochs))
        if callback is not None:
            callback(metrics)

    trainer.model, _, payload = load_model(best, trainer.device)
    kept, total = kept_parameters(trainer.model)
    size = storage_bits(trainer.model, cfg, data_info)
    summary = {
        "run_id": cfg.run_id(),
        "run_dir": str(run_dir),
        "best_epoch": payload["metrics"]["epoch"],
        "best_val_pgd_acc": payload["metrics"].get("val_pgd_acc"),
        **test_metrics(trainer),
        "kept_params": kept,
        "total_params": total,
        "density": kept / total,
        "size_bits": size,
        "size_kb": size / 8 / 1000,
    }
    write_json(summary_path, summary)
    return summary

"""A training run on disk: ``<out_dir>/<run id>/`` with config, densities, metrics and checkpoints.

Files of a run folder:
- ``config.yaml``     the resolved config (``rbp train --config`` accepts it as is)
- ``densities.json``  per-layer shape, weights, density and kept count
- ``metrics.jsonl``   one JSON object per finished epoch
- ``last.pt``         the latest epoch's model + trainer state (``--resume`` continues from it)
- ``best.pt``         the model of the epoch with the best validation PGD accuracy
- ``summary.json``    test metrics of ``best.pt`` and the kept-parameter count, when finished
- ``.lock``           held (``flock``) by the one process writing the folder

An epoch is committed by one atomic rename: ``last.pt``, which carries the whole metrics history.
``best.pt`` and ``metrics.jsonl`` are derived from it afterwards, so a run stopped at any write
(a kill, a full disk) is repaired from ``last.pt`` on ``--resume`` and finishes as if never stopped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rbp.base.atomic import atomic_path
from rbp.base.errors import RbpError
from rbp.checkpoint import load_model, read_checkpoint, save_checkpoint
from rbp.config.schema import Config
from rbp.data import to_unit_float
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
    """The epochs of a ``metrics.jsonl`` (for reading a run; resuming uses ``last.pt``'s history)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def _format_epoch(m: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {m['epoch']}/{epochs}", f"loss {m['train_loss']:.4f}", f"train_acc {m['train_acc']:.3f}"]
    parts += [f"{k} {m[k]:.3f}" for k in ("val_clean_acc", "val_pgd_acc") if k in m]
    parts.append(f"lr {m['lr']:.4g}")
    return "  ".join(parts) + ("  *best" if m["is_best"] else "")


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.out_dir).expanduser() / cfg.run_id()


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` and hold its lock for the block; another live writer is an error naming it.

    ``flock`` is released by the kernel when the holder dies, so a killed run never leaves a stale lock.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RbpError(f"run.out_dir: cannot create the run folder {run_dir} ({error.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RbpError(
                f"run folder {run_dir} is being written by {holder}; wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def test_metrics(trainer: Trainer) -> dict[str, Any]:
    """Clean, PGD (eval.test_pgd_steps, restarts) and optionally AutoAttack on the test split."""
    cfg = trainer.cfg
    steps = cfg.eval.test_pgd_steps
    result = trainer.evaluate("test", steps=steps, restarts=cfg.eval.test_restarts)
    metrics = {"test_clean_acc": result["clean_acc"], f"test_pgd{steps}_acc": result["pgd_acc"]}
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
        )
        metrics.update(test_autoattack_acc=aa["autoattack_acc"], test_autoattack_samples=n)
    return metrics


class _RunFolder:
    """The files of one run folder and the commit protocol of an epoch."""

    def __init__(self, run_dir: Path, cfg: Config, data_info: dict[str, Any]) -> None:
        self.dir, self.cfg, self.data_info = run_dir, cfg, data_info
        self.last, self.best = run_dir / "last.pt", run_dir / "best.pt"
        self.metrics, self.summary = run_dir / "metrics.jsonl", run_dir / "summary.json"

    def commit(self, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        """Commit the epoch just trained: ``last.pt`` (the commit point), then what derives from it."""
        state = {k: v for k, v in trainer.state_dict().items() if k != "model"}
        save_checkpoint(self.last, self.cfg, self.data_info, trainer.model, {**state, "history": history}, history[-1])
        self._derive(trainer, history)

    def _derive(self, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        if history and trainer.best["epoch"] == trainer.epoch:  # this epoch is the best: best.pt is its model
            save_checkpoint(self.best, self.cfg, self.data_info, trainer.model, metrics=history[-1])
        _write_metrics(self.metrics, history)

    def restore(self, trainer: Trainer) -> list[dict[str, Any]]:
        """Load ``last.pt`` into ``trainer``, repair ``best.pt`` / ``metrics.jsonl``; the metrics history."""
        try:
            payload, _ = read_checkpoint(self.last)
        except RbpError as error:
            raise RbpError(f"{error}; nothing to resume from: start the run again with --overwrite") from None
        state = payload.get("trainer")
        if not isinstance(state, dict) or not isinstance(state.get("history"), list):
            raise RbpError(f"checkpoint {self.last} has no trainer state to resume from; use --overwrite")
        trainer.load_state_dict({**state, "model": payload["model"]})
        self._derive(trainer, state["history"])  # a stop between the commit and these writes left them behind
        log.info("resuming %s after epoch %d", self.dir, trainer.epoch)
        return state["history"]

    def clear(self) -> None:
        for path in (self.last, self.best, self.metrics, self.summary):
            path.unlink(missing_ok=True)


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
    trainer = Trainer(cfg)  # loads the data first: a data set that fails to load leaves no folder behind
    folder = _RunFolder(run_dir, cfg, asdict(trainer.splits.info))
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
        write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        write_json(run_dir / "densities.json", layer_report(trainer.model))
        m = cfg.model
        log.info("run %s: %s %s on %s, %d epochs", run_dir, m.mode, m.arch, cfg.data.name, cfg.train.epochs)

        while trainer.epoch < cfg.train.epochs:
            history.append(trainer.run_epoch(progress=cfg.run.progress))
            folder.commit(trainer, history)
            log.info(_format_epoch(history[-1], cfg.train.epochs))
            if callback is not None:
                callback(history[-1])

        summary = _summarise(trainer, folder)
        write_json(folder.summary, summary)
    return summary


def _summarise(trainer: Trainer, folder: _RunFolder) -> dict[str, Any]:
    """Test metrics of ``best.pt`` and the model's size."""
    cfg = trainer.cfg
    trainer.model, _, payload = load_model(folder.best, trainer.device)
    kept, total = kept_parameters(trainer.model)
    size = storage_bits(trainer.model, cfg, folder.data_info)
    return {
        "run_id": cfg.run_id(),
        "run_dir": str(folder.dir),
        "best_epoch": payload["metrics"]["epoch"],
        "best_val_pgd_acc": payload["metrics"].get("val_pgd_acc"),
        **test_metrics(trainer),
        "kept_params": kept,
        "total_params": total,
        "density": kept / total,
        "size_bits": size,
        "size_kb": size / 8 / 1000,
    }

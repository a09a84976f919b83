"""A run folder on disk, ``<out_dir>/<run id>/`` (its files: :mod:`rbp.base.files`), and how an epoch
is committed to it.

An epoch is committed by one atomic rename: ``last.pt``, which carries the whole metrics history.
``best.pt`` and ``metrics.jsonl`` are derived from it afterwards, so a run stopped at any write
(a kill, a full disk) is repaired from ``last.pt`` on resume and finishes as if never stopped.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rbp.artefacts.checkpoint import read_checkpoint, save_checkpoint
from rbp.base import files
from rbp.base.atomic import write_text_atomic
from rbp.base.errors import RbpError
from rbp.base.lock import exclusive
from rbp.config.schema import Config
from rbp.models import layer_report
from rbp.training.trainer import Trainer

log = logging.getLogger(__name__)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The epochs of a ``metrics.jsonl`` (for reading a run; resuming uses ``last.pt``'s history)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.out_dir).expanduser() / cfg.run_id()


def run_lock(run_dir: Path) -> AbstractContextManager[None]:
    """Create ``run_dir`` and hold its lock while a run writes it (:func:`rbp.base.lock.exclusive`)."""
    return exclusive(run_dir, "run folder", "run.out_dir")


class RunFolder:
    """The files of one run folder and the commit protocol of an epoch."""

    def __init__(self, run_dir: Path, cfg: Config, data_info: dict[str, Any]) -> None:
        self.dir, self.cfg, self.data_info = run_dir, cfg, data_info
        self.last, self.best = run_dir / files.LAST, run_dir / files.BEST
        self.metrics, self.summary = run_dir / files.METRICS, run_dir / files.SUMMARY
        # The test evaluation's progress (hours of AutoAttack on a CPU): kept until summary.json holds it.
        self.test_progress = run_dir / files.TEST_PROGRESS
        self.autoattack_progress = run_dir / files.AUTOATTACK_PROGRESS
        # Wall-clock seconds of training and validation so far, over resumes: kept in last.pt's trainer
        # state, not in the metrics history (which must not depend on the machine or on interruptions).
        self.train_seconds = 0.0

    def start(self, trainer: Trainer) -> None:
        """Write what describes the run before its first epoch (and again on a resume): the resolved
        config, the densities and the determinism flags in effect, which ``run.deterministic`` sets
        but the device and the environment decide too."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.dir / files.CONFIG, self.cfg.to_yaml())
        write_json(self.dir / files.DENSITIES, layer_report(trainer.model))
        write_json(self.dir / files.DETERMINISM, trainer.determinism)

    def commit(self, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        """Commit the epoch just trained: ``last.pt`` (the commit point), then what derives from it."""
        state = {k: v for k, v in trainer.state_dict().items() if k != "model"}
        state = {**state, "history": history, "train_seconds": self.train_seconds}
        save_checkpoint(self.last, self.cfg, self.data_info, trainer.model, state, history[-1])
        self.drop_evaluation_progress()  # it measured an older best.pt (a trial that trains its last epoch again)
        self._derive(trainer, history)

    def _derive(self, trainer: Trainer, history: list[dict[str, Any]]) -> None:
        if history and trainer.best["epoch"] == trainer.epoch:  # this epoch is the best: best.pt is its model
            save_checkpoint(self.best, self.cfg, self.data_info, trainer.model, metrics=history[-1])
        write_text_atomic(self.metrics, "".join(json.dumps(row) + "\n" for row in history))

    def restore(self, trainer: Trainer) -> list[dict[str, Any]]:
        """Load ``last.pt`` into ``trainer``, repair ``best.pt`` / ``metrics.jsonl``; the metrics history.

        A Ray trial's ``last.pt`` written before trials kept run folders has no history: its last
        epoch's metrics stand for it (``metrics.jsonl`` then starts there).
        """
        try:
            payload, _ = read_checkpoint(self.last)
        except RbpError as error:
            raise RbpError(f"{error}; nothing to resume from: start the run again with --overwrite") from None
        state = payload.get("trainer")
        if not isinstance(state, dict):
            raise RbpError(f"checkpoint {self.last} has no trainer state to resume from; use --overwrite")
        history = state.get("history")
        if not isinstance(history, list):
            history = [payload["metrics"]]
        self.train_seconds = float(state.get("train_seconds", payload["metrics"].get("train_seconds", 0.0)))
        trainer.load_state_dict({**state, "model": payload["model"]})
        self._derive(trainer, history)  # a stop between the commit and these writes left them behind
        log.info("resuming %s after epoch %d", self.dir, trainer.epoch)
        return history

    def clear(self) -> None:
        for path in (self.last, self.best, self.metrics, self.summary, *self.evaluation_progress):
            path.unlink(missing_ok=True)

    @property
    def evaluation_progress(self) -> tuple[Path, Path]:
        """The files of a test evaluation under way, which ``summary.json`` supersedes."""
        return self.test_progress, self.autoattack_progress

    def drop_evaluation_progress(self) -> None:
        """Remove a stopped test evaluation's progress: superseded by ``summary.json`` or by a new epoch."""
        for path in self.evaluation_progress:
            path.unlink(missing_ok=True)

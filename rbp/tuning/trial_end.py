"""The end of a trial as the recorder writes it, and the repairs after a search.

:meth:`TrialEnd.finalize` logs the resolved config and the kept model, sets the status tags,
writes the trial's Parquet rows (one per seed, named by trial id: a second write replaces them)
and only then closes the MLflow run; :meth:`TrialEnd.reconcile` finalizes ended trials that lack
their row (a driver killed with work queued), :meth:`TrialEnd.close_open_runs` closes the runs of
an interrupted search. A mixin of :class:`rbp.tuning.record.TrialRecorder`, which holds the MLflow
client and the run lookup (``run_of``) it uses.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbp.base import files
from rbp.base.errors import RbpError
from rbp.base.metrics import pgd_key
from rbp.results import read_results, result_row, write_row
from rbp.tuning import keys, tracking
from rbp.tuning.keys import REPEATS_KEY, TRIAL_KEY
from rbp.tuning.trainable import repeat_configs, seed_folder, trial_config

if TYPE_CHECKING:
    from ray.tune import ResultGrid

log = logging.getLogger(__name__)

# Numbers in a result that do not change from epoch to epoch (or are known only at the end): MLflow
# tags of the trial's run, not metric charts.
CONSTANTS = ("kept_params", "total_params", "density", "best_epoch", "epochs_done", "repeats")


class TrialEnd:
    """The recorder's finishing work (see the module docstring)."""

    def finalize(
        self,
        trial_id: str,
        config: dict[str, Any],
        last: dict[str, Any] | None,
        checkpoint: Any = None,
        error: str | None = None,
    ) -> None:
        """Record the end of a trial: artefacts, status tags, the Parquet row, then the run's status."""
        last = dict(last or {})
        cfg = trial_config(config)
        if error is not None:
            status, reason = "failed", error
        elif last.get("diverged"):
            status, reason = "diverged", str(last.get("reason", "loss is not finite"))
        elif last.get("epochs_done", 0) < cfg.train.epochs:
            status, reason = "early_stopped", None
        else:
            status, reason = "finished", None
        run_id = self.run_of(trial_id, config)
        kept = checkpoint if status in ("finished", "early_stopped") else None
        cfgs = repeat_configs(config)
        run = self.client.get_run(run_id)  # start time and params: the tags set below are not read
        sizes = self._log_artifacts(run, cfgs, kept)
        self.client.set_tag(run_id, keys.STATUS_TAG, status)
        for key in CONSTANTS:
            if isinstance(last.get(key), (int, float)) and last[key] == last[key]:
                self.client.set_tag(run_id, key, f"{last[key]:.6g}")
        if reason:
            self.client.set_tag(run_id, keys.REASON_TAG, reason[:5000])
        per_seed = list((last.get("per_seed") or {}).values()) or [last]
        for i, seed_cfg in enumerate(cfgs[: len(per_seed)]):
            name = trial_id if len(per_seed) == 1 else f"{trial_id}-seed{seed_cfg.seed}"
            metrics = {**last, **per_seed[i]} if len(per_seed) > 1 else last
            row = self._row(trial_id, run, config, seed_cfg, metrics, status, reason, sizes.get(seed_cfg.seed))
            write_row(self.runs_dir, row, name=name)
        self.client.set_terminated(run_id, "FAILED" if status in ("diverged", "failed") else "FINISHED")
        log.info("trial %s %s (MLflow run %s)", trial_id, status, run_id)

    def _log_artifacts(self, run: Any, cfgs: list[Any], checkpoint: Any) -> dict[int, int]:
        """Log ``config.yaml``, each seed's kept model as a ``.rbpz`` and as an MLflow Model (pyfunc);
        returns {seed: .rbpz bytes}.

        A model the ``.rbpz`` format cannot hold (:func:`rbp.artefacts.export.export_run` refuses it) is not
        logged as a file: the run's ``rbp.artefact`` tag says why; its MLflow Model wraps the checkpoint.
        """
        from rbp.artefacts.export import export_run
        from rbp.tuning.mlflow_model import log_model

        run_id, repeats, sizes = run.info.run_id, len(cfgs), {}
        with tempfile.TemporaryDirectory(prefix="rbp-artefacts-") as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(cfgs[0].to_yaml())
            self.client.log_artifact(run_id, str(path))
            if checkpoint is None:
                return sizes
            with checkpoint.as_directory() as folder:
                for cfg in cfgs:
                    best = seed_folder(Path(folder), cfg, repeats) / files.BEST
                    if not best.is_file():
                        continue
                    out = seed_folder(Path(tmp), cfg, repeats) / "model.rbpz"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        export_run(best, out)
                    except RbpError as error:
                        self.client.set_tag(run_id, "rbp.artefact", f"no .rbpz: {error}"[:500])
                        out = best  # the MLflow Model carries the checkpoint instead
                    else:
                        sizes[cfg.seed] = out.stat().st_size
                        self.client.log_artifact(run_id, str(out), None if repeats == 1 else out.parent.name)
                    name = "model" if repeats == 1 else f"model-seed{cfg.seed}"
                    log_model(self.client, run, out, cfg, name)
        return sizes

    def _row(self, trial_id, run, config, cfg, last, status, reason, artifact_bytes) -> dict[str, Any]:
        """The trial's results row: :func:`rbp.results.result_row` plus the search's own columns."""
        started = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
        steps = cfg.eval.test_pgd_steps
        summary_keys = ["best_epoch", "best_val_pgd_acc", "test_clean_acc", pgd_key(steps),
                        "test_autoattack_acc", "kept_params", "total_params", "density"]  # fmt: skip
        summary = {k: last[k] for k in summary_keys if k in last}
        extra = {
            "experiment": self.experiment,
            "search": self.search,
            "trial_id": trial_id,
            "study_trial": config.get(TRIAL_KEY),
            "repeats": int(config.get(REPEATS_KEY) or 1),
            "mlflow_run_id": run.info.run_id,
            "sampled": json.dumps(sampled_values(config, self.searched)),  # the searched keys this trial drew
            "epochs_done": last.get("epochs_done"),
            **{f"final_{k}": last.get(k) for k in ("train_loss", "train_acc", "val_clean_acc", "val_pgd_acc")},
            "artifact_bytes": artifact_bytes,
            "started_at": started.isoformat(timespec="seconds"),
            "train_seconds": last.get("train_seconds"),
            "wall_seconds": (datetime.now(timezone.utc) - started).total_seconds(),
        }
        return result_row(cfg, summary, status=status, reason=reason or "", extra=extra)

    # -- after the search -------------------------------------------------------------------------
    def reconcile(self, grid: ResultGrid) -> int:
        """Finalize ended trials that lack a row or a closed run (a callback that failed midway).

        Call only when Ray ended every trial of the search (no interrupt); returns how many were
        repaired.
        """
        repaired = 0
        for result in grid:
            metrics = result.metrics or {}
            trial_id = metrics.get("trial_id")
            if not trial_id:
                continue  # never reported: nothing to record
            has_row = any(self.runs_dir.glob(f"{trial_id}*.parquet"))
            run = tracking.newest_run(self.client, self.experiment_id, {keys.TRIAL_TAG: trial_id})
            if has_row and run is not None and run.info.status in ("FINISHED", "FAILED"):
                continue
            error = None if result.error is None else _first_line(result.error)
            self.finalize(trial_id, result.config or {}, metrics, result.checkpoint, error)
            repaired += 1
        return repaired

    def ended_trials(self) -> set[str]:
        """Trial ids of this search that have their row (that ended, whichever driver saw it)."""
        rows = read_results(self.runs_dir)
        if rows.empty or "search" not in rows:
            return set()
        return set(rows.loc[rows["search"] == self.search, "trial_id"])

    def close_open_runs(self, status: str) -> int:
        """Set this search's RUNNING runs to ``status`` (KILLED on interrupt); returns how many."""
        runs = tracking.search_all(
            self.client,
            self.experiment_id,
            f"tags.`{keys.SEARCH_TAG}` = '{self.search}' and attributes.status = 'RUNNING'",
        )
        for run in runs:
            self.client.set_terminated(run.info.run_id, status)
        return len(runs)


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def sampled_values(config: dict[str, Any], searched: list[str]) -> dict[str, Any]:
    """The searched keys a trial actually drew (a conditional one may be absent)."""
    return {key: config[key] for key in searched if config.get(key) is not None}

"""The driver callback that records every trial: one MLflow run and one Parquet row per trial.

Ray calls it on the driver for every trial event. A trial's run is created when the trial first
starts and found again by trial id when Ray restarts it (worker death, ``rbp tune --resume``), so
restarts never duplicate runs; per-epoch metrics are logged with the epoch as step. When a trial
ends, :meth:`TrialRecorder.finalize` logs the resolved config and the kept model as a ``.rbpz``,
writes the trial's Parquet rows (one per seed, named by trial id: a second write replaces them)
and only then marks the run FINISHED (or FAILED for a diverged or errored trial, with the reason
as a tag). Every trial's run is nested under the search's parent run and named by its sampled values.

Ray calls the hooks on its controller loop, the loop that also starts the next trial: MLflow's
writes and the export there left a slot idle for about a second at every trial's end. The hooks
therefore only queue their work, in order, on one thread of the recorder (all MLflow calls happen
there); :meth:`TrialRecorder.flush`, called by Ray at the experiment's end, waits for it. A driver
killed with work still queued loses nothing a restart cannot redo: a trial's run is found again by
tag, and :meth:`TrialRecorder.reconcile` finalizes ended trials that lack their row.

Ray's ``MLflowLoggerCallback`` does not do this job: it keys runs by trial in driver memory (a
resumed driver opens a second run per trial), cannot nest them under a parent run, and logs every
number of a result as a metric (constants such as ``kept_params`` included).

Ray pickles this object with the experiment state, and ``--resume`` gets it back: it holds only
plain settings, and reconnects to MLflow lazily.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from rbp.base.version import __version__
from rbp.results import git_commit
from rbp.tuning import keys, tracking
from rbp.tuning.configkeys import config_value_text, flatten_config
from rbp.tuning.keys import REPEATS_KEY, TRIAL_KEY
from rbp.tuning.trainable import trial_config
from rbp.tuning.trial_end import CONSTANTS, TrialEnd, sampled_values

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

log = logging.getLogger(__name__)

# Bookkeeping keys Ray adds to every result: not metrics of the model.
_RAY_KEYS = frozenset(
    "timestamp training_iteration time_this_iter_s time_total_s pid node_ip time_since_restore "
    "iterations_since_restore done epoch".split()
)
_SKIP = _RAY_KEYS | frozenset(CONSTANTS) | frozenset(f"{k}_std" for k in CONSTANTS) | {"seed"}


class TrialRecorder(TrialEnd, Callback):
    """Mirrors trials into MLflow runs and Parquet rows; see the module docstring (the end of a
    trial and the repairs after a search: :class:`~rbp.tuning.trial_end.TrialEnd`)."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        experiment_id: str,
        search: str,
        spec_path: str,
        searched: list[str],
        runs_dir: Path,
        parent_run_id: str | None = None,
    ) -> None:
        self.parent_run_id = parent_run_id
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.experiment_id = experiment_id
        self.search = search
        self.spec_path = spec_path
        self.searched = list(searched)
        self.runs_dir = Path(runs_dir)
        self._client: MlflowClient | None = None
        self._runs: dict[str, str] = {}  # trial id -> MLflow run id
        self._worker: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_client=None, _runs={}, _worker=None)
        return state

    # -- the recorder's thread ------------------------------------------------------------------
    def _queue(self, work: Callable[..., None], trial_id: str, *args: Any) -> None:
        """Run ``work(trial_id, *args)`` on the recorder's one thread, after everything queued before it."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="rbp-recorder")
        self._worker.submit(self._guarded, work, trial_id, *args)

    @staticmethod
    def _guarded(work: Callable[..., None], trial_id: str, *args: Any) -> None:
        # A failed write must not stop the search (Ray would abort every trial): log it; an ended
        # trial without its row is finalized again by reconcile after the search.
        try:
            work(trial_id, *args)
        except Exception as error:  # noqa: BLE001  (any failure of MLflow or the disk)
            log.warning("recording trial %s failed (%s: %s); a trial that ended without its row is recorded "
                        "again after the search", trial_id, type(error).__name__, error)  # fmt: skip

    def flush(self) -> None:
        """Wait until the work the hooks queued is done (failures were logged, see :meth:`_guarded`)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = tracking.client(self.tracking_uri)
        return self._client

    # -- the run of a trial ---------------------------------------------------------------------
    def run_of(self, trial_id: str, config: dict[str, Any]) -> str:
        """MLflow run id of ``trial_id``: cached, found by tag, or created with its params."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        run = tracking.newest_run(self.client, self.experiment_id, {keys.TRIAL_TAG: trial_id})
        number = config.get(TRIAL_KEY)
        if run is None and number is not None and self.parent_run_id:
            # A driver killed before Ray saved its state: the resumed search runs the same Optuna
            # trial under a new Ray trial id. One MLflow run per study trial: adopt the old one.
            study_trial = {keys.PARENT_TAG: self.parent_run_id, keys.STUDY_TRIAL_TAG: str(number)}
            run = tracking.newest_run(self.client, self.experiment_id, study_trial)
            if run is not None:
                self.client.set_tag(run.info.run_id, keys.TRIAL_TAG, trial_id)
        if run is None:
            run = self._create_run(trial_id, config)
        if not run.data.params:  # created by a driver that died before logging them
            self._log_params(run.info.run_id, config)
        self._runs[trial_id] = run.info.run_id
        return run.info.run_id

    def _create_run(self, trial_id: str, config: dict[str, Any]):
        tags = {
            keys.TRIAL_TAG: trial_id,
            keys.SEARCH_TAG: self.search,
            keys.SPEC_TAG: self.spec_path,
            keys.SEARCHED_TAG: json.dumps(self.searched),
            keys.SAMPLED_TAG: json.dumps(sampled_values(config, self.searched)),
            keys.RUN_ID_TAG: trial_config(config).run_id(),
            keys.GIT_TAG: git_commit(),
            keys.STUDY_TRIAL_TAG: str(config.get(TRIAL_KEY, "")),
            "rbp.repeats": str(config.get(REPEATS_KEY) or 1),
            "rbp.version": __version__,
            "mlflow.source.name": "rbp tune",
        }
        if self.parent_run_id:
            tags[keys.PARENT_TAG] = self.parent_run_id
        return self.client.create_run(self.experiment_id, tags=tags, run_name=run_name(config, self.searched))

    def _log_params(self, run_id: str, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_config(trial_config(config))
        params = [Param(key, config_value_text(value)) for key, value in flat.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=params[start : start + 100])

    # -- Ray callback hooks (they queue; see the module docstring) -----------------------------
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._queue(self._mark_running, trial.trial_id, dict(trial.config))

    def on_trial_restore(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._queue(self._mark_running, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        self._queue(self._log_result, trial.trial_id, dict(trial.config), dict(result), time.time())

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._queue(self.finalize, trial.trial_id, dict(trial.config), trial.last_result, trial.checkpoint)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        config, error = dict(trial.config), _error_reason(trial)
        self._queue(self.finalize, trial.trial_id, config, trial.last_result, trial.checkpoint, error)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.flush()

    def _mark_running(self, trial_id: str, config: dict[str, Any]) -> None:
        run_id = self.run_of(trial_id, config)
        if self.client.get_run(run_id).info.status != "RUNNING":  # reopened by a restart or --resume
            self.client.update_run(run_id, status="RUNNING")

    def _log_result(self, trial_id: str, config: dict[str, Any], result: dict, seconds: float) -> None:
        """Log one epoch's numbers with the epoch as step, timestamped when Ray received them."""
        from mlflow.entities import Metric

        run_id = self.run_of(trial_id, config)
        step, now = int(result.get("epoch", 0)), int(seconds * 1000)
        values = tracking.numeric_metrics(result, _SKIP)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])


def run_name(config: dict[str, Any], searched: list[str], width: int = 200) -> str:
    """A trial's run name from its sampled values: ``t3 lr=0.1234 scheme=binary ...`` (4 significant digits)."""
    parts = [f"t{config.get(TRIAL_KEY, '?')}"]
    for key, value in sampled_values(config, searched).items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.split('.')[-1]}={text}")
    return " ".join(parts)[:width]


def _error_reason(trial: Trial) -> str:
    """The last line of the trial's error file (the exception), or a generic reason."""
    path = trial.error_file
    if path and Path(path).is_file():
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
        if lines:
            return lines[-1][:300]
    return "the trial failed (see its error.txt in the search folder)"

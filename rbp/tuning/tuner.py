"""One Ray experiment of a search: the ``Tuner`` (trainable, searcher, scheduler, recorder), fitted once,
with Ctrl-C turned into a clean stop that ``rbp tune --resume`` continues.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from rbp.base.errors import RbpError
from rbp.tuning import keys
from rbp.tuning.spec import LoadedSpec

if TYPE_CHECKING:
    import optuna

    from rbp.tuning.record import TrialRecorder
from rbp.tuning.options import Search, TuneOptions
from rbp.tuning.summary import after_fit


# ----------------------------------------------------------------------------- the Tuner
def _tuner(loaded: LoadedSpec, opts: TuneOptions, storage: str, name: str, recorder: TrialRecorder, samples: int,
           study_storage: optuna.storages.BaseStorage):  # fmt: skip
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from rbp.tuning.progress import SearchReporter
    from rbp.tuning.space import make_searcher

    spec = loaded.spec
    single = not spec.multi_objective
    if spec.scheduler.type == "asha":
        epochs = spec.space["train.epochs"].high if "train.epochs" in spec.space else loaded.resolved["train.epochs"]
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=int(epochs),
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    reporter = SearchReporter(loaded, join_storage(storage, name), opts.report_every)
    return tune.Tuner(
        _trainable(loaded),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(make_searcher(loaded, study_storage), max_concurrent=spec.concurrency),
            scheduler=scheduler,
            num_samples=samples,
            metric=spec.metrics[0] if single else None,
            mode=spec.modes[0] if single else None,
            reuse_actors=reuses_workers(opts),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[recorder],
            progress_reporter=None if opts.quiet else reporter,
            verbose=0 if opts.quiet else 1,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
        ),
    )


log = logging.getLogger(__name__)


def _trainable(loaded: LoadedSpec):
    from ray import tune

    from rbp.tuning.trainable import train_trial

    resources = loaded.spec.resources
    return tune.with_resources(train_trial, {"cpu": resources.cpu, "gpu": resources.gpu})


def reuses_workers(opts: TuneOptions) -> bool:
    """Whether a trial runs in the worker process of a finished one (Ray Tune's ``reuse_actors``).

    On the local cluster ``rbp tune`` starts, yes: one worker process per concurrent trial for the
    whole search, no Python + torch start-up between trials (every trial asks for the same resources).
    On a cluster it connects to (``--address``), no: hosts can die there, and Ray Tune (2.60) errors
    a trial for good, ignoring ``max_failures``, when the cached worker it was handed to dies before
    the hand-over (its ``reset``) completes; a trial whose new worker dies is restarted as promised.
    """
    return opts.address is None


def join_storage(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def system_metrics(uri: str, run_id: str):
    """MLflow's system metrics monitor (CPU, memory, disk, network of this machine) on the parent run.

    MLflow samples them with psutil; without it (not a dependency of mlflow) there are none, and
    this returns None. The driver's machine is the whole local cluster; on a remote cluster these
    are the head's numbers.
    """
    try:
        import psutil  # noqa: F401
    except ImportError:
        log.info("no system metrics in MLflow: psutil is not installed (pip install psutil)")
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def run_once(loaded, opts, search: Search, storage: str, restore: str | None, started: float,
              name: str | None = None, samples: int = 0) -> int:  # fmt: skip
    """One Ray experiment: restore ``restore`` or start ``name`` with ``samples`` trials; 0 or 130."""
    from ray import tune

    from rbp.tuning import study as studies
    from rbp.tuning.record import TrialRecorder

    name = name or restore.rstrip("/").rsplit("/", 1)[-1]  # type: ignore[union-attr]
    recorder = TrialRecorder(
        tracking_uri=search.tracking_uri,
        experiment=loaded.spec.experiment,
        experiment_id=search.experiment_id,
        search=name,
        spec_path=str(opts.spec),
        searched=list(loaded.spec.space),
        runs_dir=search.runs_dir,
        parent_run_id=search.parent_run_id,
    )
    if restore is not None:
        if not tune.Tuner.can_restore(restore):
            raise RbpError(f"Ray cannot restore {restore} (gone or never saved); run without --resume")
        log.info("resuming %s", restore)
        known = {t.config.get(keys.TRIAL_KEY) for t in tune.ExperimentAnalysis(restore).trials}
        requeued = studies.requeue_running(search.study, search.storage, known)
        if requeued:
            log.info("study trial(s) %s started after Ray last saved its state: asked again", requeued)
        tuner = tune.Tuner.restore(restore, trainable=_trainable(loaded), resume_unfinished=True)
    else:
        log.info("search %s: %d more trials, %d at a time, MLflow %s", join_storage(storage, name), samples,
                 loaded.spec.concurrency, search.tracking_uri)  # fmt: skip
        tuner = _tuner(loaded, opts, storage, name, recorder, samples, search.storage)
    with _sigint_watch() as interrupted, _without_rays_resume_hint():
        grid = tuner.fit()
    return after_fit(loaded, grid, recorder, interrupted(), len(grid), time.monotonic() - started)


class _RaysResumeHint(logging.Filter):
    """Ray's hint after an interrupt (``Tuner.restore(path=...)``) restores the Ray experiment alone;
    ``rbp tune SPEC --resume`` (which the summary names) also restores the study and the MLflow runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()


@contextlib.contextmanager
def _without_rays_resume_hint():
    logger, hint = logging.getLogger("ray.tune.tune"), _RaysResumeHint()
    logger.addFilter(hint)
    try:
        yield
    finally:
        logger.removeFilter(hint)


def _after_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler Ray restores after it caught a first SIGINT: a second one stops at once."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_watch():
    """Yields a function telling whether a SIGINT interrupted ``Tuner.fit`` inside the block.

    Ray catches the first SIGINT itself (it stops the trials and saves the state, then returns
    normally) and puts back the handler that was installed before the run. Installing
    :func:`_after_interrupt` first makes that visible: it is the handler again only if Ray caught
    one. Trial statuses cannot tell: Ray marks the interrupted trials TERMINATED while stopping.
    """
    try:
        previous = signal.signal(signal.SIGINT, _after_interrupt)
    except ValueError:  # not the main thread: Ray does not catch SIGINT there either
        yield lambda: False
        return
    seen = [False]
    try:
        yield lambda: seen[0]
    finally:
        seen[0] = signal.getsignal(signal.SIGINT) is _after_interrupt
        signal.signal(signal.SIGINT, previous)

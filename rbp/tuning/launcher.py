"""``rbp tune``: run, extend or resume the search of a spec on a local or remote Ray cluster.

A search is the spec experiment's persistent Optuna study (:mod:`rbp.tuning.study`): ``rbp tune
SPEC`` runs trials until the study holds the spec's budget (``--trials N`` raises it: the search
is extended, the sampler seeing every earlier trial); ``--resume`` first restores the Ray
experiment that an interrupted driver left (its trials continue from their checkpoints), then
runs whatever the budget still asks for. Each run of the driver is one Ray experiment folder
``<storage>/<experiment>-<YYYYmmdd-HHMMSS>/``; the study remembers the newest. Results: MLflow
(a parent run per search, a nested run per trial) and ``<results>/tune/<experiment>/rows/``
(one Parquet row per trial and seed).

Order matters for failing fast: the spec, the tracking store and the cluster address are checked
before Ray starts, so a typo costs a second, not a cluster start-up.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbp.base.errors import RbpError
from rbp.results import read_results
from rbp.tuning import tracking
from rbp.tuning.spec import LoadedSpec, ResourcesSpec, load_spec

if TYPE_CHECKING:
    import optuna
    from ray.tune import ResultGrid

    from rbp.tuning.record import TrialRecorder

log = logging.getLogger(__name__)


@dataclass
class TuneOptions:
    """What ``rbp tune`` was asked to do (see ``rbp tune --help``)."""

    spec: Path
    address: str | None = None
    tracking_uri: str | None = None
    resume: bool = False
    study_storage: str | None = None  # Optuna storage URL or journal file; default <results>/optuna.db
    warm_start: str | None = None  # MLflow experiment whose top configs are enqueued first
    results: Path = Path("results")
    storage: str | None = None  # Ray's storage root; default <results>/ray
    num_cpus: int | None = None  # local cluster only
    overrides: list[str] = field(default_factory=list)
    trials: int | None = None
    report_every: int = 30
    auth_mode: str | None = None
    verbose: bool = False


def default_spec() -> Path:
    """``tune/digits.yaml`` of the working directory, else of the checkout this package runs from."""
    here = Path("tune/digits.yaml")
    if here.is_file():
        return here
    checkout = Path(__file__).resolve().parents[2] / "tune" / "digits.yaml"
    return checkout if checkout.is_file() else here


def _require_stack() -> None:
    """One line naming the missing tuning extra; found without importing them (seconds, done later
    where they overlap Ray's start-up)."""
    for name in ("mlflow", "optuna", "pandas", "ray"):
        if importlib.util.find_spec(name) is None:
            raise RbpError(f"rbp tune needs the tuning extras ({name} is missing): pip install -e '.[tune]'")


# ----------------------------------------------------------------------------- the cluster
def _resolve_auto() -> str | None:
    """The address ``auto`` means (RAY_ADDRESS, else the last ``ray start`` on this machine), or None.

    Ray's own lookup (a private function; pinned with ray 2.60 and tested): without this, a stale
    address file left by a cluster that is gone makes ``ray.init("auto")`` wait for minutes.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # no cluster recorded: ray.init reports that itself, at once
        return None


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (one line) when nothing listens at ``address``: ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``."""
    target = address
    if address == "auto":
        target = _resolve_auto()
        if target is None:
            return
    target = target.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RbpError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        where = address if target == address else f"{address} ({target})"
        raise RbpError(
            f"no Ray cluster at {where}: {reason}; start one (`ray start --head`, `ray up cluster.yaml`) "
            "or drop --address for a local one"
        ) from None


def _set_ray_environment(opts: TuneOptions) -> None:
    """Environment Ray reads at start-up; set explicitly so the behaviour does not depend on history.

    Auth: Ray enables token auth when ``~/.ray/auth_token`` exists and RAY_AUTH_MODE is unset, and a
    driver whose mode differs from the cluster's cannot connect. A local cluster uses token auth
    (Ray's default: the token is created on first use); for ``--address`` we follow the token file.
    """
    if opts.auth_mode is not None:
        os.environ["RAY_AUTH_MODE"] = opts.auth_mode
    elif "RAY_AUTH_MODE" not in os.environ:
        has_token = (Path.home() / ".ray" / "auth_token").is_file() or "RAY_AUTH_TOKEN" in os.environ
        os.environ["RAY_AUTH_MODE"] = "token" if opts.address is None or has_token else "disabled"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic console reporter (CLIReporter), with our columns
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every epoch's checkpoint forces a state snapshot (that is what makes --resume exact); the
    # warning about frequent snapshots is expected here, not actionable.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if "ray._raylet" in sys.modules:
        # Ray caches the auth mode when it is imported; a driver that imported it earlier (tests, a
        # notebook) must re-read it, or it starts a token-auth GCS without creating the token.
        from ray._raylet import Config

        Config.initialize("")


def start_ray(opts: TuneOptions) -> None:
    """Start a local Ray cluster or connect to ``opts.address`` (after :func:`_set_ray_environment`)."""
    import ray

    common: dict[str, Any] = {
        "log_to_driver": opts.verbose,
        "logging_level": logging.DEBUG if opts.verbose else logging.WARNING,
    }
    try:
        if opts.address is None:
            # "local": a fresh cluster in this process even if `ray start` left one running here.
            ray.init(address="local", num_cpus=local_cpus(opts), include_dashboard=False, **common)
        else:
            ray.init(address=opts.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray cluster"
        raise RbpError(f"cannot start or reach {where}: {first}") from None


def local_cpus(opts: TuneOptions) -> int:
    """CPUs of the local Ray cluster: ``--num-cpus``, else the machine's."""
    return opts.num_cpus or os.cpu_count() or 1


def check_trial_fits(resources: ResourcesSpec, spec_path: Path, cpus: int) -> None:
    """Refuse a trial larger than the local Ray cluster of ``cpus`` CPUs (before Ray starts).

    Ray would keep the trial pending forever and only warn every minute; a remote cluster may be
    autoscaling, so only the local one is checked. GPUs are counted (by torch, as Ray does through
    ``CUDA_VISIBLE_DEVICES``) only when a trial asks for one.
    """
    have = {"CPU": cpus}
    if resources.gpu > 0:
        import torch

        have["GPU"] = torch.cuda.device_count()
    for key, unit, asked in (("cpu", "CPU", resources.cpu), ("gpu", "GPU", resources.gpu)):
        if asked > have.get(unit, 0):
            raise RbpError(
                f"resources.{key} in {spec_path}: a trial asks for {asked:g} {unit}s but the local Ray cluster has "
                f"{have.get(unit, 0):g}; lower resources.{key} in the spec"
                + (" or raise --num-cpus" if unit == "CPU" else " (or run on a cluster with GPUs: --address)")
            )


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
    return tune.Tuner(
        _trainable(loaded),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(make_searcher(loaded, study_storage), max_concurrent=spec.concurrency),
            scheduler=scheduler,
            num_samples=samples,
            metric=spec.metrics[0] if single else None,
            mode=spec.modes[0] if single else None,
            # One worker process per concurrent trial for the whole search: no Python + torch
            # start-up between trials (every trial asks for the same resources).
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[recorder],
            progress_reporter=SearchReporter(loaded, _join(storage, name), opts.report_every),
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints),
        ),
    )


def _trainable(loaded: LoadedSpec):
    from ray import tune

    from rbp.tuning.trainable import train_trial

    resources = loaded.spec.resources
    return tune.with_resources(train_trial, {"cpu": resources.cpu, "gpu": resources.gpu})


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


# ----------------------------------------------------------------------------- rbp tune
@dataclass
class _Search:
    """The search being run: its study, where its trials are tracked, where its rows go.

    ``experiment_id`` and ``parent_run_id`` are empty until :func:`_open_tracking` has run.
    """

    study: optuna.Study
    storage: optuna.storages.BaseStorage
    storage_url: str
    tracking_uri: str
    runs_dir: Path
    experiment_id: str = ""
    parent_run_id: str = ""


def _open_search(opts: TuneOptions, loaded: LoadedSpec, results: Path) -> _Search:
    """The spec's study (created on first use) and where its trials are tracked; no MLflow call yet."""
    from rbp.tuning import study as studies

    spec = loaded.spec
    url = studies.resolve_storage(opts.study_storage, results)
    storage = studies.open_storage(url)
    study = studies.open_study(storage, spec.experiment, spec.modes, create=not opts.resume)
    attrs = study.user_attrs
    if opts.resume and studies.RAY_ATTR not in attrs:
        raise RbpError(f"no search of experiment {spec.experiment!r} to resume; run without --resume")
    uri = attrs.get(studies.TRACKING_ATTR) or tracking.resolve_tracking_uri(opts.tracking_uri, results)
    if opts.tracking_uri is not None and tracking.resolve_tracking_uri(opts.tracking_uri, results) != uri:
        raise RbpError(f"search {spec.experiment} logs to {uri}; continue it with that --tracking-uri (or none)")
    tracking.check_tracking_uri(uri)
    runs_dir = Path(attrs.get(studies.RUNS_ATTR) or results / "tune" / spec.experiment / "rows")
    log.info("study %s in %s (optuna-dashboard %s)", spec.experiment, url, url)
    return _Search(study, storage, url, uri, runs_dir)


def _open_tracking(search: _Search, loaded: LoadedSpec) -> None:
    """The search's MLflow experiment and parent run (created on first use), into ``search``.

    Seconds on a new store (MLflow migrates a fresh database) plus the imports of MLflow and the
    trial recorder (torch), so :func:`run_tune` runs it while Ray starts.
    """
    from rbp.tuning import study as studies
    from rbp.tuning.record import TrialRecorder  # noqa: F401  (torch and the recorder load here, off the main thread)

    spec = loaded.spec
    client = tracking.client(search.tracking_uri)
    search.experiment_id = tracking.ensure_experiment(client, spec.experiment, search.tracking_uri, spec.description)
    parent = search.study.user_attrs.get(studies.PARENT_ATTR)
    if parent is None:
        parent = tracking.create_parent_run(client, search.experiment_id, loaded, search.storage_url)
        search.study.set_user_attr(studies.TRACKING_ATTR, search.tracking_uri)
        search.study.set_user_attr(studies.RUNS_ATTR, str(search.runs_dir))
        search.study.set_user_attr(studies.PARENT_ATTR, parent)
    search.parent_run_id = parent


def _enqueue(search: _Search, loaded: LoadedSpec, opts: TuneOptions) -> None:
    """A new study tries the spec's start points first; ``--warm-start`` adds MLflow's top configs."""
    if not search.study.trials:
        for point in loaded.spec.start:
            search.study.enqueue_trial(dict(point), skip_if_exists=True)
    if opts.warm_start:
        from rbp.tuning.best import warm_start_points

        points = warm_start_points(search.tracking_uri, opts.warm_start, loaded, loaded.spec.top)
        for point in points:
            search.study.enqueue_trial(point, skip_if_exists=True)
        print(f"warm start: {len(points)} configs of experiment {opts.warm_start} enqueued")


def run_tune(opts: TuneOptions) -> int:
    """Run, extend or resume the search of ``opts.spec``; 0 when it holds its budget, 130 when interrupted."""
    loaded = load_spec(opts.spec, opts.overrides, opts.trials)
    spec = loaded.spec
    _set_ray_environment(opts)  # before Ray is imported: it reads RAY_AUTH_MODE once
    _require_stack()
    from rbp.tuning import study as studies

    results = opts.results.resolve()
    storage = opts.storage or str(results / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if opts.address is not None:
        check_address(opts.address)
    else:
        check_trial_fits(spec.resources, opts.spec, local_cpus(opts))
    search = _open_search(opts, loaded, results)
    restore = search.study.user_attrs.get(studies.RAY_ATTR) if opts.resume else None
    if not opts.resume:
        abandoned = studies.abandon_running(search.study)
        if abandoned:
            log.warning("%d trial(s) of an interrupted run marked failed (--resume would have continued them)",
                        abandoned)  # fmt: skip
    _enqueue(search, loaded, opts)
    if restore is None and spec.trials <= len(studies.ended(search.study)):
        _open_tracking(search, loaded)
        print(f"search {spec.experiment} already holds {len(studies.ended(search.study))} trials "
              f"(budget {spec.trials}); `--trials N` extends it")  # fmt: skip
        _print_summary(loaded, search, 0.0)
        return 0

    import ray

    started, monitor = time.monotonic(), None
    try:
        # MLflow's set-up (seconds on a new store) overlaps Ray's start-up (which mostly waits for
        # its processes); ray.init stays on the main thread, where it installs signal handlers.
        with ThreadPoolExecutor(1, thread_name_prefix="rbp-mlflow") as pool:
            tracked = pool.submit(_open_tracking, search, loaded)
            try:
                start_ray(opts)
            finally:
                tracked.result()  # its error first: the search cannot run without its MLflow runs
        tracking.reopen_parent(search.tracking_uri, search.parent_run_id)
        monitor = _system_metrics(search.tracking_uri, search.parent_run_id)
        if restore is not None:
            code = _run_once(loaded, opts, search, storage, restore, started)
            if code:
                return code
        remaining = spec.trials - len(studies.ended(search.study))
        if remaining > 0:
            name = f"{spec.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
            search.study.set_user_attr(studies.RAY_ATTR, _join(storage, name))
            code = _run_once(loaded, opts, search, storage, None, started, name, remaining)
            if code:
                return code
        tracking.close_parent(search.tracking_uri, search.parent_run_id, "FINISHED")
        _print_summary(loaded, search, time.monotonic() - started)
        return 0
    finally:
        ray.shutdown()
        if monitor is not None:
            monitor.finish()


def _system_metrics(uri: str, run_id: str):
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


def _run_once(loaded, opts, search: _Search, storage: str, restore: str | None, started: float,
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
        known = {t.config.get(studies.TRIAL_KEY) for t in tune.ExperimentAnalysis(restore).trials}
        requeued = studies.requeue_running(search.study, search.storage, known)
        if requeued:
            log.info("study trial(s) %s started after Ray last saved its state: asked again", requeued)
        tuner = tune.Tuner.restore(restore, trainable=_trainable(loaded), resume_unfinished=True)
    else:
        log.info("search %s: %d more trials, %d at a time, MLflow %s", _join(storage, name), samples,
                 loaded.spec.concurrency, search.tracking_uri)  # fmt: skip
        tuner = _tuner(loaded, opts, storage, name, recorder, samples, search.storage)
    with _sigint_watch() as interrupted:
        grid = tuner.fit()
    return _after_fit(loaded, grid, recorder, interrupted(), len(grid), time.monotonic() - started)


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


def _after_fit(
    loaded: LoadedSpec, grid: ResultGrid, recorder: TrialRecorder, interrupted: bool, trials: int, seconds: float
) -> int:
    """Close the books of one Ray experiment: 0 when every trial ended, else KILLED runs and 130.

    A trial has ended when the recorder wrote its row (Ray finished or errored it). Without an
    interrupt, Ray's own view that every trial ended is trusted to repair missing rows first.
    """
    if not interrupted:
        repaired = recorder.reconcile(grid)
        if repaired:
            log.info("recorded %d trial(s) whose end the callback had missed", repaired)
    ended = len(recorder.ended_trials())
    if interrupted or ended < trials:
        closed = recorder.close_open_runs("KILLED")
        tracking.close_parent(recorder.tracking_uri, recorder.parent_run_id, "KILLED")
        print(
            f"search interrupted after {seconds:.0f} s ({ended} of {trials} trials ended, {closed} MLflow runs "
            f"marked KILLED); `rbp tune {recorder.spec_path} --resume` continues it"
        )
        return 130
    recorder.close_open_runs("FAILED")  # none expected: every ended trial was finalized
    return 0


def _print_summary(loaded: LoadedSpec, search: _Search, seconds: float) -> None:
    from rbp.tuning import study as studies
    from rbp.tuning.report import best_trials_table, pareto_rows, write_pareto

    spec = loaded.spec
    rows = read_results(search.runs_dir)
    trials = studies.ended(search.study)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(_count(t.state.name for t in trials).items()))
    print(f"\nsearch {spec.experiment}: {len(trials)} trials in the study ({states}); this run {seconds:.0f} s")
    if rows.empty:
        return
    searched = list(spec.space)
    print(f"best trials by {spec.metrics[0]} ({spec.modes[0]}):")
    print(best_trials_table(rows, spec.metrics[0], spec.modes[0], searched, spec.top))
    if spec.multi_objective:
        front = pareto_rows(rows, studies.pareto_numbers(search.study), spec.metrics)
        csv, parquet = write_pareto(front, search.runs_dir.parent)
        objectives = " vs ".join(f"{m} ({d})" for m, d in zip(spec.metrics, spec.modes, strict=True))
        print(f"\nPareto front (Optuna's best_trials), {objectives}: {len(front)} configs -> {csv}, {parquet}")
        print(best_trials_table(front, spec.metrics[0], spec.modes[0], searched, len(front)))
    # One path per line: the tables fit 120 columns, a long path gets a line of its own.
    print(f"\nMLflow (experiment {spec.experiment}): {search.tracking_uri}")
    print(f"rows: {search.runs_dir}")
    print(f"best config: rbp best --experiment {spec.experiment} --write best.yaml")
    print(f"extend: rbp tune {loaded.path} --trials {len(trials) + spec.trials}")


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out

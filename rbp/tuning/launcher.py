"""``rbp tune``: run a search from a spec on a local or remote Ray cluster, or resume one.

Order matters for failing fast: the spec, the tracking store and the cluster address are checked
before Ray starts, so a typo costs a second, not a cluster start-up. Each search is a folder
``<storage>/<experiment>-<YYYYmmdd-HHMMSS>/`` (Ray's experiment state, checkpoints, and
``rbp_search.json``: the spec fingerprint and tracking URI); ``--resume`` continues the newest one
of the spec's experiment. Results: MLflow (one run per trial) and ``<results>/tune/<experiment>/rows/``
(one Parquet row per trial).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbp.errors import RbpError
from rbp.results import read_results
from rbp.tuning import tracking
from rbp.tuning.spec import LoadedSpec, load_spec

if TYPE_CHECKING:
    import pyarrow.fs
    from ray.tune import ResultGrid

    from rbp.tuning.record import TrialRecorder

log = logging.getLogger(__name__)

SEARCH_FILE = "rbp_search.json"
_METRIC_COLUMNS = {"epoch": "epoch", "val_clean_acc": "val clean", "val_pgd_acc": "val PGD", "density": "density"}


@dataclass
class TuneOptions:
    """What ``rbp tune`` was asked to do (see ``rbp tune --help``)."""

    spec: Path
    address: str | None = None
    tracking_uri: str | None = None
    resume: bool = False
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
    try:
        import mlflow  # noqa: F401
        import optuna  # noqa: F401
        import pandas  # noqa: F401
        import ray.tune  # noqa: F401
    except ImportError as error:
        raise RbpError(
            f"rbp tune needs the tuning extras ({error.name} is missing): pip install -e '.[tune]'"
        ) from None


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
            ray.init(address="local", num_cpus=opts.num_cpus or os.cpu_count(), include_dashboard=False, **common)
        else:
            ray.init(address=opts.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray cluster"
        raise RbpError(f"cannot start or reach {where}: {first}") from None


# ----------------------------------------------------------------------------- search folders
def _storage(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(storage)


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def latest_search(storage: str, experiment: str) -> str | None:
    """Name of the newest search of ``experiment`` under ``storage`` that Ray can restore."""
    import pyarrow.fs
    from ray import tune

    fs, root = _storage(storage)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    names = sorted(
        i.base_name
        for i in infos
        if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(f"{experiment}-")
    )
    for name in reversed(names):
        if tune.Tuner.can_restore(_join(storage, name)):
            return name
    return None


def _write_search_file(storage: str, search: str, body: dict[str, Any]) -> None:
    fs, root = _storage(storage)
    folder = _join(root, search)
    fs.create_dir(folder)
    with fs.open_output_stream(_join(folder, SEARCH_FILE)) as stream:
        stream.write(json.dumps(body, indent=2).encode())


def _read_search_file(storage: str, search: str) -> dict[str, Any]:
    fs, root = _storage(storage)
    try:
        with fs.open_input_stream(_join(_join(root, search), SEARCH_FILE)) as stream:
            return json.loads(stream.read().decode())
    except (OSError, json.JSONDecodeError):
        return {}


# ----------------------------------------------------------------------------- the Tuner
def _tuner(loaded: LoadedSpec, opts: TuneOptions, storage: str, search: str, recorder: TrialRecorder):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

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
    reporter = tune.CLIReporter(
        metric_columns=_METRIC_COLUMNS,
        parameter_columns={key: key.split(".")[-1] for key in spec.space},
        max_report_frequency=opts.report_every,
        metric=None if single else spec.metrics[0],  # single objective: taken from TuneConfig
        mode=None if single else spec.modes[0],
        sort_by_metric=True,
    )
    return tune.Tuner(
        _trainable(loaded),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(make_searcher(loaded), max_concurrent=spec.concurrency),
            scheduler=scheduler,
            num_samples=spec.trials,
            metric=spec.metrics[0] if single else None,
            mode=spec.modes[0] if single else None,
        ),
        run_config=tune.RunConfig(
            name=search,
            storage_path=storage,
            callbacks=[recorder],
            progress_reporter=reporter,
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


# ----------------------------------------------------------------------------- rbp tune
@dataclass(frozen=True)
class _Search:
    """Which search runs: its name, where its trials are tracked and where its rows go."""

    name: str
    tracking_uri: str
    runs_dir: Path


def _choose_search(opts: TuneOptions, loaded: LoadedSpec, storage: str, results: Path) -> _Search:
    """A new search, or with ``--resume`` the newest one of the experiment (same spec, same store)."""
    spec = loaded.spec
    runs_dir = results / "tune" / spec.experiment / "rows"  # beside, never inside, the ablations' folders
    if not opts.resume:
        name = f"{spec.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
        return _Search(name, tracking.resolve_tracking_uri(opts.tracking_uri, results), runs_dir)
    name = latest_search(storage, spec.experiment)
    if name is None:
        raise RbpError(f"no search of experiment {spec.experiment!r} to resume under {storage}; run without --resume")
    saved = _read_search_file(storage, name)
    if saved.get("fingerprint") not in (None, loaded.fingerprint()):
        raise RbpError(f"{opts.spec} changed since search {name} started; restore it, or start a new search")
    uri = saved.get("tracking_uri") or tracking.resolve_tracking_uri(None, results)
    if opts.tracking_uri is not None and tracking.resolve_tracking_uri(opts.tracking_uri, results) != uri:
        raise RbpError(f"search {name} logs to {uri}; resume it with that --tracking-uri (or none)")
    return _Search(name, uri, Path(saved.get("runs_dir", runs_dir)))


def run_tune(opts: TuneOptions) -> int:
    """Run (or resume) the search of ``opts.spec``; 0 when it completed, 130 when interrupted."""
    loaded = load_spec(opts.spec, opts.overrides, opts.trials)
    spec = loaded.spec
    _set_ray_environment(opts)  # before Ray is imported: it reads RAY_AUTH_MODE once
    _require_stack()
    results = opts.results.resolve()
    storage = opts.storage or str(results / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    search = _choose_search(opts, loaded, storage, results)
    tracking.check_tracking_uri(search.tracking_uri)
    if opts.address is not None:
        check_address(opts.address)

    from rbp.tuning.record import TrialRecorder

    recorder = TrialRecorder(
        tracking_uri=search.tracking_uri,
        experiment=spec.experiment,
        experiment_id=tracking.ensure_experiment(
            tracking.client(search.tracking_uri), spec.experiment, search.tracking_uri
        ),
        search=search.name,
        spec_path=str(opts.spec),
        searched=list(spec.space),
        runs_dir=search.runs_dir,
    )
    import ray
    from ray import tune

    start_ray(opts)
    started, path = time.monotonic(), _join(storage, search.name)
    try:
        if opts.resume:
            log.info("resuming search %s", path)
            tuner = tune.Tuner.restore(path, trainable=_trainable(loaded), resume_unfinished=True)
        else:
            body = {"experiment": spec.experiment, "spec": str(opts.spec), "fingerprint": loaded.fingerprint(),
                    "tracking_uri": search.tracking_uri, "runs_dir": str(search.runs_dir),
                    "created": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
            _write_search_file(storage, search.name, body)
            log.info("search %s: %d trials, %d at a time, MLflow %s", path, spec.trials, spec.concurrency,
                     search.tracking_uri)  # fmt: skip
            tuner = _tuner(loaded, opts, storage, search.name, recorder)
        with _sigint_watch() as interrupted:
            grid = tuner.fit()
        return _after_fit(loaded, grid, recorder, interrupted(), path, search.tracking_uri, time.monotonic() - started)
    finally:
        ray.shutdown()


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
    loaded: LoadedSpec,
    grid: ResultGrid,
    recorder: TrialRecorder,
    interrupted: bool,
    path: str,
    uri: str,
    seconds: float,
) -> int:
    """Close the books of a search: summary and 0 when every trial ended, else KILLED runs and 130.

    A trial has ended when the recorder wrote its row (Ray finished or errored it). Without an
    interrupt, Ray's own view that every trial ended is trusted to repair missing rows first.
    """
    spec = loaded.spec
    if not interrupted:
        repaired = recorder.reconcile(grid)
        if repaired:
            log.info("recorded %d trial(s) whose end the callback had missed", repaired)
    ended = len(recorder.ended_trials())
    if interrupted or ended < spec.trials:
        closed = recorder.close_open_runs("KILLED")
        print(
            f"search interrupted after {seconds:.0f} s ({ended} of {spec.trials} trials ended, {closed} MLflow runs "
            f"marked KILLED); `rbp tune {recorder.spec_path} --resume` continues it"
        )
        return 130
    recorder.close_open_runs("FAILED")  # none expected: every ended trial was finalized
    _print_summary(loaded, recorder, path, uri, seconds)
    return 0


def _print_summary(loaded: LoadedSpec, recorder: TrialRecorder, path: str, uri: str, seconds: float) -> None:
    from rbp.tuning.report import best_trials_table, pareto_front, write_pareto

    spec = loaded.spec
    rows = read_results(recorder.runs_dir)
    rows = rows[rows["search"] == recorder.search] if "search" in rows else rows
    counts = rows["status"].value_counts().to_dict()
    status = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    print(f"\nsearch {recorder.search}: {len(rows)} trials ({status}) in {seconds:.0f} s")
    if rows.empty:
        return
    print(f"best trials by {spec.metrics[0]} ({spec.modes[0]}):")
    print(best_trials_table(rows, spec.metrics[0], spec.modes[0], list(spec.space), spec.top))
    if spec.multi_objective:
        front = pareto_front(rows, spec.metrics, spec.modes)
        csv, parquet = write_pareto(front, recorder.runs_dir.parent)
        objectives = " vs ".join(f"{m} ({d})" for m, d in zip(spec.metrics, spec.modes, strict=True))
        print(f"\nPareto front, {objectives}: {len(front)} trials -> {csv}, {parquet}")
        print(best_trials_table(front, spec.metrics[0], spec.modes[0], list(spec.space), len(front)))
    print(f"\nMLflow: {uri} (experiment {spec.experiment})   rows: {recorder.runs_dir}   Ray: {path}")
    print(f"next: rbp best --experiment {spec.experiment} --metric {spec.metrics[0]} --write best.yaml")

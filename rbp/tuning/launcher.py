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
before Ray starts, so a typo costs a second, not a cluster start-up. The pieces: the cluster
connection (:mod:`~rbp.tuning.cluster`), one Ray experiment (:mod:`~rbp.tuning.tuner`) and the
closing summary (:mod:`~rbp.tuning.summary`).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rbp.base.errors import RbpError
from rbp.base.lock import exclusive
from rbp.base.sqlite import check_sqlite_file
from rbp.config.io import nested
from rbp.config.load import from_dict
from rbp.tuning import keys, tracking
from rbp.tuning.cluster import check_address, check_trial_fits, local_cpus, set_ray_environment, start_ray
from rbp.tuning.options import Search, TuneOptions
from rbp.tuning.reaper import watched
from rbp.tuning.spec import LoadedSpec, load_spec
from rbp.tuning.summary import no_finished_trial, print_summary
from rbp.tuning.tuner import join_storage, run_once, system_metrics

log = logging.getLogger(__name__)


def _require_stack() -> None:
    """One line naming the missing tuning extra; found without importing them (seconds, done later
    where they overlap Ray's start-up)."""
    for name in ("mlflow", "optuna", "pandas", "ray"):
        if importlib.util.find_spec(name) is None:
            raise RbpError(f"rbp tune needs the tuning extras ({name} is missing): pip install -e '.[tune]'")


# ----------------------------------------------------------------------------- rbp tune


def _open_search(opts: TuneOptions, loaded: LoadedSpec, results: Path) -> Search:
    """The spec's study (created on first use) and where its trials are tracked; no MLflow call yet."""
    from rbp.tuning import study as studies

    spec = loaded.spec
    url = studies.resolve_storage(opts.study_storage, results)
    storage = studies.open_storage(url)
    study = studies.open_study(storage, spec.experiment, spec.modes, create=not opts.resume, metrics=spec.metrics)
    follow_move(study, results, url)
    attrs = study.user_attrs
    if opts.resume and keys.RAY_ATTR not in attrs:
        raise RbpError(f"no search of experiment {spec.experiment!r} to resume; run without --resume")
    given = tracking.resolve_tracking_uri(opts.tracking_uri, results)  # checked by _check_stores already
    uri = attrs.get(keys.TRACKING_ATTR) or given
    if opts.tracking_uri is not None and given != uri:
        raise RbpError(f"search {spec.experiment} logs to {uri}; continue it with that --tracking-uri (or none)")
    if uri != given:
        tracking.check_tracking_uri(uri)  # the study's own store, recorded when it was first run
    runs_dir = Path(attrs.get(keys.RUNS_ATTR) or results / "tune" / spec.experiment / "rows")
    log.info("study %s in %s (optuna-dashboard %s)", spec.experiment, url, url)
    return Search(study, storage, url, uri, runs_dir)


def follow_move(study, results: Path, storage_url: str) -> None:
    """Re-root the paths a study recorded (MLflow store, rows, Ray experiment) when its results folder
    was copied or moved here since; a study stored outside ``results`` keeps its paths as they are.

    Studies recorded before the root was (``ROOT_ATTR``) are recognised by their rows folder, which
    must exist at the same place under ``results``.
    """
    if not storage_url.startswith(f"sqlite:///{results}/"):
        return
    attrs = study.user_attrs
    old = attrs.get(keys.ROOT_ATTR)
    tracked = attrs.get(keys.TRACKING_ATTR, "")
    if old is None and tracked.startswith("sqlite:///"):
        old = str(Path(tracked.removeprefix("sqlite:///")).parent)
        rows = attrs.get(keys.RUNS_ATTR, "")
        if not rows.startswith(old) or not (results / Path(rows).relative_to(old)).is_dir():
            old = None  # a store of its own elsewhere, not a moved results folder
    if old is not None and Path(old) != results:
        for key in (keys.TRACKING_ATTR, keys.RUNS_ATTR, keys.RAY_ATTR):
            value = attrs.get(key)
            if isinstance(value, str) and old in value:
                study.set_user_attr(key, value.replace(old, str(results), 1))
        log.warning("this search was recorded under %s: it now reads and writes under %s", old, results)
    study.set_user_attr(keys.ROOT_ATTR, str(results))


def _open_tracking(search: Search, loaded: LoadedSpec) -> None:
    """The search's MLflow experiment and parent run (created on first use), into ``search``.

    Seconds on a new store (MLflow migrates a fresh database) plus the imports of MLflow and the
    trial recorder (torch), so :func:`run_tune` runs it while Ray starts.
    """
    from rbp.tuning.record import TrialRecorder  # noqa: F401  (torch and the recorder load here, off the main thread)

    spec = loaded.spec
    client = tracking.client(search.tracking_uri)
    search.experiment_id = tracking.ensure_experiment(client, spec.experiment, search.tracking_uri, spec.description)
    parent = search.study.user_attrs.get(keys.PARENT_ATTR)
    if parent is None:
        parent = tracking.create_parent_run(client, search.experiment_id, loaded, search.storage_url)
        search.study.set_user_attr(keys.TRACKING_ATTR, search.tracking_uri)
        search.study.set_user_attr(keys.RUNS_ATTR, str(search.runs_dir))
        search.study.set_user_attr(keys.PARENT_ATTR, parent)
    search.parent_run_id = parent


def _enqueue(search: Search, loaded: LoadedSpec, opts: TuneOptions, warm: list[dict]) -> None:
    """A new study tries the spec's start points first; ``--warm-start`` adds MLflow's top configs."""
    if not search.study.trials:
        for point in loaded.spec.start:
            search.study.enqueue_trial(dict(point), skip_if_exists=True)
    for point in warm:
        search.study.enqueue_trial(point, skip_if_exists=True)
    if opts.warm_start:
        print(f"warm start: {len(warm)} configs of experiment {opts.warm_start} enqueued")


def _check_data(loaded: LoadedSpec) -> None:
    """The trials' data set loads here, on the driver, before anything starts or is created: a missing
    root or a damaged file is one line now instead of the same error in every trial (data sets other
    than digits and synthetic; a searched ``data.*`` key is checked by its trials)."""
    cfg = from_dict(nested({k: v for k, v in loaded.constants.items() if not k.startswith("_")}))
    if cfg.data.name not in ("digits", "synthetic"):
        from rbp.data import load_splits  # torch: only for the data sets that read files

        load_splits(cfg.data)


def _check_stores(opts: TuneOptions, results: Path) -> None:
    """Both stores are usable (a damaged SQLite file named, with what to do) before either is written."""
    from rbp.tuning.study import resolve_storage

    tracking.check_tracking_uri(tracking.resolve_tracking_uri(opts.tracking_uri, results))
    storage = resolve_storage(opts.study_storage, results)
    if storage.startswith("sqlite:///"):
        check_sqlite_file(Path(storage.removeprefix("sqlite:///")), "Optuna study store", "--study-storage")


def _warm_start_points(opts: TuneOptions, loaded: LoadedSpec, results: Path) -> list[dict]:
    """``--warm-start EXPERIMENT``'s top configs that fit the space, read from an existing store only."""
    if not opts.warm_start:
        return []
    from rbp.tuning.best import warm_start_points

    uri = tracking.resolve_tracking_uri(opts.tracking_uri, results)
    tracking.check_tracking_uri(uri, must_exist=True)
    return warm_start_points(uri, opts.warm_start, loaded, loaded.spec.top)


def run_tune(opts: TuneOptions) -> int:
    """Run, extend or resume the search of ``opts.spec``; 0 when it holds its budget, 130 when interrupted.

    One driver at a time runs a spec's experiment: a second one is refused, naming the first.
    """
    loaded = load_spec(opts.spec, opts.overrides, opts.trials)
    set_ray_environment(opts)  # before Ray is imported: it reads RAY_AUTH_MODE once
    _require_stack()
    _check_data(loaded)
    experiment = loaded.spec.experiment
    results = opts.results.resolve()
    points = _warm_start_points(opts, loaded, results)  # an unknown experiment refused before anything is created
    _check_stores(opts, results)
    with exclusive(results / "tune" / experiment, f"search of experiment {experiment!r} in", "--results"):
        return _run_tune(opts, loaded, results, points)


def _run_tune(opts: TuneOptions, loaded: LoadedSpec, results: Path, warm: list[dict]) -> int:
    spec = loaded.spec
    from rbp.tuning import study as studies

    storage = opts.storage or str(results / "ray")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    if opts.address is not None:
        check_address(opts.address)
    else:
        check_trial_fits(spec.resources, opts.spec, local_cpus(opts))
    search = _open_search(opts, loaded, results)
    restore = search.study.user_attrs.get(keys.RAY_ATTR) if opts.resume else None
    if not opts.resume:
        abandoned = studies.abandon_running(search.study)
        if abandoned:
            log.warning("%d trial(s) of an interrupted run marked failed (--resume would have continued them)",
                        abandoned)  # fmt: skip
    _enqueue(search, loaded, opts, warm)
    if restore is None and spec.trials <= len(studies.ended(search.study)):
        _open_tracking(search, loaded)
        print(f"search {spec.experiment} already holds {len(studies.ended(search.study))} trials "
              f"(budget {spec.trials}); `--trials N` extends it")  # fmt: skip
        print_summary(loaded, search, 0.0)
        return 0

    import ray

    started, monitor = time.monotonic(), None
    # A local cluster's processes are stopped by PID should this driver be killed (rbp.tuning.reaper).
    with watched(active=opts.address is None):
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
            monitor = system_metrics(search.tracking_uri, search.parent_run_id)
            if restore is not None:
                code = run_once(loaded, opts, search, storage, restore, started)
                if code:
                    return code
            remaining = spec.trials - len(studies.ended(search.study))
            if remaining > 0:
                name = f"{spec.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
                search.study.set_user_attr(keys.RAY_ATTR, join_storage(storage, name))
                code = run_once(loaded, opts, search, storage, None, started, name, remaining)
                if code:
                    return code
            failed = no_finished_trial(loaded, search) is not None
            tracking.close_parent(search.tracking_uri, search.parent_run_id, "FAILED" if failed else "FINISHED")
            print_summary(loaded, search, time.monotonic() - started)
            return 0
        finally:
            ray.shutdown()
            if monitor is not None:
                monitor.finish()

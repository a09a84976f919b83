"""MLflow plumbing: where runs are tracked, the experiment, and the run of each trial.

Only the driver talks to MLflow, through an explicit ``MlflowClient`` (never the fluent
``mlflow.set_experiment``, which exports ``MLFLOW_EXPERIMENT_ID`` and sends Ray's own runs to the
wrong experiment). One trial is one run, found again by its ``rbp.trial_id`` tag, so a trial that
Ray restarts keeps its run. The default store is SQLite under the results folder; a single writer
(the driver) keeps SQLite free of lock contention between trials.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbp.base.errors import RbpError
from rbp.base.sqlite import check_sqlite_file
from rbp.tuning import keys

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

log = logging.getLogger(__name__)


def resolve_tracking_uri(uri: str | None, results_dir: Path) -> str:
    """``None`` -> SQLite at ``results_dir/mlflow.db``; relative SQLite paths become absolute.

    Absolute because the same URI is stored with the search and used again by ``--resume`` or
    ``rbp best`` from another working directory.
    """
    if uri is None:
        return f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return f"sqlite:///{path if path.is_absolute() else path.resolve()}"
    return uri


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _is_sqlite(path: Path) -> bool:
    """An empty file (SQLite creates its schema in it) or one starting with SQLite's magic header."""
    with path.open("rb") as f:
        head = f.read(16)
    return head in (b"", b"SQLite format 3\x00")


def check_tracking_uri(uri: str, *, must_exist: bool = False, timeout: float = 5.0) -> None:
    """Fail fast with one line if the tracking store cannot be used.

    SQLite: the folder must be creatable (or, with ``must_exist``, the file must exist: querying
    never creates an empty store). HTTP(S): a server must answer within ``timeout`` seconds. Other
    schemes are probed through MLflow itself.
    """
    db = _sqlite_path(uri)
    if db is not None:
        if must_exist and not db.is_file():
            raise RbpError(f"no MLflow tracking store at {db}: run `rbp tune` first, or pass --tracking-uri")
        if db.is_file() and not _is_sqlite(db):  # MLflow would fail deep in SQLAlchemy with a traceback
            raise RbpError(f"tracking store {db} is not an SQLite database; move the file aside or pass --tracking-uri")
        check_sqlite_file(db, "MLflow tracking store", "--tracking-uri")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RbpError(f"tracking URI {uri}: cannot create {db.parent}: {error.strerror}") from None
        return
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered (an old server without /health): reachable
        except (TimeoutError, urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RbpError(
                f"tracking URI {uri} is unreachable ({reason}); start the server (`mlflow server ...`) "
                "or pass another --tracking-uri"
            ) from None
        return
    try:
        client(uri).search_experiments(max_results=1)
    except Exception as error:  # any failure here means the same to the user: unusable store
        first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise RbpError(f"tracking URI {uri} is unusable: {first}") from None


def client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    # MLflow logs schema migrations of a new SQLite store at INFO on its own stderr handler.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(mlflow: MlflowClient, name: str, uri: str, description: str = "") -> str:
    """Id of experiment ``name``, created (on the driver) if missing, with the kind and description tags.

    For a SQLite store the artefacts go beside the database (``mlartifacts/``); a tracking server
    chooses its own artefact store. The tags are set every time (an experiment created by an older
    ``rbp tune`` gets them too; a changed spec description replaces the old one).
    """
    experiment_id = _experiment_id(mlflow, name, uri)
    mlflow.set_experiment_tag(experiment_id, keys.KIND_TAG, keys.KIND)
    if description:
        mlflow.set_experiment_tag(experiment_id, keys.NOTE_TAG, description)
    return experiment_id


def _experiment_id(mlflow: MlflowClient, name: str, uri: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise RbpError(
                f"MLflow experiment {name!r} is deleted; restore it (`mlflow experiments restore`) or rename"
            )
        return experiment.experiment_id
    db = _sqlite_path(uri)
    location = (db.parent / "mlartifacts" / name).as_uri() if db is not None else None
    return mlflow.create_experiment(name, artifact_location=location)


def find_experiment(mlflow: MlflowClient, name: str) -> Experiment:
    """Experiment ``name`` or a one-line error listing the known ones."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        known = sorted(e.name for e in mlflow.search_experiments() if e.name != "Default")
        listing = ", ".join(known[:10]) if known else "none yet"
        raise RbpError(f"unknown MLflow experiment {name!r} (known: {listing})")
    return experiment


def search_all(mlflow: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every run of the experiment matching ``filter_string`` (all pages)."""
    runs: list[Run] = []
    token = None
    while True:
        page = mlflow.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def newest_run(mlflow: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Run | None:
    """The most recently started run of the experiment holding every ``tags`` value (a crash can leave two)."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs = search_all(mlflow, experiment_id, query)
    return max(runs, key=lambda run: run.info.start_time or 0) if runs else None


def _json_tag(run: Run, tag: str, default: Any) -> Any:
    try:
        return json.loads(run.data.tags.get(tag, json.dumps(default)))
    except json.JSONDecodeError:
        return default


def searched_keys(run: Run) -> list[str]:
    """The spec's searched keys (a run's ``rbp.searched`` tag)."""
    return list(_json_tag(run, keys.SEARCHED_TAG, []))


def sampled(run: Run) -> dict[str, Any] | None:
    """The searched values the trial drew, or None for runs without the tag."""
    value = _json_tag(run, keys.SAMPLED_TAG, None)
    return value if isinstance(value, dict) else None


def numeric_metrics(result: dict[str, Any], skip: frozenset[str]) -> dict[str, float]:
    """The finite numbers of a result (bools and ``skip`` keys left out): what MLflow records."""
    out = {}
    for key, value in result.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value == value and abs(value) != float("inf"):
            out[key] = float(value)
    return out


def create_parent_run(mlflow: MlflowClient, experiment_id: str, loaded: Any, study_storage: str) -> str:
    """The search's parent run: the spec's constants as params, the study as tags; returns its id.

    Constants are params here (and on every trial's run); the trial runs nest under this one.
    """
    from mlflow.entities import Param

    from rbp.tuning.configkeys import config_value_text

    spec = loaded.spec
    tags = {
        keys.SPEC_TAG: str(loaded.path),
        keys.SEARCHED_TAG: json.dumps(list(spec.space)),
        keys.NOTE_TAG: spec.description,
        "rbp.study_storage": study_storage,
        "rbp.study_name": spec.experiment,
        "mlflow.source.name": "rbp tune",
    }
    run = mlflow.create_run(experiment_id, tags=tags, run_name=f"search {spec.experiment}")
    settings = {"sampler": spec.sampler.type, "metric": ",".join(spec.metrics), "mode": ",".join(spec.modes),
                "repeats": spec.repeats, "concurrency": spec.concurrency}  # fmt: skip
    params = [Param(k, config_value_text(v)) for k, v in {**loaded.constants, **settings}.items()]
    for start in range(0, len(params), 100):
        mlflow.log_batch(run.info.run_id, params=params[start : start + 100])
    return run.info.run_id


def reopen_parent(uri: str, run_id: str) -> None:
    """Mark the search's parent run RUNNING again (an extension or a resume)."""
    client(uri).update_run(run_id, status="RUNNING")


def close_parent(uri: str, run_id: str | None, status: str) -> None:
    if run_id:
        client(uri).set_terminated(run_id, status)

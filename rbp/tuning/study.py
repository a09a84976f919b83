"""The persistent Optuna study of a search: the search's memory across runs, resumes and extensions.

One study per spec experiment (the study name is the experiment name) in an Optuna storage: by
default a SQLite file beside the MLflow store (``<results>/optuna.db``); ``--study-storage`` takes
any SQLAlchemy URL (``postgresql://...``) or a file path, which becomes Optuna's journal storage
(append-only, safe on a shared file system). Ray's ``OptunaSearch`` opens the same study
(``load_if_exists``), so every sampler sees every trial the study ever finished, and
``optuna-dashboard <storage>`` or ``optuna.load_study`` open it as any Optuna study.

What a search needs to find again (the MLflow store, the parent run, the Parquet folder, the Ray
experiment to restore) lives in the study's user attributes, not in a file of our own.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from rbp.base.errors import RbpError
from rbp.base.sqlite import check_sqlite_file

log = logging.getLogger(__name__)

ENDED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)


def resolve_storage(storage: str | None, results: Path) -> str:
    """``None`` -> ``sqlite:///<results>/optuna.db``; a relative SQLite or journal path made absolute."""
    if storage is None:
        return f"sqlite:///{(results / 'optuna.db').resolve()}"
    if storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///"))
        return f"sqlite:///{path if path.is_absolute() else path.resolve()}"
    return storage if "://" in storage else str(Path(storage).resolve())


def open_storage(url: str) -> BaseStorage:
    """The Optuna storage of ``url``: an SQLAlchemy URL, or a file path for the journal storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in RDB ..." per open
    try:
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            check_sqlite_file(path, "Optuna study store", "--study-storage")
            path.parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(url)
    except RbpError:
        raise
    except (ImportError, OSError, ValueError) as error:  # sqlalchemy's errors derive from these
        raise RbpError(f"--study-storage {url}: cannot open it ({str(error).splitlines()[0][:200]})") from None
    except Exception as error:  # driver errors (OperationalError...): unusable storage, one line
        raise RbpError(f"--study-storage {url}: cannot open it ({type(error).__name__})") from None


def open_study(
    storage: BaseStorage, name: str, modes: list[str], create: bool = True, metrics: list[str] | None = None
) -> optuna.Study:
    """Study ``name`` in ``storage``, created with one direction per mode if it does not exist (and ``create``).

    ``metrics`` name its objectives (``study.metric_names``: optuna-dashboard shows them instead of
    "Objective 0").
    """
    directions = ["maximize" if mode == "max" else "minimize" for mode in modes]
    if not create:
        try:
            optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise RbpError(f"no search of experiment {name!r} to resume; run without --resume") from None
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        have = ", ".join(d.name.lower() for d in study.directions)
        raise RbpError(
            f"study {name!r} optimises {have}, the spec asks for {', '.join(directions)}: "
            "name a new experiment (or pass another --study-storage)"
        )
    if metrics is not None and study.metric_names != metrics:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, unchanged since: not the user's concern
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metrics)
    return study


def ended(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that ended (complete, failed or pruned): what counts towards the search's budget."""
    return study.get_trials(deepcopy=False, states=ENDED)


def abandon_running(study: optuna.Study) -> int:
    """Mark RUNNING trials (left by an interrupted driver that is not being resumed) FAIL; returns how many."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(running)


def requeue_running(study: optuna.Study, storage: BaseStorage, known: set[int]) -> list[int]:
    """Put RUNNING trials whose number is not in ``known`` back to WAITING; returns their numbers.

    A driver killed between Optuna's ``ask`` and Ray's next save of its experiment state leaves a
    RUNNING study trial that the restored Ray experiment does not hold. Waiting again, it is the
    next one ``ask`` hands out, with the same number and parameters (Optuna returns a trial's
    suggested values instead of sampling again), so the search still holds each trial once.
    Optuna has no public call for this; ``set_trial_state_values`` is its storage API.
    """
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.number not in known:
            storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
            requeued.append(trial.number)
    return requeued


def pareto_numbers(study: optuna.Study) -> list[int]:
    """Trial numbers on the study's Pareto front (``study.best_trials``), in trial order."""
    return sorted(t.number for t in study.best_trials)

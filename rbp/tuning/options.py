"""What ``rbp tune`` was asked (its options) and what it opened (the study, the stores): what the launcher,
the cluster connection, the tuner and the summary share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna


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
    quiet: bool = False  # only errors and the final summary: no progress tables


def default_spec() -> Path:
    """``tune/digits.yaml`` of the working directory, else of the checkout this package runs from."""
    here = Path("tune/digits.yaml")
    if here.is_file():
        return here
    checkout = Path(__file__).resolve().parents[2] / "tune" / "digits.yaml"
    return checkout if checkout.is_file() else here


@dataclass
class Search:
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

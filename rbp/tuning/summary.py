"""The closing summary of a search: what finished, failed or stopped early, and its best trials."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rbp.base.errors import RbpError
from rbp.results import read_results
from rbp.tuning import tracking
from rbp.tuning.spec import LoadedSpec

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from rbp.tuning.record import TrialRecorder
from rbp.tuning.options import Search

log = logging.getLogger(__name__)


def after_fit(
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
            f"search interrupted after {seconds:.0f} s ({ended} of the budget's {loaded.spec.trials} trials ended, "
            f"{closed} MLflow runs marked KILLED); `rbp tune {recorder.spec_path} --resume` continues it"
        )
        return 130
    recorder.close_open_runs("FAILED")  # none expected: every ended trial was finalized
    return 0


def print_summary(loaded: LoadedSpec, search: Search, seconds: float) -> None:
    from rbp.tuning import study as studies
    from rbp.tuning.report import best_trials_table, pareto_rows, write_pareto

    spec = loaded.spec
    rows = read_results(search.runs_dir)
    trials = studies.ended(search.study)
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(_count(t.state.name for t in trials).items()))
    print(f"\nsearch {spec.experiment}: {len(trials)} trials in the study ({states}); this run {seconds:.0f} s")
    problem = no_finished_trial(loaded, search)
    if problem is not None:
        raise RbpError(problem)
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
    print(f"best model to the registry: rbp best --experiment {spec.experiment} --register {spec.experiment}")
    print(f"extend: rbp tune {loaded.path} --trials {len(trials) + spec.trials}")


def no_finished_trial(loaded: LoadedSpec, search: Search) -> str | None:
    """The one line to end with when no trial of the search finished (every one failed), else None."""
    rows = read_results(search.runs_dir)
    if not rows.empty and rows["status"].isin(("finished", "early_stopped")).any():
        return None
    spec, ended = loaded.spec, len(rows["trial_id"].unique()) if not rows.empty else 0
    reasons = [str(r) for r in rows.get("reason", []) if isinstance(r, str) and r]
    first = f", e.g. {reasons[0][:200]}" if reasons else ""
    return (
        f"search {spec.experiment}: none of its {ended} trials finished (they failed or diverged{first}); "
        "fix the cause, then "
        f"`rbp tune {loaded.path} --trials {ended + spec.trials}` runs {spec.trials} more (failed trials count "
        "towards the budget)"
    )


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out

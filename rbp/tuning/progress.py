"""The live console progress of a search (Ray Tune's reporter interface), at most about 120 columns."""

from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import ProgressReporter

from rbp.tuning.report import format_table, short_names


class SearchReporter(ProgressReporter):
    """Ray Tune's console progress, at most 120 columns: the optimised metric first, 4 significant digits.

    Replaces Ray's ``CLIReporter``, which prints full float reprs, cuts long values with an object
    hash (``signed_kaiming__6fb0``), and names Ray's staging folder under /tmp/ray as the "Result
    logdir" instead of the experiment folder under the results folder.
    """

    def __init__(self, loaded: Any, logdir: str, every: float) -> None:
        spec = loaded.spec
        self.experiment, self.logdir, self.every = spec.experiment, logdir, every
        self.metric, self.mode = spec.metrics[0], spec.modes[0]
        self.searched = list(spec.space)
        self.names = short_names(self.searched)
        self.last = 0.0

    def should_report(self, trials: list, done: bool = False) -> bool:
        return done or time.monotonic() - self.last >= self.every

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self.last = time.monotonic()
        table = progress_table(trials, self.metric, self.mode, self.searched, self.names, self.experiment, self.logdir)
        print("\n".join([*(line for info in sys_info for line in str(info).splitlines() if line), table]))


def progress_table(trials: list, metric: str, mode: str, searched: list[str], names: dict[str, str],
                   experiment: str, logdir: str) -> str:  # fmt: skip
    """Status line, logdir, and one row per Ray trial (best ``metric`` first)."""
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.status] = states.get(trial.status, 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    sign = -1.0 if mode == "max" else 1.0

    def key(trial) -> float:
        value = (trial.last_result or {}).get(metric)
        return sign * value if isinstance(value, (int, float)) and value == value else math.inf

    rows = []
    for trial in sorted(trials, key=key):
        result, config = trial.last_result or {}, trial.config or {}
        rows.append([f"t{config.get('_study_trial', '?')}", _number(result.get(metric)), result.get("epoch"),
                     trial.status.lower()[:4], *[config.get(k) for k in searched]])  # fmt: skip
    table = format_table(["trial", metric, "ep", "st", *[names[k] for k in searched]], rows)
    return f"search {experiment}: {len(trials)} trials ({counts})\nResult logdir: {logdir}\n{table}\n"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and value == value else None

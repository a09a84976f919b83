"""Console tables of a search's trials and the Pareto front (the live progress: :mod:`rbp.tuning.progress`).

The final tables read the Parquet rows (one per trial and seed), so they show the same numbers
after a resume as after an uninterrupted search. Every table is at most about 120 columns: short
parameter names (the last part of the dotted key), 4 significant digits, the optimised metric first.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rbp.base.atomic import atomic_path
from rbp.base.metrics import pgd_steps

# Spec metric -> the Parquet column holding its value at the end of a trial.
_ROW_COLUMN = {
    "val_pgd_acc": "final_val_pgd_acc",
    "val_clean_acc": "final_val_clean_acc",
    "train_loss": "final_train_loss",
    "train_acc": "final_train_acc",
    "best_val_pgd_acc": "best_val_pgd_acc",
    "kept_params": "kept_params",
    "density": "density",
}


def row_column(metric: str) -> str:
    return _ROW_COLUMN[metric]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 120) -> str:
    """A plain aligned text table: numbers right-aligned, floats to 4 significant digits, ints whole.

    Lines fit ``max_width`` characters where they can: columns are two spaces apart; when that is
    too wide, columns holding one value in every row (of two or more, leaving the first two) move
    to a line above the table ("all rows: status finished, n 3"), then columns come one space
    apart, then headers longer than their values are cut (not the first two), then the widest text
    column longer than 8 characters; a cut ends in "…", and numbers are never cut.
    """

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    head = list(headers)
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(head)]
    preface = ""
    if sum(widths) + 2 * (len(widths) - 1) > max_width and len(text) > 1:
        constant = [i for i in range(2, len(head)) if len({r[i] for r in text}) == 1]
        same = ", ".join(f"{head[i]} {text[0][i]}" for i in constant)
        preface = textwrap.fill(f"all rows: {same}", max_width, subsequent_indent="  ") + "\n" if constant else ""
        keep = [i for i in range(len(head)) if i not in constant]
        head, widths = [head[i] for i in keep], [widths[i] for i in keep]
        rows, text = [[row[i] for i in keep] for row in rows], [[r[i] for i in keep] for r in text]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(head))]
    gap = 2 if sum(widths) + 2 * (len(widths) - 1) <= max_width else 1
    values = [max((len(r[i]) for r in text), default=0) for i in range(len(head))]
    while sum(widths) + gap * (len(widths) - 1) > max_width:  # headers longer than their values first
        cuttable = [i for i in range(2, len(widths)) if widths[i] > max(values[i], 6)]
        if not cuttable:
            break
        widest = max(cuttable)  # the rightmost: searched keys come after the metrics
        widths[widest] -= 1
        head[widest] = _cut(head[widest], widths[widest])
    while sum(widths) + gap * (len(widths) - 1) > max_width:
        cuttable = [i for i in range(len(widths)) if not numeric[i] and widths[i] > 8]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        widths[widest] -= 1
        fit = widths[widest]
        head[widest] = _cut(head[widest], fit)
        for r in text:
            r[widest] = _cut(r[widest], fit)

    def line(values: Sequence[str]) -> str:
        cells = zip(values, widths, numeric, strict=True)
        return (" " * gap).join(v.rjust(w) if n else v.ljust(w) for v, w, n in cells).rstrip()

    return preface + "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in text)])


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Column names for dotted keys: the last part, or the last two where the last part repeats."""
    last = [key.split(".")[-1] for key in keys]
    pairs = zip(keys, last, strict=True)
    return {key: name if last.count(name) == 1 else ".".join(key.split(".")[-2:]) for key, name in pairs}


def _test_pgd_column(rows: pd.DataFrame) -> str | None:
    """The ``test_pgd<steps>_acc`` column of the rows (the steps come from the config)."""
    found = [c for c in rows.columns if pgd_steps(c) is not None]
    return found[0] if found else None


def best_trials_table(rows: pd.DataFrame, metric: str, mode: str, searched: list[str], top: int) -> str:
    """The ``top`` trials of a search by ``metric`` (the mean over a trial's seeds), with test accuracy."""
    column, pgd = row_column(metric), _test_pgd_column(rows)
    numeric = [c for c in (column, "final_val_clean_acc", "test_clean_acc", pgd, "density") if c and c in rows]
    per_trial = rows.groupby("trial_id", sort=False).agg(
        {**{c: "mean" for c in numeric}, **{c: "first" for c in rows.columns if c not in numeric and c != "trial_id"}}
    )
    per_trial["n"] = rows.groupby("trial_id", sort=False).size()
    ranked = per_trial.sort_values(column, ascending=mode == "min", na_position="last").head(top)
    names = short_names(searched)
    headers = ["trial", metric, "n", "status", "val clean", "test clean"]
    # "kept": the measured kept fraction, named apart from a searched sparsity.density ("density").
    headers += [f"test PGD-{pgd_steps(pgd)}" if pgd else "test PGD", "kept"]
    headers += [names[k] for k in searched]
    body = [
        [
            _trial_label(r),
            _num(r.get(column)),
            int(r["n"]),
            r["status"],
            _num(r.get("final_val_clean_acc")),
            _num(r.get("test_clean_acc")),
            _num(r.get(pgd)) if pgd else None,
            _num(r.get("density")),
            *[_drawn(r, k) for k in searched],
        ]
        for _, r in ranked.iterrows()
    ]
    return format_table(headers, body)


def _trial_label(row: pd.Series) -> str:
    """``t<study trial number>`` (the name MLflow's run starts with), else Ray's trial id."""
    number = row.get("study_trial")
    return f"t{int(number)}" if number is not None and not pd.isna(number) else str(row.name)


def _drawn(row: pd.Series, key: str) -> Any:
    """The value the trial drew for searched ``key``; None when the trial did not draw it."""
    sampled = row.get("sampled")
    if isinstance(sampled, str):
        return json.loads(sampled).get(key)
    value = row.get(f"config.{key}")
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def pareto_rows(rows: pd.DataFrame, numbers: list[int], metrics: list[str]) -> pd.DataFrame:
    """The rows of the study's Pareto front (``study.best_trials``: ``numbers``), one per distinct config.

    Optuna decides which trials are non-dominated; here only duplicates (the same sampled values
    reached twice, e.g. by NSGA-II) are dropped, keeping the first, and the front is sorted by the
    first objective.
    """
    front = rows[rows["study_trial"].isin(numbers)].drop_duplicates("trial_id")
    front = front.drop_duplicates("sampled") if "sampled" in front else front
    return front.sort_values([row_column(m) for m in metrics], ascending=True)


def write_pareto(front: pd.DataFrame, folder: Path) -> tuple[Path, Path]:
    """Write the front as ``pareto.csv`` and ``pareto.parquet`` in ``folder`` (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "pareto.csv", folder / "pareto.parquet"
    for path in paths:
        with atomic_path(path) as tmp:
            if path.suffix == ".csv":
                front.to_csv(tmp, index=False)
            else:
                front.to_parquet(tmp, index=False)
    return paths

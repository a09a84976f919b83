"""Console tables of a search's trials, and the Pareto front of a multi-objective search.

Both read the Parquet rows (one per trial), so they show the same numbers after a resume as
after an uninterrupted search.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rbp.atomic import atomic_path

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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table (numbers right-aligned, 4 decimals for fractions)."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        cells = zip(values, widths, numeric, strict=True)
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in cells).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in text)])


def _short(key: str) -> str:
    return key.split(".")[-1]


def _test_pgd_column(rows: pd.DataFrame) -> str | None:
    """The ``test_pgd<steps>_acc`` column of the rows (the steps come from the config)."""
    found = [c for c in rows.columns if re.fullmatch(r"test_pgd\d+_acc", c)]
    return found[0] if found else None


def best_trials_table(rows: pd.DataFrame, metric: str, mode: str, searched: list[str], top: int) -> str:
    """The ``top`` trials of a search by ``metric``, with their searched values and test accuracy."""
    column, pgd = row_column(metric), _test_pgd_column(rows)
    ranked = rows.sort_values(column, ascending=mode == "min", na_position="last").head(top)
    headers = ["trial", "status", "epochs", metric, "val clean", "val PGD (best)", "test clean"]
    headers += [pgd.removesuffix("_acc").replace("test_pgd", "test PGD-") if pgd else "test PGD", "density"]
    headers += [_short(k) for k in searched]
    body = [
        [
            r["trial_id"],
            r["status"],
            _int(r.get("epochs_done")),
            _num(r.get(column)),
            _num(r.get("final_val_clean_acc")),
            _num(r.get("best_val_pgd_acc")),
            _num(r.get("test_clean_acc")),
            _num(r.get(pgd)) if pgd else None,
            _num(r.get("density")),
            *[_drawn(r, k) for k in searched],
        ]
        for _, r in ranked.iterrows()
    ]
    return format_table(headers, body)


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


def _int(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def pareto_front(rows: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """Rows no other row dominates (at least as good in every objective, better in one).

    Only trials that trained to the end with every objective known take part.
    """
    columns = [row_column(m) for m in metrics]
    done = rows[rows["status"] == "finished"].dropna(subset=columns)
    signs = [1.0 if mode == "max" else -1.0 for mode in modes]
    values = done[columns].to_numpy(dtype=float).tolist()
    points = [[s * v for s, v in zip(signs, row, strict=True)] for row in values]

    def dominates(a: list[float], b: list[float]) -> bool:
        pairs = list(zip(a, b, strict=True))
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    def dominated(i: int) -> bool:
        return any(dominates(other, points[i]) for j, other in enumerate(points) if j != i)

    keep = [i for i in range(len(points)) if not dominated(i)]
    return done.iloc[keep].sort_values(columns[0], ascending=modes[0] == "min")


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

"""The metric registry: every metric a table, figure, search report, spec or ``rbp best`` names.

A metric has a name (the key in summaries, result rows and MLflow), a header for tables and axes,
whether it is a fraction shown as a percentage, and whether higher is better. The test PGD
accuracy's key carries its step count, ``test_pgd<k>_acc`` (:func:`pgd_key`), so it is a family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    header: str
    percent: bool = False
    higher_is_better: bool = True
    accuracy: bool = False  # an accuracy in [0, 1] (what "at chance" compares)


_PGD = re.compile(r"test_pgd(\d+)_acc")


def pgd_key(steps: int) -> str:
    """The key of the test PGD accuracy with ``steps`` steps: ``test_pgd20_acc``."""
    return f"test_pgd{steps}_acc"


def pgd_steps(name: str) -> int | None:
    """The step count of a ``test_pgd<k>_acc`` key, else None."""
    match = _PGD.fullmatch(name)
    return int(match.group(1)) if match else None


_ACC = {"percent": True, "accuracy": True}
_REGISTRY = {
    m.name: m
    for m in (
        Metric("test_clean_acc", "clean (%)", **_ACC),
        Metric("test_autoattack_acc", "AutoAttack (%)", **_ACC),
        Metric("best_val_pgd_acc", "val PGD (%)", **_ACC),
        Metric("val_pgd_acc", "val PGD (%)", **_ACC),
        Metric("val_clean_acc", "val clean (%)", **_ACC),
        Metric("train_acc", "train acc (%)", **_ACC),
        Metric("train_loss", "train loss", higher_is_better=False),
        Metric("kept_params", "kept weights", higher_is_better=False),
        Metric("total_params", "weights", higher_is_better=False),
        Metric("density", "density (%)", percent=True),
        Metric("size_kb", "size (KB)", higher_is_better=False),
    )
}

# What a table column may name (besides any test_pgd<k>_acc), in the order error messages list them.
TABLE_METRICS = ("test_clean_acc", "test_pgd<k>_acc", "test_autoattack_acc", "best_val_pgd_acc", "kept_params",
                 "total_params", "density", "size_kb")  # fmt: skip
# What a search reports after every epoch: what a tune spec may use as metric, ASHA criterion or objective.
EPOCH_METRICS = ("val_pgd_acc", "val_clean_acc", "best_val_pgd_acc", "train_loss", "train_acc", "kept_params",
                 "density")  # fmt: skip


def metric(name: str) -> Metric:
    """The registered metric ``name`` (KeyError if there is none)."""
    steps = pgd_steps(name)
    if steps is not None:
        return Metric(name, f"PGD-{steps} (%)", **_ACC)
    return _REGISTRY[name]


def is_table_metric(name: str) -> bool:
    return pgd_steps(name) is not None or (name in _REGISTRY and name in TABLE_METRICS)


def header(name: str) -> str:
    """The table or axis header of ``name``; an unregistered name is its own header."""
    try:
        return metric(name).header
    except KeyError:
        return name

"""``rbp best``: the best trials of an experiment, from MLflow, and a config to retrain the winner.

Queries MLflow (not Ray's files, which may be on another machine or gone): FINISHED runs only,
one per trial id (a trial that Ray restarted keeps one run, but a driver killed at the wrong moment
can leave two; the newest wins). Params are strings in MLflow; they are cast back through the core
config's field types, and the result validated as a :class:`~rbp.config.Config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rbp.config import Config, from_dict, nested
from rbp.errors import RbpError
from rbp.tuning import tracking
from rbp.tuning.configkeys import config_keys, parse_config_value
from rbp.tuning.report import format_table

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class Ranked:
    """One trial's run: its metric value and its config (cast back from the params)."""

    trial_id: str
    run: Run
    value: float
    config: Config


def config_from_params(params: dict[str, str]) -> Config:
    """The core Config of a run's string params (keys the core config lacks are ignored)."""
    keys = config_keys()
    flat: dict[str, Any] = {}
    for key, text in params.items():
        if key in keys:
            try:
                flat[key] = parse_config_value(key, text)
            except ValueError:
                raise RbpError(f"MLflow param {key}={text!r} does not parse as a {keys[key][0]}") from None
    return from_dict(nested(flat))


def best_runs(uri: str, experiment: str, metric: str, mode: str, top: int) -> list[Ranked]:
    """The ``top`` FINISHED runs of ``experiment`` by ``metric``, one per trial id."""
    mlflow = tracking.client(uri)
    exp = tracking.find_experiment(mlflow, experiment)
    newest: dict[str, Run] = {}
    for run in tracking.search_all(mlflow, exp.experiment_id, "attributes.status = 'FINISHED'"):
        trial_id = run.data.tags.get(tracking.TRIAL_TAG, run.info.run_id)
        if trial_id not in newest or (run.info.end_time or 0) > (newest[trial_id].info.end_time or 0):
            newest[trial_id] = run
    if not newest:
        raise RbpError(f"experiment {experiment!r} has no FINISHED runs yet")
    scored = [
        (trial_id, run, run.data.metrics[metric])
        for trial_id, run in newest.items()
        if metric in run.data.metrics and not math.isnan(run.data.metrics[metric])
    ]
    if not scored:
        known = sorted({k for run in newest.values() for k in run.data.metrics})
        raise RbpError(f"no FINISHED run of {experiment!r} has metric {metric!r} (metrics: {', '.join(known)})")
    scored.sort(key=lambda item: item[2], reverse=mode == "max")
    return [Ranked(t, run, value, config_from_params(run.data.params)) for t, run, value in scored[:top]]


def best_table(ranked: list[Ranked], metric: str) -> str:
    """Rank, trial, metric, validation/test accuracy, kept weights, and the searched values."""
    searched: list[str] = []
    for item in ranked:
        searched += [k for k in tracking.searched_keys(item.run) if k not in searched]
    rows = []
    for i, item in enumerate(ranked, 1):
        m, cfg = item.run.data.metrics, item.config.to_dict()
        steps = item.config.eval.test_pgd_steps
        drawn = tracking.sampled(item.run)  # a conditional key the trial did not draw shows as "-"
        values = [_lookup(cfg, key) if drawn is None else drawn.get(key) for key in searched]
        rows.append(
            [i, item.trial_id, item.value, m.get("val_clean_acc"), m.get("best_val_pgd_acc"), m.get("test_clean_acc"),
             m.get(f"test_pgd{steps}_acc"), _int(m.get("kept_params")), *values]
        )  # fmt: skip
    headers = ["#", "trial", metric, "val clean", "val PGD (best)", "test clean", "test PGD", "kept"]
    return format_table(headers + [k.split(".")[-1] for k in searched], rows)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def write_config(cfg: Config, path: Path) -> None:
    """Write ``cfg`` as a YAML that ``rbp train --config`` accepts (the ``run`` section left to defaults)."""
    tree = {k: v for k, v in cfg.to_dict().items() if k != "run"}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))

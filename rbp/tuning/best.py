"""``rbp best``: the best trials of an experiment, from MLflow, and a config to retrain the winner.

Queries MLflow (not Ray's files, which may be on another machine or gone): FINISHED trial runs
only, one per trial id (a trial that Ray restarted keeps one run, but a driver killed at the wrong
moment can leave two; the newest wins). Params are strings in MLflow; they are cast back through
the core config's field types, and the result validated as a :class:`~rbp.config.schema.Config`.

Honest selection: the default ranking is ``best_val_pgd_acc``, the validation score of the
checkpoint the trial kept (its test numbers and ``.rbpz`` come from that checkpoint); trials with
equal values share a rank; a trial trained with several seeds shows mean ± std over n seeds; and
ranking on a test metric is refused unless asked for (the test split then no longer estimates the
winner's accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rbp.base.atomic import write_text_atomic
from rbp.base.errors import RbpError
from rbp.base.metrics import pgd_key
from rbp.config.io import nested
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.tuning import keys, tracking
from rbp.tuning.configkeys import config_keys, parse_config_value
from rbp.tuning.report import format_table, short_names

if TYPE_CHECKING:
    from mlflow.entities import Run


DEFAULT_METRIC = "best_val_pgd_acc"


@dataclass(frozen=True)
class Ranked:
    """One trial's run: its rank (shared by ties), metric value (a mean over seeds), std, n, config."""

    rank: int
    trial_id: str
    run: Run
    value: float
    std: float | None
    n: int
    config: Config


def check_selection_metric(metric: str, allow_test: bool) -> None:
    """Refuse to select on a test metric unless ``allow_test`` (one line naming the fix)."""
    if metric.startswith("test_") and not allow_test:
        raise RbpError(
            f"--metric {metric} selects on the test split, which then no longer estimates the winner's accuracy; "
            f"rank by {DEFAULT_METRIC} (the default) or pass --allow-test-selection"
        )


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
    """The ``top`` FINISHED trial runs of ``experiment`` by ``metric``, one per trial id, ties ranked equal.

    More than ``top`` come back when the ``top``-th value is tied: a tie is never broken silently.
    """
    mlflow = tracking.client(uri)
    exp = tracking.find_experiment(mlflow, experiment)
    newest: dict[str, Run] = {}
    for run in tracking.search_all(mlflow, exp.experiment_id, "attributes.status = 'FINISHED'"):
        trial_id = run.data.tags.get(keys.TRIAL_TAG)
        if trial_id is None:
            continue  # the search's parent run
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
    ranked: list[Ranked] = []
    for i, (trial_id, run, value) in enumerate(scored):
        rank = ranked[-1].rank if ranked and ranked[-1].value == value else i + 1
        if rank > top:
            break
        std = run.data.metrics.get(f"{metric}_std")
        n = int(run.data.tags.get("rbp.repeats", "1"))
        ranked.append(Ranked(rank, trial_id, run, value, std, n, config_from_params(run.data.params)))
    return ranked


def ties(ranked: list[Ranked]) -> list[Ranked]:
    """The runs sharing the first rank (more than one: the winner is a tie)."""
    return [r for r in ranked if r.rank == ranked[0].rank]


def warm_start_points(uri: str, experiment: str, loaded: Any, top: int) -> list[dict[str, Any]]:
    """The searched values of ``experiment``'s top trials that fit ``loaded``'s space (keys and ranges)."""
    space = loaded.spec.space
    points = []
    for item in best_runs(uri, experiment, DEFAULT_METRIC, "max", top):
        drawn = tracking.sampled(item.run) or {}
        point = {}
        for key, value in drawn.items():
            param = space.get(key)
            if param is None:
                continue
            if param.choices is not None:
                if value in param.choices:
                    point[key] = value
            elif param.low <= value <= param.high:
                point[key] = value
        if point and point not in points:
            points.append(point)
    return points


def best_table(ranked: list[Ranked], metric: str) -> str:
    """Rank (``=`` marks a tie), run name, metric mean ± std and n, test accuracy, kept weights, searched values."""
    searched: list[str] = []
    for item in ranked:
        searched += [k for k in tracking.searched_keys(item.run) if k not in searched]
    names = short_names(searched)
    shared = {r.rank for r in ranked if sum(o.rank == r.rank for o in ranked) > 1}
    rows = []
    for item in ranked:
        m, cfg = item.run.data.metrics, item.config.to_dict()
        steps = item.config.eval.test_pgd_steps
        drawn = tracking.sampled(item.run)  # a conditional key the trial did not draw shows as "-"
        values = [_lookup(cfg, key) if drawn is None else drawn.get(key) for key in searched]
        spread = f"{item.value:.4g} ± {item.std:.2g}" if item.std is not None else f"{item.value:.4g}"
        rank = f"{item.rank}=" if item.rank in shared else str(item.rank)
        kept = item.run.data.tags.get("kept_params")
        rows.append([rank, item.run.info.run_name.split(" ")[0], spread, item.n, m.get("test_clean_acc"),
                     m.get(pgd_key(steps)), int(float(kept)) if kept else None, *values])  # fmt: skip
    headers = ["#", "trial", metric, "n", "test clean", "test PGD", "kept"]
    return format_table(headers + [names[k] for k in searched], rows)


def _lookup(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def write_config(cfg: Config, path: Path) -> None:
    """Write ``cfg`` as a YAML that ``rbp train --config`` accepts (the ``run`` section left to defaults)."""
    tree = {k: v for k, v in cfg.to_dict().items() if k != "run"}
    write_text_atomic(path, yaml.safe_dump(tree, sort_keys=False))

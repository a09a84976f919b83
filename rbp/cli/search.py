"""``rbp tune`` and ``rbp best``: a search with Ray Tune + Optuna tracked in MLflow; its best configs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rbp.base.errors import RbpError
from rbp.cli.models import check_out
from rbp.cli.options import add_command, add_overrides, add_quiet


def _tune(args: argparse.Namespace) -> int:
    # Ray, Optuna and MLflow load only here (and in rbp.tuning): `rbp train` works without them.
    from rbp.tuning.launcher import run_tune
    from rbp.tuning.options import TuneOptions, default_spec

    # Every option of the command has its field of the same name (the spec has a default).
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TuneOptions) if f.name != "spec"}
    options = TuneOptions(spec=args.spec or default_spec(), **given)
    try:
        return run_tune(options)
    except KeyboardInterrupt:
        print(f"rbp: interrupted; `rbp tune {options.spec} --resume` continues the search", file=sys.stderr)
        return 130


def _best(args: argparse.Namespace) -> int:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise RbpError("rbp best needs the tuning extras (mlflow is missing): pip install -e '.[tune]'") from None
    from rbp.tuning import tracking
    from rbp.tuning.best import best_runs, best_table, check_selection_metric, ties, write_config

    check_out(args.write, "--write")
    if args.top < 1:
        raise RbpError(f"--top must be at least 1, got {args.top}")
    check_selection_metric(args.metric, args.allow_test_selection)
    if args.register is not None:
        from rbp.tuning.mlflow_model import check_alias

        check_alias(args.alias)
    uri = tracking.resolve_tracking_uri(args.tracking_uri, args.results)
    tracking.check_tracking_uri(uri, must_exist=True)
    ranked = best_runs(uri, args.experiment, args.metric, args.mode, args.top)
    print(best_table(ranked, args.metric))
    tied = ties(ranked)
    if len(tied) > 1:
        print(f"tie: {len(tied)} trials share the best {args.metric} ({tied[0].value:.4g}); "
              f"--write takes the first listed, {tied[0].run.info.run_name.split(' ')[0]}")  # fmt: skip
    if args.write is not None:
        write_config(ranked[0].config, args.write)
        print(f"wrote {args.write} ({ranked[0].run.info.run_name.split(' ')[0]}, {args.metric} {ranked[0].value:.4g}); "
              f"retrain it with: rbp train --config {args.write}")  # fmt: skip
    if args.register is not None:
        from rbp.tuning.mlflow_model import register

        version = register(tracking.client(uri), ranked[0].run, args.register, args.alias)
        print(f"registered {ranked[0].run.info.run_name.split(' ')[0]} as models:/{args.register}/{version.version} "
              f"(@{args.alias}); serve it with: mlflow models serve -m models:/{args.register}@{args.alias} "
              "--env-manager local")  # fmt: skip
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rbp tune`` and ``rbp best`` to the ``rbp`` parser's commands."""
    tune = add_command(
        commands,
        "tune",
        "hyperparameter search from a spec (Ray Tune + Optuna, MLflow tracking)",
        [
            "rbp tune tune/digits.yaml --trials 20",
            "rbp tune tune/digits.yaml --resume   # continue an interrupted search",
            "rbp tune tune/fashion_mnist.yaml --address auto --set train.epochs=2",
        ],
    )
    tune.add_argument("spec", type=Path, nargs="?", help="search spec YAML (default: tune/digits.yaml)")
    tune.add_argument("--address", help="Ray cluster to run on: auto, HOST:PORT or ray://HOST:PORT (default: local)")
    tune.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///results/mlflow.db)")
    tune.add_argument("--resume", action="store_true", help="continue the spec's interrupted search (Ray checkpoints)")
    tune.add_argument(
        "--study-storage", help="Optuna storage: SQLAlchemy URL or journal file (default: results/optuna.db)"
    )
    tune.add_argument("--warm-start", metavar="EXPERIMENT", help="first try the top configs of this MLflow experiment")
    tune.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    tune.add_argument("--storage", help="Ray storage for checkpoints: a shared path or s3://... (default: results/ray)")
    tune.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    tune.add_argument("--trials", type=int, help="trials the search should hold (more than it has: extends it)")
    add_overrides(tune, "fix a core-config key in every trial, e.g. --set train.epochs=5 (repeatable)")
    tune.add_argument("--report-every", type=int, default=30, help="seconds between progress tables (default 30)")
    tune.add_argument("--auth-mode", choices=("token", "disabled"), help="RAY_AUTH_MODE (default: see docs/cluster.md)")
    add_quiet(tune)
    tune.set_defaults(handler=_tune)

    best = add_command(
        commands,
        "best",
        "the best runs of an MLflow experiment; --write a config to retrain, --register the model",
        [
            "rbp best --experiment digits --top 10",
            "rbp best --experiment digits --write best.yaml   # then: rbp train --config best.yaml",
            "rbp best --experiment fashion_mnist --register rbp-fashion-mnist --alias champion",
        ],
    )
    best.add_argument("--experiment", required=True, help="MLflow experiment (the spec's `experiment`)")
    best.add_argument("--metric", default="best_val_pgd_acc", help="rank by this metric (default best_val_pgd_acc)")
    best.add_argument("--allow-test-selection", action="store_true", help="allow ranking by a test_* metric")
    best.add_argument("--mode", choices=("max", "min"), default="max", help="max: higher is better (accuracies)")
    best.add_argument("--top", type=int, default=5, help="how many runs to list")
    best.add_argument("--write", type=Path, help="write the best run's config here (YAML for rbp train --config)")
    best.add_argument("--register", metavar="NAME", help="register the best run's model as a new version of NAME")
    best.add_argument("--alias", default="champion", help="alias set on the registered version (with --register)")
    best.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///results/mlflow.db)")
    best.add_argument("--results", type=Path, default=Path("results"), help="where the default store lives")
    best.set_defaults(handler=_best)

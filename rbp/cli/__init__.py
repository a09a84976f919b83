"""``rbp`` command line: ``train``, ``eval``, ``export``, ``info``, ``ablate``, ``tables``, ``tune``, ``best``.

Bad input (config typo, out-of-range value, missing data, bad checkpoint) prints one line
``rbp: error: ...`` naming the field and the fix, and exits with code 2.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rbp.base.errors import RbpError
from rbp.base.metrics import pgd_key

if TYPE_CHECKING:
    from rbp.artefacts.sizes import SizeBreakdown

log = logging.getLogger("rbp")


def _add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (sections data, model, init, sparsity, ...)")
    _add_overrides(parser, "override one field, e.g. --set model.arch=resnet18 (repeatable)")


def _train(args: argparse.Namespace) -> int:
    from rbp.config.load import load_config
    from rbp.runs.epochs import train_run

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    if args.quiet:
        cfg.run.progress = False
    summary = train_run(cfg, resume=args.resume, overwrite=args.overwrite)
    steps = cfg.eval.test_pgd_steps
    print(
        f"test clean accuracy {summary['test_clean_acc']:.4f}   "
        f"test PGD-{steps} accuracy {summary[pgd_key(steps)]:.4f} "
        f"({cfg.attack.norm} eps {cfg.attack.eps:.4g})"
    )
    if "test_autoattack_acc" in summary:
        print(f"test AutoAttack accuracy {summary['test_autoattack_acc']:.4f}")
    print(
        f"kept weights {summary['kept_params']:,} of {summary['total_params']:,} "
        f"({summary['density']:.2%})   run folder {summary['run_dir']}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    _check_out(args.out, "--out")  # before the long computation: its result must not be thrown away
    import torch

    from rbp.artefacts.load import load_any
    from rbp.config.load import from_dict
    from rbp.data import Batches, Split, load_splits, to_unit_float
    from rbp.evaluate import accuracy, autoattack_accuracy
    from rbp.runs.folder import write_text_atomic
    from rbp.train.trainer import resolve_device

    device = resolve_device(args.device)
    model, cfg = load_any(args.checkpoint, device)  # a checkpoint or an exported .rbpz
    tree = cfg.to_dict()
    if args.data_root is not None:
        tree["data"]["root"] = str(args.data_root)
    cfg = from_dict(tree)
    split = getattr(load_splits(cfg.data), args.split)
    n = min(args.samples or len(split), len(split))
    x, y = split.x[:n], split.y[:n]
    eps = cfg.attack.eps if args.eps is None else args.eps
    norm = args.norm or cfg.attack.norm
    result: dict = {"checkpoint": str(args.checkpoint), "split": args.split, "samples": n, "eps": eps, "norm": norm}
    if args.attack == "autoattack":
        aa = autoattack_accuracy(
            model,
            to_unit_float(x),
            y,
            eps=eps,
            norm=norm,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
        )
        result.update(clean_acc=aa["clean_acc"], autoattack_acc=aa["autoattack_acc"])
    else:
        steps = args.steps if args.attack == "pgd" else 0
        step_size = args.step_size or (2.5 * eps / steps if steps else 0.0)
        torch.manual_seed(args.seed)
        batches = Batches(Split(x, y), args.batch_size, device=device)
        result.update(
            accuracy(model, batches, eps=eps, step_size=step_size, steps=steps, restarts=args.restarts, norm=norm)
        )
        if steps:
            result.update(steps=steps, step_size=step_size, restarts=args.restarts)
    if args.out is not None:  # saved first: nothing after the computation can lose it
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _check_out(path: Path | None, option: str) -> None:
    """An output file the command will write: not a folder, and its folder exists (one-line errors)."""
    if path is None:
        return
    if path.is_dir():
        raise RbpError(f"{option} {path} is a folder; give a file name, e.g. {path / 'result'}")
    if not path.parent.is_dir():
        raise RbpError(f"{option} {path}: no folder {path.parent}; create it first or choose another path")


def _export(args: argparse.Namespace) -> int:
    from rbp.artefacts.export import export_run

    _check_out(args.out, "--out")
    out, _, sizes = export_run(args.source, args.out)
    print(
        f"kept weights {sizes.kept:,} of {sizes.weights:,} ({sizes.kept / sizes.weights:.2%})   "
        f"file {out} {_bytes(sizes.subnet_bits)}   dense FP32 {_bytes(sizes.dense_fp32_bits)} "
        f"({sizes.dense_fp32_bits / sizes.subnet_bits:,.0f}x larger)"
    )
    return 0


def _bytes(bits: float) -> str:
    """Bits as bytes in decimal units (1 KB = 1000 B), as file sizes are usually quoted."""
    value = bits / 8
    if value < 1e3:
        return f"{value:,.0f} B"
    return f"{value / 1e3:,.1f} KB" if value < 1e6 else f"{value / 1e6:,.1f} MB"


def _info(args: argparse.Namespace) -> int:
    from rbp.artefacts.reader import read_artefact
    from rbp.artefacts.sizes import size_breakdown

    artefact = read_artefact(args.artefact)  # validates everything, builds no model
    header, cfg, data = artefact.header, artefact.config, artefact.header["data_info"]
    written_by = f"rbp {header.get('rbp_version')}"
    print(f"{args.artefact}: {header['format']} v{header['version']} ({written_by}), run {cfg.run_id()}")
    print(
        f"arch {cfg.model.arch} ({cfg.model.mode}, width {cfg.model.width or 'default'}, last BN {cfg.model.last_bn}), "
        f"seed {cfg.seed}, init {cfg.init.scheme}, data {cfg.data.name} {tuple(data['input_shape'])} "
        f"{data['num_classes']} classes"
    )
    print(f"sparsity {cfg.sparsity.allocation} (p {cfg.sparsity.p}), global density {cfg.sparsity.density}")
    _print_layers(header["layers"])
    _print_sizes(size_breakdown(artefact))
    print("training metrics:" if header["metrics"] else "training metrics: none recorded")
    for key, value in header["metrics"].items():
        print(f"  {key} {value:.4f}" if isinstance(value, float) else f"  {key} {value}")
    return 0


def _print_layers(layers: list[dict]) -> None:
    print(f"{'layer':<34} {'shape':<18} {'weights':>10} {'density':>9} {'kept':>8} {'encoding':>12} {'bytes':>8}")
    for layer in layers:
        shape, weights = "x".join(map(str, layer["shape"])), math.prod(layer["shape"])
        print(
            f"{layer['name']:<34} {shape:<18} {weights:>10,} {layer['density']:>9.4%} "
            f"{layer['kept']:>8,} {layer['encoding']:>12} {layer['length']:>8,}"
        )


def _print_sizes(sizes: SizeBreakdown) -> None:
    print(
        f"kept weights {sizes.kept:,} of {sizes.weights:,} ({sizes.kept / sizes.weights:.2%})\n"
        f"size {_bytes(sizes.subnet_bits)} = masks {_bytes(sizes.mask_bits)} + BN statistics "
        f"{_bytes(sizes.stats_bits)} + header {_bytes(sizes.header_bits)} + zip {_bytes(sizes.container_bits)}\n"
        f"mask entropy bound {_bytes(sizes.entropy_bits)}   dense FP32 {_bytes(sizes.dense_fp32_bits)}   "
        f"binary dense {_bytes(sizes.binary_dense_bits)}"
    )


def _render(spec) -> None:
    from rbp.ablation.figures import write_figures
    from rbp.ablation.tables import write_tables
    from rbp.results import read_results

    results = read_results(spec.folder / "rows")
    tables = write_tables(spec, results)
    figures = write_figures(spec, results)
    print((spec.folder / "tables" / "tables.md").read_text())
    print(f"wrote {len(tables)} table files and {len(figures)} figure files under {spec.folder}")


def _ablate(args: argparse.Namespace) -> int:
    from rbp.ablation.jobs import load_spec
    from rbp.ablation.runner import run_ablation

    spec = load_spec(args.spec, args.overrides)
    ran = run_ablation(spec, address=args.address)
    print(f"ablation {spec.name}: ran {ran} missing run(s)")
    _render(spec)
    return 0


def _tables(args: argparse.Namespace) -> int:
    from rbp.ablation.jobs import load_spec

    _render(load_spec(args.spec, args.overrides))
    return 0


def _tune(args: argparse.Namespace) -> int:
    # Ray, Optuna and MLflow load only here (and in rbp.tuning): `rbp train` works without them.
    from rbp.tuning.launcher import TuneOptions, default_spec, run_tune

    options = TuneOptions(
        spec=args.spec or default_spec(),
        address=args.address,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        study_storage=args.study_storage,
        warm_start=args.warm_start,
        results=args.results,
        storage=args.storage,
        num_cpus=args.num_cpus,
        overrides=args.overrides,
        trials=args.trials,
        report_every=args.report_every,
        auth_mode=args.auth_mode,
        verbose=args.verbose,
    )
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

    _check_out(args.write, "--write")
    if args.top < 1:
        raise RbpError(f"--top must be at least 1, got {args.top}")
    check_selection_metric(args.metric, args.allow_test_selection)
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
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``rbp: error:`` line (not usage text), as every other error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("rbp").strip()  # "" for rbp itself, else e.g. "eval"
        raise RbpError(f"{command + ': ' if command else ''}{message}; see `{self.prog} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rbp", description="Robust binary subnetworks: train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (default: subnet conv net on digits, PGD)")
    _add_config_args(train)
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    again.add_argument("--overwrite", action="store_true", help="start the run again, replacing its folder")
    train.add_argument("--print-config", action="store_true", help="print the resolved config (every key) and exit")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)

    ev = commands.add_parser("eval", help="evaluate a checkpoint: clean, PGD or AutoAttack accuracy")
    ev.add_argument("checkpoint", type=Path, help="a run's best.pt or last.pt, or an exported .rbpz")
    ev.add_argument("--attack", choices=("clean", "pgd", "autoattack"), default="pgd")
    ev.add_argument("--steps", type=int, default=20, help="PGD steps")
    ev.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    ev.add_argument("--eps", type=float, help="radius in pixel units; default: the run's attack.eps")
    ev.add_argument("--step-size", type=float, help="PGD step; default 2.5 * eps / steps")
    ev.add_argument("--norm", choices=("linf", "l2"), help="default: the run's attack.norm")
    ev.add_argument("--split", choices=("test", "val"), default="test")
    ev.add_argument("--samples", type=int, help="only the first N images of the split")
    ev.add_argument("--batch-size", type=int, default=500)
    ev.add_argument("--data-root", type=Path, help="where the data set lives on this machine")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", type=Path, help="also write the result as JSON here")
    ev.set_defaults(handler=_eval)

    export = commands.add_parser("export", help="write a subnet as a compact .rbpz artefact (seed + masks)")
    export.add_argument("source", type=Path, help="a run folder (its best.pt is exported) or a checkpoint")
    export.add_argument("--out", type=Path, help="the .rbpz to write; default: model.rbpz beside the checkpoint")
    export.set_defaults(handler=_export)

    info = commands.add_parser("info", help="describe a .rbpz: arch, per-layer densities, sizes, metrics")
    info.add_argument("artefact", type=Path, help="an exported .rbpz")
    info.set_defaults(handler=_info)

    ablate = commands.add_parser("ablate", help="run an ablation spec's missing cells, then render its tables")
    ablate.add_argument("spec", type=Path, help="e.g. ablations/digits_paper.yaml")
    ablate.add_argument("--address", help="run the cells as Ray tasks on this cluster (e.g. auto)")
    _add_overrides(ablate, "add to the spec's base for every cell, e.g. --set data.root=/data/cifar10 (repeatable)")
    ablate.set_defaults(handler=_ablate)

    tables = commands.add_parser("tables", help="render an ablation spec's tables and figures from its results")
    tables.add_argument("spec", type=Path)
    _add_overrides(tables, "as for rbp ablate: the same --set gives the same cells")
    tables.set_defaults(handler=_tables)

    tune = commands.add_parser("tune", help="hyperparameter search from a spec (Ray Tune + Optuna, MLflow tracking)")
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
    _add_overrides(tune, "fix a core-config key in every trial, e.g. --set train.epochs=5 (repeatable)")
    tune.add_argument("--report-every", type=int, default=30, help="seconds between progress tables (default 30)")
    tune.add_argument("--auth-mode", choices=("token", "disabled"), help="RAY_AUTH_MODE (default: see docs/cluster.md)")
    tune.set_defaults(handler=_tune)

    best = commands.add_parser("best", help="the best runs of an MLflow experiment; --write a config to retrain")
    best.add_argument("--experiment", required=True, help="MLflow experiment (the spec's `experiment`)")
    best.add_argument("--metric", default="best_val_pgd_acc", help="rank by this metric (default best_val_pgd_acc)")
    best.add_argument("--allow-test-selection", action="store_true", help="allow ranking by a test_* metric")
    best.add_argument("--mode", choices=("max", "min"), default="max")
    best.add_argument("--top", type=int, default=5)
    best.add_argument("--write", type=Path, help="write the best run's config here (YAML for rbp train --config)")
    best.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///results/mlflow.db)")
    best.add_argument("--results", type=Path, default=Path("results"), help="where the default store lives")
    best.set_defaults(handler=_best)
    return parser


def _check_positive(args: argparse.Namespace) -> None:
    for name in ("steps", "restarts", "batch_size", "samples", "trials", "num_cpus", "report_every", "top"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise RbpError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    results = getattr(args, "results", None)
    if results is not None and results.exists() and not results.is_dir():
        raise RbpError(f"--results {results} is a file, not a folder; give a folder (created if missing)")
    eps, step = getattr(args, "eps", None), getattr(args, "step_size", None)
    if eps is not None and not (math.isfinite(eps) and eps >= 0):
        raise RbpError(f"--eps must be a finite radius >= 0 in pixel units, e.g. 0.1, got {eps}")
    if step is not None and not (math.isfinite(step) and step > 0):
        raise RbpError(f"--step-size must be a finite step > 0 in pixel units, e.g. 0.025, got {step}")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
        _check_positive(args)
        return args.handler(args)
    except RbpError as error:
        print(f"rbp: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rbp: interrupted; `rbp train ... --resume` continues from the last finished epoch", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``rbp`` command: :func:`main`, then the exit handlers, then exit without the teardown.

    The interpreter's teardown (freeing torch, Ray and MLflow module by module) took 1.7 s after a
    search had printed its summary and shut Ray down (bench/RESULTS.md); everything is written by
    then. The exit handlers still run (Ray's, MLflow's, logging's, multiprocessing's) and the
    buffered output is flushed; only the teardown is skipped. In-process callers use :func:`main`.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

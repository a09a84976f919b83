"""``rbp train``: train one config in its run folder (or print the resolved config)."""

from __future__ import annotations

import argparse

from rbp.base.metrics import pgd_key
from rbp.cli.options import add_command, add_config_args, add_quiet


def _train(args: argparse.Namespace) -> int:
    from rbp.config.describe import commented_yaml
    from rbp.config.load import load_config
    from rbp.runs.epochs import train_run

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(commented_yaml(cfg), end="")
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


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rbp train`` to the ``rbp`` parser's commands."""
    train = add_command(
        commands,
        "train",
        "train a model into runs/<run id>/ (default: subnet conv net on digits, PGD training)",
        [
            "rbp train",
            "rbp train --set data.name=fashion_mnist --set train.epochs=5 --quiet",
            "rbp train --print-config > my.yaml   # every knob, commented; edit, then:",
            "rbp train --config my.yaml --resume",
        ],
    )
    add_config_args(train)
    again = train.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    again.add_argument("--overwrite", action="store_true", help="start the run again, replacing its folder")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML, every key under its description, and exit without training",
    )
    add_quiet(train)
    train.set_defaults(handler=_train)

"""The ``rbp`` argument parser: the root options and each group's commands."""

from __future__ import annotations

import argparse

from rbp.cli import completion, config, models, search, studies, train
from rbp.cli.options import Parser

DESCRIPTION = """\
rbp: robust binary subnetworks. Train sparse networks of fixed ±1 weights (only a mask is learned)
against adversarial attacks, evaluate them (PGD, AutoAttack), export them as compact .rbpz files, and
run ablation studies and hyperparameter searches (Ray Tune + Optuna, tracked in MLflow)."""

EPILOG = """\
examples:
  rbp train                                       # the default run: subnet conv net on digits, PGD
  rbp train --print-config                        # every knob, commented, with its resolved value
  rbp eval results/digits/models/baselines.subnet_ours.rbpz --attack autoattack --samples 100
  rbp ablate ablations/digits_paper.yaml

Tab completion: eval "$(rbp completion bash)" (zsh: eval "$(rbp completion zsh)")."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rbp", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        title="commands",
        metavar="command",
        help="`rbp command --help`: its options and examples",
    )
    for group in (train, models, studies, search, config):
        group.add_commands(commands)
    completion.add_commands(commands, parser)  # its script is read from the whole parser when it runs
    return parser

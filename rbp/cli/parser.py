"""The ``rbp`` argument parser: the root options and each group's commands."""

from __future__ import annotations

import argparse

from rbp.cli import models, search, studies, train
from rbp.cli.options import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rbp", description="Robust binary subnetworks: train, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (train, models, studies, search):
        group.add_commands(commands)
    return parser

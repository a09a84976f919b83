"""Shared pieces of the parser: one-line usage errors and the ``--config``, ``--set`` and ``--quiet`` options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from rbp.base.errors import RbpError


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (sections data, model, init, sparsity, ...)")
    add_overrides(parser, "override one field, e.g. --set model.arch=resnet18 (repeatable)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", action="store_true", help="only errors and the final result: no progress, no informational lines"
    )


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``rbp: error:`` line (not usage text), as every other error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("rbp").strip()  # "" for rbp itself, else e.g. "eval"
        raise RbpError(f"{command + ': ' if command else ''}{message}; see `{self.prog} --help`")

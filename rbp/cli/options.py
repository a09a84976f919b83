"""Shared pieces of the parser: one help format, a command with its examples, one-line usage errors, and the
``--config``, ``--set`` and ``--quiet`` options."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rbp.base.errors import RbpError


def add_command(
    commands: argparse._SubParsersAction, name: str, summary: str, examples: Sequence[str], details: str = ""
) -> argparse.ArgumentParser:
    """Add ``rbp NAME``: ``summary`` is its line in ``rbp --help`` and opens its own help, ``details``
    (lines kept as written) follow it, and ``examples`` (whole command lines) end it."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    description = f"{summary}\n\n{details}" if details else summary
    return commands.add_parser(name, help=summary, description=description, epilog=epilog)


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (sections data, model, init, sparsity, ...)")
    add_overrides(parser, "override one field, e.g. --set model.arch=resnet18 (repeatable)")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet", action="store_true", help="only errors and the final result: no progress, no informational lines"
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with ``(default: X)``; descriptions and epilogs keep their lines (examples).

    Left as written: an option with nothing to show (no default, a flag that is off, an empty list)
    and one whose help already states its default (e.g. "default: the run's attack.eps").
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``rbp: error:`` line (not usage text), as every other error.

    Every parser, the commands' too (argparse makes them of the root's class), formats its help with
    :class:`HelpFormatter`.
    """

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("rbp").strip()  # "" for rbp itself, else e.g. "eval"
        raise RbpError(f"{command + ': ' if command else ''}{message}; see `{self.prog} --help`")

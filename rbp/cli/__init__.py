"""``rbp`` command line: ``train``, ``eval``, ``export``, ``info``, ``ablate``, ``tables``, ``tune``, ``best``.

The parser is :mod:`~rbp.cli.parser`; each group of commands is a module with its handlers
(:mod:`~rbp.cli.train`, :mod:`~rbp.cli.models`, :mod:`~rbp.cli.studies`, :mod:`~rbp.cli.search`).

Bad input (config typo, out-of-range value, missing data, bad checkpoint) prints one line
``rbp: error: ...`` naming the field and the fix, and exits with code 2.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from rbp.base.errors import RbpError
from rbp.cli.parser import build_parser


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


@contextlib.contextmanager
def _rbp_logs_on_stderr(*, verbose: bool, quiet: bool) -> Iterator[None]:
    """Inside the block, the ``rbp`` loggers' records go to stderr, one message a line.

    Only the ``rbp`` logger is configured: every line rbp shows goes through a logger under it
    (AutoAttack's own log too: :func:`rbp.evaluation.autoattack_accuracy` forwards it), so the root
    logger, and with it the logging of Ray, MLflow or an application calling :func:`main`, is left
    as it was. ``quiet``: warnings and errors only; ``verbose``: debug lines too. The handler and
    the level are undone on exit, so that commands run one after another in a process (the tests)
    neither stack handlers nor inherit a previous command's --quiet.
    """
    logger = logging.getLogger("rbp")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with _rbp_logs_on_stderr(verbose=args.verbose, quiet=getattr(args, "quiet", False)):
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

    The interpreter's teardown (freeing torch, Ray and MLflow module by module) is slow after a
    search has printed its summary and shut Ray down (measured in bench/RESULTS.md); everything is
    written by then. The exit handlers still run (Ray's, MLflow's, logging's, multiprocessing's) and the
    buffered output is flushed; only the teardown is skipped. In-process callers use :func:`main`.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()

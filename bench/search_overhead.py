"""Search overhead: wall time of ``rbp tune`` against the trials' own training time.

Runs ``rbp tune SPEC`` once in a fresh results folder (a subprocess, so the package on
``PYTHONPATH`` is the one measured: compare two checkouts with the same spec) and prints

    wall_s         seconds from launching the command to its exit (Ray start-up and shut-down included)
    train_s        the sum of the trials' training seconds (``train_seconds`` of their Parquet rows)
    ideal_s        train_s / concurrency: the wall time of a platform that costs nothing
    ratio          wall_s / ideal_s (the issue-14 target is <= 1.15)

Usage: ``nice -n 19 python bench/search_overhead.py [SPEC] [--set KEY=VALUE ...] [--trials N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml


def measure(spec: Path, extra: list[str], keep: Path | None) -> dict[str, float]:
    """Run the search in a fresh folder; wall and training seconds of its trials."""
    folder = Path(keep or tempfile.mkdtemp(prefix="rbp-overhead-"))
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tempfile.mkdtemp(prefix="rbpo-", dir="/tmp")}
    cmd = [sys.executable, "-m", "rbp.cli", "tune", str(spec.resolve()), "--results", str(folder / "results"),
           "--auth-mode", "disabled", "--report-every", "60", *extra]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"rbp tune failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    experiment = yaml.safe_load(spec.read_text())["experiment"]
    rows = pd.read_parquet(folder / "results" / "tune" / experiment / "rows")
    concurrency = yaml.safe_load(spec.read_text()).get("concurrency", 1)
    train = float(rows["train_seconds"].sum())
    return {"trials": len(rows), "wall_s": wall, "train_s": train, "ideal_s": train / concurrency,
            "ratio": wall / (train / concurrency)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, nargs="?", default=Path("tune/digits.yaml"))
    parser.add_argument("--trials", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    extra = [f"--set={s}" for s in args.overrides] + (["--trials", str(args.trials)] if args.trials else [])
    result = measure(args.spec, extra, args.keep)
    print("  ".join(f"{k} {v:.1f}" if k != "ratio" else f"{k} {v:.3f}" for k, v in result.items()))


if __name__ == "__main__":
    main()

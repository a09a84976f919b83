"""Search overhead: wall time of ``rbp tune`` against the trials' own training time.

Runs ``rbp tune SPEC`` once in a fresh results folder (a subprocess, so the package on
``PYTHONPATH`` is the one measured: compare two checkouts with the same spec) and prints

    wall_s         seconds from launching the command to its exit (Ray start-up and shut-down included)
    train_s        the sum of the trials' training seconds (``train_seconds`` of their Parquet rows)
    ideal_s        train_s / concurrency: the wall time of a platform that costs nothing
    ratio          wall_s / ideal_s (the issue-14 target is <= 1.15)

and where the difference goes, from Ray's per-trial ``result.json`` (``timestamp``: whole seconds,
``time_total_s``: the trial function's seconds so far), in slot-seconds (wall_s x concurrency):

    start_s        launch -> the first trial's start (imports, study, MLflow, Ray start-up)
    in_trial_s     sum over trials of (trial seconds - train_seconds): data, checkpoints, test
                   evaluation, waiting for the driver to take a report
    between_s      idle slots between one trial's end and the next one's start (driver work, Optuna)
    tail_s         slots idle while the last trials finish (unequal lengths), then exit
    exit_s         of the tail: wall seconds from the summary's last line to the process's end
                   (Ray's shut-down, the interpreter's teardown)

Usage: ``nice -n 19 python bench/search_overhead.py [SPEC] [--set KEY=VALUE ...] [--trials N]``.
"""

from __future__ import annotations

import argparse
import json
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
    launched, start = time.time(), time.monotonic()
    lines, summary_end = [], start
    with subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        for line in p.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("extend: rbp tune"):  # the summary's last line
                summary_end = time.monotonic()
    wall = time.monotonic() - start
    if p.returncode != 0:
        sys.exit(f"rbp tune failed ({p.returncode}):\n{''.join(lines)[-6000:]}")
    experiment = yaml.safe_load(spec.read_text())["experiment"]
    rows = pd.read_parquet(folder / "results" / "tune" / experiment / "rows")
    concurrency = yaml.safe_load(spec.read_text()).get("concurrency", 1)
    train = float(rows["train_seconds"].sum())
    result = {"trials": len(rows), "wall_s": wall, "train_s": train, "ideal_s": train / concurrency,
              "ratio": wall / (train / concurrency)}  # fmt: skip
    parts = breakdown(folder / "results" / "ray", launched, launched + wall, concurrency, train)
    return result | parts | {"exit_s": wall - (summary_end - start)}


def breakdown(ray_root: Path, launched: float, ended: float, concurrency: int, train: float) -> dict[str, float]:
    """Slot-seconds of the overhead by phase (see the module docstring), from Ray's result.json files."""
    spans = []  # (start, end, trial seconds) per trial, in epoch seconds
    for path in ray_root.glob("*/*/result.json"):
        last = json.loads(path.read_text().splitlines()[-1])
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"], last["time_total_s"]))
    start = min(s for s, _, _ in spans) - launched
    ends = sorted(e for _, e, _ in spans)
    # The last `concurrency` trials to end: each slot idles from its trial's end until the exit.
    tail = sum(ended - e for e in ends[-concurrency:])
    in_trial = sum(t for _, _, t in spans) - train
    between = (ended - launched) * concurrency - concurrency * start - in_trial - train - tail
    return {"start_s": start, "in_trial_s": in_trial, "between_s": between, "tail_s": tail}


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

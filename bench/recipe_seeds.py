"""A candidate training recipe over seeds 0-4: test clean / PGD-20 accuracy and wall seconds per run.

    python bench/recipe_seeds.py NAME KEY=VALUE ...     # e.g. w64e20 model.width=64 train.epochs=20

Prints one JSON line per seed. ``--threads N`` sets torch's intra-op threads (two candidates can
then share two cores; a run's numbers can differ in the last bits from a run with another count).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from rbp.config.load import load_config
from rbp.runs.epochs import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix=f"recipe-{args.name}-")
    for seed in args.seeds:
        cfg = load_config(None, [*args.overrides, f"seed={seed}", f"run.out_dir={out}", "run.progress=false"])
        start = time.perf_counter()
        summary = train_run(cfg, overwrite=True)
        row = {"name": args.name, "seed": seed, "clean": summary["test_clean_acc"], "pgd20": summary["test_pgd20_acc"]}
        print(json.dumps({**row, "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()

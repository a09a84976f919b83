"""Re-evaluate every committed model of an ablation spec with ``rbp eval`` and compare with its table row.

For each cell whose model is kept (``<results>/models/``, first seed of the spec) this runs, in a
subprocess, ``rbp eval MODEL --attack clean`` (the whole test split) and, when the spec evaluates
AutoAttack, ``rbp eval MODEL --attack autoattack --samples N`` (the spec's N), writing their JSON to
``<results>/reeval/<model>.<attack>.json``; a JSON already there is reused, so the check resumes
(within an AutoAttack too: its progress is kept in ``<model>.autoattack.state.json`` until it ends).
It prints one Markdown row per model: the row's and the re-evaluation's accuracies and their
differences; it exits 1 when a clean accuracy differs or an AutoAttack accuracy is more than
``--tolerance`` points away (issue 11's acceptance: exactly, and 0.5 points).

Specs share models: a later study copies an earlier one's cell (same run id, same bytes) rather than
train it again. Where a byte-identical model of a sibling results folder (``<results>/../*/models/``)
was re-evaluated already, its JSON is copied instead of running ``rbp eval`` again (AutoAttack of a
width-32 Fashion-MNIST model takes 40 minutes on 2 cores); its ``checkpoint`` field still names the
file that was evaluated. ``--out`` turns this off along with the reuse of the folder's own JSONs.

Usage: ``python bench/reevaluate.py ablations/fashion_mnist.yaml`` (AutoAttack on 1,000 Fashion-MNIST
images takes minutes per model: bench/RESULTS.md); ``--out DIR`` re-runs into a fresh folder,
``--clean-only`` checks the clean accuracies alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from rbp.ablation.jobs import jobs, load_spec, model_path
from rbp.results import read_results


def digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluated_twin(model: Path, attack: str) -> Path | None:
    """The ``attack`` JSON of a byte-identical model in a sibling results folder, or None."""
    size, own = model.stat().st_size, digest(model)
    for twin in sorted(model.parents[2].glob("*/models/*")):
        found = twin.parents[1] / "reeval" / f"{twin.stem}.{attack}.json"
        if twin.resolve() == model.resolve() or not found.is_file() or twin.stat().st_size != size:
            continue
        if digest(twin) == own:
            return found
    return None


def evaluate(model: Path, attack: str, samples: int | None, out: Path, reuse_twins: bool) -> dict:
    """``rbp eval`` of ``model`` (or the JSON it, or a byte-identical twin, had before)."""
    if not out.is_file():
        twin = evaluated_twin(model, attack) if reuse_twins else None
        if twin is not None:
            out.write_text(twin.read_text())
        else:
            cmd = [sys.executable, "-m", "rbp", "eval", str(model), "--attack", attack, "--out", str(out)]
            cmd += ["--samples", str(samples)] if samples else []
            state = out.with_suffix(".state.json")  # AutoAttack's progress: a stopped check resumes mid-attack
            subprocess.run(cmd + (["--state", str(state)] if attack == "autoattack" else []), check=True)
            state.unlink(missing_ok=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.5, help="AutoAttack points allowed (default 0.5)")
    parser.add_argument(
        "--out", type=Path, help="where the JSONs go (default: <results>/reeval; a fresh folder re-runs all)"
    )
    parser.add_argument("--clean-only", action="store_true", help="skip AutoAttack (the clean check alone)")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    rows = read_results(spec.folder / "rows")
    out_dir = args.out or spec.folder / "reeval"
    reuse = args.out is None
    out_dir.mkdir(parents=True, exist_ok=True)
    print("| model | clean: row / rbp eval | AutoAttack: row / rbp eval (points) |\n|---|---|---|")
    failed, seen = False, set()
    for job in jobs(spec):
        model = model_path(spec.folder, job)
        if job.seed != spec.seeds[0] or not model.is_file() or model in seen:
            continue
        seen.add(model)
        row = rows[rows["run_id"] == job.run_id].iloc[0]
        clean = evaluate(model, "clean", None, out_dir / f"{model.stem}.clean.json", reuse)["clean_acc"]
        text = f"| {model.name} | {100 * row['test_clean_acc']:.2f} / {100 * clean:.2f}"
        failed |= clean != row["test_clean_acc"]
        if job.config.eval.autoattack and not args.clean_only:
            samples = job.config.eval.autoattack_samples
            auto_json = out_dir / f"{model.stem}.autoattack.json"
            auto = evaluate(model, "autoattack", samples, auto_json, reuse)["autoattack_acc"]
            diff = 100 * (auto - row["test_autoattack_acc"])
            failed |= abs(diff) > args.tolerance
            text += f" | {100 * row['test_autoattack_acc']:.1f} / {100 * auto:.1f} ({diff:+.1f})"
        print(text + " |", flush=True)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())

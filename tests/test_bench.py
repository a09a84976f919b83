"""The benchmark scripts run end to end on the CPU with their tiny configs."""

import importlib.util
import shutil
from pathlib import Path

import pytest


def _load(name, monkeypatch):
    bench = Path(__file__).parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))  # as `python bench/NAME.py` has it, for bench/timing.py
    path = bench / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_tiny(capsys, monkeypatch):
    bench = _load("train_step", monkeypatch)
    argv = ["--tiny", "--repeats", "1", "--warmup", "1", "--device", "cpu", "--execs", "eager", "graph"]
    rows = bench.main(argv)
    # Every mode x amp ran eagerly; the CUDA-graph variants are skipped without a GPU.
    assert {(r["mode"], r["amp"], r["exec"]) for r in rows} == {
        (m, a, "eager") for m in ("dense", "subnet") for a in ("off", "bf16")
    }
    assert all(r["images_per_s"] > 0 and r["peak_fraction"] > 0 for r in rows)
    out = capsys.readouterr().out.splitlines()
    assert "images/s" in out[-5] and sum("GFLOP/image" in line for line in out) == 2


def test_mask_threshold_benchmark_tiny(capsys, monkeypatch):
    results = _load("mask_threshold", monkeypatch).main(
        ["--tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    )
    assert set(results) == {"kthvalue", "sort", "topk", "one-sort"} and all(v > 0 for v in results.values())
    assert "one-sort" in capsys.readouterr().out.splitlines()[-1]


def test_search_overhead_breakdown_adds_up(tmp_path, monkeypatch):
    """The phases of the search benchmark add up to the slot-seconds the trials did not train."""
    import json

    bench = _load("search_overhead", monkeypatch)
    launched, ended = 1000.0, 1100.0
    # Two slots: trials (start, end, train seconds) 1010-1040, 1012-1070, 1045-1090 (gap 5 s after the first).
    trials = [(1010, 1040, 25.0), (1012, 1070, 50.0), (1045, 1090, 40.0)]
    for i, (start, end, _) in enumerate(trials):
        folder = tmp_path / "search-1" / f"trial_{i}"
        folder.mkdir(parents=True)
        rows = [
            {"timestamp": end - 10, "time_total_s": end - 10 - start},
            {"timestamp": end, "time_total_s": end - start},
        ]
        (folder / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train = sum(t for _, _, t in trials)
    parts = bench.breakdown(tmp_path, launched, ended, 2, train)
    assert parts["start_s"] == 10.0
    assert parts["in_trial_s"] == (30 - 25) + (58 - 50) + (45 - 40)
    assert parts["tail_s"] == (1100 - 1070) + (1100 - 1090)
    slots = 2 * parts["start_s"] + parts["in_trial_s"] + parts["between_s"] + parts["tail_s"]
    assert slots == pytest.approx((ended - launched) * 2 - train)
    # The one gap between trials on a slot (1040 -> 1045) plus the second slot's later start (2 s).
    assert parts["between_s"] == pytest.approx(5 + 2)


@pytest.mark.slow  # a tiny study, then rbp eval twice in subprocesses (AutoAttack on 2 images): about a minute
def test_reevaluate_reproduces_a_tiny_study_and_flags_a_changed_row(tmp_path, monkeypatch, capsys):
    import pandas as pd
    import yaml

    from rbp.ablation.jobs import load_spec
    from rbp.ablation.runner import run_ablation

    spec_path = tmp_path / "spec.yaml"
    base = {"train.epochs": 1, "model.width": 8, "attack.steps": 2, "eval.val_pgd_steps": 2, "run.progress": False,
            "eval.autoattack": True, "eval.autoattack_samples": 2}  # fmt: skip
    spec_path.write_text(yaml.safe_dump({"name": "t", "results": str(tmp_path / "out"), "base": base, "seeds": [0],
                                         "studies": {"s": {"cells": [{"name": "ours"}]}}}))  # fmt: skip
    assert run_ablation(load_spec(spec_path)) == 1
    bench = _load("reevaluate", monkeypatch)
    assert bench.main([str(spec_path)]) == 0
    assert "| s.ours.rbpz |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "reeval").iterdir()) == [
        "s.ours.autoattack.json",
        "s.ours.clean.json",
    ]
    # A row whose AutoAttack accuracy is 1 point off the model's fails the check (JSONs reused).
    [row_file] = (tmp_path / "out" / "rows").glob("*.parquet")
    rows = pd.read_parquet(row_file)
    rows["test_autoattack_acc"] += 0.01
    rows.to_parquet(row_file)
    assert bench.main([str(spec_path)]) == 1
    # A spec holding a copy of that model (another results folder beside it) reuses its JSONs
    # instead of running rbp eval again, and its own row still decides the verdict.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "out" / "rows", copy / "rows")
    shutil.copytree(tmp_path / "out" / "models", copy / "models")
    spec_path.write_text(spec_path.read_text().replace(str(tmp_path / "out"), str(copy)))
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("rbp eval ran for a copied model"))
    assert bench.main([str(spec_path)]) == 1  # the copied row carries the +1 point
    for name in ("s.ours.autoattack.json", "s.ours.clean.json"):
        assert (copy / "reeval" / name).read_text() == (tmp_path / "out" / "reeval" / name).read_text()
    # --out re-runs everything: no reuse there.
    with pytest.raises(pytest.fail.Exception, match="rbp eval ran"):
        bench.main([str(spec_path), "--out", str(tmp_path / "fresh")])

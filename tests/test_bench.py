"""The benchmark scripts run end to end on the CPU with their tiny configs."""

import importlib.util
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

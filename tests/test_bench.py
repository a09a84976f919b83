"""The benchmark scripts run end to end on the CPU with their tiny configs."""

import importlib.util
from pathlib import Path


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

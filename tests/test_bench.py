"""The GPU benchmark script runs end to end on the CPU with its tiny config."""

import importlib.util
from pathlib import Path


def test_train_step_benchmark_tiny(capsys):
    path = Path(__file__).parents[1] / "bench" / "train_step.py"
    spec = importlib.util.spec_from_file_location("train_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--tiny", "--repeats", "1", "--warmup", "1", "--device", "cpu"])
    assert {(r["mode"], r["amp"]) for r in rows} == {(m, a) for m in ("dense", "subnet") for a in ("off", "bf16")}
    assert all(r["images_per_s"] > 0 for r in rows)
    assert "images/s" in capsys.readouterr().out.splitlines()[-5]

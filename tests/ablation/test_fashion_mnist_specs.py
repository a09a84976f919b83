"""The shipped Fashion-MNIST study and search specs: they validate, need no data files, and hold the recipe."""

from __future__ import annotations

from pathlib import Path

from rbp.ablation.jobs import jobs, load_spec
from rbp.tuning.spec import load_spec as load_search_spec

REPO = Path(__file__).resolve().parents[2]


def test_study_spec_holds_every_cell_of_the_issue_once_per_seed() -> None:
    spec = load_spec(REPO / "ablations" / "fashion_mnist.yaml")  # no data.root: listing cells reads no files
    assert spec.seeds == [0] and str(spec.folder) == "results/fashion_mnist"
    listed = jobs(spec)
    assert {j.config.data.name for j in listed} == {"fashion_mnist"}
    for job in listed:  # every cell: the default recipe's threat model, AutoAttack on the first 1,000 images
        cfg = job.config
        assert (cfg.attack.eps, cfg.attack.step_size, cfg.eval.test_pgd_steps) == (0.1, 0.025, 20)
        assert cfg.eval.autoattack and cfg.eval.autoattack_samples == 1000
    by_cell = {(j.cell, j.seed): j.config for j in listed}
    ours = by_cell[("subnet (ours)", 0)]
    assert (ours.model.mode, ours.model.width, ours.sparsity.density, ours.sparsity.p) == ("subnet", 16, 0.1, 0.1)
    assert ours.init.scheme == "binary" and ours.model.last_bn == "nonaffine"
    # A cell in two studies is one run: 8 distinct cells at seed 0, the 90% subnet and FP also at seed 1.
    assert by_cell[("90% pruned", 0)].run_id() == by_cell[("subnet (ours)", 0)].run_id()
    assert by_cell[("adaptive p=0.1", 0)].run_id() == by_cell[("99% pruned", 0)].run_id()
    assert {seed for cell, seed in by_cell if cell in ("subnet (ours)", "FP PGD-AT")} == {0, 1}
    assert len({cfg.run_id() for cfg in by_cell.values()}) == 8 + 2
    assert by_cell[("uniform", 0)].sparsity.density == 0.01
    assert by_cell[("small dense PGD-AT", 0)].model.width < ours.model.width  # narrowed to the kept count


def test_search_spec_fixes_the_threat_model_and_searches_the_issue_knobs() -> None:
    loaded = load_search_spec(REPO / "tune" / "fashion_mnist.yaml")
    assert loaded.constants["data.name"] == "fashion_mnist" and loaded.constants["attack.eps"] == 0.1
    assert {"init.scheme", "init.alpha", "sparsity.density", "sparsity.p", "init.score_scale", "attack.steps"} <= set(
        loaded.spec.space
    )

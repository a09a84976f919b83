"""Ablation specs: cell hashing and reuse, every baseline runs, tables and figures, bad specs."""

import json
import textwrap

import pytest
import yaml

from rbp.ablation.figures import write_figures
from rbp.ablation.jobs import jobs, load_spec
from rbp.ablation.runner import missing_jobs, run_ablation
from rbp.ablation.tables import latex, markdown, write_tables
from rbp.base.errors import RbpError
from rbp.cli import main
from rbp.results import read_results, result_row, write_row

TINY = {
    "train.epochs": 1,
    "model.width": 8,
    "attack.steps": 2,
    "eval.val_pgd_steps": 2,
    "eval.test_pgd_steps": 20,
    "run.progress": False,
}


def _spec(tmp_path, studies, figures=(), seeds=(0,)):
    path = tmp_path / "spec.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "results": str(tmp_path / "out"),
                "base": TINY,
                "seeds": list(seeds),
                "studies": studies,
                "figures": list(figures),
            }
        )
    )
    return path


BASELINES = {
    "baselines": {
        "columns": ["test_clean_acc", "test_pgd20_acc", "kept_params", "size_kb"],
        "cells": [
            {"name": "ours"},
            {"name": "fp", "set": {"model.mode": "dense"}},
            {"name": "bnn", "set": {"model.mode": "binary"}},
            {"name": "small", "set": {"model.mode": "dense"}, "baseline": "small_dense"},
            {"name": "hydra", "set": {"init.scheme": "pretrained"}, "pretrained_from": "fp"},
            {
                "name": "lcnn",
                "set": {
                    "model.mode": "dense",
                    "model.activation": "centered_softplus",
                    "model.norm": "lipschitz",
                    "model.last_bn": "lipschitz",
                    "model.spectral_norm": True,
                    "train.method": "clean",
                    "train.curvature_penalty": 0.01,
                },
            },
        ],
    },
    "density": {"grid": {"sparsity.density": [0.1, 0.5]}, "cells": [{"name": "fp", "set": {"model.mode": "dense"}}]},
}
FIGURES = [
    {"kind": "density_sweep", "study": "density", "baselines": ["fp"], "name": "sweep"},
    {"kind": "layer_densities", "name": "alloc"},
    {"kind": "masks", "cell": "ours", "name": "masks"},
]


@pytest.mark.slow
def test_every_baseline_runs_results_are_reused_and_rendered(tmp_path, capsys):
    spec = load_spec(_spec(tmp_path, BASELINES, FIGURES))
    # "fp" is in two studies and density=0.1 is "ours": 9 cells, 7 distinct run ids, each run once.
    assert len(missing_jobs(spec)) == 7
    assert run_ablation(spec) == 7
    rows = read_results(spec.folder / "rows")
    assert len(rows) == 7 and set(rows["status"]) == {"finished"}
    assert run_ablation(spec) == 0  # a second run computes nothing
    # Seed 0 of every distinct run keeps its model: .rbpz for subnets, the checkpoint otherwise.
    models = {path.name for path in (spec.folder / "models").iterdir()}
    expected = {"ours.rbpz", "fp.pt", "bnn.pt", "small.pt", "hydra.pt", "lcnn.pt"}
    assert models == {f"baselines.{name}" for name in expected} | {"density.density_0_5.rbpz"}
    small = next(j for j in jobs(spec) if j.cell == "small")
    ours = rows[rows["cell"] == "ours"].iloc[0]
    small_row = rows[rows["run_id"] == small.config.run_id()].iloc[0]
    assert abs(small_row["kept_params"] - ours["kept_params"]) / ours["kept_params"] < 0.5
    evaluated = tmp_path / "eval.json"
    for model, row in (("baselines.ours.rbpz", ours), ("baselines.fp.pt", rows[rows["cell"] == "fp"].iloc[0])):
        assert main(["eval", str(spec.folder / "models" / model), "--attack", "clean", "--out", str(evaluated)]) == 0
        assert json.loads(evaluated.read_text())["clean_acc"] == row["test_clean_acc"]  # the table's number, exactly
    assert main(["tables", str(tmp_path / "spec.yaml")]) == 0
    out = capsys.readouterr().out
    assert "| hydra |" in out and "| lcnn |" in out
    for name in ("sweep", "alloc", "masks"):
        for suffix in (".png", ".pdf"):
            assert (spec.folder / "figures" / f"{name}{suffix}").stat().st_size > 1000


def _fixture_rows(spec, values):
    """Hand-made rows: values[(cell, seed)] = (clean, pgd); absent keys have no result."""
    folder = spec.folder / "rows"
    for job in jobs(spec):
        if (job.cell, job.seed) in values:
            clean, pgd = values[(job.cell, job.seed)]
            summary = {"test_clean_acc": clean, "test_pgd20_acc": pgd, "kept_params": 100}
            write_row(folder, result_row(job.config, summary, extra={"cell": job.cell}))
    return read_results(folder)


def test_tables_bold_mean_std_and_missing_cells(tmp_path):
    studies = {
        "s": {
            "caption": "cap_tion",
            "cells": [
                {"name": "a"},
                {"name": "b", "set": {"sparsity.p": 0.5}},
                {"name": "c", "set": {"sparsity.p": 1.0}},
            ],
        }
    }
    spec = load_spec(_spec(tmp_path, studies, seeds=(0, 1)))
    results = _fixture_rows(spec, {("a", 0): (0.9, 0.5), ("a", 1): (0.8, 0.7), ("b", 0): (0.95, 0.4)})
    text = markdown(spec, "s", results)
    assert "| a | 85.0 ± 7.1 | **60.0 ± 14.1** | **100** |" in text
    assert "| b | **95.0** | 40.0 | **100** |" in text  # one seed: no ±
    assert "| c | — | — | — |" in text and "c: 2 of 2 seeds have no result yet" in text
    assert "b: 1 of 2 seeds have no result yet" in text
    tex = latex(spec, "s", results)
    assert r"\toprule" in tex and r"\textbf{95.0}" in tex and r"$\pm$" in tex and r"cap\_tion" in tex and "--" in tex
    assert "mean ± std over 2 seeds" in text
    one_seed = load_spec(_spec(tmp_path, studies, seeds=(0,)))
    assert "one seed, no std" in markdown(one_seed, "s", results) and "over 1 seeds" not in markdown(
        one_seed, "s", results
    )
    paths = write_tables(spec, results)
    assert all(p.stat().st_size > 0 for p in paths)


def test_figures_with_missing_runs_are_skipped_not_fatal(tmp_path, caplog, monkeypatch):
    spec = load_spec(_spec(tmp_path, BASELINES, FIGURES))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")  # matplotlib's clock for PDF dates
    written = write_figures(spec, read_results(spec.folder / "rows"))
    names = {p.stem for p in written}
    assert "alloc" in names and "sweep" in names and "masks" not in names
    assert "masks" in caplog.text
    # Re-rendering unchanged results rewrites identical files (no dates in the PDFs): clean diffs.
    before = {p: p.read_bytes() for p in written}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "2000000000")
    write_figures(spec, read_results(spec.folder / "rows"))
    assert all(p.read_bytes() == content for p, content in before.items())


def test_density_sweep_draws_each_baseline_apart(tmp_path):
    """Two reference lines (FP and BNN) differ in colour and dash, and sit at their cells' means."""
    from rbp.ablation.figures import density_sweep

    studies = {
        "base": {
            "cells": [{"name": "fp", "set": {"model.mode": "dense"}}, {"name": "bnn", "set": {"model.mode": "binary"}}]
        },
        "density": {"grid": {"sparsity.density": [0.1, 0.5]}},
    }
    figure = {"kind": "density_sweep", "study": "density", "baselines": ["fp", "bnn"], "name": "sweep"}
    spec = load_spec(_spec(tmp_path, studies, [figure]))
    results = _fixture_rows(spec, {(job.cell, 0): (0.9, 0.1 * (i + 1)) for i, job in enumerate(jobs(spec))})
    fig = density_sweep(spec, spec.figures[0], results)
    lines = [line for line in fig.axes[0].get_lines() if line.get_label() in ("fp", "bnn")]
    assert sorted(line.get_label() for line in lines) == ["bnn", "fp"]
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 2
    assert {line.get_label(): round(line.get_ydata()[0], 6) for line in lines} == {"fp": 10.0, "bnn": 20.0}


def test_sweep_draws_a_line_per_label_over_its_cells_config_values(tmp_path, caplog):
    """Metric against a config key: each line holds the cells matching its values, in x order."""
    from rbp.ablation.figures import sweep

    studies = {"length": {"grid": {"model.mode": ["subnet", "dense"], "train.epochs": [3, 1, 2]}}}
    lines = {"subnet": {"model.mode": "subnet"}, "FP": {"model.mode": "dense", "train.epochs": [1, 3]},
             "named": {"cell": ["mode=dense, epochs=2"]}}  # fmt: skip
    figure = {"kind": "sweep", "study": "length", "x": "train.epochs", "lines": lines, "metric": "test_pgd20_acc"}
    bad = {**figure, "x": "train.epochz", "name": "bad"}
    spec = load_spec(_spec(tmp_path, studies, [figure, bad]))
    pgd = {(job.cell, 0): (0.9, job.config.train.epochs / 10 + (job.config.model.mode == "dense") / 2)
           for job in jobs(spec)}  # fmt: skip
    results = _fixture_rows(spec, pgd)
    fig = sweep(spec, spec.figures[0], results)
    axes = fig.axes[0]
    drawn = {bars.get_label(): bars.lines[0] for bars in axes.containers}
    assert list(drawn["subnet"].get_xdata()) == [1, 2, 3]
    assert [round(y, 6) for y in drawn["subnet"].get_ydata()] == [10.0, 20.0, 30.0]
    assert list(drawn["FP"].get_xdata()) == [1, 3] and [round(y, 6) for y in drawn["FP"].get_ydata()] == [60.0, 80.0]
    assert list(drawn["named"].get_xdata()) == [2] and [round(y, 6) for y in drawn["named"].get_ydata()] == [70.0]
    fig.draw_without_rendering()  # lays the legend out, so its place can be read
    assert axes.get_legend().get_window_extent().x0 > axes.get_window_extent().x1  # beside the points, not over them
    written = write_figures(spec, results)
    assert [p.name for p in written] == ["0_sweep.png", "0_sweep.pdf"]
    assert "figure bad skipped: figure sweep: 'train.epochz' is not a config key" in caplog.text


def test_sweep_over_several_studies_joins_their_like_named_cells(tmp_path, caplog):
    """A sweep given a list of studies draws a line through cells of the same name in each (a recipe at
    every width), and the key study picks a cell from one study; density_sweep takes one study only."""
    from rbp.ablation.figures import sweep

    cells = [{"name": "subnet"}, {"name": "fp", "set": {"model.mode": "dense"}}]
    studies = {f"w{w}": {"set": {"model.width": w}, "cells": cells} for w in (4, 8, 16)}
    lines = {"subnet": {"cell": "subnet"}, "fp at 8": {"study": "w8", "model.mode": "dense"}}
    figure = {"kind": "sweep", "study": ["w16", "w4", "w8"], "x": "model.width", "lines": lines}
    one_study_only = {"kind": "density_sweep", "study": ["w4", "w8"], "name": "dens"}
    spec = load_spec(_spec(tmp_path, studies, [figure, one_study_only]))
    for job in jobs(spec):
        pgd = job.config.model.width / 100 + (job.config.model.mode == "dense") / 2
        summary = {"test_clean_acc": 0.9, "test_pgd20_acc": pgd, "kept_params": 100}
        write_row(spec.folder / "rows", result_row(job.config, summary, extra={"cell": job.cell}))
    results = read_results(spec.folder / "rows")
    drawn = {bars.get_label(): bars.lines[0] for bars in sweep(spec, spec.figures[0], results).axes[0].containers}
    assert list(drawn["subnet"].get_xdata()) == [4, 8, 16]
    assert [round(y, 6) for y in drawn["subnet"].get_ydata()] == [4.0, 8.0, 16.0]
    assert list(drawn["fp at 8"].get_xdata()) == [8] and round(drawn["fp at 8"].get_ydata()[0], 6) == 58.0
    assert [p.name for p in write_figures(spec, results)] == ["0_sweep.png", "0_sweep.pdf"]
    assert "figure dens skipped: figure density_sweep: study ['w4', 'w8'] is not one study" in caplog.text


@pytest.mark.parametrize(
    "studies,needle",
    [
        ({"s": {"cells": [{"name": "a", "set": {"model.archh": "mlp"}}]}}, "model.archh"),
        ({"s": {"cells": [{"name": "a"}], "columns": ["test_magic"]}}, "test_magic"),
        ({"s": {"cells": [], "grid": {}}}, "no cells"),
        ({"s": {"cells": [{"name": "a", "colour": 1}]}}, "colour"),
        ({"s": {"cells": [{"name": "a", "set": {"sparsity.density": 1.2}}]}}, "sparsity.density"),
    ],
)
def test_bad_specs_are_one_line_errors(tmp_path, studies, needle, capsys):
    path = _spec(tmp_path, studies)
    with pytest.raises(RbpError, match=needle.replace(".", r"\.")):
        load_spec(path)
    assert main(["ablate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_missing_spec_file_and_bad_yaml(tmp_path, capsys):
    assert main(["tables", str(tmp_path / "none.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("name: [x\n"))
    assert main(["tables", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_shipped_specs_validate():
    spec = load_spec("ablations/digits_paper.yaml")
    assert set(spec.studies) == {"baselines", "allocation", "init_last_bn", "density", "training"}
    assert spec.seeds == [0, 1, 2]


@pytest.mark.slow  # builds ResNet-18/34 a few times to size the small dense baseline
def test_cifar_specs_carry_the_reference_recipe_and_need_no_data_to_load():
    from rbp.ablation.ray_backend import task_resources

    digits = load_spec("ablations/digits_paper.yaml")
    for name, arch, eps, step in [
        ("cifar10_resnet18", "resnet18", 8 / 255, 2 / 255),
        ("cifar10_resnet34", "resnet34", 8 / 255, 2 / 255),
        ("cifar100_resnet18", "resnet18", 4 / 255, 1 / 255),
        ("cifar100_resnet34", "resnet34", 4 / 255, 1 / 255),
    ]:
        spec = load_spec(f"ablations/{name}.yaml")  # no data.root: listing cells and tables need no files
        assert spec.name == name and str(spec.folder) == f"results/{name}"
        assert set(spec.studies) == set(digits.studies) and spec.seeds == [0, 1, 2]
        ours = next(j.config for j in jobs(spec) if j.cell == "subnet (ours)")
        assert (ours.model.arch, ours.data.batch_size, ours.train.epochs) == (arch, 256, 400)
        recipe = (ours.train.optimizer, ours.train.lr, ours.train.schedule, ours.attack.steps)
        assert recipe == ("sgd", 0.1, "cosine", 10)
        assert (ours.attack.eps, ours.attack.step_size) == pytest.approx((eps, step))
        assert (ours.sparsity.density, ours.sparsity.allocation, ours.sparsity.p) == (0.01, "adaptive", 0.1)
        assert task_resources(jobs(spec)[0]) == {"num_cpus": 1, "num_gpus": 1}

    # Where the data lives is not part of a cell's identity: results move between machines.
    def run_ids(*overrides):
        return [j.config.run_id() for j in jobs(load_spec("ablations/cifar10_resnet18.yaml", list(overrides)))]

    assert run_ids() == run_ids("data.root=/data/cifar10") == run_ids("data.root=/mnt/elsewhere")


def test_extends_overrides_the_parent_key_by_key(tmp_path, capsys):
    parent = _spec(tmp_path, {"s": {"cells": [{"name": "a"}]}}, seeds=(0, 1))
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {parent.name}\nname: c\nresults: {tmp_path / 'c'}\nbase: {{model.arch: mlp}}\n")
    spec = load_spec(child)
    assert spec.name == "c" and spec.seeds == [0, 1] and set(spec.studies) == {"s"}
    assert spec.base == {**TINY, "model.arch": "mlp"}
    assert load_spec(child, ["train.epochs=3"]).base["train.epochs"] == 3  # --set goes on top
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    missing = tmp_path / "orphan.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    for path, needle in [(loop, "cycle"), (missing, "no file")]:
        assert main(["tables", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "extends" in err and "\n" not in err


def test_ablate_set_adds_to_every_cell(tmp_path):
    path = _spec(tmp_path, {"s": {"cells": [{"name": "a"}, {"name": "b", "set": {"train.epochs": 2}}]}})
    epochs = {j.cell: j.config.train.epochs for j in jobs(load_spec(path, ["train.epochs=5"]))}
    assert epochs == {"a": 5, "b": 2}  # a cell's own setting still wins


def test_pareto_figure_from_a_search_front_and_its_trials(tmp_path, caplog):
    import pandas as pd

    search = tmp_path / "tune" / "s"
    trials = pd.DataFrame({"kept_params": [100, 300, 300, 900], "val_pgd_acc": [0.5, 0.7, 0.6, 0.8]})
    for index, row in trials.iterrows():
        (search / "rows").mkdir(parents=True, exist_ok=True)
        row.to_frame().T.to_parquet(search / "rows" / f"t{index}.parquet")
    trials.drop(index=2).to_csv(search / "pareto.csv", index=False)
    figures = [
        {"kind": "pareto", "source": str(search / "pareto.csv"), "metric": "val_pgd_acc", "name": "front"},
        {"kind": "pareto", "source": str(tmp_path / "none.csv"), "name": "absent"},
    ]
    spec = load_spec(_spec(tmp_path, {"s": {"cells": [{"name": "a"}]}}, figures))
    written = write_figures(spec, read_results(spec.folder / "rows"))
    assert sorted(p.name for p in written) == ["front.pdf", "front.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert "absent" in caplog.text and "run the multi-objective search first" in caplog.text


def test_a_cell_can_have_its_own_seeds(tmp_path):
    studies = {"s": {"cells": [{"name": "key", "seeds": [0, 1, 2]}, {"name": "other", "set": {"sparsity.p": 0.5}}]}}
    spec = load_spec(_spec(tmp_path, studies))
    assert sorted((j.cell, j.seed) for j in jobs(spec)) == [("key", 0), ("key", 1), ("key", 2), ("other", 0)]
    studies["s"]["cells"][0]["seeds"] = [1, 2]  # without the spec's first seed, no model would be kept
    with pytest.raises(RbpError, match="must include the spec's first seed 0"):
        load_spec(_spec(tmp_path, studies))

"""Ablation specs: cell hashing and reuse, every baseline runs, tables and figures, bad specs."""

import textwrap

import pytest
import yaml

from rbp.ablation import jobs, load_spec, missing_jobs, run_ablation
from rbp.cli import main
from rbp.errors import RbpError
from rbp.figures import write_figures
from rbp.results import read_results, result_row, write_row
from rbp.tables import latex, markdown, write_tables

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
    small = next(j for j in jobs(spec) if j.cell == "small")
    ours = rows[rows["cell"] == "ours"].iloc[0]
    small_row = rows[rows["run_id"] == small.config.run_id()].iloc[0]
    assert abs(small_row["kept_params"] - ours["kept_params"]) / ours["kept_params"] < 0.5
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
    paths = write_tables(spec, results)
    assert all(p.stat().st_size > 0 for p in paths)


def test_figures_with_missing_runs_are_skipped_not_fatal(tmp_path, caplog):
    spec = load_spec(_spec(tmp_path, BASELINES, FIGURES))
    written = write_figures(spec, read_results(spec.folder / "rows"))
    names = {p.stem for p in written}
    assert "alloc" in names and "sweep" in names and "masks" not in names
    assert "masks" in caplog.text


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

"""A user's mistakes, on every command: exit code 2, one ``rbp: error:`` line naming the field or
file, no traceback, and nothing already written changed.

One tiny trained run (and its export) is built once; every case runs ``rbp.cli.main`` in-process
from inside that workspace (so a stray relative write would show up) and compares the bytes and
modification times of every file in it before and after. No case trains or starts Ray.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from rbp.cli import main

TINY = [
    *("--set", "model.arch=mlp", "--set", "model.width=8", "--set", "train.epochs=1", "--set", "attack.steps=1"),
    *("--set", "eval.val_pgd_steps=1", "--set", "eval.test_pgd_steps=1", "--quiet"),
]
NOT_UTF8 = "train:\n  epochs: 2  # \xe9poque\n".encode("latin-1")
GOOD_STUDY = {"cells": [{"name": "a", "set": {"train.epochs": 1}}]}


def _spec(ws: Path, name: str, body: dict) -> None:
    (ws / name).write_text(yaml.safe_dump(body))


def _rezip(source: Path, out: Path, edit) -> None:
    """``source`` re-zipped with its header edited (checksums left as they were: a forger's edit)."""
    with zipfile.ZipFile(source) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    header = json.loads(members["header.json"])
    edit(header)
    members["header.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: a finished tiny run, its export, and every broken input the cases name."""
    ws = tmp_path_factory.mktemp("ws")
    assert main(["train", *TINY, "--set", f"run.out_dir={ws / 'runs'}"]) == 0
    (run,) = (ws / "runs").iterdir()
    shutil.copytree(run, ws / "run")  # a stable name for the cases
    assert main(["export", str(ws / "run"), "--out", str(ws / "model.rbpz")]) == 0
    data = (ws / "model.rbpz").read_bytes()
    (ws / "truncated.rbpz").write_bytes(data[: len(data) // 2])
    _rezip(ws / "model.rbpz", ws / "tampered.rbpz", lambda h: h["data_info"].update(mean=[0.9]))
    payload = torch.load(ws / "run" / "best.pt", weights_only=True)
    payload["data_info"]["std"] = [0.0]
    torch.save(payload, ws / "tampered.pt")
    (ws / "empty.pt").write_bytes(b"")
    (ws / "garbage.pt").write_bytes(b"not a checkpoint")
    (ws / "folder").mkdir()
    (ws / "a_file").write_text("a file, not a folder\n")
    (ws / "not_utf8.yaml").write_bytes(NOT_UTF8)
    (ws / "list.yaml").write_text("- 1\n- 2\n")
    (ws / "broken.yaml").write_text("train: {epochs: [1\n")
    # --resume of a run whose last.pt is corrupt
    shutil.copytree(ws / "runs", ws / "corrupt_runs")
    (ws / "corrupt_runs" / run.name / "last.pt").write_bytes(b"torn")
    (ws / "corrupt_runs" / run.name / "summary.json").unlink()  # unfinished: resuming reads last.pt
    # ablation specs
    _spec(ws, "study_unknown_key.yaml", {"name": "s", "studies": {"a": {**GOOD_STUDY, "colour": "red"}}})
    bad_cell = {"cells": [{"name": "a", "set": {"train.epoch": 1}}]}
    _spec(ws, "study_bad_cell.yaml", {"name": "s", "studies": {"a": bad_cell}})
    _spec(ws, "study_bad_figure.yaml", {"name": "s", "studies": {"a": GOOD_STUDY}, "figures": [{"kind": "pie"}]})
    _spec(ws, "study_top_typo.yaml", {"name": "s", "studeis": {"a": GOOD_STUDY}})
    _spec(ws, "study_bad_column.yaml", {"name": "s", "studies": {"a": {**GOOD_STUDY, "columns": ["speed"]}}})
    _spec(ws, "study_results_a_file.yaml", {"name": "s", "results": "a_file", "studies": {"a": GOOD_STUDY}})
    # tune specs
    _spec(ws, "tune_unknown_key.yaml", {"experiment": "e", "trials": 2, "space": {}, "colour": 1})
    lrr = {"train.lrr": {"type": "categorical", "choices": [0.1, 0.2]}}
    _spec(ws, "tune_bad_space_key.yaml", {"experiment": "e", "trials": 2, "space": lrr})
    low_high = {"train.lr": {"type": "float", "low": 0.5, "high": 0.1}}
    _spec(ws, "tune_low_above_high.yaml", {"experiment": "e", "trials": 2, "space": low_high})
    nan_bound = {"train.lr": {"type": "float", "low": float("nan"), "high": 0.1}}
    _spec(ws, "tune_nan_bound.yaml", {"experiment": "e", "trials": 2, "space": nan_bound})
    (ws / "a_file").write_text("not a folder of data files")
    # a corrupt MLflow store
    (ws / "bad_results").mkdir()
    (ws / "bad_results" / "mlflow.db").write_bytes(b"this is not an SQLite database" * 10)
    return ws


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file; a run folder's ``.lock`` (the writer's note, rewritten by each
    writer that takes the lock) is left out."""
    files = (p for p in root.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


R = "runs"  # the tiny run's out_dir, relative to the workspace
TRAIN_TINY = ["train", *TINY]
EXPLICIT = ["train", "--set", "sparsity.allocation=explicit"]
SYNTHETIC = ["train", "--set", "data.name=synthetic"]

CASES: list[tuple[str, list[str], list[str]]] = [
    # --- rbp train: config values -----------------------------------------------------------
    ("bool-epochs", ["train", "--set", "train.epochs=true"], ["train.epochs", "boolean"]),
    ("bool-width", ["train", "--set", "model.width=yes"], ["model.width", "boolean"]),
    ("inf-lr", ["train", "--set", "train.lr=.inf"], ["train.lr", "finite"]),
    ("nan-lr", ["train", "--set", "train.lr=.nan"], ["train.lr", "finite"]),
    ("nan-eps", ["train", "--set", "attack.eps=.nan"], ["attack.eps"]),
    ("negative-eps", ["train", "--set", "attack.eps=-0.1"], ["attack.eps"]),
    ("huge-model", ["train", "--set", "model.arch=mlp", "--set", "model.width=1000000"], ["model.width", "memory"]),
    ("huge-convnet", ["train", "--set", "model.width=1000000"], ["model.width", "memory"]),
    ("typo-key", ["train", "--set", "train.epoch=3"], ["train.epoch", "--print-config"]),
    ("typo-section", ["train", "--set", "trian.epochs=3"], ["trian", "--print-config"]),
    ("wrong-type", ["train", "--set", "train.epochs=ten"], ["train.epochs", "integer"]),
    ("list-for-scalar", ["train", "--set", "train.lr=[0.1, 0.2]"], ["train.lr"]),
    ("dict-for-scalar", ["train", "--set", "sparsity.density={a: 1}"], ["sparsity.density"]),
    ("value-as-section", ["train", "--set", "seed.x=1"], ["seed"]),
    ("section-as-value", ["train", "--set", "train=3"], ["train"]),
    ("set-no-equals", ["train", "--set", "train.epochs"], ["KEY=VALUE"]),
    ("unknown-dataset", ["train", "--set", "data.name=imagenet"], ["data.name"]),
    ("unknown-arch", ["train", "--set", "model.arch=resnet999"], ["model.arch", "choose one of"]),
    ("unknown-mode", ["train", "--set", "model.mode=sparse"], ["model.mode"]),
    ("unknown-method", ["train", "--set", "train.method=adversarial"], ["train.method"]),
    ("unknown-norm", ["train", "--set", "attack.norm=l3"], ["attack.norm"]),
    ("density-0", ["train", "--set", "sparsity.density=0"], ["sparsity.density"]),
    ("density-1.2", ["train", "--set", "sparsity.density=1.2"], ["sparsity.density"]),
    ("p-2", ["train", "--set", "sparsity.p=2"], ["sparsity.p"]),
    ("steps-0", ["train", "--set", "attack.steps=0"], ["attack.steps"]),
    ("test-steps-0", ["train", "--set", "eval.test_pgd_steps=0"], ["eval.test_pgd_steps"]),
    ("epochs-0", ["train", "--set", "train.epochs=0"], ["train.epochs"]),
    ("batch-0", ["train", "--set", "data.batch_size=0"], ["data.batch_size"]),
    ("momentum-1", ["train", "--set", "train.momentum=1"], ["train.momentum"]),
    ("milestones-order", ["train", "--set", "train.milestones=[0.9, 0.5]"], ["train.milestones"]),
    ("width-negative", ["train", "--set", "model.width=-4"], ["model.width"]),
    ("seed-text", ["train", "--set", "seed=abc"], ["seed"]),
    ("unknown-layer", [*EXPLICIT, "--set", "sparsity.layer_densities={nope: 0.5}"], ["layer_densities", "nope"]),
    ("layer-density-0", ["train", "--set", "sparsity.layer_densities={a: 0}"], ["sparsity.layer_densities"]),
    ("explicit-no-dict", ["train", "--set", "sparsity.allocation=explicit"], ["layer_densities"]),
    ("synthetic-0", [*SYNTHETIC, "--set", "data.synthetic_shape=[0, 32, 32]"], ["data.synthetic_shape"]),
    ("synthetic-negative", [*SYNTHETIC, "--set", "data.synthetic_shape=[3, -8, 32]"], ["data.synthetic_shape"]),
    ("synthetic-2d", [*SYNTHETIC, "--set", "data.synthetic_shape=[32, 32]"], ["data.synthetic_shape"]),
    ("pretrained-missing", ["train", "--set", "init.scheme=pretrained"], ["init.pretrained"]),
    ("dense-binary-init", ["train", "--set", "model.mode=dense", "--set", "init.scheme=binary"], ["init.scheme"]),
    # --- rbp train: files and folders --------------------------------------------------------
    ("config-not-utf8", ["train", "--config", "not_utf8.yaml"], ["not_utf8.yaml", "UTF-8"]),
    ("config-missing", ["train", "--config", "nowhere.yaml"], ["nowhere.yaml"]),
    ("config-folder", ["train", "--config", "folder"], ["folder"]),
    ("config-list", ["train", "--config", "list.yaml"], ["list.yaml", "mapping"]),
    ("config-broken", ["train", "--config", "broken.yaml"], ["broken.yaml", "YAML"]),
    ("out-dir-file", [*TRAIN_TINY, "--set", "run.out_dir=a_file"], ["run.out_dir", "a_file", "is a file"]),
    ("out-dir-under-file", [*TRAIN_TINY, "--set", "run.out_dir=a_file/runs"], ["run.out_dir", "is a file"]),
    ("existing-run", [*TRAIN_TINY, "--set", f"run.out_dir={R}"], ["--resume", "--overwrite"]),
    (
        "resume-and-overwrite",
        [*TRAIN_TINY, "--set", f"run.out_dir={R}", "--resume", "--overwrite"],
        ["--resume", "--overwrite"],
    ),  # fmt: skip
    ("resume-corrupt-last", [*TRAIN_TINY, "--set", "run.out_dir=corrupt_runs", "--resume"], ["last.pt", "--overwrite"]),
    # --- rbp eval ------------------------------------------------------------------------------
    ("eval-out-folder", ["eval", "run/best.pt", "--attack", "clean", "--out", "folder"], ["--out", "folder"]),
    (
        "eval-out-no-parent",
        ["eval", "run/best.pt", "--attack", "clean", "--out", "nowhere/r.json"],
        ["--out", "nowhere"],
    ),  # fmt: skip
    ("eval-out-checked-first", ["eval", "none.pt", "--out", "folder"], ["--out", "folder"]),
    ("eval-eps-nan", ["eval", "run/best.pt", "--eps", "nan"], ["--eps"]),
    ("eval-eps-inf", ["eval", "run/best.pt", "--eps", "inf"], ["--eps"]),
    ("eval-eps-negative", ["eval", "run/best.pt", "--eps", "-0.1"], ["--eps"]),
    ("eval-eps-text", ["eval", "run/best.pt", "--eps", "big"], ["--eps"]),
    ("eval-step-size-0", ["eval", "run/best.pt", "--step-size", "0"], ["--step-size"]),
    ("eval-step-size-nan", ["eval", "run/best.pt", "--step-size", "nan"], ["--step-size"]),
    ("eval-steps-0", ["eval", "run/best.pt", "--steps", "0"], ["--steps"]),
    ("eval-samples-0", ["eval", "run/best.pt", "--samples", "0"], ["--samples"]),
    ("eval-restarts-0", ["eval", "run/best.pt", "--restarts", "0"], ["--restarts"]),
    ("eval-batch-0", ["eval", "run/best.pt", "--batch-size", "0"], ["--batch-size"]),
    ("eval-split-foo", ["eval", "run/best.pt", "--split", "foo"], ["--split", "foo"]),
    ("eval-attack-foo", ["eval", "run/best.pt", "--attack", "fgsm"], ["--attack"]),
    ("eval-steps-text", ["eval", "run/best.pt", "--steps", "many"], ["--steps"]),
    ("eval-missing", ["eval", "none.pt"], ["none.pt", "no such file"]),
    ("eval-folder", ["eval", "run"], ["run", "best.pt"]),
    ("eval-empty", ["eval", "empty.pt"], ["empty.pt"]),
    ("eval-garbage", ["eval", "garbage.pt"], ["garbage.pt"]),
    ("eval-truncated-rbpz", ["eval", "truncated.rbpz"], ["truncated.rbpz"]),
    ("eval-tampered-rbpz", ["eval", "tampered.rbpz"], ["tampered.rbpz", "tampered"]),
    ("eval-tampered-pt", ["eval", "tampered.pt"], ["tampered.pt", "tampered"]),
    ("eval-no-checkpoint", ["eval"], ["checkpoint"]),
    # --- rbp export ----------------------------------------------------------------------------
    ("export-missing", ["export", "nowhere"], ["nowhere"]),
    ("export-empty-folder", ["export", "folder"], ["folder", "best.pt"]),
    ("export-garbage", ["export", "garbage.pt"], ["garbage.pt"]),
    ("export-tampered", ["export", "tampered.pt"], ["tampered.pt", "tampered"]),
    ("export-out-folder", ["export", "run", "--out", "folder"], ["folder"]),
    ("export-out-no-parent", ["export", "run", "--out", "nowhere/m.rbpz"], ["nowhere"]),
    ("export-an-export", ["export", "model.rbpz"], ["model.rbpz"]),
    # --- rbp info ------------------------------------------------------------------------------
    ("info-pt", ["info", "run/best.pt"], ["best.pt", "rbp export"]),
    ("info-missing", ["info", "none.rbpz"], ["none.rbpz"]),
    ("info-folder", ["info", "folder"], ["folder"]),
    ("info-empty", ["info", "empty.pt"], ["empty.pt"]),
    ("info-truncated", ["info", "truncated.rbpz"], ["truncated.rbpz"]),
    ("info-tampered", ["info", "tampered.rbpz"], ["tampered.rbpz", "tampered"]),
    # --- rbp ablate / tables -------------------------------------------------------------------
    ("ablate-missing", ["ablate", "nowhere.yaml"], ["nowhere.yaml"]),
    ("ablate-not-utf8", ["ablate", "not_utf8.yaml"], ["not_utf8.yaml", "UTF-8"]),
    ("ablate-folder", ["ablate", "folder"], ["folder"]),
    ("ablate-unknown-study-key", ["ablate", "study_unknown_key.yaml"], ["colour"]),
    ("ablate-bad-cell-key", ["ablate", "study_bad_cell.yaml"], ["train.epoch"]),
    ("ablate-bad-figure", ["ablate", "study_bad_figure.yaml"], ["kind"]),
    ("ablate-top-typo", ["ablate", "study_top_typo.yaml"], ["studeis"]),
    ("ablate-bad-column", ["ablate", "study_bad_column.yaml"], ["speed", "choose from"]),
    ("ablate-results-a-file", ["ablate", "study_results_a_file.yaml"], ["results: a_file is a file"]),
    ("ablate-bad-set", ["ablate", "study_unknown_key.yaml", "--set", "oops"], ["KEY=VALUE"]),
    ("tables-missing", ["tables", "nowhere.yaml"], ["nowhere.yaml"]),
    ("tables-not-utf8", ["tables", "not_utf8.yaml"], ["not_utf8.yaml", "UTF-8"]),
    ("tables-bad-figure", ["tables", "study_bad_figure.yaml"], ["kind"]),
    ("tables-list", ["tables", "list.yaml"], ["list.yaml", "mapping"]),
    # --- rbp tune (fails before Ray starts) ----------------------------------------------------
    ("tune-missing", ["tune", "nowhere.yaml"], ["nowhere.yaml"]),
    ("tune-not-utf8", ["tune", "not_utf8.yaml"], ["not_utf8.yaml", "UTF-8"]),
    ("tune-unknown-key", ["tune", "tune_unknown_key.yaml"], ["colour"]),
    ("tune-bad-space-key", ["tune", "tune_bad_space_key.yaml"], ["train.lrr"]),
    ("tune-low-above-high", ["tune", "tune_low_above_high.yaml"], ["train.lr", "low"]),
    ("tune-nan-bound", ["tune", "tune_nan_bound.yaml"], ["train.lr", "low is not a number"]),
    (
        "train-data-root-a-file",
        ["train", "--set", "data.name=cifar10", "--set", "data.root=a_file"],
        ["data.root", "is a file"],
    ),
    ("tune-trials-0", ["tune", "--trials", "0"], ["--trials"]),
    ("tune-num-cpus-0", ["tune", "--num-cpus", "0"], ["--num-cpus"]),
    ("tune-report-every-0", ["tune", "--report-every", "0"], ["--report-every"]),
    ("tune-bad-set", ["tune", "--set", "train.epoch=2"], ["train.epoch"]),
    ("tune-results-file", ["tune", "--results", "a_file"], ["--results", "a_file"]),
    # --- rbp best ------------------------------------------------------------------------------
    ("best-corrupt-store", ["best", "--experiment", "e", "--results", "bad_results"], ["mlflow.db"]),
    ("best-no-store", ["best", "--experiment", "e", "--results", "folder"], ["mlflow.db", "rbp tune"]),
    (
        "best-write-folder",
        ["best", "--experiment", "e", "--results", "bad_results", "--write", "folder"],
        ["--write", "folder"],
    ),  # fmt: skip
    (
        "best-write-no-parent",
        ["best", "--experiment", "e", "--results", "bad_results", "--write", "no/c.yaml"],
        ["--write", "no"],
    ),  # fmt: skip
    ("best-top-0", ["best", "--experiment", "e", "--top", "0"], ["--top"]),
    ("best-mode-foo", ["best", "--experiment", "e", "--mode", "best"], ["--mode"]),
    ("best-no-experiment", ["best"], ["--experiment"]),
    # --- rbp config / completion --------------------------------------------------------------
    ("config-typo-key", ["config", "--set", "train.epoch=3"], ["train.epoch", "--print-config"]),
    ("config-schema-with-set", ["config", "--schema", "--set", "train.epochs=3"], ["--schema", "--set"]),
    ("config-schema-with-config", ["config", "--schema", "--config", "list.yaml"], ["--schema", "--config"]),
    ("completion-fish", ["completion", "fish"], ["fish", "bash"]),
    ("completion-no-shell", ["completion"], ["shell"]),
    # --- the command line itself ---------------------------------------------------------------
    ("no-command", [], ["command"]),
    ("unknown-command", ["trian"], ["trian"]),
    ("unknown-option", ["train", "--epochs", "3"], ["--epochs"]),
]


@pytest.mark.parametrize("argv,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, argv, needles, capsys, monkeypatch):
    monkeypatch.chdir(ws)
    monkeypatch.setattr("rbp.tuning.launcher.start_ray", _no_ray)  # where run_tune looks it up
    before, names = _snapshot(ws), _tree(ws)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in out + err
    assert err.startswith("rbp: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    assert _tree(ws) == names, "a file or folder appeared or vanished"
    assert _snapshot(ws) == before, "a file already written changed"


def _no_ray(*args, **kwargs):
    raise AssertionError("a bad-input case started Ray")


def test_eval_saves_its_result_before_anything_else_can_fail(ws, tmp_path, monkeypatch):
    """The computed result reaches --out even when printing it fails (a closed pipe: `rbp eval ... | head`)."""

    def closed_pipe(*args, **kwargs):
        raise BrokenPipeError

    monkeypatch.setattr("rbp.cli.models.print", closed_pipe, raising=False)
    out = tmp_path / "result.json"
    with pytest.raises(BrokenPipeError):
        main(["eval", str(ws / "run" / "best.pt"), "--attack", "clean", "--samples", "20", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["samples"] == 20 and 0.0 <= result["clean_acc"] <= 1.0


def test_the_suite_covers_every_command():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] for c in CASES if c[1]}
    assert {"train", "eval", "export", "info", "ablate", "tables", "tune", "best", "config", "completion"} <= commands

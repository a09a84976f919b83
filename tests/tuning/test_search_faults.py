"""`rbp tune` at its edges: a second driver of the same experiment, a data set that is not there, a
search whose every trial fails (then rerun), damaged SQLite stores. Each ends with exit 2 and one
`rbp: error:` line, the budget respected and no store changed by the refused command."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rbp.cli import main

TINY = {"model.width": 8, "train.epochs": 1, "attack.steps": 2, "eval.val_pgd_steps": 2, "eval.test_pgd_steps": 2}


def write_spec(folder: Path, fixed: dict | None = None, trials: int = 2) -> Path:
    spec = {
        "experiment": "faults",
        "fixed": {**TINY, **(fixed or {})},
        "space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.3}},
        "trials": trials,
        "concurrency": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 0,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    """Run ``rbp`` in this process; it must exit 2 with exactly one ``rbp: error:`` line on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("rbp: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_second_driver_of_the_same_experiment_is_refused_naming_the_first(tmp_path, capsys):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    holder = subprocess.Popen(  # a real second process holding the experiment (as a running `rbp tune` does)
        [sys.executable, "-c", "import sys; from pathlib import Path; from rbp.base.lock import exclusive\n"
         f"with exclusive(Path({str(results / 'tune' / 'faults')!r}), 'search', '--results'):\n"
         "    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline() == "held\n"
        before = files_under(results)
        err = refused(["tune", str(spec), "--results", str(results), "--num-cpus", "1"], capsys)
        assert f"process {holder.pid}" in err and "faults" in err
        assert files_under(results) == before  # no study, no MLflow store, nothing else
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_missing_data_root_is_refused_before_anything_starts_or_is_created(tmp_path, capsys):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    argv = ["tune", str(spec), "--results", str(results), "--set", "data.name=fashion_mnist",
            "--set", f"data.root={tmp_path / 'missing'}"]  # fmt: skip
    err = refused(argv, capsys)
    assert "data.root" in err
    assert not results.exists()


def test_a_warm_start_from_no_store_is_refused_before_a_study_or_store_is_created(tmp_path, capsys):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    err = refused(["tune", str(spec), "--results", str(results), "--warm-start", "nowhere"], capsys)
    assert "no MLflow tracking store" in err
    assert not results.exists()


def damaged_sqlite(path: Path) -> None:
    """A real SQLite file (a valid header), cut in the middle of its pages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("create table t (x text)")
        db.executemany("insert into t values (?)", [("x" * 500,)] * 400)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("name", "option"), [("mlflow.db", "--tracking-uri"), ("optuna.db", "--study-storage")])
def test_a_damaged_store_is_named_with_what_to_do_and_left_as_it_is(tmp_path, capsys, name, option):
    spec, results = write_spec(tmp_path), tmp_path / "results"
    damaged_sqlite(results / name)
    before = files_under(results)
    err = refused(["tune", str(spec), "--results", str(results), "--num-cpus", "1"], capsys)
    assert str(results / name) in err and "is damaged" in err and "move it aside" in err and option in err
    assert files_under(results) == before  # neither store written, nothing created beside them


@pytest.mark.slow  # a real search of two trials that fail in their workers, then its rerun
def test_a_search_whose_every_trial_failed_says_so_and_its_rerun_says_how(tmp_path):
    """Both as a user runs them, in processes of their own (a search whose trials all died leaves
    Ray's state in its process unfit for another search: only tests run two searches in one)."""
    import optuna

    # A HYDRA-style start from a checkpoint that does not exist: the trials fail when they build the model.
    fixed = {"init.scheme": "pretrained", "init.pretrained": str(tmp_path / "no-such-run" / "best.pt")}
    spec, results = write_spec(tmp_path, fixed), tmp_path / "results"
    command = [sys.executable, "-m", "rbp", "tune", str(spec), "--results", str(results), "--num-cpus", "1",
               "--quiet", "--auth-mode", "disabled"]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # libraries' deprecation warnings are not rbp's lines
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 2, first.stderr[-3000:]
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("rbp: error: search faults: none of its 2 trials finished") and "--trials 4" in last
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{results / 'optuna.db'}")
    assert len(study.trials) == 2  # the budget, not more

    before = {k: v for k, v in files_under(results / "tune").items() if not k.endswith(".lock")}  # names its holder
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 2 and rerun.stderr.count("\n") == 1, rerun.stderr  # one line: no Ray, no trial
    assert rerun.stderr.startswith("rbp: error: search faults: none of its 2 trials finished")
    assert "init.pretrained" in rerun.stderr
    assert len(optuna.load_study(study_name="faults", storage=f"sqlite:///{results / 'optuna.db'}").trials) == 2
    assert {k: v for k, v in files_under(results / "tune").items() if not k.endswith(".lock")} == before


@pytest.mark.parametrize("recorded_root", [True, False], ids=["root-recorded", "older-study"])
def test_a_results_folder_moved_elsewhere_is_followed_not_the_old_paths(tmp_path, recorded_root):
    """A search's study records absolute paths; copied to a new folder, its records follow it there."""
    import optuna

    from rbp.tuning import keys
    from rbp.tuning.launcher import follow_move

    old, new = tmp_path / "old" / "results", tmp_path / "new" / "results"
    (new / "tune" / "e" / "rows").mkdir(parents=True)
    url = f"sqlite:///{new}/optuna.db"
    study = optuna.create_study(study_name="e", storage=url)
    recorded = {keys.TRACKING_ATTR: f"sqlite:///{old}/mlflow.db", keys.RUNS_ATTR: str(old / "tune" / "e" / "rows"),
                keys.RAY_ATTR: str(old / "ray" / "e-1")}  # fmt: skip
    for key, value in {**recorded, **({keys.ROOT_ATTR: str(old)} if recorded_root else {})}.items():
        study.set_user_attr(key, value)
    follow_move(study, new, url)
    attrs = optuna.load_study(study_name="e", storage=url).user_attrs
    assert attrs[keys.TRACKING_ATTR] == f"sqlite:///{new}/mlflow.db"
    assert attrs[keys.RUNS_ATTR] == str(new / "tune" / "e" / "rows")
    assert attrs[keys.RAY_ATTR] == str(new / "ray" / "e-1") and attrs[keys.ROOT_ATTR] == str(new)


def test_a_study_with_its_own_store_elsewhere_keeps_its_paths(tmp_path):
    import optuna

    from rbp.tuning import keys
    from rbp.tuning.launcher import follow_move

    results, elsewhere = tmp_path / "results", tmp_path / "shared"
    results.mkdir()
    url = f"sqlite:///{results}/optuna.db"
    study = optuna.create_study(study_name="e", storage=url)
    study.set_user_attr(keys.TRACKING_ATTR, f"sqlite:///{elsewhere}/mlflow.db")
    study.set_user_attr(keys.RUNS_ATTR, str(results / "tune" / "e" / "rows"))
    follow_move(study, results, url)
    assert study.user_attrs[keys.TRACKING_ATTR] == f"sqlite:///{elsewhere}/mlflow.db"

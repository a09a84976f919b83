"""The persistent Optuna study end to end: extend a finished search, seed repeats, MLflow's view of it.

Real searches on a local Ray cluster in this process, tiny configs; marked slow (CI runs them).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from test_tuning_search import TINY, tune, write_spec

from rbp.cli import main
from rbp.results import read_results
from rbp.tuning import keys, tracking
from rbp.tuning.study import open_storage, resolve_storage

pytestmark = pytest.mark.slow

LRS = [0.02, 0.04, 0.08, 0.16]


def child_runs(root: Path, experiment: str):
    client = tracking.client(tracking.resolve_tracking_uri(None, root / "results"))
    exp = client.get_experiment_by_name(experiment)
    runs = tracking.search_all(client, exp.experiment_id)
    parents = [r for r in runs if keys.TRIAL_TAG not in r.data.tags]
    children = [r for r in runs if keys.TRIAL_TAG in r.data.tags]
    return client, exp, parents, children


def test_a_finished_search_is_extended_with_the_sampler_seeing_its_trials(tmp_path):
    body = {
        "experiment": "extend",
        "description": "lr grid, extended from 2 to 4 trials",
        "fixed": TINY,
        "space": {"train.lr": {"type": "categorical", "choices": LRS}},
        "sampler": {"type": "grid", "seed": 0},
        "trials": 2,
        "concurrency": 2,
    }
    spec = write_spec(tmp_path, body)
    code, out = tune(tmp_path, str(spec))
    assert code == 0, out
    code, out = tune(tmp_path, str(spec), "--trials", "4")
    assert code == 0, out
    assert "4 trials in the study (4 complete)" in out
    # Every line fits 120 columns but those naming a path (which can be any length).
    assert not [line for line in out.splitlines() if len(line) > 120 and "/" not in line], out

    # Optuna's own API: one study, every trial once with its value.
    study = optuna.load_study(study_name="extend", storage=open_storage(resolve_storage(None, tmp_path / "results")))
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # The grid sampler hands out unvisited grid points of the study: the extension saw the first two.
    assert sorted(t.params["train.lr"] for t in study.trials) == LRS

    client, exp, parents, children = child_runs(tmp_path, "extend")
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags[keys.PARENT_TAG] for r in children} == {parents[0].info.run_id}
    assert exp.tags[keys.KIND_TAG] == keys.KIND and exp.tags[keys.NOTE_TAG] == body["description"]
    by_number = {int(r.data.tags[keys.STUDY_TRIAL_TAG]): r for r in children}
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.metrics["val_pgd_acc"] == pytest.approx(trial.value)
        assert run.info.run_name.startswith(f"t{trial.number} lr=")
        assert "kept_params" in run.data.tags and "kept_params" not in run.data.metrics  # constants are tags
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "model.rbpz"}
    rows = read_results(tmp_path / "results" / "tune" / "extend" / "rows")
    assert sorted(rows["study_trial"]) == [0, 1, 2, 3]

    code, out = tune(tmp_path, str(spec), "--trials", "4")  # nothing left to do
    assert code == 0 and "already holds 4 trials" in out


def test_repeats_train_each_config_with_r_seeds_and_best_shows_mean_and_std(tmp_path, capsys):
    body = {
        "experiment": "repeats",
        "fixed": {**TINY, "train.epochs": 1},
        "space": {"train.lr": {"type": "categorical", "choices": [0.05]}},
        "sampler": {"type": "grid", "seed": 0},
        "trials": 1,
        "repeats": 3,
    }
    code, out = tune(tmp_path, str(write_spec(tmp_path, body)))
    assert code == 0, out
    rows = read_results(tmp_path / "results" / "tune" / "repeats" / "rows")
    assert len(rows) == 3 and sorted(rows["config.seed"]) == [0, 1, 2] and rows["trial_id"].nunique() == 1
    _, _, _, (run,) = child_runs(tmp_path, "repeats")
    mean = rows["best_val_pgd_acc"].mean()
    assert run.data.metrics["best_val_pgd_acc"] == pytest.approx(mean)
    assert run.data.metrics["best_val_pgd_acc_std"] == pytest.approx(rows["best_val_pgd_acc"].std())
    assert json.loads(run.data.tags[keys.SAMPLED_TAG]) == {"train.lr": 0.05}
    capsys.readouterr()
    assert main(["best", "--experiment", "repeats", "--results", str(tmp_path / "results")]) == 0
    table = capsys.readouterr().out
    assert f"{mean:.4g} ±" in table and " 3 " in table  # mean ± std over n = 3 seeds

"""Real searches on a local Ray cluster (in this process): MLflow runs, Parquet rows, rbp best, restarts.

Tiny configs (width 8, 1-2 epochs, PGD-2) keep each search to seconds of training; Ray's start-up
dominates. Marked slow; CI runs them.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from trialfiles import worker_pids

from rbp.cli import main
from rbp.results import read_results
from rbp.tuning import keys, tracking
from rbp.tuning.cluster import set_ray_environment
from rbp.tuning.configkeys import config_keys
from rbp.tuning.options import TuneOptions

pytestmark = pytest.mark.slow

TINY = {"model.width": 8, "train.epochs": 2, "attack.steps": 2, "eval.val_pgd_steps": 2, "eval.test_pgd_steps": 2}
RAY_ENV = ("RAY_AUTH_MODE", "RAY_AIR_NEW_OUTPUT", "RAY_USAGE_STATS_ENABLED",
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S")  # fmt: skip


@contextlib.contextmanager
def ray_environment(folder: Path):
    """Run in ``folder`` with Ray's environment set for the test and restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for key in RAY_ENV:  # recorded (set, then removed), so what rbp tune sets is undone afterwards
            mp.setenv(key, os.environ.get(key, "recorded"))
            mp.delenv(key)
        mp.chdir(folder)
        set_ray_environment(TuneOptions(spec=Path("x"), auth_mode="disabled"))
        yield


def write_spec(folder: Path, body: dict) -> Path:
    path = folder / f"{body['experiment']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tune(folder: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    with ray_environment(folder), contextlib.redirect_stdout(out):
        code = main(["tune", *args, "--num-cpus", "2", "--report-every", "5", "--auth-mode", "disabled"])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """Two dense trials, one at a time: lr 1e8 diverges (NaN loss), lr 0.05 trains to the end."""
    root = tmp_path_factory.mktemp("search")
    spec = write_spec(
        root,
        {
            "experiment": "e2e",
            "fixed": {**TINY, "model.mode": "dense"},
            "space": {"train.lr": {"type": "categorical", "choices": [100000000.0, 0.05]}},
            "sampler": {"type": "grid", "seed": 0},
            "trials": 2,
            "concurrency": 1,
        },
    )
    code, out = tune(root, str(spec))
    uri = tracking.resolve_tracking_uri(None, root / "results")
    client = tracking.client(uri)
    experiment = client.get_experiment_by_name("e2e")
    return SimpleNamespace(
        root=root, spec=spec, code=code, out=out, uri=uri, client=client,
        runs=[r for r in tracking.search_all(client, experiment.experiment_id) if keys.TRIAL_TAG in r.data.tags],
        rows=read_results(root / "results" / "tune" / "e2e" / "rows"),
    )  # fmt: skip


def by_status(rows: pd.DataFrame, status: str) -> pd.Series:
    (row,) = [r for _, r in rows.iterrows() if r["status"] == status]
    return row


def test_search_completes_and_prints_the_best_trials(search):
    assert search.code == 0, search.out[-3000:]
    assert "trial  val_pgd_acc  ep  st" in search.out and "Result logdir: " in search.out  # our reporter
    assert str(search.root / "results" / "ray" / "e2e-") in search.out  # not Ray's staging folder in /tmp/ray
    assert "best trials by val_pgd_acc" in search.out and "2 trials in the study (1 complete, 1 fail)" in search.out
    assert max(len(line) for line in search.out.splitlines()) <= 120


def test_a_local_search_runs_its_trials_one_after_another_in_one_worker_process(search):
    """No Python + torch start-up between trials on the local cluster (Ray Tune's ``reuse_actors``)."""
    workers = worker_pids(search.root / "results" / "ray")
    assert len(workers) == 2 and len(set(workers.values())) == 1, workers


def test_every_trial_is_one_parquet_row_the_nan_one_diverged(search):
    rows = search.rows
    assert len(rows) == 2 and rows["trial_id"].is_unique
    done, bad = by_status(rows, "finished"), by_status(rows, "diverged")
    assert "nan" in bad["reason"] and bad["epochs_done"] == 0
    assert done["config.train.lr"] == 0.05 and done["config.model.width"] == 8 and done["epochs_done"] == 2
    for column in ("test_clean_acc", "test_pgd2_acc", "best_val_pgd_acc", "kept_params", "total_params",
                   "train_seconds", "wall_seconds", "started_at", "finished_at"):  # fmt: skip
        assert pd.notna(done[column]), column
    assert done["git_commit"] and done["rbp_version"] and done["search"].startswith("e2e-")
    assert done["run_id"] != bad["run_id"] and done["mlflow_run_id"] != bad["mlflow_run_id"]


def test_every_trial_is_one_mlflow_run_with_params_metrics_tags_artefacts(search):
    runs = {run.data.tags[keys.TRIAL_TAG]: run for run in search.runs}
    assert len(runs) == len(search.runs) == 2
    done = by_status(search.rows, "finished")
    run = runs[done["trial_id"]]
    assert run.info.status == "FINISHED" and run.info.run_id == done["mlflow_run_id"]
    assert set(run.data.params) == set(config_keys()) and run.data.params["train.lr"] == "0.05"
    history = search.client.get_metric_history(run.info.run_id, "val_pgd_acc")
    assert sorted(m.step for m in history) == [1, 2]
    assert {"test_clean_acc", "test_pgd2_acc", "best_val_pgd_acc"} <= set(run.data.metrics)
    assert not {"density", "kept_params", "total_params", "best_epoch"} & set(run.data.metrics)  # constants: tags
    tags = run.data.tags
    assert {"density", "kept_params", "total_params", "best_epoch"} <= set(tags)
    assert run.info.run_name == f"t{done['study_trial']} lr=0.05"
    trial_ids = {r.info.run_id for r in search.runs}
    (parent,) = [
        r for r in tracking.search_all(search.client, run.info.experiment_id) if r.info.run_id not in trial_ids
    ]
    assert {r.data.tags[keys.PARENT_TAG] for r in search.runs} == {parent.info.run_id}
    assert tags[keys.SPEC_TAG] == str(search.spec) and tags[keys.GIT_TAG] and tags[keys.STATUS_TAG] == "finished"
    # A dense model has no .rbpz (seed + masks): its config is the artefact, and a tag says why.
    assert {a.path for a in search.client.list_artifacts(run.info.run_id)} == {"config.yaml"}
    assert "export is for subnet models" in tags["rbp.artefact"] and pd.isna(done["artifact_bytes"])
    failed = runs[by_status(search.rows, "diverged")["trial_id"]]
    assert failed.info.status == "FAILED" and failed.data.tags[keys.STATUS_TAG] == "diverged"
    assert "nan" in failed.data.tags[keys.REASON_TAG]


def test_best_lists_finished_runs_and_writes_a_config_rbp_train_accepts(search, tmp_path, capsys):
    best = tmp_path / "best.yaml"
    args = ["best", "--experiment", "e2e", "--tracking-uri", search.uri, "--top", "5", "--write", str(best)]
    assert main(args) == 0
    out = capsys.readouterr().out
    done, bad = by_status(search.rows, "finished"), by_status(search.rows, "diverged")
    assert f"t{done['study_trial']} " in out and f"t{bad['study_trial']} " not in out and "best_val_pgd_acc" in out
    assert "run" not in yaml.safe_load(best.read_text())  # run folder and device are the user's choice
    runs_dir = tmp_path / "runs"
    assert main(["train", "--config", str(best), "--set", f"run.out_dir={runs_dir}", "--quiet"]) == 0
    (folder,) = runs_dir.iterdir()
    assert folder.name == done["run_id"]  # the very config the trial trained


def test_resume_of_a_finished_search_adds_no_rows_or_runs(search):
    code, out = tune(search.root, str(search.spec), "--resume")
    assert code == 0, out[-3000:]
    rows = read_results(search.root / "results" / "tune" / "e2e" / "rows")
    experiment = search.client.get_experiment_by_name("e2e")
    runs = tracking.search_all(search.client, experiment.experiment_id)
    assert sorted(rows["trial_id"]) == sorted(search.rows["trial_id"]) and len(runs) == 3  # 2 trials + parent
    assert {run.info.status for run in runs} == {"FINISHED", "FAILED"}


def test_multi_objective_search_writes_the_pareto_front(tmp_path):
    spec = write_spec(
        tmp_path,
        {
            "experiment": "pareto",
            "fixed": {**TINY, "train.epochs": 1},
            "space": {"sparsity.density": {"type": "loguniform", "low": 0.05, "high": 0.5}},
            "metric": ["val_pgd_acc", "kept_params"],
            "mode": ["max", "min"],
            "sampler": {"type": "nsga2", "seed": 0, "population_size": 4},
            "trials": 3,
            "concurrency": 2,
        },
    )
    code, out = tune(tmp_path, str(spec))
    assert code == 0, out[-3000:]
    rows = read_results(tmp_path / "results" / "tune" / "pareto" / "rows")
    # Trial ids are 8 hex digits: read as text, or one of only decimal digits (2% of them) becomes an int.
    front = pd.read_csv(tmp_path / "results" / "tune" / "pareto" / "pareto.csv", dtype={"trial_id": str})
    assert (tmp_path / "results" / "tune" / "pareto" / "pareto.parquet").is_file() and "Pareto front" in out
    assert len(rows) == 3 and 1 <= len(front) <= 3 and set(front["trial_id"]) <= set(rows["trial_id"])
    for _, a in front.iterrows():  # nothing in the search dominates a front member
        for _, b in rows.iterrows():
            better = b["final_val_pgd_acc"] >= a["final_val_pgd_acc"] and b["kept_params"] <= a["kept_params"]
            strictly = b["final_val_pgd_acc"] > a["final_val_pgd_acc"] or b["kept_params"] < a["kept_params"]
            assert not (better and strictly)


def test_a_killed_worker_restarts_from_its_last_checkpoint(tmp_path):
    import ray
    from ray import tune

    marker, log = tmp_path / "killed", tmp_path / "epochs.log"

    # Defined here, not at module level: Ray pickles it by value (this test module is not
    # importable on the workers).
    def _dies_once(config, marker: str, log: str) -> None:
        """The real trainable, whose worker kills itself (SIGKILL) once, right after reporting epoch 2."""
        from ray import tune

        from rbp.tuning.trainable import train_trial

        report = tune.report

        def report_then_die(metrics, checkpoint=None):
            with open(log, "a") as f:
                f.write(f"{metrics['epoch']}\n")
            report(metrics, checkpoint=checkpoint)
            if metrics["epoch"] == 2 and not os.path.exists(marker):
                Path(marker).touch()
                time.sleep(1.0)  # let the driver register the epoch-2 checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

        tune.report = report_then_die  # only in this worker process
        train_trial(config)

    with ray_environment(tmp_path):
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="warning")
        try:
            trainable = tune.with_parameters(_dies_once, marker=str(marker), log=str(log))
            tuner = tune.Tuner(
                tune.with_resources(trainable, {"cpu": 1}),
                param_space={**TINY, "train.epochs": 4},
                run_config=tune.RunConfig(
                    name="kill",
                    storage_path=str(tmp_path / "ray"),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=2),
                ),  # fmt: skip
            )
            grid = tuner.fit()
        finally:
            ray.shutdown()
    epochs = [int(line) for line in log.read_text().split()]
    assert marker.exists() and grid.num_errors == 0 and grid[0].metrics["epoch"] == 4
    assert epochs.count(1) == 1 and epochs[-1] == 4, epochs  # restarted after epoch 1 or 2, never from 0
    assert "test_clean_acc" in grid[0].metrics


def test_best_registers_the_winner_as_an_mlflow_model_that_loads_as_rbp_load(search, capsys):
    import mlflow
    import numpy as np
    import torch

    import rbp
    from rbp.tuning.mlflow_model import fluent_tracking_uri

    bad = ["best", "--experiment", "e2e", "--tracking-uri", search.uri, "--register", "rbp-e2e", "--alias", "v1"]
    assert main(bad) == 2 and "--alias 'v1'" in capsys.readouterr().err
    assert search.client.search_registered_models() == []  # refused before anything was registered
    assert main(["best", "--experiment", "e2e", "--tracking-uri", search.uri, "--register", "rbp-e2e"]) == 0
    assert "as models:/rbp-e2e/1 (@champion); serve it with: mlflow models serve" in capsys.readouterr().out
    done, bad_trial = by_status(search.rows, "finished"), by_status(search.rows, "diverged")
    assert search.client.get_model_version_by_alias("rbp-e2e", "champion").run_id == done["mlflow_run_id"]
    experiment = search.client.get_experiment_by_name("e2e").experiment_id
    by_run = f"source_run_id = '{bad_trial['mlflow_run_id']}'"
    assert search.client.search_logged_models([experiment], by_run) == []  # a diverged trial has no model
    with fluent_tracking_uri(search.uri):
        folder = Path(mlflow.artifacts.download_artifacts("models:/rbp-e2e@champion"))
        model = mlflow.pyfunc.load_model(str(folder))
    (checkpoint,) = (folder / "artifacts").iterdir()  # a dense model: its best.pt (no .rbpz)
    batch = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        assert np.array_equal(model.predict(batch), rbp.load(checkpoint)(torch.from_numpy(batch)).numpy())

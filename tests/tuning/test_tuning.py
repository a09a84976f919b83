"""The search platform without a Ray cluster: specs, the search space, the trainable loop, casting.

Everything here is fast: specs are validated and the define-by-run space is driven by a plain
Optuna study; the trainable loop runs with a stand-in for ``tune.report``; bad input is checked
through ``rbp tune`` / ``rbp best`` up to the point where it must fail (before Ray starts).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from rbp.base.errors import RbpError
from rbp.cli import main
from rbp.config.load import load_config
from rbp.config.schema import Config
from rbp.results import read_results
from rbp.tuning import keys
from rbp.tuning.best import check_selection_metric, config_from_params
from rbp.tuning.configkeys import config_keys, config_value_text, flatten_config, parse_config_value
from rbp.tuning.progress import progress_table
from rbp.tuning.report import format_table, pareto_rows, short_names
from rbp.tuning.space import SpaceSampler, make_sampler
from rbp.tuning.spec import load_spec
from rbp.tuning.study import open_storage, open_study, pareto_numbers, resolve_storage
from rbp.tuning.trainable import combine, run_trial, trial_config

TINY = {"model.width": 8, "train.epochs": 2, "attack.steps": 2, "eval.val_pgd_steps": 2, "eval.test_pgd_steps": 2}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _keep_ray_environment(monkeypatch):
    """`rbp tune` sets Ray's environment variables in its process: undo that after each test."""
    for key in ("RAY_AUTH_MODE", "RAY_AIR_NEW_OUTPUT", "RAY_USAGE_STATS_ENABLED",
                "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"):  # fmt: skip
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:  # recorded as absent, so a value set during the test is removed afterwards
            monkeypatch.setenv(key, "")
            monkeypatch.delenv(key)


def write_spec(folder: Path, **fields) -> Path:
    body = {
        "experiment": "t",
        "fixed": dict(TINY),
        "space": {"train.lr": {"type": "loguniform", "low": 0.01, "high": 0.3}},
    }
    body.update(fields)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def spec_error(folder: Path, **fields) -> str:
    with pytest.raises(RbpError) as error:
        load_spec(write_spec(folder, **fields))
    message = str(error.value)
    assert "\n" not in message
    return message


# -- specs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((REPO / "tune").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(path):
    loaded = load_spec(path)
    assert loaded.spec.space and loaded.spec.trials >= 1


def test_default_digits_spec_keeps_the_bar_fixed():
    spec = load_spec(REPO / "tune" / "digits.yaml")
    assert spec.constants["sparsity.density"] == 0.1 and spec.constants["attack.eps"] == 0.1
    assert spec.spec.trials >= 8 and spec.spec.experiment == "digits"
    searched = set(spec.spec.space)
    assert {"init.scheme", "init.alpha", "init.score_scale", "sparsity.allocation", "sparsity.p"} <= searched
    assert {"model.last_bn", "attack.steps", "attack.step_size", "train.lr"} <= searched


def test_reference_recipe_spec_encodes_the_paper_recipe():
    c = load_spec(REPO / "tune" / "cifar10_resnet34.yaml").constants
    assert c["model.arch"] == "resnet34" and c["sparsity.density"] == 0.01 and c["train.epochs"] == 400
    assert c["data.batch_size"] == 256 and c["data.val_fraction"] == 0.02 and c["init.scheme"] == "binary"
    assert math.isclose(c["attack.eps"], 8 / 255) and math.isclose(c["attack.step_size"], 2 / 255)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sampler": {"type": "tpe", "sed": 1}}, "sampler.sed: unknown key"),
        ({"trails": 3}, "trails: unknown key"),
        ({"space": {}}, "space is empty"),
        ({"space": {"train.learning_rate": {"type": "float", "low": 0, "high": 1}}}, "no key 'train.learning_rate'"),
        ({"space": {"optim.lr": {"type": "float", "low": 0, "high": 1}}}, "no section 'optim'"),
        ({"fixed": {"train.lrr": 0.1}}, "fixed.train.lrr: the core config has no key"),
        ({"space": {"sparsity.density": {"type": "float", "low": 0.0, "high": 0.5}}}, "sparsity.density = 0.0"),
        ({"space": {"train.lr": {"type": "float", "low": 0.3, "high": 0.1}}}, "low must be below high"),
        ({"space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}, "needs low > 0"),
        ({"space": {"model.last_bn": {"type": "categorical", "choices": []}}}, "non-empty list"),
        ({"space": {"model.last_bn": {"type": "categorical", "choices": ["nonaffine", "bogus"]}}}, "'bogus'"),
        ({"space": {"train.lr": {"type": "uniform", "low": 0.1, "high": 1}}}, "space.train.lr.type"),
        ({"space": {"train.epochs": {"type": "int", "low": 1, "high": 3}}}, "also fixed"),
        ({"metric": "test_acc"}, "unknown metric 'test_acc'"),
        ({"metric": ["val_pgd_acc", "kept_params"], "mode": "max"}, "one mode per metric"),
        ({"metric": ["val_pgd_acc", "kept_params"], "mode": ["max", "min"], "scheduler": {"type": "asha"}}, "asha"),
        ({"sampler": {"type": "grid"}}, "grid sampler needs categorical"),
        ({"start": [{"train.lr": 5.0}]}, "outside"),
        ({"fixed": {"sparsity.allocation": "uniform"}, "space": {"sparsity.p": {"type": "float", "low": 0, "high": 1}}},
         "never sampled"),
    ],
)  # fmt: skip
def test_bad_specs_are_one_line_errors_naming_the_key(tmp_path, fields, expected):
    assert expected in spec_error(tmp_path, **fields)


def test_a_condition_must_follow_its_parameter(tmp_path):
    space = {
        "sparsity.p": {"type": "float", "low": 0, "high": 1},
        "sparsity.allocation": {"type": "categorical", "choices": ["adaptive", "uniform"]},
    }
    assert "must come before" in spec_error(tmp_path, space=space)


def test_cli_reports_spec_errors_with_exit_2(tmp_path, capsys):
    path = write_spec(tmp_path, space={})
    assert main(["tune", str(path), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rbp: error: spec error:") and err.count("\n") == 1
    assert not (tmp_path / "r" / "ray").exists()  # nothing started


def test_set_adds_fixed_keys_and_is_validated(tmp_path):
    path = write_spec(tmp_path)
    assert load_spec(path, ["train.epochs=5"]).constants["train.epochs"] == 5
    with pytest.raises(RbpError, match="train.lr"):
        load_spec(path, ["train.lr=0.2"])  # searched keys cannot be fixed
    with pytest.raises(RbpError, match="bogus"):
        load_spec(path, ["train.bogus=1"])


# -- the search space ---------------------------------------------------------------------------
def sample(loaded, n: int, seed: int = 0) -> list[dict]:
    sampler = SpaceSampler(loaded)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append({**sampler(trial), **trial.params})
        study.tell(trial, 0.0)
    return configs


def test_conditional_parameters_follow_their_condition():
    loaded = load_spec(REPO / "tune" / "digits.yaml")
    configs = sample(loaded, 40)
    for config in configs:
        assert (config["sparsity.p"] is not None) == (config["sparsity.allocation"] == "adaptive")
        assert (config["init.alpha"] is not None) == (config["init.scheme"] == "scaled")
        assert config["sparsity.density"] == 0.1  # constants ride along
        cfg = trial_config(config)  # every sampled config is a valid core config
        assert cfg.sparsity.density == 0.1 and cfg.train.lr == config["train.lr"]
    assert {c["sparsity.allocation"] for c in configs} == {"adaptive", "uniform", "erk"}


def test_explicit_when_conditions(tmp_path):
    space = {
        "model.last_bn": {"type": "categorical", "choices": ["nonaffine", "none"]},
        "init.score_scale": {"type": "loguniform", "low": 0.001, "high": 0.1, "when": {"model.last_bn": "none"}},
        "data.batch_size": {"type": "int", "low": 32, "high": 128, "step": 32},
    }
    configs = sample(load_spec(write_spec(tmp_path, space=space)), 20)
    for config in configs:
        assert (config["init.score_scale"] is not None) == (config["model.last_bn"] == "none")
        assert config["data.batch_size"] in (32, 64, 96, 128)


@pytest.mark.parametrize("kind", ["tpe", "random", "grid", "nsga2"])
def test_every_sampler_is_built_and_seeded(tmp_path, kind):
    space = {"model.last_bn": {"type": "categorical", "choices": ["nonaffine", "none"]}}
    loaded = load_spec(write_spec(tmp_path, space=space, sampler={"type": kind, "seed": 3}, trials=2))
    sampler = make_sampler(loaded)
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    if kind == "grid":  # the grid enumerates every choice once, and telling the last one is fine
        study = optuna.create_study(sampler=sampler)
        trials = [study.ask() for _ in range(2)]
        drawn = {SpaceSampler(loaded)(trial) and trial.params["model.last_bn"] for trial in trials}
        assert drawn == {"nonaffine", "none"}
        for trial in trials:
            study.tell(trial, 0.0)


@pytest.mark.parametrize("kind", ["tpe", "random", "grid", "nsga2"])
def test_every_sampler_pickles_inside_the_searcher_as_rays_tuner_does_and_samples_after(tmp_path, kind):
    """Ray's ``Tuner`` cloudpickles the search algorithm at start and at every experiment checkpoint
    (Optuna 5.1's NSGA-II holds a lock that plain pickling refuses)."""
    from ray import cloudpickle
    from ray.tune.search import ConcurrencyLimiter

    from rbp.tuning.space import make_searcher

    space = {"model.last_bn": {"type": "categorical", "choices": ["nonaffine", "none"]}}
    metrics = {"metric": ["val_pgd_acc", "kept_params"], "mode": ["max", "min"]} if kind == "nsga2" else {}
    loaded = load_spec(write_spec(tmp_path, space=space, sampler={"type": kind, "seed": 3}, trials=2, **metrics))
    storage = open_storage(resolve_storage(None, tmp_path))
    searcher = cloudpickle.loads(cloudpickle.dumps(ConcurrencyLimiter(make_searcher(loaded, storage), 2)))
    for number in range(2):  # the unpickled sampler (its lock made anew) still suggests
        config = searcher.suggest(f"trial_{number}")
        assert config["model.last_bn"] in ("nonaffine", "none")
    cloudpickle.loads(cloudpickle.dumps(searcher))  # and pickles again with trials in flight


def test_an_inactive_parameter_is_none_and_means_the_default():
    cfg = trial_config({**TINY, "sparsity.p": None, "sparsity.allocation": "uniform"})
    assert cfg.sparsity.p == Config().sparsity.p and cfg.run.progress is False
    with pytest.raises(RbpError, match="train.bogus"):
        trial_config({"train.bogus": 1})


# -- the trainable ------------------------------------------------------------------------------
class FolderCheckpoint:
    """Stands in for ``ray.tune.Checkpoint``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.folder)


class Reports:
    """Stands in for ``tune.report``: keeps every metrics dict and a copy of every checkpoint."""

    def __init__(self, root: Path) -> None:
        self.root, self.metrics, self.checkpoints = root, [], []

    def __call__(self, metrics, folder):
        self.metrics.append(dict(metrics))
        if folder is not None:
            copy = self.root / f"ckpt{len(self.metrics)}"
            shutil.copytree(folder, copy)
            self.checkpoints.append(FolderCheckpoint(copy))


def test_trainable_reports_every_epoch_with_a_checkpoint_and_test_metrics_at_the_end(tmp_path):
    reports = Reports(tmp_path)
    run_trial({**TINY, "train.epochs": 3}, reports)
    assert [m["epoch"] for m in reports.metrics] == [1, 2, 3]
    assert len(reports.checkpoints) == 3
    assert {"val_clean_acc", "val_pgd_acc", "density", "kept_params", "best_val_pgd_acc"} <= set(reports.metrics[0])
    last = reports.metrics[-1]
    assert "test_clean_acc" in last and "test_pgd2_acc" in last and last["total_params"] > last["kept_params"]
    assert "test_clean_acc" not in reports.metrics[0]
    assert last["best_val_pgd_acc"] == max(m["val_pgd_acc"] for m in reports.metrics)
    # Each checkpoint is a run folder as `rbp train` writes it; the last one has the summary too.
    folder_files = {"config.yaml", "densities.json", "determinism.json", "metrics.jsonl", "last.pt", "best.pt"}
    for checkpoint in reports.checkpoints[:-1]:
        assert {p.name for p in checkpoint.folder.iterdir()} == folder_files
    assert {p.name for p in reports.checkpoints[-1].folder.iterdir()} == folder_files | {"summary.json"}


def test_a_trials_checkpoint_is_a_run_folder_that_export_and_eval_read(tmp_path, capsys):
    reports = Reports(tmp_path)
    run_trial({**TINY, "train.epochs": 1}, reports)
    folder = reports.checkpoints[-1].folder
    assert main(["export", str(folder), "--out", str(tmp_path / "trial.rbpz")]) == 0
    assert main(["eval", str(folder / "best.pt"), "--attack", "clean", "--samples", "40"]) == 0
    assert main(["eval", str(tmp_path / "trial.rbpz"), "--attack", "clean", "--samples", "40"]) == 0
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [1]


def test_a_trial_checkpoint_from_before_run_folders_resumes(tmp_path):
    """A search written before trials kept run folders: its checkpoints hold last.pt (no history) and best.pt."""
    from rbp.artefacts.checkpoint import load_model, read_checkpoint, save_checkpoint

    whole = Reports(tmp_path / "a")
    whole.root.mkdir()
    run_trial({**TINY, "train.epochs": 2}, whole)
    old, legacy = whole.checkpoints[0].folder, tmp_path / "legacy"
    legacy.mkdir()
    payload, cfg = read_checkpoint(old / "last.pt")
    model, _, _ = load_model(old / "last.pt")
    state = {k: v for k, v in payload["trainer"].items() if k != "history"}
    save_checkpoint(legacy / "last.pt", cfg, payload["data_info"], model, state, payload["metrics"])
    shutil.copyfile(old / "best.pt", legacy / "best.pt")
    resumed = Reports(tmp_path / "b")
    resumed.root.mkdir()
    run_trial({**TINY, "train.epochs": 2}, resumed, FolderCheckpoint(legacy))
    assert [m["epoch"] for m in resumed.metrics] == [2]
    assert resumed.metrics[-1]["val_pgd_acc"] == whole.metrics[-1]["val_pgd_acc"]
    assert resumed.metrics[-1]["test_clean_acc"] == whole.metrics[-1]["test_clean_acc"]


def test_trainable_resumes_after_the_checkpointed_epoch_exactly(tmp_path):
    first = Reports(tmp_path / "a")
    first.root.mkdir()
    run_trial({**TINY, "train.epochs": 3}, first)
    resumed = Reports(tmp_path / "b")
    resumed.root.mkdir()
    run_trial({**TINY, "train.epochs": 3}, resumed, first.checkpoints[0])  # as if killed after epoch 1
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]  # not from epoch 0
    for a, b in zip(first.metrics[1:], resumed.metrics, strict=True):
        for key in ("train_loss", "val_clean_acc", "val_pgd_acc", "test_clean_acc"):
            assert a.get(key) == b.get(key), key  # exact resume: same numbers as without the restart
    again = Reports(tmp_path / "c")
    again.root.mkdir()
    run_trial({**TINY, "train.epochs": 3}, again, first.checkpoints[-1])  # restarted after its last epoch
    assert again.metrics == [first.metrics[-1]] and not again.checkpoints


def test_a_nan_loss_ends_the_trial_as_diverged_with_its_reason(tmp_path):
    reports = Reports(tmp_path)
    run_trial({**TINY, "model.mode": "dense", "train.lr": 1e8}, reports)
    (final,) = reports.metrics
    assert final["diverged"] is True and "nan" in final["reason"] and final["epoch"] == 1
    assert math.isnan(final["val_pgd_acc"]) and final["epochs_done"] == 0


# -- config keys, MLflow params, Pareto ---------------------------------------------------------
def test_params_round_trip_through_text_to_the_same_config():
    cfg = load_config(None, ["model.width=8", "sparsity.allocation=erk", "train.milestones=[0.3, 0.6]",
                             "init.score_fan_in=true", "data.root=/data/x"])  # fmt: skip
    params = {key: config_value_text(value) for key, value in flatten_config(cfg).items()}
    assert all(isinstance(v, str) for v in params.values())
    back = config_from_params({**params, "not.a.config.key": "x"})
    assert back == cfg and back.run_id() == cfg.run_id()


def test_parse_config_value_is_typed_by_the_field():
    assert parse_config_value("train.lr", "0.1") == 0.1
    assert parse_config_value("attack.steps", "7") == 7
    assert parse_config_value("train.nesterov", "True") is True
    assert parse_config_value("model.width", "None") is None
    assert parse_config_value("model.last_bn", "none") == "none"  # a string, not null
    assert config_keys()["data.root"] == ("str", True)
    with pytest.raises(ValueError):
        parse_config_value("train.nesterov", "maybe")


def test_pareto_rows_follow_optunas_front_and_drop_duplicate_configs():
    study = optuna.create_study(directions=["maximize", "minimize"])
    values = {"a": (0.9, 1000), "b": (0.8, 500), "c": (0.7, 600), "d": (0.85, 1200), "e": (0.8, 500)}
    for objectives in values.values():
        study.tell(study.ask(), objectives)
    sampled = {"a": "{1}", "b": "{2}", "c": "{3}", "d": "{4}", "e": "{2}"}  # e repeats b's config
    rows = pd.DataFrame({"trial_id": list("abcde"), "study_trial": range(5), "sampled": list(sampled.values()),
                         "final_val_pgd_acc": [v[0] for v in values.values()],
                         "kept_params": [v[1] for v in values.values()]})  # fmt: skip
    front = pareto_rows(rows, pareto_numbers(study), ["val_pgd_acc", "kept_params"])
    assert list(front["trial_id"]) == ["b", "a"]  # c is beaten by b, d by a; e is b again


def test_repeats_are_combined_as_mean_and_std_with_each_seed_kept():
    per_seed = [{"epoch": 3, "val_pgd_acc": 0.8, "train_seconds": 2.0, "seed": 0},
                {"epoch": 3, "val_pgd_acc": 0.9, "train_seconds": 3.0, "seed": 1}]  # fmt: skip
    combined = combine(per_seed)
    assert combined["val_pgd_acc"] == pytest.approx(0.85) and combined["val_pgd_acc_std"] == pytest.approx(0.0707, 1e-3)
    assert combined["epoch"] == 3 and combined["train_seconds"] == 5.0 and combined["repeats"] == 2
    assert combined["per_seed"] == {"seed0": per_seed[0], "seed1": per_seed[1]} and combine(per_seed[:1]) == per_seed[0]


def test_trainable_with_repeats_trains_each_seed_and_reports_their_mean(tmp_path):
    reports = Reports(tmp_path)
    run_trial({**TINY, "train.epochs": 1, "_repeats": 2, "seed": 5}, reports)
    (final,) = reports.metrics
    seeds = list(final["per_seed"].values())
    assert [m["seed"] for m in seeds] == [5, 6] and final["repeats"] == 2
    assert final["best_val_pgd_acc"] == pytest.approx((seeds[0]["best_val_pgd_acc"] + seeds[1]["best_val_pgd_acc"]) / 2)
    assert {p.name for p in reports.checkpoints[0].folder.iterdir()} == {"seed5", "seed6"}


def test_selecting_on_a_test_metric_needs_the_flag(tmp_path, capsys):
    assert main(["best", "--experiment", "x", "--metric", "test_pgd20_acc", "--results", str(tmp_path)]) == 2
    assert "--allow-test-selection" in capsys.readouterr().err
    check_selection_metric("test_pgd20_acc", allow_test=True)  # allowed when asked for
    check_selection_metric("best_val_pgd_acc", allow_test=False)


def test_console_tables_fit_120_columns_with_short_names_and_4_digits():
    loaded = load_spec(Path(__file__).parents[2] / "tune" / "digits.yaml")
    searched = list(loaded.spec.space)
    config = {
        "_study_trial": 12,
        "train.lr": 0.123456789,
        "init.scheme": "signed_kaiming_density",
        "init.alpha": 1.23456789,
        "init.score_scale": 0.0123456,
        "sparsity.allocation": "adaptive",
        "sparsity.p": 0.123456,
        "model.last_bn": "nonaffine",
        "attack.steps": 10,
        "attack.step_size": 0.0234567,
    }
    # Three trials that differ in every searched value but the allocation and the last BN.
    trials = []
    for i, scheme in enumerate(["signed_kaiming_density", "binary", "scaled"]):
        varied = {key: value * (i + 1) if isinstance(value, (int, float)) else value for key, value in config.items()}
        varied["init.scheme"] = scheme
        result = {"val_pgd_acc": 0.868055555555 - i / 100, "epoch": 12 - i}
        trials.append(type("T", (), {"status": "RUNNING", "last_result": result, "config": varied})())
    text = progress_table(trials, "val_pgd_acc", "max", searched, short_names(searched), "digits", "/r/ray/x")
    assert max(len(line) for line in text.splitlines()) <= 120, text
    assert "signed_kaiming_density" in text and "0.8681" in text and "0.1235" in text and "0.86805" not in text
    (header,) = [line.split() for line in text.splitlines() if line.startswith("trial")]
    assert header[:2] == ["trial", "val_pgd_acc"] and "scheme" in header
    assert "all rows: " in text and "allocation adaptive" in text  # the constant columns, folded


def test_best_trials_table_names_the_kept_fraction_apart_from_a_searched_density():
    from rbp.tuning.report import best_trials_table

    rows = pd.DataFrame({
        "trial_id": ["a", "b"], "study_trial": [0, 1], "status": ["finished"] * 2,
        "final_val_pgd_acc": [0.3, 0.35], "final_val_clean_acc": [0.5, 0.45], "test_clean_acc": [0.6, 0.55],
        "test_pgd20_acc": [0.33, 0.32], "density": [0.09998, 0.05114],
        "sampled": ['{"sparsity.density": 0.1}', '{"sparsity.density": 0.05116}'],
    })  # fmt: skip
    text = best_trials_table(rows, "val_pgd_acc", "max", ["sparsity.density"], 5)
    header, _, first, second = text.splitlines()
    assert header.split() == ["trial", "val_pgd_acc", "n", "status", "val", "clean", "test", "clean", "test", "PGD-20",
                              "kept", "density"]  # fmt: skip
    assert first.split()[0] == "t1" and first.split()[-2:] == ["0.05114", "0.05116"] and second.startswith("t0")


def test_study_storage_is_sqlite_beside_mlflow_or_a_journal_file(tmp_path):
    assert resolve_storage(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    journal = resolve_storage(str(tmp_path / "study.log"), tmp_path)
    study = open_study(open_storage(journal), "e", ["max"])
    study.tell(study.ask(), 0.5)
    assert [t.value for t in optuna.load_study(study_name="e", storage=open_storage(journal)).trials] == [0.5]
    with pytest.raises(RbpError, match="optimises maximize"):
        open_study(open_storage(journal), "e", ["min"])


def test_every_study_names_its_objectives_as_the_spec_does(tmp_path):
    """optuna-dashboard shows a study's metric names instead of "Objective 0 / Objective 1"."""
    storage = open_storage(resolve_storage(None, tmp_path))
    pareto = open_study(storage, "p", ["max", "min"], metrics=["val_pgd_acc", "kept_params"])
    assert optuna.load_study(study_name="p", storage=storage).metric_names == ["val_pgd_acc", "kept_params"]
    assert pareto.metric_names == ["val_pgd_acc", "kept_params"]
    open_study(storage, "s", ["max"], metrics=["best_val_pgd_acc"])
    assert optuna.load_study(study_name="s", storage=storage).metric_names == ["best_val_pgd_acc"]


# -- bad input before Ray starts ----------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dead_address_is_refused_quickly(tmp_path, capsys):
    start = time.monotonic()
    code = main(["tune", str(write_spec(tmp_path)), "--results", str(tmp_path / "r"),
                 "--address", f"127.0.0.1:{closed_port()}"])  # fmt: skip
    assert code == 2 and time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "no Ray cluster at 127.0.0.1:" in err and err.count("\n") == 1


def test_auto_address_of_a_cluster_that_is_gone_is_refused_quickly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where `ray start` records the address `auto` means
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{closed_port()}")
    start = time.monotonic()
    assert main(["tune", str(write_spec(tmp_path)), "--results", str(tmp_path / "r"), "--address", "auto"]) == 2
    assert time.monotonic() - start < 30 and "no Ray cluster at auto (" in capsys.readouterr().err


def test_a_trial_larger_than_the_local_cluster_is_refused_not_left_pending(tmp_path, capsys):
    spec = write_spec(tmp_path, resources={"cpu": 2, "gpu": 0})
    assert main(["tune", str(spec), "--results", str(tmp_path / "r"), "--num-cpus", "1"]) == 2
    err = capsys.readouterr().err
    assert f"resources.cpu in {spec}: a trial asks for 2 CPUs but the local Ray cluster has 1" in err
    assert "--num-cpus" in err and err.count("\n") == 1


def test_unreachable_tracking_uri_is_refused_before_ray_starts(tmp_path, capsys):
    code = main(["tune", str(write_spec(tmp_path)), "--results", str(tmp_path / "r"),
                 "--tracking-uri", f"http://127.0.0.1:{closed_port()}"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "tracking URI http://127.0.0.1:" in err and "unreachable" in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "ray").exists()


def test_resume_without_a_search_is_an_error(tmp_path, capsys):
    assert main(["tune", str(write_spec(tmp_path)), "--results", str(tmp_path / "r"), "--resume"]) == 2
    assert "no search of experiment 't' to resume" in capsys.readouterr().err


def test_best_without_a_store_or_with_an_unknown_experiment_is_an_error(tmp_path, capsys):
    assert main(["best", "--experiment", "nope", "--results", str(tmp_path)]) == 2
    assert "no MLflow tracking store" in capsys.readouterr().err
    from rbp.tuning import tracking

    uri = tracking.resolve_tracking_uri(None, tmp_path)
    tracking.ensure_experiment(tracking.client(uri), "exists", uri)
    assert main(["best", "--experiment", "nope", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown MLflow experiment 'nope' (known: exists)" in err and err.count("\n") == 1


# -- the recorder: one row and one closed run per trial, however often it ends -----------------
def test_recorder_records_each_end_once_with_its_status(tmp_path):
    from rbp.tuning import tracking
    from rbp.tuning.record import TrialRecorder

    uri = tracking.resolve_tracking_uri(None, tmp_path / "results")
    tracking.check_tracking_uri(uri)
    client = tracking.client(uri)
    experiment_id = tracking.ensure_experiment(client, "rec", uri)
    recorder = TrialRecorder(
        tracking_uri=uri, experiment="rec", experiment_id=experiment_id, search="rec-1", spec_path="s.yaml",
        searched=["train.lr"], runs_dir=tmp_path / "results" / "tune" / "rec" / "rows",
    )  # fmt: skip
    reports = Reports(tmp_path)
    config = {**TINY, "train.lr": 0.05}
    run_trial(config, reports)
    finished, stopped = reports.metrics[-1], reports.metrics[0]
    diverged = {**stopped, "diverged": True, "reason": "training diverged: loss is nan in epoch 1"}
    recorder.finalize("t-done", config, finished, reports.checkpoints[-1])
    recorder.finalize("t-done", config, finished, reports.checkpoints[-1])  # restarted and ended again
    recorder.finalize("t-asha", config, stopped, reports.checkpoints[0])
    recorder.finalize("t-nan", config, diverged)
    recorder.finalize("t-err", config, stopped, None, "ActorDiedError: the worker died")
    recorder.run_of("t-open", config)  # a trial whose driver died mid-run
    assert recorder.close_open_runs("KILLED") == 1

    rows = read_results(tmp_path / "results" / "tune" / "rec" / "rows").set_index("trial_id")
    assert sorted(rows.index) == ["t-asha", "t-done", "t-err", "t-nan"]
    assert rows["status"].to_dict() == {"t-asha": "early_stopped", "t-done": "finished", "t-err": "failed",
                                        "t-nan": "diverged"}  # fmt: skip
    assert rows.loc["t-done", "test_pgd2_acc"] >= 0 and rows.loc["t-done", "artifact_bytes"] > 0
    assert "nan" in rows.loc["t-nan", "reason"] and "ActorDiedError" in rows.loc["t-err", "reason"]
    runs = {r.data.tags[keys.TRIAL_TAG]: r for r in tracking.search_all(client, experiment_id)}
    assert len(runs) == 5 and runs["t-done"].info.run_id == rows.loc["t-done", "mlflow_run_id"]
    status = {trial: run.info.status for trial, run in runs.items()}
    assert status == {"t-done": "FINISHED", "t-asha": "FINISHED", "t-nan": "FAILED", "t-err": "FAILED",
                      "t-open": "KILLED"}  # fmt: skip
    assert runs["t-nan"].data.tags[keys.REASON_TAG].startswith("training diverged")
    assert runs["t-done"].data.tags[keys.SAMPLED_TAG] == '{"train.lr": 0.05}'


def test_recorder_hooks_return_before_their_work_which_runs_in_order_and_survives_a_failure(caplog, monkeypatch):
    import pickle
    import threading
    from types import SimpleNamespace

    from rbp.tuning.record import TrialRecorder

    recorder = TrialRecorder(
        tracking_uri="unused", experiment="e", experiment_id="0", search="s", spec_path="s.yaml", searched=[],
        runs_dir=Path("unused"),
    )  # fmt: skip
    release, done = threading.Event(), []

    def mark_running(self, trial_id, config):
        done.append(("start", trial_id, release.wait(timeout=30)))  # the hook has returned: released

    def log_result(self, trial_id, config, result, seconds):
        raise OSError("No space left on device")

    def finalize(self, trial_id, config, last, checkpoint, error=None):
        done.append(("end", trial_id, last["epoch"]))

    for name, work in {"_mark_running": mark_running, "_log_result": log_result, "finalize": finalize}.items():
        monkeypatch.setattr(TrialRecorder, name, work)
    trial = SimpleNamespace(trial_id="t1", config={"train.lr": 0.1}, last_result={"epoch": 3}, checkpoint=None)
    recorder.on_trial_start(0, [], trial)
    recorder.on_trial_result(0, [], trial, {"epoch": 3})
    recorder.on_trial_complete(0, [], trial)
    saved = pickle.loads(pickle.dumps(recorder))  # Ray saves the experiment state meanwhile
    release.set()  # only now may the first queued piece of work finish
    recorder.on_experiment_end([])
    assert done == [("start", "t1", True), ("end", "t1", 3)]
    assert "recording trial t1 failed (OSError: No space left on device)" in caplog.text
    assert saved._worker is None and saved.search == "s"


# -- the core does not need the tuning stack ----------------------------------------------------
def test_core_imports_neither_ray_nor_mlflow_and_tune_says_what_is_missing(tmp_path):
    import subprocess
    import sys

    spec = write_spec(tmp_path)
    code = f"""
import sys
for name in ("ray", "mlflow", "optuna"):
    sys.modules[name] = None  # as if not installed
import rbp.cli, rbp.training.trainer, rbp.runs.epochs, rbp.artefacts.load, rbp.evaluation, rbp.tuning, rbp.tuning.spec
from rbp.cli import main
assert main(["train", "--print-config"]) == 0
assert main(["tune", {str(spec)!r}, "--results", {str(tmp_path / "r")!r}]) == 2
assert main(["best", "--experiment", "x"]) == 2
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rbp tune needs the tuning extras" in done.stderr and "rbp best needs the tuning extras" in done.stderr


def test_pareto_figure_draws_the_searched_metric_and_refuses_a_missing_column(tmp_path):
    from rbp.ablation.figures import pareto
    from rbp.ablation.spec import FigureSpec

    front = tmp_path / "pareto.csv"
    pd.DataFrame({"kept_params": [100, 300], "final_val_pgd_acc": [0.5, 0.7]}).to_csv(front, index=False)
    line = pareto(FigureSpec(kind="pareto", source=front, metric="val_pgd_acc")).axes[0].lines[0]
    assert list(line.get_ydata()) == [50.0, 70.0] and line.get_drawstyle() == "steps-post"
    with pytest.raises(RbpError, match="no column 'test_pgd20_acc'"):
        pareto(FigureSpec(kind="pareto", source=front, metric="test_pgd20_acc"))


def test_format_table_cuts_the_widest_text_column_never_a_number():
    rows = [["x" * 80, "y" * 60, 0.123456789, 123456]]
    text = format_table(["a", "b", "value", "count"], rows, max_width=100)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "0.1235" in lines[2] and "123,456" in lines[2]  # numbers whole
    assert "…" in lines[2] and lines[2].startswith("x" * 20)
    assert format_table(["a"], [["short"]]) == "a\n-----\nshort"  # nothing to cut

"""The Python API a notebook uses: rbp.train, rbp.load_config, rbp.create_model, rbp.evaluate, rbp.load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import rbp

FAST = {"model": {"width": 8}, "train": {"epochs": 1}, "attack": {"steps": 2},
        "eval": {"val_pgd_steps": 2, "test_pgd_steps": 2}}  # fmt: skip


def test_import_rbp_is_light_and_the_api_is_there_when_used():
    code = "import sys, rbp; assert 'torch' not in sys.modules; rbp.Config; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # the schema is pydantic: still no torch
    assert {"train", "load_config", "create_model", "evaluate", "load", "Config"} <= set(rbp.__all__)


def test_train_returns_the_summary_of_the_config_with_its_overrides(tmp_path):
    summary = rbp.train(**FAST, run={"out_dir": str(tmp_path), "progress": False}, seed=1)
    cfg = rbp.load_config(tmp_path / summary["run_id"] / "config.yaml")
    assert cfg.seed == 1 and cfg.model.width == 8 and cfg.train.epochs == 1
    assert 0.0 <= summary["test_pgd2_acc"] <= summary["test_clean_acc"] <= 1.0
    again = rbp.train(config=cfg)  # the same config: its finished run, not trained again
    assert again == summary


def test_create_model_builds_any_architecture_in_any_mode_as_training_does():
    model = rbp.create_model("resnet18", mode="subnet", num_classes=10, density=0.01)
    from rbp.models import kept_parameters

    kept, total = kept_parameters(model)
    assert kept == pytest.approx(0.01 * total, rel=0.01)
    model.eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    dense = rbp.create_model("convnet", mode="dense", num_classes=4, input_shape=(1, 8, 8), model={"width": 4})
    assert dense(torch.rand(3, 1, 8, 8)).shape == (3, 4)


def test_evaluate_gives_clean_and_pgd_accuracy_of_a_loaded_model(tmp_path):
    summary = rbp.train(**FAST, run={"out_dir": str(tmp_path), "progress": False})
    model = rbp.load(tmp_path / summary["run_id"] / "best.pt")
    from rbp.data import load_splits

    test = load_splits(rbp.load_config(tmp_path / summary["run_id"] / "config.yaml").data).test
    torch.manual_seed(0)
    result = rbp.evaluate(model, test.x, test.y, eps=0.1, steps=2, step_size=0.025 * 2.5 * 2 / 2)
    assert result["clean_acc"] == summary["test_clean_acc"]
    assert 0.0 <= result["pgd_acc"] <= result["clean_acc"]

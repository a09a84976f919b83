"""run.deterministic: torch's determinism flags set per run, recorded in the run folder, out of the run id."""

import json
import os

import pytest
import torch

from rbp.base import files
from rbp.config.load import load_config
from rbp.runs.epochs import train_run
from rbp.training.determinism import CUBLAS_WORKSPACE_CONFIG, set_determinism

TINY = ["train.epochs=1", "model.width=8", "attack.steps=2", "eval.val_pgd_steps=2", "eval.test_pgd_steps=2"]
ENV = "CUBLAS_WORKSPACE_CONFIG"


@pytest.fixture(autouse=True)
def torch_flags():
    """The process-wide flags these tests change, restored afterwards; the cuBLAS variable starts unset."""
    cudnn = torch.backends.cudnn
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.pop(ENV, None),
    )
    yield
    algorithms, warn_only, cudnn.deterministic, cudnn.benchmark, env = saved
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    os.environ.pop(ENV, None)
    if env is not None:
        os.environ[ENV] = env


def test_a_deterministic_run_sets_the_flags_and_records_them(tmp_path):
    cfg = load_config(None, [*TINY, "run.deterministic=true", "run.progress=false", f"run.out_dir={tmp_path}"])
    train_run(cfg)  # trains, validates and tests: every op on the way has a deterministic kernel
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ[ENV] == CUBLAS_WORKSPACE_CONFIG
    recorded = json.loads((tmp_path / cfg.run_id() / files.DETERMINISM).read_text())
    assert recorded == {
        "deterministic_algorithms": True,
        "cudnn_deterministic": True,
        "cudnn_benchmark": False,
        "cublas_workspace_config": CUBLAS_WORKSPACE_CONFIG,
    }


def test_the_default_is_the_fast_path_and_undoes_an_earlier_deterministic_run():
    set_determinism(True, torch.device("cpu"))
    flags = set_determinism(False, torch.device("cuda"))  # flags only: no GPU needed to set them
    assert flags["cudnn_benchmark"] and torch.backends.cudnn.benchmark
    assert not flags["deterministic_algorithms"] and not torch.are_deterministic_algorithms_enabled()
    assert not flags["cudnn_deterministic"] and not torch.backends.cudnn.deterministic
    assert not set_determinism(False, torch.device("cpu"))["cudnn_benchmark"]  # cuDNN autotuning is for CUDA


def test_a_cublas_workspace_from_the_environment_is_kept():
    os.environ[ENV] = ":16:8"
    assert set_determinism(True, torch.device("cpu"))["cublas_workspace_config"] == ":16:8"
    assert os.environ[ENV] == ":16:8"


def test_deterministic_is_not_part_of_the_run_id():
    assert load_config(None, ["run.deterministic=true"]).run_id() == load_config(None, []).run_id()

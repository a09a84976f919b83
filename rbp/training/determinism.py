"""``run.deterministic``: torch's process-wide determinism switches, set for one run."""

from __future__ import annotations

import os

import torch

# The cuBLAS workspace that makes its results reproducible (CUDA's cuBLAS docs, "Results reproducibility");
# torch refuses a cuBLAS call in deterministic mode while CUBLAS_WORKSPACE_CONFIG is unset.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def set_determinism(deterministic: bool, device: torch.device) -> dict[str, bool | str | None]:
    """Set torch's determinism flags for a run on ``device``; returns the flags now in effect.

    ``deterministic``: deterministic algorithms only (an op without one raises rather than run),
    cuDNN without autotuning and in its deterministic mode, and ``CUBLAS_WORKSPACE_CONFIG`` set to
    :data:`CUBLAS_WORKSPACE_CONFIG` unless the environment sets it. Otherwise the fast path: no
    restriction, and cuDNN times its algorithms once on CUDA (shapes are fixed within a run).
    The flags are process-wide and every one is set either way, so that a run never inherits an
    earlier run's in the same process (a Ray worker trains trial after trial).
    """
    if deterministic:
        # Required by CUDA for deterministic cuBLAS. cuBLAS reads it when the process first uses it, so
        # it is set before the model reaches the device; a process that already ran cuBLAS must export it.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and device.type == "cuda"
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }

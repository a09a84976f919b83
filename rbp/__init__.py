"""rbp: robust binary subnetworks found by pruning randomly initialised ±1 networks.

``rbp.train``, ``rbp.load_config``, ``rbp.create_model``, ``rbp.evaluate`` (:mod:`rbp.api`),
``rbp.load`` and ``rbp.Config`` are imported when first used: ``import rbp`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rbp.base.version import __version__

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

    from rbp.api import create_model, evaluate, load_config, train
    from rbp.config.schema import Config

__all__ = ["Config", "__version__", "create_model", "evaluate", "load", "load_config", "train"]


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an exported ``.rbpz`` (or of a checkpoint), ready in eval mode on ``device``.

    Outputs are bit-identical to the trained model's on the same device and dtype. Bad files raise
    :class:`rbp.base.errors.RbpError` and return no model. Imports torch only when called.
    """
    from rbp.artefacts.load import load_any

    model, _ = load_any(path, device)
    return model


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use."""
    if name == "Config":
        from rbp.config.schema import Config

        return Config
    if name in ("train", "load_config", "create_model", "evaluate"):
        from rbp import api

        return getattr(api, name)
    raise AttributeError(f"module 'rbp' has no attribute {name!r}")

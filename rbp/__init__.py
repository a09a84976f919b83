"""rbp: robust binary subnetworks found by pruning randomly initialised ±1 networks."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch import nn

from rbp.base.version import __version__

__all__ = ["__version__", "load"]


def load(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an exported ``.rbpz`` (or of a checkpoint), ready in eval mode on ``device``.

    Outputs are bit-identical to the trained model's on the same device and dtype. Bad files raise
    :class:`rbp.base.errors.RbpError` and return no model. Imports torch only when called.
    """
    from rbp.artefacts.load import load_any

    model, _ = load_any(path, device)
    return model

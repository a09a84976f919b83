"""One loader for both kinds of model file: an ``.rbpz`` artefact or a ``.pt`` training checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rbp.artefacts.checkpoint import load_model
from rbp.artefacts.reader import is_artefact, load_artefact
from rbp.config.schema import Config


def load_any(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """An ``.rbpz`` artefact or a training checkpoint -> ``(model in eval mode on device, config)``."""
    if is_artefact(path):
        model, cfg, _ = load_artefact(path, device)
        return model, cfg
    model, cfg, _ = load_model(path, device)
    return model, cfg

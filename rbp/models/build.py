"""Build a model from a config: architecture + mode, normalisation first, last BN, densities, init."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from rbp.models.registry import ArchSpec, get_builder
from rbp.nn import LayerFactory, allocate, initialize, subnet_layers, weight_layers

if TYPE_CHECKING:
    from rbp.config import Config


class Normalize(nn.Module):
    """(x - mean) / std per channel; inputs are images in [0, 1], so attacks work in pixel units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Constants of the data set, derived from the config: not part of the state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(
    cfg: Config, num_classes: int, input_shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float]
) -> nn.Sequential:
    """``Sequential(normalize, body, last_bn)`` with densities allocated and weights seeded.

    Layer names (``body.<...>``) are the keys of per-layer densities and of the weight generators.
    """
    factory = LayerFactory(mode=cfg.model.mode, activation=cfg.model.activation)
    spec = ArchSpec(num_classes, tuple(input_shape), cfg.model.width, cfg.model.stem)
    last_bn = nn.BatchNorm1d(num_classes, affine=False) if cfg.model.last_bn == "nonaffine" else nn.Identity()
    model = nn.Sequential()
    model.add_module("normalize", Normalize(mean, std))
    model.add_module("body", get_builder(cfg.model.arch)(factory, spec))
    model.add_module("last_bn", last_bn)
    layers = subnet_layers(model)
    if layers:
        shapes = {name: tuple(layer.weight.shape) for name, layer in layers.items()}
        densities = allocate(
            shapes, cfg.sparsity.density, cfg.sparsity.allocation, cfg.sparsity.p, cfg.sparsity.layer_densities
        )
        for name, layer in layers.items():
            layer.set_density(densities[name])
    initialize(
        model,
        seed=cfg.seed,
        scheme=cfg.init.scheme,
        alpha=cfg.init.alpha,
        score_scale=cfg.init.score_scale,
        score_fan_in=cfg.init.score_fan_in,
    )
    return model


def layer_report(model: nn.Module) -> list[dict]:
    """Per weight layer: name, shape, weights, density, kept (dense and binary layers keep all)."""
    rows = []
    for name, layer in weight_layers(model).items():
        n = layer.weight.numel()
        kept = getattr(layer, "kept", n)
        rows.append({"layer": name, "shape": list(layer.weight.shape), "weights": n, "density": kept / n, "kept": kept})
    return rows


def kept_parameters(model: nn.Module) -> tuple[int, int]:
    """(kept, total) weights over every conv/linear layer."""
    rows = layer_report(model)
    return sum(r["kept"] for r in rows), sum(r["weights"] for r in rows)

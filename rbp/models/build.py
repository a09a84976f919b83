"""Build a model from a config: architecture + mode, normalisation first, last BN, densities, init."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from rbp.base.errors import RbpError
from rbp.models.probe import parameter_count
from rbp.models.registry import ArchSpec, get_builder
from rbp.nn import LayerFactory, allocate, group_masks, initialize, subnet_layers, weight_layers
from rbp.nn.lcnn import LipschitzBatchNorm1d

if TYPE_CHECKING:
    from rbp.config.schema import Config


class Normalize(nn.Module):
    """(x - mean) / std per channel; inputs are images in [0, 1], so attacks work in pixel units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Constants of the data set, derived from the config: not part of the state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _last_bn(kind: str, num_classes: int) -> nn.Module:
    if kind == "nonaffine":
        return nn.BatchNorm1d(num_classes, affine=False)
    return LipschitzBatchNorm1d(num_classes) if kind == "lipschitz" else nn.Identity()


@torch.no_grad()
def _adopt_pretrained(model: nn.Module, weights: Mapping[str, torch.Tensor] | None, score_scale: float) -> None:
    """HYDRA-style start: keep a dense model's weights frozen, scores ∝ |w| (magnitude pruning)."""
    if weights is None:
        raise ValueError("init.scheme pretrained needs the dense model's state dict")
    for name, layer in subnet_layers(model).items():
        w = weights.get(f"{name}.weight")
        if w is None or w.shape != layer.weight.shape:
            raise ValueError(f"the pretrained model has no weight of shape {tuple(layer.weight.shape)} for {name}")
        layer.weight.copy_(w)
        layer.scores.copy_(w.abs() / w.abs().max().clamp_min(1e-12) * score_scale)


def build_model(
    cfg: Config,
    num_classes: int,
    input_shape: tuple[int, int, int],
    mean: Sequence[float],
    std: Sequence[float],
    pretrained: Mapping[str, torch.Tensor] | None = None,
) -> nn.Sequential:
    """``Sequential(normalize, body, last_bn)`` with densities allocated and weights seeded.

    Layer names (``body.<...>``) are the keys of per-layer densities and of the weight generators.
    ``pretrained`` is the dense state dict that ``init.scheme: pretrained`` keeps as frozen weights.
    """
    check_fits_memory(cfg, num_classes, input_shape)
    factory = LayerFactory(mode=cfg.model.mode, activation=cfg.model.activation, norm=cfg.model.norm)
    spec = ArchSpec(num_classes, tuple(input_shape), cfg.model.width, cfg.model.stem)
    last_bn = _last_bn(cfg.model.last_bn, num_classes)
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
        group_masks(model)
    initialize(
        model,
        seed=cfg.seed,
        scheme="binary" if cfg.init.scheme == "pretrained" else cfg.init.scheme,
        alpha=cfg.init.alpha,
        score_scale=cfg.init.score_scale,
        score_fan_in=cfg.init.score_fan_in,
    )
    if cfg.init.scheme == "pretrained":
        _adopt_pretrained(model, pretrained, cfg.init.score_scale)
    if cfg.model.spectral_norm:
        for layer in weight_layers(model).values():
            spectral_norm(layer)
    return model


# Bytes per parameter while training at FP32: weight, score, their gradients, optimiser state
# (activations come on top). Compared with the machine's physical memory before anything is allocated,
# so a mistyped width is one error line, not an allocator traceback or the kernel's OOM killer.
_TRAIN_BYTES_PER_PARAMETER = 16


def check_fits_memory(cfg: Config, num_classes: int, input_shape: tuple[int, int, int]) -> None:
    """Raise :class:`RbpError` naming ``model.width`` if training the model cannot fit in memory.

    Needs the data set's shape only, not its files: the trainer checks before it reads any data.
    """
    factory = LayerFactory(mode=cfg.model.mode, activation=cfg.model.activation, norm=cfg.model.norm)
    spec = ArchSpec(num_classes, tuple(input_shape), cfg.model.width, cfg.model.stem)
    count = parameter_count(cfg.model.arch, factory, spec)
    need, have = count * _TRAIN_BYTES_PER_PARAMETER, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have:
        raise RbpError(
            f"model.width: {cfg.model.arch} of width {spec.width} has {count:,} parameters, about "
            f"{need / 1e9:,.0f} GB to train, more than this machine's {have / 1e9:,.0f} GB of memory; "
            "choose a smaller model.width (or input shape)"
        )


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


def first_non_finite(model: nn.Module) -> str | None:
    """Name of the first floating parameter or buffer of ``model`` holding a NaN or inf, else None."""
    tensors = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in tensors]).tolist()  # one host sync
    return next((name for (name, _), ok in zip(tensors, finite, strict=True) if not ok), None)

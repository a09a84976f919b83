"""Model probes: what an architecture would hold, built on the meta device (no memory, no weights drawn)
or in the dense mode only to count weights; they need no config and no data."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rbp.models.registry import ArchSpec, get_builder
from rbp.nn import LayerFactory, subnet_layers, weight_layers

if TYPE_CHECKING:
    from rbp.config.schema import Config


def parameter_count(arch: str, factory: LayerFactory, spec: ArchSpec) -> int:
    """Parameters and buffers of the body of ``arch``, counted on the meta device."""
    with torch.device("meta"):
        body = get_builder(arch)(factory, spec)
    return sum(t.numel() for t in (*body.parameters(), *body.buffers()))


def subnet_layer_names(
    mode: str, arch: str, width: int | None, stem: str, classes: int, shape: tuple[int, ...]
) -> list[str]:
    """Names of the subnet layers (the keys of per-layer densities) of an architecture, built on the
    meta device: no memory, no weights drawn."""
    factory = LayerFactory(mode=mode)
    with torch.device("meta"):
        body = get_builder(arch)(factory, ArchSpec(classes, tuple(shape), width, stem))
    return [f"body.{name}" for name in subnet_layers(body)]


def dense_width_for(cfg: Config, num_classes: int, input_shape: tuple[int, int, int], target: int) -> int:
    """Width of the dense ``cfg.model.arch`` whose conv/linear weight count is closest to ``target``.

    For the ``small_dense`` baseline: a full-precision network narrowed to a subnet's kept count.
    """
    factory = LayerFactory(mode="dense")

    def weights(width: int) -> int:
        body = get_builder(cfg.model.arch)(factory, ArchSpec(num_classes, tuple(input_shape), width, cfg.model.stem))
        return sum(layer.weight.numel() for layer in weight_layers(body).values())

    low, high = 1, max(2, cfg.model.width or 64)
    while weights(high) < target:  # weight count grows with width: bracket, then bisect
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if weights(middle) < target else (low, middle)
    return min((low, high), key=lambda w: abs(weights(w) - target))

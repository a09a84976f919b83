"""The one size account of a model: what its ``.rbpz`` holds part by part, and the bits the tables compare."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from rbp.artefacts.rbpz_format import MEMBERS, ZIP_END, ZIP_PER_MEMBER, Artefact
from rbp.artefacts.writer import encode, encode_masks
from rbp.config.schema import Config
from rbp.nn import subnet_layers, weight_layers


def binary_entropy(p: float) -> float:
    """H(p) in bits; 0 at p = 0 or 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@dataclass(frozen=True)
class SizeBreakdown:
    """Sizes in bits of one model: dense references and the ``.rbpz`` subnet, part by part.

    ``dense_fp32_bits``: 32 bits per conv/linear weight; ``binary_dense_bits``: 1 bit per weight
    (neither counts BN statistics: ``stats_bits`` holds them). The subnet is
    ``mask_bits + stats_bits + header_bits + container_bits`` and equals the file size.
    ``entropy_bits``: sum over layers of n·H(kept / n), the bound for masks of that density.
    """

    weights: int
    kept: int
    dense_fp32_bits: int
    binary_dense_bits: int
    mask_bits: int
    stats_bits: int
    header_bits: int
    container_bits: int
    entropy_bits: float

    @property
    def subnet_bits(self) -> int:
        return self.mask_bits + self.stats_bits + self.header_bits + self.container_bits

    @property
    def subnet_bytes(self) -> int:
        return self.subnet_bits // 8


def size_breakdown(artefact: Artefact) -> SizeBreakdown:
    """The one size account of a subnet artefact (used by export, ``rbp info`` and the tables)."""
    layers = artefact.header["layers"]
    weights = sum(math.prod(layer["shape"]) for layer in layers)
    entropy = sum(math.prod(ly["shape"]) * binary_entropy(ly["kept"] / math.prod(ly["shape"])) for ly in layers)
    container = sum(ZIP_PER_MEMBER + 2 * len(name.encode()) for name in MEMBERS) + ZIP_END
    return SizeBreakdown(
        weights=weights,
        kept=sum(layer["kept"] for layer in layers),
        dense_fp32_bits=32 * weights,
        binary_dense_bits=weights,
        mask_bits=8 * len(artefact.masks_blob),
        stats_bits=8 * len(artefact.state_blob),
        header_bits=8 * len(artefact.header_bytes),
        container_bits=8 * container,
        entropy_bits=entropy,
    )


def model_size(
    model: nn.Module, cfg: Config, data_info: dict[str, Any], metrics: dict[str, Any] | None = None
) -> SizeBreakdown:
    """:func:`size_breakdown` of the artefact ``model`` would export to (nothing is written)."""
    return size_breakdown(encode(model, cfg, data_info, metrics))


def storage_bits(model: nn.Module, cfg: Config, data_info: dict[str, Any]) -> int:
    """Bits to store ``model`` in its most compact faithful form: the one number the tables compare.

    A seeded subnet: its ``.rbpz`` (:func:`model_size`). A HYDRA-style subnet (frozen weights from
    a dense model): its masks + 32 bits per kept weight + the 32-bit state. Dense: 32 bits per
    floating-point state value; binary: 1 bit per conv/linear weight and 32 bits for the rest.
    """
    if cfg.model.mode == "subnet" and cfg.init.scheme != "pretrained":
        return model_size(model, cfg, data_info).subnet_bits
    tensors = {k: t for k, t in model.state_dict().items() if t.is_floating_point()}
    if cfg.model.mode == "subnet":
        layers = subnet_layers(model)
        masks_blob = encode_masks(model)[1]
        frozen = {f"{name}.{kind}" for name in layers for kind in ("weight", "scores")}
        rest = sum(32 * t.numel() for k, t in tensors.items() if k not in frozen)
        return 8 * len(masks_blob) + 32 * sum(layer.kept for layer in layers.values()) + rest
    total = sum(32 * t.numel() for t in tensors.values())
    if cfg.model.mode == "binary":
        total -= 31 * sum(layer.weight.numel() for layer in weight_layers(model).values())
    return total

"""Layers whose weights are not ordinary trained parameters.

Subnet layers (the method): a frozen weight ``w`` (buffer, every entry ±s) and a trained
``scores`` tensor of the same shape. Forward uses ``w * mask`` where the mask keeps the
``kept = floor(density * n)`` entries with the largest ``|scores|``; backward hands the mask's
gradient to ``|scores|`` unchanged (straight-through), and so to ``scores`` through the ``abs``.

Binary layers (the BNN baseline): a latent real weight in [-1, 1]; forward uses
``scale * sign(latent)``; backward is straight-through where ``|latent| <= 1``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def topk_masks(
    magnitudes: Sequence[torch.Tensor], kept: Sequence[int], method: Literal["sort", "topk"] | None = None
) -> list[torch.Tensor]:
    """0/1 masks (dtype and shape of each ``magnitudes[i]``) with exactly ``kept[i]`` ones at its largest entries.

    ``sort`` (the default on a GPU): one sort for all tensors. Non-negative float32 values order
    like their bit patterns read as integers, so the int64 key ``(i << 31) | bits`` sorts by
    (tensor, value), and tensor ``i``'s kept entries are the last ``kept[i]`` of its block.
    ``topk`` (the default on the CPU, where a long sort is slow): one ``topk`` per tensor. Both
    keep the same entries unless values tie at a threshold (bench/mask_threshold.py times them).
    magnitudes: non-negative, finite, on one device.
    """
    device = magnitudes[0].device
    if (method or ("sort" if device.type == "cuda" else "topk")) == "topk":
        masks = []
        for m, k in zip(magnitudes, kept, strict=True):
            mask = torch.zeros(m.numel(), device=device, dtype=m.dtype)
            mask[m.flatten().topk(k, sorted=False).indices] = 1.0
            masks.append(mask.view_as(m))
        return masks
    counts = tuple(m.numel() for m in magnitudes)
    block_key, keep_sorted = _sort_layout(counts, tuple(kept), device)
    bits = torch.cat([m.detach().float().flatten() for m in magnitudes]).view(torch.int32)
    order = torch.sort(bits.long() | block_key).indices
    flat = torch.empty(len(keep_sorted), device=device, dtype=magnitudes[0].dtype)
    flat[order] = keep_sorted.to(flat.dtype)
    return [part.view_as(m) for part, m in zip(flat.split(counts), magnitudes, strict=True)]


@functools.lru_cache(maxsize=8)
def _sort_layout(counts: tuple[int, ...], kept: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(block index << 31 per entry, whether each sorted position is kept): constants of a model.

    Cached so that a training step makes no host-to-device copies (CUDA-graph capture forbids them).
    """
    if any(not 0 < k <= n for k, n in zip(kept, counts, strict=True)):
        raise ValueError(f"kept counts {kept} must be in [1, numel] for tensors of {counts} entries")
    sizes = torch.tensor(counts, device=device)
    block = torch.repeat_interleave(torch.arange(len(counts), device=device), sizes, output_size=sum(counts))
    first_kept = sizes.cumsum(0) - torch.tensor(kept, device=device)  # sorted position of a block's first kept
    return block << 31, torch.arange(sum(counts), device=device) >= first_kept[block]


class _TopKMasks(torch.autograd.Function):
    """``topk_masks`` of several tensors; each mask's gradient passes straight through to its tensor."""

    @staticmethod
    def forward(ctx, kept: tuple[int, ...], *magnitudes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(topk_masks(magnitudes, kept))

    @staticmethod
    def backward(ctx, *grad_masks: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return (None, *grad_masks)


class _SignSTE(torch.autograd.Function):
    """sign with sign(0) = +1; gradient passes where |x| <= 1 (BinaryConnect's clipped STE)."""

    @staticmethod
    def forward(ctx, latent: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(latent)
        return torch.where(latent >= 0, 1.0, -1.0).to(latent.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (latent,) = ctx.saved_tensors
        return grad * (latent.abs() <= 1).to(grad.dtype)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


class _TransformedWeight:
    """A torch conv or linear layer that computes with ``effective_weight()`` instead of ``weight``.

    Mixed in before ``nn.Conv2d`` / ``nn.Linear``; ``_setup()`` runs once the torch layer exists.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._setup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self, nn.Conv2d):
            return self._conv_forward(x, self.effective_weight(), self.bias)
        return F.linear(x, self.effective_weight(), self.bias)


class SubnetMixin(_TransformedWeight):
    """Frozen ``weight`` buffer + trained ``scores``; the layer's ``density`` sets the kept count.

    The masked weight is cached: scores change only at an optimiser step, so the k+1 forwards
    of a PGD-k step reuse one mask and one ``weight * mask`` (in the autocast dtype, if any).
    The cache key holds the scores' and weight's storage and in-place version counters, the
    density, grad mode and autocast dtype, so any change of them recomputes it; a backward pass
    through the cached tensor (which frees its graph) drops it. With the cache on, a layer of a
    :class:`MaskGroup` takes its mask from the group (one sort for the whole model, cached the same
    way). ``cache_mask = False`` disables both: every forward sorts this layer's scores alone.
    """

    weight: torch.Tensor
    scores: nn.Parameter
    density: float
    cache_mask: bool

    def _setup(self) -> None:
        frozen = self.weight.detach()
        del self.weight  # drop the Parameter, keep the tensor as a buffer: it is never trained
        self.register_buffer("weight", frozen)
        self.scores = nn.Parameter(torch.empty_like(frozen))
        self.density = 1.0
        self.cache_mask = True
        self._cached: tuple[tuple, torch.Tensor] | None = None
        self._group: MaskGroup | None = None
        self._group_index = 0

    def set_density(self, density: float) -> None:
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.density = float(density)

    @property
    def kept(self) -> int:
        """Number of weights the mask keeps: floor(density * n), at least one."""
        return max(1, math.floor(self.density * self.weight.numel()))

    def mask(self) -> torch.Tensor:
        """0/1 tensor shaped like ``weight`` with exactly ``kept`` ones (STE to ``scores``)."""
        if self.cache_mask and self._group is not None:
            return self._group.masks()[self._group_index]
        return _TopKMasks.apply((self.kept,), self.scores.abs())[0]

    def _mask_key(self) -> tuple:
        """What the mask depends on: the scores (storage, in-place version), density and grad mode."""
        scores = self.scores
        return scores.data_ptr(), scores._version, self.density, torch.is_grad_enabled() and scores.requires_grad

    def _cache_key(self) -> tuple:
        weight = self.weight
        return (*self._mask_key(), weight.data_ptr(), weight._version, _autocast_dtype(weight.device.type))

    def _drop_cache(self, grad: torch.Tensor) -> None:
        self._cached = None

    def __getstate__(self) -> dict:
        # The cached tensor belongs to a graph: copies and pickles start without it.
        return {**self.__dict__, "_cached": None}

    # Eager under torch.compile (compile_model marks it): the cache's key reads storage pointers and
    # version counters, which a compiled graph cannot guard on; the convolutions around it still compile.
    def effective_weight(self) -> torch.Tensor:
        """``weight * mask`` (cast to the autocast dtype when autocast is on), cached as described above."""
        key = self._cache_key() if self.cache_mask else None
        if key is not None and self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        masked = self.weight * self.mask()
        if key is not None and key[-1] is not None:
            masked = masked.to(key[-1])
        if key is not None:
            if masked.requires_grad:
                masked.register_hook(self._drop_cache)
            self._cached = (key, masked)
        return masked

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4g}"


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` with :meth:`SubnetMixin.effective_weight` kept eager.

    The mark is set here, not by a decorator at import: ``torch.compiler.disable`` imports
    ``torch._dynamo`` (seconds: bench/RESULTS.md), which processes that never train would pay at import
    (``rbp eval``, ``rbp export``, the ``rbp tune`` driver). Training pays it anyway: torch's
    optimisers import it when constructed.
    """
    if not getattr(SubnetMixin.effective_weight, "_rbp_eager", False):
        eager = torch.compiler.disable(SubnetMixin.effective_weight)
        eager._rbp_eager = True
        SubnetMixin.effective_weight = eager
    return torch.compile(model)


class SubnetConv2d(SubnetMixin, nn.Conv2d):
    """``nn.Conv2d`` as a subnet layer (:class:`SubnetMixin`)."""


class SubnetLinear(SubnetMixin, nn.Linear):
    """``nn.Linear`` as a subnet layer (:class:`SubnetMixin`)."""


class MaskGroup:
    """The subnet layers of one model, whose masks come from one :func:`topk_masks` sort.

    Scores change together (at an optimiser step), so the first layer to need a mask after a
    change computes every layer's, and the rest reuse them: the tuple is cached under the key of
    every member (see :meth:`SubnetMixin._mask_key`) and dropped when a backward pass reaches it.
    """

    def __init__(self, layers: Sequence[SubnetMixin]) -> None:
        self.layers = list(layers)
        self._cached: tuple[tuple, tuple[torch.Tensor, ...]] | None = None
        for index, layer in enumerate(self.layers):
            layer._group, layer._group_index = self, index

    def masks(self) -> tuple[torch.Tensor, ...]:
        key = tuple(layer._mask_key() for layer in self.layers)
        if self._cached is None or self._cached[0] != key:
            kept = tuple(layer.kept for layer in self.layers)
            masks = _TopKMasks.apply(kept, *(layer.scores.abs() for layer in self.layers))
            for mask in masks:
                if mask.requires_grad:
                    mask.register_hook(self._drop_cache)
            self._cached = (key, masks)
        return self._cached[1]

    def _drop_cache(self, grad: torch.Tensor) -> None:
        self._cached = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cached": None}


def group_masks(model: nn.Module) -> MaskGroup | None:
    """Let every subnet layer of ``model`` take its mask from one shared sort (None: no subnet layers)."""
    layers = list(subnet_layers(model).values())
    return MaskGroup(layers) if layers else None


class BinaryMixin(_TransformedWeight):
    """Latent real ``weight`` (trained, kept in [-1, 1]); forward uses ``scale * sign(weight)``."""

    weight: nn.Parameter
    scale: torch.Tensor

    def _setup(self) -> None:
        self.register_buffer("scale", torch.ones(()))

    def effective_weight(self) -> torch.Tensor:
        return _SignSTE.apply(self.weight) * self.scale

    @torch.no_grad()
    def clip_(self) -> None:
        """Keep the latent weight in [-1, 1] (call after every optimiser step)."""
        self.weight.clamp_(-1.0, 1.0)


class BinaryConv2d(BinaryMixin, nn.Conv2d):
    """``nn.Conv2d`` as a BNN layer (:class:`BinaryMixin`)."""


class BinaryLinear(BinaryMixin, nn.Linear):
    """``nn.Linear`` as a BNN layer (:class:`BinaryMixin`)."""


def weight_layers(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """Every convolution and linear layer of ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def subnet_layers(model: nn.Module) -> dict[str, SubnetMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SubnetMixin)}


def set_mask_cache(model: nn.Module, enabled: bool) -> None:
    """Turn the masked-weight cache of every subnet layer of ``model`` on or off."""
    for layer in subnet_layers(model).values():
        layer.cache_mask = enabled
    forget_masks(model)


def forget_masks(model: nn.Module) -> None:
    """Drop every cached mask and masked weight of ``model``.

    For score updates the version counters cannot see: a replayed CUDA graph changes the scores
    in place without Python knowing, so whoever replays one calls this afterwards.
    """
    for layer in subnet_layers(model).values():
        layer._cached = None
        if layer._group is not None:
            layer._group._cached = None


def clip_binary_weights(model: nn.Module) -> None:
    """After an optimiser step: clip every binary layer's latent weight to [-1, 1]."""
    for module in model.modules():
        if isinstance(module, BinaryMixin):
            module.clip_()

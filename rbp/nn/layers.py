"""Layers whose weights are not ordinary trained parameters.

Subnet layers (the method): a frozen weight ``w`` (buffer, every entry ±s) and a trained
``scores`` tensor of the same shape. Forward uses ``w * mask`` where the mask keeps the
``kept = floor(density * n)`` entries with the largest ``|scores|``; backward hands the mask's
gradient to ``|scores|`` unchanged (straight-through), and so to ``scores`` through the ``abs``.

Binary layers (the BNN baseline): a latent real weight in [-1, 1]; forward uses
``scale * sign(latent)``; backward is straight-through where ``|latent| <= 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _TopKMask(torch.autograd.Function):
    """0/1 mask of the ``kept`` largest entries; gradient passes straight through."""

    @staticmethod
    def forward(ctx, magnitudes: torch.Tensor, kept: int) -> torch.Tensor:
        mask = torch.zeros(magnitudes.numel(), dtype=magnitudes.dtype, device=magnitudes.device)
        mask[magnitudes.flatten().topk(kept, sorted=False).indices] = 1.0
        return mask.view_as(magnitudes)

    @staticmethod
    def backward(ctx, grad_mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad_mask, None


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


class SubnetMixin:
    """Frozen ``weight`` buffer + trained ``scores``; the layer's ``density`` sets the kept count.

    The masked weight is cached: scores change only at an optimiser step, so the k+1 forwards
    of a PGD-k step reuse one top-k and one ``weight * mask`` (in the autocast dtype, if any).
    The cache key holds the scores' and weight's storage and in-place version counters, the
    density, grad mode and autocast dtype, so any change of them recomputes it; a backward pass
    through the cached tensor (which frees its graph) drops it. ``cache_mask = False`` disables it.
    """

    weight: torch.Tensor
    scores: nn.Parameter
    density: float
    cache_mask: bool

    def _make_subnet(self) -> None:
        frozen = self.weight.detach()
        del self.weight  # drop the Parameter, keep the tensor as a buffer: it is never trained
        self.register_buffer("weight", frozen)
        self.scores = nn.Parameter(torch.empty_like(frozen))
        self.density = 1.0
        self.cache_mask = True
        self._cached: tuple[tuple, torch.Tensor] | None = None

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
        return _TopKMask.apply(self.scores.abs(), self.kept)

    def _cache_key(self) -> tuple:
        scores, weight = self.scores, self.weight
        grad = torch.is_grad_enabled() and scores.requires_grad
        return (scores.data_ptr(), scores._version, weight.data_ptr(), weight._version, self.density, grad,
                _autocast_dtype(weight.device.type))  # fmt: skip

    def _drop_cache(self, grad: torch.Tensor) -> None:
        self._cached = None

    def __getstate__(self) -> dict:
        # The cached tensor belongs to a graph: copies and pickles start without it.
        return {**self.__dict__, "_cached": None}

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


class SubnetConv2d(SubnetMixin, nn.Conv2d):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._make_subnet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class SubnetLinear(SubnetMixin, nn.Linear):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._make_subnet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


class BinaryMixin:
    """Latent real ``weight`` (trained, kept in [-1, 1]); forward uses ``scale * sign(weight)``."""

    weight: nn.Parameter
    scale: torch.Tensor

    def _make_binary(self) -> None:
        self.register_buffer("scale", torch.ones(()))

    def effective_weight(self) -> torch.Tensor:
        return _SignSTE.apply(self.weight) * self.scale

    @torch.no_grad()
    def clip_(self) -> None:
        """Keep the latent weight in [-1, 1] (call after every optimiser step)."""
        self.weight.clamp_(-1.0, 1.0)


class BinaryConv2d(BinaryMixin, nn.Conv2d):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._make_binary()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class BinaryLinear(BinaryMixin, nn.Linear):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._make_binary()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)


def weight_layers(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """Every convolution and linear layer of ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def subnet_layers(model: nn.Module) -> dict[str, SubnetMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SubnetMixin)}


def set_mask_cache(model: nn.Module, enabled: bool) -> None:
    """Turn the masked-weight cache of every subnet layer of ``model`` on or off."""
    for layer in subnet_layers(model).values():
        layer.cache_mask = enabled
        layer._cached = None


def clip_binary_weights(model: nn.Module) -> None:
    """After an optimiser step: clip every binary layer's latent weight to [-1, 1]."""
    for module in model.modules():
        if isinstance(module, BinaryMixin):
            module.clip_()

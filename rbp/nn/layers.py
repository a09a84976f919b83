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


class SubnetMixin:
    """Frozen ``weight`` buffer + trained ``scores``; the layer's ``density`` sets the kept count."""

    weight: torch.Tensor
    scores: nn.Parameter
    density: float

    def _make_subnet(self) -> None:
        frozen = self.weight.detach()
        del self.weight  # drop the Parameter, keep the tensor as a buffer: it is never trained
        self.register_buffer("weight", frozen)
        self.scores = nn.Parameter(torch.empty_like(frozen))
        self.density = 1.0

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

    def effective_weight(self) -> torch.Tensor:
        return self.weight * self.mask()

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


def clip_binary_weights(model: nn.Module) -> None:
    """After an optimiser step: clip every binary layer's latent weight to [-1, 1]."""
    for module in model.modules():
        if isinstance(module, BinaryMixin):
            module.clip_()

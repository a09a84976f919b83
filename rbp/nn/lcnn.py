"""Low-curvature network (LCNN) parts: centered softplus, Lipschitz-constrained batch norm, penalty.

The "robust by architecture" reference: a network whose curvature is bounded by construction and
by a penalty, trained without adversarial examples (Srinivas et al., 2022). Its parts are also
options of every model (``model.activation``, ``model.norm``, ``model.last_bn``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CenteredSoftplus(nn.Module):
    """``y = (softplus(b·x) - log 2) / b`` with a learned ``b > 0`` (stored as log b, init b = 5).

    Passes through 0 at 0 like ReLU; its curvature is bounded by ``b / 4``.
    """

    def __init__(self, init_b: float = 5.0) -> None:
        super().__init__()
        self.log_b = nn.Parameter(torch.tensor(math.log(init_b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.log_b.exp()
        return (F.softplus(b * x) - math.log(2.0)) / b


class _LipschitzBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Non-affine batch norm whose per-channel gain ``1/sqrt(var + eps)`` is capped at a learned gamma.

    ``var`` is the batch variance in train mode and the running variance in eval mode; gamma is one
    learned scalar per layer (stored as log gamma, init 1).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False, track_running_stats=True)
        self.log_gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalized = super().forward(x)
        channel_dims = [d for d in range(x.dim()) if d != 1]
        var = x.var(dim=channel_dims, unbiased=False) if self.training else self.running_var
        std = (var + self.eps).sqrt()
        # gain min(1/std, gamma) instead of 1/std: scale the normalised output by min(1, gamma·std).
        factor = torch.clamp(self.log_gamma.exp() * std, max=1.0)
        return normalized * factor.view(1, -1, *([1] * (x.dim() - 2)))


class LipschitzBatchNorm1d(_LipschitzBatchNorm, nn.BatchNorm1d):
    pass


class LipschitzBatchNorm2d(_LipschitzBatchNorm, nn.BatchNorm2d):
    pass


def curvature_penalty(model: nn.Module) -> torch.Tensor:
    """``sum(b)`` over centered softplus layers + ``sum(|log gamma|)`` over Lipschitz batch norms."""
    terms = [m.log_b.exp() for m in model.modules() if isinstance(m, CenteredSoftplus)]
    terms += [m.log_gamma.abs() for m in model.modules() if isinstance(m, _LipschitzBatchNorm)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()

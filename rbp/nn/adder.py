"""AdderNet layers (Chen et al., "AdderNet", CVPR 2020): every output is minus an L1 distance.

``AdderConv2d`` / ``AdderLinear`` keep full-precision weights ``w`` (a conv's filters, a linear's
rows) and output ``y = -Σ_j |x_j - w_j|`` over each input patch / input vector: additions and
absolute values only, no multiplication. The factory follows each with a batch norm, as the paper
requires (the outputs are large and negative until normalised).

Gradients. With ``D = w - x`` the exact derivatives are ``dy/dx = sign(D)`` and ``dy/dw = -sign(D)``.
The published training rules (followed here) replace them by

- weights: the full-precision ``-D = x - w`` instead of ``-sign(D)`` (paper eq. 5),
- inputs: ``HardTanh(D)`` (``D`` clipped to [-1, 1]) instead of ``sign(D)`` (paper eq. 6),
- and scale each layer's weight gradient by ``η·√k / ‖∇w‖₂`` (``k`` weights; paper eq. 8):
  :func:`scale_adder_gradients`, which the Trainer calls between backward and optimiser step
  (on the summed gradient of the batch; the reference code normalises inside each backward call).

Training's attack sees the same surrogate input gradient (the clipped one): the model is trained
against the attack it can see. Evaluation must not: inside :func:`exact_gradients` every adder
layer backpropagates the exact ``sign`` form for inputs and weights, i.e. the autograd gradient of
the forward, so a model cannot look robust because its gradient is a surrogate.
``rbp.evaluation`` wraps every evaluation (clean/PGD accuracy, AutoAttack) in it.

Where this departs from the paper / reference code (huawei-noah/AdderNet):
- every conv and linear layer is an adder layer, the first conv and the classifier included: the
  reference ResNet-20 keeps both as multiplication convs (its classifier a 1x1 conv followed by
  batch norm; here the classifier is followed by the model's ``last_bn``, which adder mode requires);
- the weights start Kaiming-normal (``init.scheme: kaiming_normal``), not N(0, 1);
- the adaptive scale applies to the weights only, not to biases (the paper states it for filters).

Memory: the conv is ``unfold`` + ``torch.cdist(p=1)``, whose forward builds no (rows, out, in)
tensor; the exact backward (cdist's own) and the clipped input gradient run over chunks of rows,
at most :data:`CHUNK_ELEMENTS` (rows x out x in) elements at a time; the full-precision weight
gradient is a matmul.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ELEMENTS = 2**22  # elements of one backward chunk (rows x out x in): 16 MiB at float32


def _clipped_input_grad(grad: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``Σ_o grad[p, o]·HardTanh(weight[o, j] - rows[p, j])`` as (P, J), over chunks of rows.

    grad: (P, O); rows: (P, J); weight: (O, J). A chunk's (p, O, J) term has at most
    :data:`CHUNK_ELEMENTS` elements.
    """
    out = torch.empty_like(rows)
    step = max(1, CHUNK_ELEMENTS // max(1, weight.numel()))
    for start in range(0, rows.shape[0], step):
        clipped = (weight.unsqueeze(0) - rows[start : start + step].unsqueeze(1)).clamp_(-1.0, 1.0)  # (p, O, J)
        out[start : start + step] = torch.bmm(grad[start : start + step].unsqueeze(1), clipped).squeeze(1)
    return out


class _NegativeL1(torch.autograd.Function):
    """(P, J) rows, (O, J) weight -> (P, O) ``-Σ_j |rows[p, j] - weight[o, j]|`` with AdderNet's training rules."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows, weight)
        return -torch.cdist(rows, weight, p=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rows, weight = ctx.saved_tensors
        grad_rows = _clipped_input_grad(grad, rows, weight) if ctx.needs_input_grad[0] else None
        # Full-precision rule Σ_p grad[p, o]·(x[p, j] - w[o, j]): one matmul, no (P, O, J) term.
        grad_weight = grad.T @ rows - weight * grad.sum(0).unsqueeze(1) if ctx.needs_input_grad[1] else None
        return grad_rows, grad_weight


def negative_l1(rows: torch.Tensor, weight: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """``-Σ_j |rows[p, j] - weight[o, j]|`` as (P, O) for rows (P, J) and weight (O, J).

    ``exact``: plain autograd of ``torch.cdist(p=1)`` (the sign form), over chunks of rows because
    its CUDA backward builds a (rows, O, J) buffer; else the training rules.
    """
    if not exact:
        return _NegativeL1.apply(rows, weight)
    step = max(1, CHUNK_ELEMENTS // max(1, weight.numel()))
    return -torch.cat([torch.cdist(chunk, weight, p=1) for chunk in rows.split(step)])


class AdderMixin:
    """``exact_gradients``: backpropagate the exact sign form instead of the training rules."""

    weight: nn.Parameter
    exact_gradients: bool = False


class AdderConv2d(AdderMixin, nn.Conv2d):
    """(N, C, H, W) -> (N, O, H', W'): minus the L1 distance of each (zero-padded) patch to each filter.

    Shapes and output size as ``nn.Conv2d`` (``groups=1`` and zero padding only).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("AdderConv2d supports groups=1 and integer zero padding only")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        out_h, out_w = (
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(
                (height, width), self.padding, self.dilation, self.kernel_size, self.stride, strict=True
            )
        )
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N·H'·W', C·kh·kw)
        out = negative_l1(rows, self.weight.flatten(1), self.exact_gradients)  # (N·H'·W', O)
        out = out.view(n, out_h * out_w, -1).transpose(1, 2).reshape(n, -1, out_h, out_w)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class AdderLinear(AdderMixin, nn.Linear):
    """(..., in) -> (..., out): minus the L1 distance of the input to each weight row (+ bias)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = negative_l1(x.reshape(-1, x.shape[-1]), self.weight, self.exact_gradients)
        out = out.view(*x.shape[:-1], -1)
        return out if self.bias is None else out + self.bias


def adder_layers(model: nn.Module) -> dict[str, AdderMixin]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdderMixin)}


@contextmanager
def exact_gradients(model: nn.Module) -> Iterator[None]:
    """Within the block every adder layer of ``model`` backpropagates the exact gradient (for evaluation)."""
    layers = list(adder_layers(model).values())
    previous = [layer.exact_gradients for layer in layers]
    for layer in layers:
        layer.exact_gradients = True
    try:
        yield
    finally:
        for layer, value in zip(layers, previous, strict=True):
            layer.exact_gradients = value


@torch.no_grad()
def scale_adder_gradients(model: nn.Module, eta: float) -> None:
    """AdderNet's adaptive learning rate: each adder weight's gradient ``g`` becomes ``g·η·√k / ‖g‖₂``.

    Only adder layers' weights (not biases, not batch norms, not other layers) are scaled; call
    between backward and the optimiser step, on unscaled gradients. No host synchronisation.
    """
    for layer in adder_layers(model).values():
        grad = layer.weight.grad
        if grad is not None:
            grad.mul_(eta * math.sqrt(grad.numel()) / grad.norm().clamp_min(1e-12))

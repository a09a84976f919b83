"""Adversarial attacks for training and evaluation: PGD (L∞ / L2), FGSM with random start, TRADES.

Images are in [0, 1] (pixel units; normalisation is the model's first module), so every adversarial
example stays in [0, 1] and within ``eps`` of the clean image. Gradients are taken with respect to
the input only (``torch.autograd.grad``): the attack never touches parameter gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["linf", "l2"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, target) -> per-example loss (N,)


@contextmanager
def bn_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Run the block with ``model`` in train or eval mode, then restore the mode it had."""
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each example, shaped (N, 1, ..., 1) to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Closest point to ``x_adv`` in the eps-ball around ``x`` intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / _per_example_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """A uniform point of the eps-ball (L∞) or a random direction at a uniform radius (L2)."""
    if norm == "linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        direction = torch.randn_like(x)
        radius = torch.rand(x.shape[0], device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        delta = direction / _per_example_norm(direction) * radius * eps
    return (x + delta).clamp(0.0, 1.0)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_init: bool = True,
    best_loss: bool = False,
    loss_fn: LossFn = cross_entropy,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on ``loss_fn(model(x_adv), target)`` in the eps-ball.

    x: (N, ...) images in [0, 1]. Returns a detached tensor like ``x``, inside the ball and [0, 1].
    Starts from ``start`` if given, else a random point (``random_init``) or ``x`` itself. With
    ``best_loss`` the iterate of highest loss per example is returned instead of the last one.
    FGSM with random start is ``steps=1, step_size=1.25 * eps``. Runs in the model's current mode.
    """
    x = x.detach()
    if eps == 0:
        return x.clone()
    if start is not None:
        x_adv = project(start.detach(), x, eps, norm)
    else:
        x_adv = random_start(x, eps, norm) if random_init else x.clone()
    best, best_value = x_adv.detach(), torch.full((x.shape[0],), -torch.inf, device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(model(x_adv), target)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        if best_loss:  # the loss just computed belongs to the current (pre-step) iterate
            best, best_value = _keep_better(best, best_value, x_adv.detach(), loss.detach())
        with torch.no_grad():
            step = grad.sign() if norm == "linf" else grad / _per_example_norm(grad)
            x_adv = project(x_adv + step_size * step, x, eps, norm)
    if not best_loss:
        return x_adv.detach()
    with torch.no_grad():
        best, _ = _keep_better(best, best_value, x_adv, loss_fn(model(x_adv), target))
    return best


def _keep_better(
    best: torch.Tensor, best_value: torch.Tensor, candidate: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the candidate where its loss is higher; ``torch.where`` keeps it free of host syncs."""
    improved = value > best_value
    return torch.where(improved.view(-1, *([1] * (best.dim() - 1))), candidate, best), torch.where(
        improved, value, best_value
    )


def kl_to_clean(logits_adv: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-example KL(p_clean || softmax(logits_adv)): TRADES's inner objective."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="none").sum(dim=1)


def trades_adversary(
    model: nn.Module, x: torch.Tensor, *, eps: float, step_size: float, steps: int, norm: Norm = "linf"
) -> torch.Tensor:
    """TRADES inner maximisation: PGD on KL(model(x) || model(x_adv)) from x + 0.001·N(0, 1)."""
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)
    start = x + 0.001 * torch.randn_like(x)
    return pgd(
        model, x, p_clean, eps=eps, step_size=step_size, steps=steps, norm=norm, loss_fn=kl_to_clean, start=start
    )


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """CE(clean) + beta · KL(softmax(clean) || softmax(adv)), batch mean."""
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
    return F.cross_entropy(logits_clean, y) + beta * robust

"""Clean, PGD (with restarts) and AutoAttack accuracy of a model, always in eval mode.

Every evaluation runs inside :func:`rbp.nn.exact_gradients`: adder layers give the attacks the
exact autograd gradient of their forward, not the clipped surrogate they train with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from rbp.attacks import Norm, bn_mode, pgd
from rbp.base.atomic import write_text_atomic
from rbp.nn import exact_gradients

log = logging.getLogger(__name__)

AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1) == y


def _num_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int) -> int:
    """Correct predictions on (x, y) anywhere, ``batch_size`` images at a time on ``device``."""
    return sum(
        int(_correct(model, xb.to(device), yb.to(device)).sum())
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
    )


def robust_correct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    restarts: int = 1,
    norm: Norm = "linf",
) -> torch.Tensor:
    """(N,) bool: classified correctly under every one of ``restarts`` random-start PGD runs."""
    correct = _correct(model, x, y)
    for _ in range(restarts):
        todo = correct.nonzero().flatten()  # only still-robust examples can be broken
        if todo.numel() == 0:
            break
        x_adv = pgd(model, x[todo], y[todo], eps=eps, step_size=step_size, steps=steps, norm=norm)
        correct[todo] = _correct(model, x_adv, y[todo])
    return correct


def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    eps: float = 0.0,
    step_size: float = 0.0,
    steps: int = 0,
    restarts: int = 1,
    norm: Norm = "linf",
) -> dict[str, float]:
    """``{"clean_acc", "pgd_acc"}`` in [0, 1] over ``batches``; ``pgd_acc`` only when ``steps > 0``.

    The model runs in eval mode (batch norm uses running statistics) and its mode is restored.
    Counts stay on the device until the end: no host sync per batch.
    """
    clean = robust = None
    total = 0
    with bn_mode(model, train=False), exact_gradients(model):
        for x, y in batches:
            c = _correct(model, x, y).sum()
            clean = c if clean is None else clean + c
            if steps > 0:
                r = robust_correct(
                    model, x, y, eps=eps, step_size=step_size, steps=steps, restarts=restarts, norm=norm
                ).sum()
                robust = r if robust is None else robust + r
            total += y.shape[0]
    if total == 0:
        return {}
    result = {"clean_acc": clean.item() / total}
    if robust is not None:
        result["pgd_acc"] = robust.item() / total
    return result


class _Forward(logging.Handler):
    """Re-emits AutoAttack's DEBUG-level reports (accuracy per attack, its checks) on our logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        log.log(max(record.levelno, logging.INFO), "autoattack: %s", line)


def autoattack_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    batch_size: int = 500,
    seed: int = 0,
    version: Literal["standard"] = "standard",
    device: torch.device | str | None = None,
    state_path: Path | None = None,
) -> dict[str, float | list[str]]:
    """AutoAttack ``standard`` (APGD-CE, APGD-T, FAB-T, Square; original code via ``pyautoattack``).

    x: (N, C, H, W) in [0, 1], best kept on the CPU: AutoAttack moves ``batch_size`` images at a
    time to ``device`` (default: the model's), so memory is bounded by the batch, not N. Returns
    clean and robust accuracy and AutoAttack's own log lines (its warnings included). With fewer
    than 10 classes the targeted attacks use every other class (n_classes - 1 targets), the most
    the protocol can do.

    The attacks run one at a time, each on the images every earlier one failed to break: image for
    image what one ``run_standard_evaluation`` call does (it does the same, and each attack reseeds
    itself per batch). With ``state_path``, the robust images are written there after each attack,
    and a call that finds that file goes on with the next attack, so a stopped evaluation loses at
    most the attack it was in; the file is the caller's to keep to one model (a run folder's
    ``best.pt``), and one written for other images, eps, norm or seed is ignored. pyautoattack's own
    ``state_path`` cannot resume: its restore path leaves the returned predictions unset.
    """
    from pyautoattack import AutoAttack, checks  # heavy and optional at import time

    device = torch.device(device) if device is not None else next(model.parameters()).device
    aa_logger = logging.getLogger("auto-attack")
    handler = _Forward()
    aa_logger.addHandler(handler)
    previous_level, aa_logger.propagate = aa_logger.level, False
    aa_logger.setLevel(logging.DEBUG)
    identity = {"samples": len(y), "eps": eps, "norm": norm, "seed": seed, "version": version}
    state = _AutoAttackState.load(state_path, identity, len(y))
    x_adv = x.clone()
    try:
        with bn_mode(model, train=False), exact_gradients(model):
            attack = AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=eps, version=version, device=device, seed=seed)
            with torch.no_grad():
                num_classes = model(x[:1].to(device)).shape[1]
            if num_classes - 1 < attack.apgd_targeted.n_target_classes:
                log.warning("autoattack: %d classes: targeted attacks use %d targets", num_classes, num_classes - 1)
                attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = num_classes - 1
            for name in list(attack.attacks_to_run):
                todo = state.robust.nonzero().flatten()
                if name in state.accuracy_after or todo.numel() == 0:
                    continue
                attack.attacks_to_run = [name]
                adv, predicted = attack.run_standard_evaluation(x[todo], y[todo], batch_size=batch_size)
                broken = predicted.to(y.device) != y[todo]
                state.robust[todo[broken]] = False
                x_adv[todo[broken]] = adv.to(x.device)[broken]
                state.accuracy_after[name] = state.robust.float().mean().item()
                state.save(state_path)
                log.info("autoattack: %d of %d images robust after %s", int(state.robust.sum()), len(y), name)
            checks.check_square_sr(state.accuracy_after, logger=aa_logger)
            clean = _num_correct(model, x, y, device, batch_size) / len(y)
    finally:
        aa_logger.removeHandler(handler)
        aa_logger.setLevel(previous_level)
        aa_logger.propagate = True
    # Only this call's adversarial images are at hand: those of attacks run before a resume are not kept.
    distance = (x_adv - x).flatten(1)
    radius = distance.abs().amax(dim=1) if norm == "linf" else distance.norm(dim=1)
    if radius.max().item() > eps * (1 + 1e-4) + 1e-6:  # a broken attack must not pass as a result
        raise RuntimeError(f"AutoAttack returned points outside the eps-ball ({radius.max().item():.6f} > {eps})")
    robust = state.robust.float().mean().item()
    return {"clean_acc": clean, "autoattack_acc": robust, "autoattack_log": handler.lines}


@dataclass
class _AutoAttackState:
    """Which of N images no attack has broken yet, and the robust accuracy after each attack run."""

    identity: dict[str, Any]
    robust: torch.Tensor  # (N,) bool
    accuracy_after: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None, identity: dict[str, Any], n: int) -> _AutoAttackState:
        """The state saved at ``path`` for ``identity``, else a fresh one (every image still to attack)."""
        fresh = cls(identity, torch.ones(n, dtype=torch.bool))
        if path is None or not path.exists():
            return fresh
        try:
            saved = json.loads(path.read_text())
            robust = torch.tensor(saved["robust"], dtype=torch.bool)
            accuracy_after = {str(k): float(v) for k, v in saved["accuracy_after"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("autoattack: %s is unreadable (%s): attacking from the start", path, error)
            return fresh
        if saved.get("identity") != identity or robust.shape != (n,):
            log.warning("autoattack: %s belongs to another evaluation: attacking from the start", path)
            return fresh
        log.info("autoattack: resuming after %s (%s)", ", ".join(accuracy_after), path)
        return cls(identity, robust, accuracy_after)

    def save(self, path: Path | None) -> None:
        if path is not None:
            state = {
                "identity": self.identity,
                "robust": self.robust.int().tolist(),
                "accuracy_after": self.accuracy_after,
            }
            write_text_atomic(path, json.dumps(state) + "\n")

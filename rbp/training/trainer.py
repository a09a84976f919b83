"""The Trainer: builds data, model, optimiser and schedule from a config; one call per epoch.

It knows nothing of run folders, checkpoints, Ray or MLflow: :mod:`rbp.runs.epochs` (shared by
``rbp train`` and the Ray trainable) drives :meth:`Trainer.run_epoch`, persists
:meth:`Trainer.state_dict`, and restores it to resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from rbp.attacks import bn_mode, pgd, trades_adversary, trades_loss
from rbp.base.errors import RbpError
from rbp.config.schema import Config, data_shape
from rbp.data import Batches, Split, Splits, load_splits
from rbp.evaluation import accuracy
from rbp.models import build_model, check_fits_memory, first_non_finite, kept_parameters
from rbp.nn import clip_binary_weights, compile_model, scale_adder_gradients
from rbp.nn.lcnn import curvature_penalty
from rbp.training.determinism import set_determinism
from rbp.training.step_graph import CapturedStep

log = logging.getLogger(__name__)


class Diverged(RbpError):
    """The training loss became NaN or infinite; the message says when."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cuda`` without a GPU is an input error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RbpError("config error: run.device: cuda requested but no GPU is visible; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_factor(cfg: Config) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``epoch`` completed epochs."""
    train = cfg.train
    if train.schedule == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / train.epochs))
    if train.schedule == "step":
        steps = [round(m * train.epochs) for m in train.milestones]
        return lambda epoch: train.gamma ** sum(epoch >= s for s in steps)
    return lambda epoch: 1.0


class Trainer:
    """Adversarial (or clean) training of one model; ``epoch`` counts completed epochs."""

    def __init__(
        self,
        cfg: Config,
        *,
        splits: Splits | None = None,
        device: torch.device | None = None,
        pretrained: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """``pretrained``: the dense state dict a HYDRA-style config (``init.scheme: pretrained``) keeps
        as frozen weights (:func:`rbp.artefacts.checkpoint.pretrained_weights` reads it)."""
        self.cfg = cfg
        self.device = device or resolve_device(cfg.run.device)
        # Before the data: a mistyped model.width is one error line, not the data's line and then the error.
        check_fits_memory(cfg, *data_shape(cfg.data))
        self.splits = splits or load_splits(cfg.data)
        self.determinism = set_determinism(cfg.run.deterministic, self.device)  # before cuBLAS first runs
        info = self.splits.info
        torch.manual_seed(cfg.seed)  # attack random starts draw from the global generator
        self.model = build_model(cfg, info.num_classes, info.input_shape, info.mean, info.std, pretrained)
        self.model = self.model.to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The training step calls ``net``: the model itself, or its compiled twin sharing its tensors.
        self.net: nn.Module = compile_model(self.model) if cfg.train.compile else self.model
        graphed = cfg.train.cuda_graph and self.device.type == "cuda"
        if cfg.train.cuda_graph and not graphed:
            log.info("train.cuda_graph: no CUDA device, running the eager step")
        if cfg.run.data_on_device:  # one copy now instead of one per batch
            train = self.splits.train
            self.splits.train = Split(train.x.to(self.device), train.y.to(self.device))
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
        # Autocast's weight-cast cache must be off under CUDA-graph capture (PyTorch's CUDA-graph notes).
        self.autocast = lambda: torch.autocast(
            self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=not graphed
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.train.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params,
                lr=cfg.train.lr,
                momentum=cfg.train.momentum,
                nesterov=cfg.train.nesterov,
                weight_decay=cfg.train.weight_decay,
            )
        else:  # capturable: Adam keeps its step count on the device, where a CUDA graph can update it
            self.optimizer = torch.optim.Adam(
                params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, capturable=graphed
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg))
        self.captured = CapturedStep(self._eager_step, self.model, self.optimizer) if graphed else None
        self.shuffle_generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.best: dict[str, float] = {"val_pgd_acc": -1.0, "epoch": 0}

    # -- one optimiser step -------------------------------------------------------------------
    def _adversarial(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training inputs for PGD / FGSM, generated with BN in ``attack_bn`` mode."""
        a, method = self.cfg.attack, self.cfg.train.method
        steps, random_init = (1, True) if method == "fgsm" else (a.steps, a.random_start)
        with bn_mode(self.model, train=self.cfg.train.attack_bn == "train"):
            return pgd(
                self.net,
                x,
                y,
                eps=a.eps,
                step_size=a.step_size,
                steps=steps,
                norm=a.norm,
                random_init=random_init,
                best_loss=a.best_loss,
            )

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss + penalties, logits of the inputs the loss is about)."""
        loss, logits = self._method_loss(x, y)
        train = self.cfg.train
        if train.curvature_penalty > 0:
            loss = loss + train.curvature_penalty * curvature_penalty(self.model)
        if train.grad_norm_penalty > 0:
            x_in = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(self.net(x_in), y), x_in, create_graph=True)
            loss = loss + train.grad_norm_penalty * grad.flatten(1).pow(2).sum(dim=1).mean()
        return loss, logits

    def _method_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits on the inputs the loss is about: adversarial for PGD/FGSM/TRADES)."""
        method = self.cfg.train.method
        if method == "clean":
            logits = self.net(x)
            return F.cross_entropy(logits, y), logits
        if method == "trades":
            a = self.cfg.attack
            with bn_mode(self.model, train=self.cfg.train.attack_bn == "train"):
                x_adv = trades_adversary(self.net, x, eps=a.eps, step_size=a.step_size, steps=a.steps, norm=a.norm)
            logits_clean, logits_adv = self.net(x), self.net(x_adv)
            return trades_loss(logits_clean, logits_adv, y, self.cfg.train.trades_beta), logits_adv
        logits = self.net(self._adversarial(x, y))
        return F.cross_entropy(logits, y), logits

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch (attack, loss, backward, update); detached (loss, logits).

        With ``train.cuda_graph`` on a GPU the step replays a captured graph, and the returned
        tensors are overwritten by the next step: read them before calling again.
        """
        if self.cfg.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.captured or self._eager_step)(x, y)

    def _eager_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            loss, logits = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.model.mode == "adder":  # AdderNet's adaptive per-layer lr, on the unscaled gradients
            self.scaler.unscale_(self.optimizer)
            scale_adder_gradients(self.model, self.cfg.train.adder_eta)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        clip_binary_weights(self.model)
        return loss.detach(), logits.detach()

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        """One pass over the training split; returns mean loss and accuracy on the trained inputs."""
        self.model.train()
        batches = Batches(
            self.splits.train,
            self.cfg.data.batch_size,
            shuffle=True,
            augment=self.cfg.data.augment,
            generator=self.shuffle_generator,
            device=self.device,
            drop_last=True,
        )
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            batches,
            desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for step, (x, y) in enumerate(bar):
            loss, logits = self.step(x, y)
            loss_sum += loss * y.shape[0]
            correct += (logits.argmax(dim=1) == y).sum()
            seen += y.shape[0]
            if progress and step % 10 == 0:  # the only host sync, and only for the bar
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
        mean_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise Diverged(f"training diverged: loss is {mean_loss} in epoch {self.epoch + 1}")
        return {"train_loss": mean_loss, "train_acc": correct.item() / max(seen, 1)}

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, split: str = "val", *, steps: int | None = None, restarts: int = 1) -> dict[str, float]:
        """Clean and PGD accuracy on ``split`` (val/test) under the config's threat model."""
        a = self.cfg.attack
        steps = self.cfg.eval.val_pgd_steps if steps is None else steps
        batches = Batches(getattr(self.splits, split), self.cfg.data.eval_batch_size, device=self.device)
        step_size = self.cfg.eval.step_scale * a.eps / steps  # independent of the training attack's step
        return accuracy(
            self.model, batches, eps=a.eps, step_size=step_size, steps=steps, restarts=restarts, norm=a.norm
        )

    def run_epoch(self, progress: bool = False) -> dict[str, Any]:
        """Train one epoch, step the schedule, validate; ``is_best`` marks a new best val PGD accuracy."""
        lr = self.optimizer.param_groups[0]["lr"]
        metrics: dict[str, Any] = self.train_epoch(progress)
        bad = first_non_finite(self.model)
        if bad is not None:  # scores, weights or BN statistics: a finite loss does not prove them finite
            raise Diverged(f"training diverged: {bad} holds non-finite values after epoch {self.epoch + 1}")
        self.scheduler.step()
        self.epoch += 1
        val = self.evaluate("val")
        metrics.update({f"val_{k}": v for k, v in val.items()})
        # Without a validation split (val_fraction 0) every epoch supersedes the previous one.
        score = val.get("pgd_acc")
        metrics["is_best"] = score is None or score > self.best["val_pgd_acc"]
        if metrics["is_best"]:
            self.best = {"val_pgd_acc": -1.0 if score is None else score, "epoch": self.epoch}
        kept, total = kept_parameters(self.model)
        metrics.update(epoch=self.epoch, lr=lr, kept_params=kept, density=kept / total)
        return metrics

    # -- checkpoint state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this epoch ended (tensors and plain values)."""
        state = {
            "epoch": self.epoch,
            "best": dict(self.best),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "shuffle_rng": self.shuffle_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # new state tensors: a graph must re-capture
        if self.captured is not None:
            self.captured.reset()
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.shuffle_generator.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.epoch = int(state["epoch"])
        self.best = dict(state["best"])

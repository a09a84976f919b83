"""A whole training step (attack, loss, backward, optimiser update) replayed from one CUDA graph.

At batch 256 a PGD-10 step of a CIFAR ResNet is bound by kernel launches from Python: thousands
of small kernels per step. Captured once, the step is one graph launch per batch. What the graph
computes is the eager step's arithmetic; only the random draws differ (a graph draws from its own
Philox offsets), so a graphed run matches an eager one in distribution, not bit for bit.

Rules the capture relies on (the eager step is written to keep them): no host syncs (no ``.item()``,
no boolean indexing), fixed shapes (training batches drop the last partial batch), and tensors
that keep their storage. The learning rate is a Python float the optimiser bakes into the graph,
so a schedule change re-captures (once per epoch for the per-epoch schedules).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from rbp.nn import forget_masks

log = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class CapturedStep:
    """Calls ``step(x, y)`` through a CUDA graph; same contract as ``step`` (detached loss, logits).

    ``model`` and ``optimizer`` are the ones ``step`` updates: warm-up steps (run eagerly before a
    capture, for lazy initialisation and cuDNN autotuning) are undone in place, so the run sees
    exactly one update per call. The returned tensors are overwritten by the next call.
    """

    def __init__(self, step: StepFn, model: nn.Module, optimizer: torch.optim.Optimizer, warmup: int = 2) -> None:
        self.step = step
        self.model = model
        self.optimizer = optimizer
        self.warmup = warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lrs = tuple(group["lr"] for group in self.optimizer.param_groups)
        shapes = (x.shape, x.dtype, x.stride(), y.shape)
        if self.graph is None or self._key != (shapes, lrs):
            if self._key is None or self._key[0] != shapes:
                self._warm_up(x, y)
            self._capture(x, y)
            self._key = (shapes, lrs)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.graph.replay()
        forget_masks(self.model)  # the replay changed the scores behind the caches' version counters
        return self.static_out

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run ``warmup`` eager steps on a side stream, then restore every tensor they changed."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        saved = [t.detach().clone() for t in tensors]
        existing = {id(t): t.detach().clone() for state in self.optimizer.state.values() for t in _tensors(state)}
        rng = torch.cuda.get_rng_state(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.step(x, y)
        torch.cuda.current_stream(x.device).wait_stream(side)
        with torch.no_grad():
            for t, value in zip(tensors, saved, strict=True):
                t.copy_(value)
            for state in self.optimizer.state.values():
                for t in _tensors(state):
                    # State the warm-up created (momentum, Adam moments and step) starts at zero,
                    # which is what the optimisers' first step assumes of absent state.
                    t.copy_(existing[id(t)]) if id(t) in existing else t.zero_()
        torch.cuda.set_rng_state(rng, x.device)
        forget_masks(self.model)

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        log.info("capturing the training step in a CUDA graph (batch %s)", tuple(x.shape))
        self.graph = None  # release the previous graph's memory pool first
        self.static_x, self.static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)  # gradients come from the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.step(self.static_x, self.static_y)
        self.graph = graph
        forget_masks(self.model)  # cached during capture: tensors of the graph's pool


def _tensors(state: dict) -> list[torch.Tensor]:
    return [v for v in state.values() if isinstance(v, torch.Tensor)]

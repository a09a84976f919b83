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
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
        self.reset()

    def reset(self) -> None:
        """Forget the graph (e.g. after the optimiser's state tensors were replaced): the next call
        warms up and captures anew."""
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
        """Run ``warmup`` eager steps on a side stream, then undo what they changed."""
        main, side = torch.cuda.current_stream(x.device), torch.cuda.Stream(x.device)
        with undone_updates(self.model, self.optimizer, x.device):
            side.wait_stream(main)
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.step(x, y)
            main.wait_stream(side)  # the undoing (on ``main``) comes after the warm-up steps

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


@contextmanager
def undone_updates(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Iterator[None]:
    """Training steps inside the block leave no trace: on exit every parameter, buffer, optimiser
    state tensor and ``device``'s random generator is as before, in place (same storage, so a
    graph captured afterwards sees the real tensors). State the block created (momentum, Adam's
    moments and step) is zeroed, which is what the optimisers' first step assumes of absent state.
    """
    tensors = [*model.parameters(), *model.buffers()]
    saved = [t.detach().clone() for t in tensors]
    existing = {id(t): t.detach().clone() for state in optimizer.state.values() for t in _tensors(state)}
    rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in zip(tensors, saved, strict=True):
                t.copy_(value)
            for state in optimizer.state.values():
                for t in _tensors(state):
                    if id(t) in existing:
                        t.copy_(existing[id(t)])
                    else:
                        t.zero_()
        if device.type == "cuda":
            torch.cuda.set_rng_state(rng, device)
        else:
            torch.set_rng_state(rng)
        forget_masks(model)


def _tensors(state: dict) -> list[torch.Tensor]:
    return [v for v in state.values() if isinstance(v, torch.Tensor)]

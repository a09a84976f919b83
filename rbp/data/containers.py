"""In-memory data: a split's images and labels, the three splits, and what a model needs to know of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data set."""

    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, of [0, 1] images: for the model's Normalize module
    std: tuple[float, ...]


@dataclass
class Split:
    """One split: ``x`` (N, C, H, W) uint8 in 0..255 or float32 in [0, 1]; ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split needs x (N, C, H, W) and y (N,), got {tuple(self.x.shape)}, {tuple(self.y.shape)}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"Split labels must be int64, got {self.y.dtype}")

    def __len__(self) -> int:
        return self.y.shape[0]

    def subset(self, index: torch.Tensor) -> Split:
        """The rows at ``index`` (a CPU int64 tensor), copied."""
        return Split(self.x[index], self.y[index])


@dataclass
class Splits:
    """Disjoint train/val/test splits; ``val`` has 0 rows when the validation fraction is 0."""

    train: Split
    val: Split
    test: Split
    info: DataInfo

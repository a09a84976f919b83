"""``synthetic``: uniform noise images with uniform labels, for smoke tests and benchmarks."""

from __future__ import annotations

import torch

from rbp.config.schema import DataConfig, data_shape
from rbp.data.containers import DataInfo, Split


def make_synthetic(cfg: DataConfig, generator: torch.Generator) -> tuple[Split, Split, DataInfo]:
    """Uniform [0, 1) float32 images of ``cfg.synthetic_shape`` with uniform labels."""

    def draw(n: int) -> Split:
        x = torch.rand((n, *cfg.synthetic_shape), generator=generator)
        return Split(x, torch.randint(0, cfg.synthetic_classes, (n,), generator=generator))

    train = draw(cfg.synthetic_size)
    test = draw(max(1, cfg.synthetic_size // 5))
    channels = cfg.synthetic_shape[0]
    # Moments of U(0, 1): mean 1/2, std 1/sqrt(12).
    info = DataInfo(*data_shape(cfg), (0.5,) * channels, (0.2887,) * channels)
    return train, test, info

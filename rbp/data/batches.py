"""Batching: images to float in [0, 1], batched random crop and flip on the target device, and the batch iterator."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from rbp.data.containers import Split

_PAD = 4  # augmentation: random crop of the image zero-padded by this many pixels per side


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 ``x / 255``; a float tensor -> float32 (the same tensor if it already is).

    Raises TypeError for other dtypes, whose range is unknown.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32)
    raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")


def random_crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = _PAD) -> torch.Tensor:
    """Crop each image of the ``pad``-zero-padded batch back to (H, W), then maybe mirror it.

    ``x`` is (B, C, H, W) of any dtype; ``offsets`` (B, 2) int64 in [0, 2 * pad] are the (row, col)
    of each crop's top-left corner in the padded image (``pad`` is the unshifted crop); ``flips``
    (B,) bool mirrors left-right. Both on ``x.device``. Returns a new (B, C, H, W) tensor of
    ``x.dtype``, gathered in one vectorised indexing op.
    """
    b, c, h, w = x.shape
    padded = x.new_zeros((b, c, h + 2 * pad, w + 2 * pad))
    padded[:, :, pad : pad + h, pad : pad + w] = x
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # mirroring the crop = reading its columns backwards
    batch_index = torch.arange(b, device=x.device)[:, None, None, None]
    channel_index = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_index, channel_index, rows[:, None, :, None], cols[:, None, None, :]]


class Batches:
    """Iterates (x, y) batches, x float32 in [0, 1] on ``device``, y int64 on ``device``.

    ``shuffle`` draws a fresh permutation per epoch and ``augment`` a random crop (of the 4-pixel
    zero-padded image) and horizontal flip (p = 0.5) per sample, all from ``generator``, a CPU
    ``torch.Generator`` required by either. The draws are made on the CPU, once per epoch (with the
    split resident on the device, no batch copies anything from the host), so a generator state
    gives the same batches on any device, and re-iterating from the same state repeats them.
    Each epoch consumes generator state, so consecutive epochs differ.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if (shuffle or augment) and generator is None:
            raise ValueError("shuffle and augment need a torch.Generator, so runs are reproducible")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator
        self.device = torch.device(device)
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        if self.augment:  # the epoch's draws at once: one host-to-device copy per epoch, none per batch
            offsets = torch.randint(0, 2 * _PAD + 1, (n, 2), generator=self.generator).to(self.device)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(self.device)
        order = order.to(self.split.x.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = slice(start, start + self.batch_size)
            # Move the stored dtype (uint8 for image files: 4x less to copy), convert on the device.
            x = self.split.x[order[batch]].to(self.device)
            y = self.split.y[order[batch]].to(self.device)
            if self.augment:
                x = random_crop_flip(x, offsets[batch], flips[batch])
            yield to_unit_float(x), y

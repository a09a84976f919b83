"""``fashion_mnist`` / ``mnist``: the four official IDX files (gzip or not), uint8 (N, 1, 28, 28).

Fashion-MNIST's default root is the Debian package's folder (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rbp.base.errors import RbpError
from rbp.config.schema import DATA_SHAPES
from rbp.data.containers import DataInfo, Split
from rbp.data.files import corrupt, first_line

FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


IDX_NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}


_IDX_MEAN_STD = {"fashion_mnist": ((0.2860,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}


# How to get the files, appended to a missing-root or missing-file error.
GET_FILES = {
    "fashion_mnist": f" (on Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts them in "
    f"{FASHION_MNIST_DEBIAN_ROOT}, the default root; elsewhere add --set data.download=true when online)",
    "mnist": " (add --set data.download=true when online to fetch the official files into it)",
}


# IDX header: magic (0x0000, dtype 0x08 = uint8, number of dimensions), then one big-endian uint32 per dimension.
_IDX_IMAGES = (2051, 3)


_IDX_LABELS = (2049, 1)


_IDX_STEMS = ("images-idx3-ubyte", "labels-idx1-ubyte")  # after "train-" / "t10k-"


def download_idx(name: str, root: Path) -> None:
    """Fetch the four official ``.gz`` files that ``root`` lacks, from torchvision's mirrors (md5-checked)."""
    from torchvision import datasets  # local: torchvision is only needed to download
    from torchvision.datasets.utils import download_url

    dataset = datasets.FashionMNIST if name == "fashion_mnist" else datasets.MNIST
    for filename, md5 in dataset.resources:
        if (root / filename).is_file():
            continue
        for i, mirror in enumerate(dataset.mirrors):
            try:
                download_url(f"{mirror}{filename}", root, filename, md5)
                break
            except (OSError, RuntimeError):
                if i == len(dataset.mirrors) - 1:
                    raise


def _idx_path(root: Path, stem: str, name: str) -> Path:
    """``root/stem.gz`` or else ``root/stem``; an :class:`RbpError` saying how to get them when neither exists."""
    for path in (root / f"{stem}.gz", root / stem):
        if path.is_file():
            return path
    raise RbpError(f"data.root: {root} has no {IDX_NAMES[name]} file {stem}[.gz]{GET_FILES[name]}")


def _read_idx(path: Path, header: tuple[int, int], label: str) -> tuple[list[int], np.ndarray]:
    """An IDX file (gzip if its name ends in .gz) -> (dimensions, flat uint8 payload); checks magic and length."""
    magic, ndim = header
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            raw = f.read()
        head = 4 * (1 + ndim)
        if len(raw) < head:
            raise ValueError(f"{len(raw)} bytes, shorter than the {head}-byte header")
        found, *dims = (int.from_bytes(raw[i : i + 4], "big") for i in range(0, head, 4))
        if found != magic:
            raise ValueError(f"magic number {found}, expected {magic}")
        if len(raw) - head != math.prod(dims):
            raise ValueError(f"{len(raw) - head} data bytes for dimensions {dims}, expected {math.prod(dims)}")
    except (OSError, EOFError, zlib.error, ValueError) as error:  # what a bad or truncated gzip stream raises
        raise corrupt(path, label, first_line(error)) from None
    return dims, np.frombuffer(raw, dtype=np.uint8, offset=head)


def _read_idx_pair(images_path: Path, labels_path: Path, label: str) -> Split:
    """Images (N, 28, 28) and labels (N,) in 0..9 -> Split of uint8 (N, 1, 28, 28) and int64 labels."""
    (n, rows, cols), pixels = _read_idx(images_path, _IDX_IMAGES, label)
    if (rows, cols) != (28, 28):
        raise corrupt(images_path, label, f"images are {rows}x{cols}, expected 28x28")
    (n_labels,), labels = _read_idx(labels_path, _IDX_LABELS, label)
    if n_labels != n:
        raise corrupt(labels_path, label, f"{n_labels} labels for the {n} images of {images_path.name}")
    if labels.size and labels.max() > 9:
        raise corrupt(labels_path, label, f"label {labels.max()} outside 0..9")
    x = torch.from_numpy(pixels.reshape(n, 1, rows, cols).copy())  # copy: frombuffer arrays are read-only
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def idx_loader(name: str) -> Callable[[Path], tuple[Split, Split, DataInfo]]:
    """The loader of an IDX data set: the official train split and the 10,000-image t10k test split."""

    def load(root: Path) -> tuple[Split, Split, DataInfo]:
        paths = [_idx_path(root, f"{split}-{kind}", name) for split in ("train", "t10k") for kind in _IDX_STEMS]
        label = IDX_NAMES[name]
        train, test = _read_idx_pair(*paths[:2], label), _read_idx_pair(*paths[2:], label)
        return train, test, DataInfo(*DATA_SHAPES[name], *_IDX_MEAN_STD[name])

    return load

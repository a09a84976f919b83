"""``cifar10`` / ``cifar100``: the python pickles of the official archives, uint8 (N, 3, 32, 32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rbp.config.schema import DATA_SHAPES
from rbp.data.containers import DataInfo, Split
from rbp.data.files import corrupt, first_line, require_files
from rbp.data.safe_pickle import PICKLE_ERRORS, load_pickle

_CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _read_cifar_file(path: Path, label_key: bytes, num_classes: int, label: str) -> Split:
    """One CIFAR pickle -> Split of uint8 (N, 3, 32, 32) images and int64 labels.

    Each row of ``data`` is a 32x32 image stored channel-major: 1024 red, 1024 green, 1024 blue.
    """
    try:
        with path.open("rb") as f:
            batch = load_pickle(f)
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
            raise ValueError(f"{label_key.decode()} must be {data.shape[0]} labels in 0..{num_classes - 1}")
    except PICKLE_ERRORS as error:
        raise corrupt(path, label, first_line(error)) from None
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return Split(x, torch.from_numpy(labels))


def _concat(parts: list[Split]) -> Split:
    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _cifar_info(name: str) -> DataInfo:
    return DataInfo(*DATA_SHAPES[name], *_CIFAR_MEAN_STD[name])


def load_cifar10(root: Path) -> tuple[Split, Split, DataInfo]:
    folder = "cifar-10-batches-py"
    names = [f"{folder}/data_batch_{i}" for i in range(1, 6)] + [f"{folder}/test_batch"]
    paths = require_files(root, names, "CIFAR-10")
    parts = [_read_cifar_file(path, b"labels", 10, "CIFAR-10") for path in paths]
    return _concat(parts[:5]), parts[5], _cifar_info("cifar10")


def load_cifar100(root: Path) -> tuple[Split, Split, DataInfo]:
    train_path, test_path = require_files(root, ["cifar-100-python/train", "cifar-100-python/test"], "CIFAR-100")
    train = _read_cifar_file(train_path, b"fine_labels", 100, "CIFAR-100")
    test = _read_cifar_file(test_path, b"fine_labels", 100, "CIFAR-100")
    return train, test, _cifar_info("cifar100")

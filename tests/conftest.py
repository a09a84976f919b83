"""Fixtures shared by the tests: tiny data sets in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fakedata import cifar_batch, image, write_pickle, write_py2_pickle, write_svhn


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    """5 train batches of 4 images (ids 0..19) and a test batch of 3 (ids 100..102)."""
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(5):
        ids = range(4 * i, 4 * i + 4)
        # The train batches as the official files are written (Python 2), the test batch by Python 3.
        rows = np.stack([image(n).reshape(-1) for n in ids])
        write_py2_pickle(folder / f"data_batch_{i + 1}", rows, [n % 10 for n in ids])
    write_pickle(folder / "test_batch", cifar_batch(range(100, 103), 10, b"labels"))
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "train", {**cifar_batch(range(50, 56), 100, b"fine_labels"), b"coarse_labels": [0] * 6})
    write_pickle(folder / "test", {**cifar_batch(range(200, 202), 100, b"fine_labels"), b"coarse_labels": [0] * 2})
    return tmp_path


@pytest.fixture
def svhn_root(tmp_path: Path) -> Path:
    write_svhn(tmp_path / "train_32x32.mat", range(10))
    write_svhn(tmp_path / "test_32x32.mat", range(300, 304))
    return tmp_path

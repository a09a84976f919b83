"""``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` (cropped digits), uint8, label 10 read as 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rbp.config.schema import DATA_SHAPES
from rbp.data.containers import DataInfo, Split
from rbp.data.files import corrupt, first_line, require_files

_SVHN_MEAN_STD = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


def _read_svhn_file(path: Path) -> Split:
    """A ``*_32x32.mat`` file: X (32, 32, 3, N) uint8, y (N, 1) in 1..10 with 10 for the digit 0."""
    from scipy.io import loadmat  # local: only SVHN needs scipy.io
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(str(path))
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.shape != (x.shape[3],):
            raise ValueError(f"X is {x.dtype} {x.shape} and y {y.shape}, expected uint8 (32, 32, 3, N) and (N, 1)")
        if y.size and (y.min() < 1 or y.max() > 10):
            raise ValueError("y must hold labels in 1..10")
    except (OSError, ValueError, TypeError, KeyError, NotImplementedError, MatReadError) as error:
        raise corrupt(path, "SVHN", first_line(error)) from None
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    return Split(images, torch.from_numpy(y % 10))  # label 10 is the digit 0


def load_svhn(root: Path) -> tuple[Split, Split, DataInfo]:
    train_path, test_path = require_files(root, ["train_32x32.mat", "test_32x32.mat"], "SVHN")
    info = DataInfo(*DATA_SHAPES["svhn"], *_SVHN_MEAN_STD)
    return _read_svhn_file(train_path), _read_svhn_file(test_path), info

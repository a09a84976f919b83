"""``digits``: scikit-learn's 8x8 digits (1,797 images), float32 in [0, 1]; the embedded default."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from rbp.base.errors import RbpError
from rbp.config.schema import DATA_SHAPES
from rbp.data.containers import DataInfo, Split


def _digits_file() -> Path:
    """scikit-learn's ``digits.csv.gz`` (the file ``sklearn.datasets.load_digits`` reads).

    Found without importing sklearn, whose import (scipy) every digits run and every Ray worker of a
    search would otherwise pay before its first batch.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RbpError("data.name digits: the digits ship with scikit-learn: pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def load_digits() -> tuple[Split, DataInfo]:
    """All 1,797 sklearn digits as float32 (N, 1, 8, 8) in [0, 1]; mean/std over all of them."""
    table = np.loadtxt(_digits_file(), delimiter=",")  # 1,797 rows: 64 pixels (0..16), then the label
    x = torch.from_numpy(table[:, :-1]).to(torch.float32).div_(16.0).view(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, -1]).to(torch.int64)
    info = DataInfo(*DATA_SHAPES["digits"], mean=(x.mean().item(),), std=(x.std(correction=0).item(),))
    return Split(x, y), info

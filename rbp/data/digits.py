"""``digits``: the 8x8 digits (1,797 images), float32 in [0, 1]; the embedded default.

The data ship inside the package (``rbp/data/digits.csv.gz``): scikit-learn's copy of the test set of
UCI's "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak, 1998; CC BY 4.0), the file
``sklearn.datasets.load_digits`` reads, so the images and labels are scikit-learn's exactly.
``rbp/data/DIGITS_LICENSE`` has the source and the licences.
"""

from __future__ import annotations

import gzip
import io
from importlib import resources

import numpy as np
import torch

from rbp.config.schema import DATA_SHAPES
from rbp.data.containers import DataInfo, Split

DIGITS_FILE = "digits.csv.gz"


def load_digits() -> tuple[Split, DataInfo]:
    """All 1,797 digits as float32 (N, 1, 8, 8) in [0, 1]; mean/std over all of them."""
    text = gzip.decompress(resources.files("rbp.data").joinpath(DIGITS_FILE).read_bytes()).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",")  # 1,797 rows: 64 pixels (0..16), then the label
    x = torch.from_numpy(table[:, :-1]).to(torch.float32).div_(16.0).view(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, -1]).to(torch.int64)
    info = DataInfo(*DATA_SHAPES["digits"], mean=(x.mean().item(),), std=(x.std(correction=0).item(),))
    return Split(x, y), info

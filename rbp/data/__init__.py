"""Data sets as in-memory tensors, deterministic train/val/test splits, and a batch iterator.

Every data set is loaded whole into memory (CIFAR-10 train is 150 MB of uint8), so batching is a
tensor gather, with augmentation done batched on the target device. One module per file format
(:mod:`~rbp.data.digits`, :mod:`~rbp.data.idx`, :mod:`~rbp.data.cifar` with its
:mod:`~rbp.data.safe_pickle`, :mod:`~rbp.data.svhn`, :mod:`~rbp.data.synthetic`); the splits in
:mod:`~rbp.data.splits`, batches in :mod:`~rbp.data.batches`.
"""

from rbp.data.batches import Batches, random_crop_flip, to_unit_float
from rbp.data.containers import DataInfo, Split, Splits
from rbp.data.splits import load_splits

__all__ = ["Batches", "DataInfo", "Split", "Splits", "load_splits", "random_crop_flip", "to_unit_float"]

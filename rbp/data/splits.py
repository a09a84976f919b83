"""Load a configured data set and split it: deterministic train/val/test splits of in-memory tensors.

Splits depend only on the :class:`~rbp.config.schema.DataConfig` (``split_seed`` in particular), never on
the run seed: the validation rows are a seeded random ``val_fraction`` of the official train split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from rbp.base.errors import RbpError
from rbp.config.schema import DataConfig
from rbp.data.cifar import load_cifar10, load_cifar100
from rbp.data.containers import DataInfo, Split, Splits
from rbp.data.digits import load_digits
from rbp.data.files import first_line
from rbp.data.idx import FASHION_MNIST_DEBIAN_ROOT, GET_FILES, IDX_NAMES, download_idx, idx_loader
from rbp.data.svhn import load_svhn
from rbp.data.synthetic import make_synthetic

logger = logging.getLogger(__name__)


_DIGITS_TEST_FRACTION = 0.2


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.name`` and split it; deterministic for a given ``cfg``.

    The official train split (for digits: the 80% left after a seeded 20% test hold-out) loses a
    seeded random ``cfg.val_fraction`` of its rows to ``val``. Rows keep their file order within
    each split.

    Raises :class:`RbpError` (one line naming ``data.root`` and the fix) when files are missing,
    unreadable or malformed.
    """
    # One generator, consumed in a fixed order: synthetic data, digits test rows, validation rows.
    # So the test split never depends on val_fraction, and nothing depends on the run seed.
    generator = torch.Generator().manual_seed(cfg.split_seed)
    if cfg.name == "digits":
        full, info = load_digits()
        test_index, train_index = _hold_out(len(full), _DIGITS_TEST_FRACTION, generator)
        train, test = full.subset(train_index), full.subset(test_index)
    elif cfg.name == "synthetic":
        train, test, info = make_synthetic(cfg, generator)
    else:
        root = _data_root(cfg)
        if cfg.download:
            _download(cfg.name, root)
        train, test, info = _LOADERS[cfg.name](root)
    val_index, train_index = _hold_out(len(train), cfg.val_fraction, generator)
    splits = Splits(train=train.subset(train_index), val=train.subset(val_index), test=test, info=info)
    logger.info(
        "data %s: %d train, %d val, %d test, input %s, %d classes",
        cfg.name,
        len(splits.train),
        len(splits.val),
        len(splits.test),
        info.input_shape,
        info.num_classes,
    )
    return splits


def _hold_out(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (held, rest) row indices: a random ``round(fraction * n)`` rows and the others."""
    permutation = torch.randperm(n, generator=generator)
    n_held = round(fraction * n)
    return permutation[:n_held].sort().values, permutation[n_held:].sort().values


def _data_root(cfg: DataConfig) -> Path:
    if cfg.root is not None:
        root = Path(cfg.root).expanduser()
        if root.is_file():
            raise RbpError(f"data.root: {root} is a file; give the folder that holds the {cfg.name} files")
        return root
    if cfg.name == "fashion_mnist" and FASHION_MNIST_DEBIAN_ROOT.is_dir():
        return FASHION_MNIST_DEBIAN_ROOT
    raise RbpError(f"data.root: required for {cfg.name}; pass --set data.root=PATH{GET_FILES.get(cfg.name, '')}")


def _download(name: str, root: Path) -> None:
    """Fetch the official files into ``root`` with torchvision (needs network)."""
    from torchvision import datasets  # local: torchvision is only needed to download

    logger.info("downloading %s into %s", name, root)
    try:
        if name in IDX_NAMES:
            download_idx(name, root)
        elif name == "svhn":
            for split in ("train", "test"):
                datasets.SVHN(str(root), split=split, download=True)
        else:
            dataset = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            for train in (True, False):
                dataset(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad checksum a RuntimeError
        raise RbpError(
            f"data.download: could not download {name} into {root} ({first_line(error)}); "
            "check the network, or fetch the files yourself and point data.root at them"
        ) from None


_LOADERS: dict[str, Callable[[Path], tuple[Split, Split, DataInfo]]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "fashion_mnist": idx_loader("fashion_mnist"),
    "mnist": idx_loader("mnist"),
}

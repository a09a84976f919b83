"""Data sets as in-memory tensors, deterministic train/val/test splits, and a batch iterator.

Every data set is loaded whole into memory (CIFAR-10 train is 150 MB of uint8), so batching is a
tensor gather, with augmentation done batched on the target device.

- ``digits``: scikit-learn's 8x8 digits, float32 in [0, 1]; a fixed 20% is held out as test.
- ``cifar10`` / ``cifar100``: the python pickles of the official archives, uint8.
- ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat`` (cropped digits), uint8, label 10 read as 0.
- ``fashion_mnist`` / ``mnist``: the four official IDX files (gzip or not), uint8 (N, 1, 28, 28);
  Fashion-MNIST's default root is the Debian package's folder (``apt-get install dataset-fashion-mnist``).
- ``synthetic``: uniform noise images with uniform labels, for smoke tests.

Splits depend only on the :class:`~rbp.config.schema.DataConfig` (``split_seed`` in particular), never on
the run seed: the validation rows are a seeded random ``val_fraction`` of the official train split.
"""

from __future__ import annotations

import codecs
import gzip
import importlib.util
import logging
import math
import pickle
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from rbp.base.errors import RbpError
from rbp.config.schema import DATA_SHAPES, DataConfig, data_shape

logger = logging.getLogger(__name__)

_DIGITS_TEST_FRACTION = 0.2
_PAD = 4  # augmentation: random crop of the image zero-padded by this many pixels per side


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data set."""

    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, of [0, 1] images: for the model's Normalize module
    std: tuple[float, ...]


@dataclass
class Split:
    """One split: ``x`` (N, C, H, W) uint8 in 0..255 or float32 in [0, 1]; ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split needs x (N, C, H, W) and y (N,), got {tuple(self.x.shape)}, {tuple(self.y.shape)}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"Split labels must be int64, got {self.y.dtype}")

    def __len__(self) -> int:
        return self.y.shape[0]

    def subset(self, index: torch.Tensor) -> Split:
        """The rows at ``index`` (a CPU int64 tensor), copied."""
        return Split(self.x[index], self.y[index])


@dataclass
class Splits:
    """Disjoint train/val/test splits; ``val`` has 0 rows when the validation fraction is 0."""

    train: Split
    val: Split
    test: Split
    info: DataInfo


# ----------------------------------------------------------------------------- loading


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
        full, info = _load_digits()
        test_index, train_index = _hold_out(len(full), _DIGITS_TEST_FRACTION, generator)
        train, test = full.subset(train_index), full.subset(test_index)
    elif cfg.name == "synthetic":
        train, test, info = _make_synthetic(cfg, generator)
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


def _digits_file() -> Path:
    """scikit-learn's ``digits.csv.gz`` (the file ``sklearn.datasets.load_digits`` reads).

    Found without importing sklearn, which takes about 2 s (scipy): every digits run, and every
    Ray worker of a search, would pay that before its first batch.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RbpError("data.name digits: the digits ship with scikit-learn: pip install scikit-learn")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def _load_digits() -> tuple[Split, DataInfo]:
    """All 1,797 sklearn digits as float32 (N, 1, 8, 8) in [0, 1]; mean/std over all of them."""
    table = np.loadtxt(_digits_file(), delimiter=",")  # 1,797 rows: 64 pixels (0..16), then the label
    x = torch.from_numpy(table[:, :-1]).to(torch.float32).div_(16.0).view(-1, 1, 8, 8)
    y = torch.from_numpy(table[:, -1]).to(torch.int64)
    info = DataInfo(*DATA_SHAPES["digits"], mean=(x.mean().item(),), std=(x.std(correction=0).item(),))
    return Split(x, y), info


def _make_synthetic(cfg: DataConfig, generator: torch.Generator) -> tuple[Split, Split, DataInfo]:
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


def _data_root(cfg: DataConfig) -> Path:
    if cfg.root is not None:
        return Path(cfg.root).expanduser()
    if cfg.name == "fashion_mnist" and FASHION_MNIST_DEBIAN_ROOT.is_dir():
        return FASHION_MNIST_DEBIAN_ROOT
    raise RbpError(f"data.root: required for {cfg.name}; pass --set data.root=PATH{_GET_FILES.get(cfg.name, '')}")


def _download(name: str, root: Path) -> None:
    """Fetch the official files into ``root`` with torchvision (needs network)."""
    from torchvision import datasets  # local: torchvision is only needed to download

    logger.info("downloading %s into %s", name, root)
    try:
        if name in _IDX_NAMES:
            _download_idx(name, root)
        elif name == "svhn":
            for split in ("train", "test"):
                datasets.SVHN(str(root), split=split, download=True)
        else:
            dataset = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            for train in (True, False):
                dataset(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad checksum a RuntimeError
        raise RbpError(
            f"data.download: could not download {name} into {root} ({_first_line(error)}); "
            "check the network, or fetch the files yourself and point data.root at them"
        ) from None


def _require_files(root: Path, relative: list[str], label: str) -> list[Path]:
    """The paths ``root / r``; an :class:`RbpError` naming the first that is missing."""
    for rel in relative:
        if not (root / rel).is_file():
            raise RbpError(
                f"data.root: {root} has no {label} files ({rel}); point data.root at the folder that holds them, "
                "or set data.download=true when online"
            )
    return [root / rel for rel in relative]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _corrupt(path: Path, label: str, reason: str) -> RbpError:
    return RbpError(
        f"data.root: {path} is not a readable {label} file ({reason}); "
        "re-download it (data.download=true) or point data.root at intact files"
    )


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# The only globals a CIFAR pickle may name: numpy arrays and dtypes, and the bytes codec that
# protocol-2 pickles written by Python 3 use. Anything else (os.system, ...) is refused unexecuted.
_reconstruct = np.zeros(0).__reduce__()[0]
_scalar = np.int64(0).__reduce__()[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 1.x (the official files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # written by numpy 2.x
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, numbers, bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


# Anything a damaged pickle can make the unpickler or the checks below raise.
_PICKLE_ERRORS = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    MemoryError,
    UnicodeDecodeError,
)


def _read_cifar_file(path: Path, label_key: bytes, num_classes: int, label: str) -> Split:
    """One CIFAR pickle -> Split of uint8 (N, 3, 32, 32) images and int64 labels.

    Each row of ``data`` is a 32x32 image stored channel-major: 1024 red, 1024 green, 1024 blue.
    """
    try:
        with path.open("rb") as f:
            batch = _load_pickle(f)
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        if labels.shape != (data.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
            raise ValueError(f"{label_key.decode()} must be {data.shape[0]} labels in 0..{num_classes - 1}")
    except _PICKLE_ERRORS as error:
        raise _corrupt(path, label, _first_line(error)) from None
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return Split(x, torch.from_numpy(labels))


def _load_pickle(f: BinaryIO) -> dict[bytes, Any]:
    # encoding="bytes": the official files are Python 2 pickles with byte-string keys.
    batch = _ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict, got {type(batch).__name__}")
    return batch


def _concat(parts: list[Split]) -> Split:
    return Split(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


def _cifar_info(name: str) -> DataInfo:
    return DataInfo(*DATA_SHAPES[name], *_CIFAR_MEAN_STD[name])


def _load_cifar10(root: Path) -> tuple[Split, Split, DataInfo]:
    folder = "cifar-10-batches-py"
    names = [f"{folder}/data_batch_{i}" for i in range(1, 6)] + [f"{folder}/test_batch"]
    paths = _require_files(root, names, "CIFAR-10")
    parts = [_read_cifar_file(path, b"labels", 10, "CIFAR-10") for path in paths]
    return _concat(parts[:5]), parts[5], _cifar_info("cifar10")


def _load_cifar100(root: Path) -> tuple[Split, Split, DataInfo]:
    train_path, test_path = _require_files(root, ["cifar-100-python/train", "cifar-100-python/test"], "CIFAR-100")
    train = _read_cifar_file(train_path, b"fine_labels", 100, "CIFAR-100")
    test = _read_cifar_file(test_path, b"fine_labels", 100, "CIFAR-100")
    return train, test, _cifar_info("cifar100")


# ----------------------------------------------------------------------------- SVHN

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
        raise _corrupt(path, "SVHN", _first_line(error)) from None
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    return Split(images, torch.from_numpy(y % 10))  # label 10 is the digit 0


def _load_svhn(root: Path) -> tuple[Split, Split, DataInfo]:
    train_path, test_path = _require_files(root, ["train_32x32.mat", "test_32x32.mat"], "SVHN")
    info = DataInfo(*DATA_SHAPES["svhn"], *_SVHN_MEAN_STD)
    return _read_svhn_file(train_path), _read_svhn_file(test_path), info


# ----------------------------------------------------------------------------- MNIST, Fashion-MNIST (IDX)

FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
_IDX_NAMES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST"}
_IDX_MEAN_STD = {"fashion_mnist": ((0.2860,), (0.3530,)), "mnist": ((0.1307,), (0.3081,))}
# How to get the files, appended to a missing-root or missing-file error.
_GET_FILES = {
    "fashion_mnist": f" (on Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts them in "
    f"{FASHION_MNIST_DEBIAN_ROOT}, the default root; elsewhere add --set data.download=true when online)",
    "mnist": " (add --set data.download=true when online to fetch the official files into it)",
}
# IDX header: magic (0x0000, dtype 0x08 = uint8, number of dimensions), then one big-endian uint32 per dimension.
_IDX_IMAGES = (2051, 3)
_IDX_LABELS = (2049, 1)
_IDX_STEMS = ("images-idx3-ubyte", "labels-idx1-ubyte")  # after "train-" / "t10k-"


def _download_idx(name: str, root: Path) -> None:
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
    raise RbpError(f"data.root: {root} has no {_IDX_NAMES[name]} file {stem}[.gz]{_GET_FILES[name]}")


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
        raise _corrupt(path, label, _first_line(error)) from None
    return dims, np.frombuffer(raw, dtype=np.uint8, offset=head)


def _read_idx_pair(images_path: Path, labels_path: Path, label: str) -> Split:
    """Images (N, 28, 28) and labels (N,) in 0..9 -> Split of uint8 (N, 1, 28, 28) and int64 labels."""
    (n, rows, cols), pixels = _read_idx(images_path, _IDX_IMAGES, label)
    if (rows, cols) != (28, 28):
        raise _corrupt(images_path, label, f"images are {rows}x{cols}, expected 28x28")
    (n_labels,), labels = _read_idx(labels_path, _IDX_LABELS, label)
    if n_labels != n:
        raise _corrupt(labels_path, label, f"{n_labels} labels for the {n} images of {images_path.name}")
    if labels.size and labels.max() > 9:
        raise _corrupt(labels_path, label, f"label {labels.max()} outside 0..9")
    x = torch.from_numpy(pixels.reshape(n, 1, rows, cols).copy())  # copy: frombuffer arrays are read-only
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def _idx_loader(name: str) -> Callable[[Path], tuple[Split, Split, DataInfo]]:
    """The loader of an IDX data set: the official train split and the 10,000-image t10k test split."""

    def load(root: Path) -> tuple[Split, Split, DataInfo]:
        paths = [_idx_path(root, f"{split}-{kind}", name) for split in ("train", "t10k") for kind in _IDX_STEMS]
        label = _IDX_NAMES[name]
        train, test = _read_idx_pair(*paths[:2], label), _read_idx_pair(*paths[2:], label)
        return train, test, DataInfo(*DATA_SHAPES[name], *_IDX_MEAN_STD[name])

    return load


_LOADERS: dict[str, Callable[[Path], tuple[Split, Split, DataInfo]]] = {
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "svhn": _load_svhn,
    "fashion_mnist": _idx_loader("fashion_mnist"),
    "mnist": _idx_loader("mnist"),
}


# ----------------------------------------------------------------------------- batching


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

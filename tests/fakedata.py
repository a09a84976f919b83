"""Writers of tiny data sets in the real on-disk formats (CIFAR pickles, SVHN .mat, MNIST IDX)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def image(n: int) -> np.ndarray:
    """A distinct, asymmetric uint8 (3, 32, 32) image per n, so any axis mix-up changes it."""
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    return ((c * 97 + h * 7 + w * 3 + n * 11) % 256).astype(np.uint8)


def write_pickle(path: Path, batch: dict[bytes, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch))


def write_py2_pickle(path: Path, rows: np.ndarray, labels: list[int]) -> None:
    """Write ``{"data": rows, "labels": labels}`` as Python 2 + numpy 1.x did for the official files.

    Opcodes by hand: byte strings are py2 ``str`` (SHORT_BINSTRING/BINSTRING), the array is built by
    ``numpy.core.multiarray._reconstruct`` with a py2 dtype state.
    """
    n, d = rows.shape
    payload = rows.astype(np.uint8).tobytes()
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01M"
        + n.to_bytes(2, "little")
        + b"M"
        + d.to_bytes(2, "little")
        + b"\x86"
        + b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + b"\x89T"
        + len(payload).to_bytes(4, "little")
        + payload
        + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02}(U\x04data" + array + b"U\x06labels" + label_list + b"u.")


def cifar_batch(ids: range, num_classes: int, label_key: bytes) -> dict[bytes, object]:
    rows = np.stack([image(n).reshape(-1) for n in ids])  # channel-major: R plane, G plane, B plane
    return {b"data": rows, label_key: [n % num_classes for n in ids], b"batch_label": b"batch"}


def write_svhn(path: Path, ids: range) -> None:
    from scipy.io import savemat

    images = np.stack([image(n) for n in ids])  # (N, C, H, W)
    labels = np.array([[n % 10 + 1] for n in ids], dtype=np.uint8)  # 1..10, 10 is the digit 0
    savemat(str(path), {"X": images.transpose(2, 3, 1, 0), "y": labels})  # stored as (H, W, C, N)


def idx_image(n: int) -> np.ndarray:
    """A distinct, asymmetric uint8 (28, 28) image per n."""
    h, w = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    return ((h * 7 + w * 3 + n * 11) % 256).astype(np.uint8)


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: big-endian magic, one big-endian uint32 per dimension, the bytes."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, gzip-compressed when the name ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_idx_set(root: Path, train_ids: range, test_ids: range, *, gz: bool = True) -> None:
    """The four official files: images ``idx_image(n)``, labels ``n % 10``."""
    suffix = ".gz" if gz else ""
    for split, ids in (("train", train_ids), ("t10k", test_ids)):
        images = np.stack([idx_image(n) for n in ids])
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", idx_bytes(2051, images))
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", idx_bytes(2049, np.array([n % 10 for n in ids])))

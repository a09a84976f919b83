"""Writers of tiny data sets in the real on-disk formats (CIFAR pickles, SVHN .mat)."""

from __future__ import annotations

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

"""An unpickler for the CIFAR archives that builds numpy arrays and nothing else (no code runs from a file)."""

from __future__ import annotations

import codecs
import pickle
from typing import Any, BinaryIO

import numpy as np

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


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, numbers, bytes and numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


# Anything a damaged pickle can make the unpickler or the checks below raise.
PICKLE_ERRORS = (
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


def load_pickle(f: BinaryIO) -> dict[bytes, Any]:
    # encoding="bytes": the official files are Python 2 pickles with byte-string keys.
    batch = ArrayUnpickler(f, encoding="bytes").load()
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict, got {type(batch).__name__}")
    return batch

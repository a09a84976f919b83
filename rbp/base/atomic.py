"""Atomic file writes: a reader (or a run killed mid-write) never sees half a file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rbp.base.errors import RbpError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; renamed onto ``path`` when the block succeeds.

    The name carries the process id, so concurrent writers (Ray workers) never share one; if the
    block raises, the temporary file is removed and ``path`` keeps its old content; an ``OSError``
    (disk full, folder gone) becomes one :class:`RbpError` line naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a read-only or vanished folder: one line, the old file kept
        raise RbpError(f"cannot write {path}: {error.strerror or error}; free space or choose another folder") from None
    finally:
        tmp.unlink(missing_ok=True)

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
    (disk full, folder gone) becomes one :class:`RbpError` line naming ``path``. The file is flushed
    to disk (``fsync``) before the rename and the folder after it, so a power loss never leaves a
    half-written file under ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync(tmp)  # the bytes on disk before the rename makes them the file: a power loss leaves old or new
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename itself
    except OSError as error:  # a full disk, a read-only or vanished folder: one line, the old file kept
        raise RbpError(f"cannot write {path}: {error.strerror or error}; free space or choose another folder") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """``path.write_text(text)`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _fsync(path: Path) -> None:
    """``fsync`` a file or a folder by path (its writer has closed it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

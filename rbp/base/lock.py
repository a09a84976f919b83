"""One writer per folder: an exclusive ``flock`` on ``<folder>/.lock`` for as long as a block runs.

The kernel releases a ``flock`` when its holder dies, so a killed writer never leaves a stale lock;
the file names the holder (process and host) for the error a second writer gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rbp.base import files
from rbp.base.errors import RbpError


@contextmanager
def exclusive(folder: Path, what: str, field: str) -> Iterator[None]:
    """Create ``folder`` and hold its lock for the block.

    ``what`` names the folder in errors (``run folder``); ``field`` is the option or config field
    that chose it, named when the folder cannot be created. Another live holder is one
    :class:`RbpError` line naming it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / files.LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
    except OSError as error:
        raise RbpError(f"{field}: cannot create the {what} {folder} ({error.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RbpError(f"{what} {folder} is being written by {holder}; wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

"""The data files' one-line errors: a missing file names ``data.root``, a corrupt one its path and the fix."""

from __future__ import annotations

from pathlib import Path

from rbp.base.errors import RbpError


def require_files(root: Path, relative: list[str], label: str) -> list[Path]:
    """The paths ``root / r``; an :class:`RbpError` naming the first that is missing."""
    for rel in relative:
        if not (root / rel).is_file():
            raise RbpError(
                f"data.root: {root} has no {label} files ({rel}); point data.root at the folder that holds them, "
                "or set data.download=true when online"
            )
    return [root / rel for rel in relative]


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def corrupt(path: Path, label: str, reason: str) -> RbpError:
    return RbpError(
        f"data.root: {path} is not a readable {label} file ({reason}); "
        "re-download it (data.download=true) or point data.root at intact files"
    )

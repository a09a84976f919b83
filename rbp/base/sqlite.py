"""Is an SQLite file whole? The search's stores (MLflow's and Optuna's) are SQLite files by default,
and a damaged one otherwise fails deep inside SQLAlchemy with a traceback or a one-word riddle."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from rbp.base.errors import RbpError


def check_sqlite_file(path: Path, what: str, option: str) -> None:
    """One :class:`RbpError` line if the existing, non-empty SQLite file ``path`` is damaged.

    ``what`` names the store (``MLflow tracking store``), ``option`` the flag that points elsewhere.
    The file is opened read-only and only read (``PRAGMA quick_check``): nothing is written to it.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return  # absent or empty: SQLite creates its schema there
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            problem = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        problem = str(error)
    if problem != "ok":
        raise RbpError(
            f"{what} {path} is damaged ({problem.splitlines()[0][:120]}); move it aside or restore a copy, "
            f"or point {option} elsewhere"
        )

"""Results as Parquet: one single-row file per finished run, a folder read back as one table.

No two writers share a file (each run writes its own, named by run or trial id), every file is
written under a temporary name and renamed, so a crash never leaves half a row, and re-writing a
name (a restarted trial) replaces its row instead of duplicating it.

A row: ``run_id``, ``status`` (finished | early_stopped | diverged | failed), ``reason``, every config field
flattened as ``config.<section>.<key>``, the run's summary metrics, ``rbp_version``,
``git_commit``, ``finished_at`` (UTC ISO time), plus any extra keys the caller adds.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from rbp.base.atomic import atomic_path
from rbp.base.version import __version__
from rbp.config.schema import Config

log = logging.getLogger(__name__)

STATUSES = ("finished", "early_stopped", "diverged", "failed")  # early_stopped: a search scheduler (ASHA) ended it


@functools.cache
def git_commit() -> str:
    """The commit of the rbp source tree, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and dicts below the leaves become JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value) and key != "layer_densities":
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def result_row(
    cfg: Config,
    summary: dict[str, Any],
    *,
    status: str = "finished",
    reason: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One flat row describing a run: identity, config, metrics, provenance."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    row: dict[str, Any] = {"run_id": cfg.run_id(), "status": status, "reason": reason}
    row.update(flatten(cfg.to_dict(), "config."))
    row.update({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})
    row.update(rbp_version=__version__, git_commit=git_commit(),
               finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    row.update(extra or {})
    return row


def write_row(folder: str | Path, row: dict[str, Any], name: str | None = None) -> Path:
    """Write ``row`` atomically to ``<folder>/<name or run_id>.parquet`` (replacing that file)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or row['run_id']}.parquet"
    with atomic_path(path) as tmp:
        pd.DataFrame([row]).to_parquet(tmp, index=False)
    return path


def read_results(folder: str | Path) -> pd.DataFrame:
    """Every ``*.parquet`` under ``folder`` (recursively) as one table; corrupt files are logged and skipped."""
    frames = []
    for path in sorted(Path(folder).rglob("*.parquet")):
        try:
            frames.append(pd.read_parquet(path))
        except Exception as error:  # any unreadable file: report it, keep the others
            reason = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
            log.warning(
                "skipping unreadable results file %s (%s); delete it to rebuild it: `rbp ablate SPEC` reruns a "
                "cell whose row is missing",
                path,
                reason,
            )
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True, sort=False)

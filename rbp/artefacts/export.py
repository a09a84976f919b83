"""``rbp export``: a run folder's ``best.pt`` (or any checkpoint) to an ``.rbpz``, with the run's test metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from rbp.artefacts.checkpoint import load_model
from rbp.artefacts.rbpz_format import SUFFIX, Artefact
from rbp.artefacts.reader import is_artefact
from rbp.artefacts.sizes import SizeBreakdown, size_breakdown
from rbp.artefacts.writer import encode, write_artefact
from rbp.base.errors import RbpError

log = logging.getLogger(__name__)


def _source_checkpoint(source: Path) -> Path:
    """A run folder -> its best.pt; a checkpoint file -> itself."""
    if source.is_dir():
        best = source / "best.pt"
        if not best.is_file():
            raise RbpError(f"export: {source} holds no best.pt; give a finished run folder or a checkpoint file")
        return best
    if not source.is_file():
        raise RbpError(f"export: {source}: no such run folder or checkpoint file")
    if is_artefact(source):
        raise RbpError(f"export: {source} is already an exported artefact; `rbp info {source}` describes it")
    return source


def _run_metrics(checkpoint: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's epoch metrics, plus the run's test metrics when it is the run's best.pt."""
    metrics = dict(payload.get("metrics") or {})
    summary = checkpoint.with_name("summary.json")
    if checkpoint.name == "best.pt" and summary.is_file():
        try:
            metrics.update(json.loads(summary.read_text()))
        except (OSError, ValueError):
            log.warning("export: cannot read %s; exporting without test metrics", summary)
    metrics.pop("run_dir", None)  # a path of the training machine, not a property of the model
    return metrics


def export_run(source: str | Path, out: str | Path | None = None) -> tuple[Path, Artefact, SizeBreakdown]:
    """Export a run folder (its best.pt) or a checkpoint to ``out`` (default: beside it, ``model.rbpz``)."""
    checkpoint = _source_checkpoint(Path(source))
    model, cfg, payload = load_model(checkpoint, "cpu")
    artefact = encode(model, cfg, payload["data_info"], _run_metrics(checkpoint, payload))
    out = Path(out) if out is not None else checkpoint.with_name("model" + SUFFIX)
    size = write_artefact(artefact, out)
    sizes = size_breakdown(artefact)
    if size * 8 != sizes.subnet_bits:  # the account must be the file: a zipfile change would show here
        log.warning("export: %s is %d bytes but the size account says %d", out, size, sizes.subnet_bytes)
    log.debug("exported %s: %d bytes", out, size)
    return out, artefact, sizes

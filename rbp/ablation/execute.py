"""One ablation job: train its cell × seed (resuming a cut-short run), write its row, keep its model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rbp.ablation.jobs import Job, model_path
from rbp.base.atomic import atomic_path
from rbp.results import result_row, write_row


def _keep_model(job: Job, run_dir: Path, folder: Path) -> None:
    """Copy the trained model of ``job`` to :func:`model_path`, so every table row can be re-evaluated."""
    from rbp.artefacts.export import export_run

    path = model_path(folder, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".rbpz":
        export_run(run_dir, path)
    else:
        with atomic_path(path) as tmp:
            shutil.copyfile(run_dir / "best.pt", tmp)


def run_job(job: Job, rows_folder: Path, keep_model: bool = False) -> dict[str, Any]:
    """Train one cell × seed (resuming its folder if a run was cut short) and write its row; with
    ``keep_model`` its model also goes to :func:`model_path` (for the first seed of a spec)."""
    from rbp.runs.epochs import train_run
    from rbp.training.trainer import Diverged

    try:
        summary = train_run(job.config, resume=True)
        if keep_model:
            _keep_model(job, Path(summary["run_dir"]), rows_folder.parent)
        row = result_row(job.config, summary, extra={"cell": job.cell, "seed": job.seed})
    except Diverged as error:
        extra = {"cell": job.cell, "seed": job.seed}
        row = result_row(job.config, {}, status="diverged", reason=str(error), extra=extra)
    write_row(rows_folder, row)
    return row

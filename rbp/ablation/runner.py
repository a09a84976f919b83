"""Run an ablation spec: the jobs with no row yet, serially or as Ray tasks (:mod:`rbp.ablation.ray_backend`)."""

from __future__ import annotations

import logging

from rbp.ablation.execute import run_job
from rbp.ablation.jobs import Job, jobs
from rbp.ablation.spec import AblationSpec
from rbp.results import read_results

log = logging.getLogger(__name__)


def _run_order(pending: list[Job]) -> list[Job]:
    """Seed by seed, so every cell has a first result early; within a seed, HYDRA cells after the dense
    runs they start from."""
    return sorted(pending, key=lambda job: (job.seed, job.config.init.scheme == "pretrained"))


def missing_jobs(spec: AblationSpec) -> list[Job]:
    """Distinct jobs whose run id has no row in the results folder yet."""
    table = read_results(spec.folder / "rows")
    done = set(table["run_id"]) if "run_id" in table else set()
    unique: dict[str, Job] = {}
    for job in jobs(spec):
        unique.setdefault(job.run_id, job)
    return [job for run_id, job in unique.items() if run_id not in done]


def run_ablation(spec: AblationSpec, address: str | None = None) -> int:
    """Run the spec's missing cells (serially, or as Ray tasks on ``address``); returns how many ran."""
    pending = _run_order(missing_jobs(spec))
    total = len({job.run_id for job in jobs(spec)})
    log.info("ablation %s: %d of %d runs missing", spec.name, len(pending), total)
    rows_folder = spec.folder / "rows"
    if address is None or not pending:
        for index, job in enumerate(pending, 1):
            log.info("[%d/%d] %s / %s / seed %d", index, len(pending), job.study, job.cell, job.seed)
            run_job(job, rows_folder, keep_model=job.seed == spec.seeds[0])
        return len(pending)
    from rbp.ablation.ray_backend import run_on_ray  # the only place the ablation runner touches Ray

    run_on_ray(pending, rows_folder, address, keep_seed=spec.seeds[0])
    return len(pending)

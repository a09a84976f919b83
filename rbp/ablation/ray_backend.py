"""Run ablation jobs as Ray tasks on a cluster (``rbp ablate SPEC --address ...``)."""

from __future__ import annotations

import logging
from pathlib import Path

from rbp.ablation.execute import run_job
from rbp.ablation.jobs import Job
from rbp.base.errors import RbpError

log = logging.getLogger(__name__)


def run_on_ray(pending: list[Job], rows_folder: Path, address: str, keep_seed: int) -> None:
    """Each job one task; HYDRA-style jobs only after the dense runs they start from have finished.
    Jobs of seed ``keep_seed`` also keep their model (:func:`rbp.ablation.jobs.model_path`).

    A job whose config says ``run.device: cuda`` asks Ray for one GPU, any other one CPU core.
    ``rows_folder`` and the run folders must be on storage every node sees (a shared file system).
    """
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0][:100]
        raise RbpError(f"--address {address}: cannot reach a Ray cluster ({reason})") from None
    task = ray.remote(run_job)
    try:
        for wave in (
            [j for j in pending if j.config.init.scheme != "pretrained"],
            [j for j in pending if j.config.init.scheme == "pretrained"],
        ):
            ray.get(
                [task.options(**task_resources(job)).remote(job, rows_folder, job.seed == keep_seed) for job in wave]
            )
            log.info("ray: %d runs finished", len(wave))
    finally:
        ray.shutdown()


def task_resources(job: Job) -> dict[str, float]:
    """Ray resources of one job: a GPU for ``run.device: cuda``, else one CPU core."""
    return {"num_cpus": 1, "num_gpus": 1 if job.config.run.device == "cuda" else 0}

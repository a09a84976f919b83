"""Run ablation jobs as Ray tasks on a cluster (``rbp ablate SPEC --address ...``)."""

from __future__ import annotations

import logging
from pathlib import Path

from rbp.ablation import Job, run_job
from rbp.errors import RbpError

log = logging.getLogger(__name__)


def run_on_ray(pending: list[Job], rows_folder: Path, address: str, cpus: float = 1, gpus: float = 0) -> None:
    """Each job one task; HYDRA-style jobs only after the dense runs they start from have finished.

    ``rows_folder`` and the run folders must be on storage every node sees (a shared file system).
    """
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0][:100]
        raise RbpError(f"--address {address}: cannot reach a Ray cluster ({reason})") from None
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_job)
    try:
        for wave in (
            [j for j in pending if j.config.init.scheme != "pretrained"],
            [j for j in pending if j.config.init.scheme == "pretrained"],
        ):
            ray.get([task.remote(job, rows_folder) for job in wave])
            log.info("ray: %d runs finished", len(wave))
    finally:
        ray.shutdown()

"""The Ray cluster a search runs on: check an address before anything starts, start a local cluster, and
refuse a trial larger than it (one line naming ``resources``) instead of leaving it pending.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from rbp.base.errors import RbpError
from rbp.tuning.options import TuneOptions
from rbp.tuning.spec import ResourcesSpec


# ----------------------------------------------------------------------------- the cluster
def _resolve_auto() -> str | None:
    """The address ``auto`` means (RAY_ADDRESS, else the last ``ray start`` on this machine), or None.

    Ray's own lookup (a private function; pinned with ray 2.60 and tested): without this, a stale
    address file left by a cluster that is gone makes ``ray.init("auto")`` wait for minutes.
    """
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # no cluster recorded: ray.init reports that itself, at once
        return None


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (one line) when nothing listens at ``address``: ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``."""
    target = address
    if address == "auto":
        target = _resolve_auto()
        if target is None:
            return
    target = target.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RbpError(f"--address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        where = address if target == address else f"{address} ({target})"
        raise RbpError(
            f"no Ray cluster at {where}: {reason}; start one (`ray start --head`, `ray up cluster.yaml`) "
            "or drop --address for a local one"
        ) from None


def set_ray_environment(opts: TuneOptions) -> None:
    """Environment Ray reads at start-up; set explicitly so the behaviour does not depend on history.

    Auth: Ray enables token auth when ``~/.ray/auth_token`` exists and RAY_AUTH_MODE is unset, and a
    driver whose mode differs from the cluster's cannot connect. A local cluster uses token auth
    (Ray's default: the token is created on first use); for ``--address`` we follow the token file.
    """
    if opts.auth_mode is not None:
        os.environ["RAY_AUTH_MODE"] = opts.auth_mode
    elif "RAY_AUTH_MODE" not in os.environ:
        has_token = (Path.home() / ".ray" / "auth_token").is_file() or "RAY_AUTH_TOKEN" in os.environ
        os.environ["RAY_AUTH_MODE"] = "token" if opts.address is None or has_token else "disabled"
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic console reporter (CLIReporter), with our columns
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every epoch's checkpoint forces a state snapshot (that is what makes --resume exact); the
    # warning about frequent snapshots is expected here, not actionable.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if "ray._raylet" in sys.modules:
        # Ray caches the auth mode when it is imported; a driver that imported it earlier (tests, a
        # notebook) must re-read it, or it starts a token-auth GCS without creating the token.
        from ray._raylet import Config

        Config.initialize("")


def start_ray(opts: TuneOptions) -> None:
    """Start a local Ray cluster or connect to ``opts.address`` (after :func:`set_ray_environment`)."""
    import ray

    common: dict[str, Any] = {
        "log_to_driver": opts.verbose,
        "logging_level": logging.DEBUG if opts.verbose else logging.WARNING,
    }
    try:
        if opts.address is None:
            # "local": a fresh cluster in this process even if `ray start` left one running here.
            ray.init(address="local", num_cpus=local_cpus(opts), include_dashboard=False, **common)
        else:
            ray.init(address=opts.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        where = f"the Ray cluster at {opts.address}" if opts.address else "a local Ray cluster"
        raise RbpError(f"cannot start or reach {where}: {first}") from None


def local_cpus(opts: TuneOptions) -> int:
    """CPUs of the local Ray cluster: ``--num-cpus``, else the machine's."""
    return opts.num_cpus or os.cpu_count() or 1


def check_trial_fits(resources: ResourcesSpec, spec_path: Path, cpus: int) -> None:
    """Refuse a trial larger than the local Ray cluster of ``cpus`` CPUs (before Ray starts).

    Ray would keep the trial pending forever and only warn every minute; a remote cluster may be
    autoscaling, so only the local one is checked. GPUs are counted (by torch, as Ray does through
    ``CUDA_VISIBLE_DEVICES``) only when a trial asks for one.
    """
    have = {"CPU": cpus}
    if resources.gpu > 0:
        import torch

        have["GPU"] = torch.cuda.device_count()
    for key, unit, asked in (("cpu", "CPU", resources.cpu), ("gpu", "GPU", resources.gpu)):
        if asked > have.get(unit, 0):
            raise RbpError(
                f"resources.{key} in {spec_path}: a trial asks for {asked:g} {unit}s but the local Ray cluster has "
                f"{have.get(unit, 0):g}; lower resources.{key} in the spec"
                + (" or raise --num-cpus" if unit == "CPU" else " (or run on a cluster with GPUs: --address)")
            )

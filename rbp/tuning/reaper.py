"""Stop the local Ray cluster of a driver that died without stopping it (``kill -9``): by PID, never ``ray stop``.

Ray's processes share the driver's fate only in part: the raylet and the GCS go with it, but the
raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) first try to report the raylet's
death to the dead GCS and wait out a fixed 60-second timeout (``publish_error_to_driver``), so after
a ``kill -9`` they outlive the driver by a minute. While ``rbp tune`` runs a local cluster, a
watchdog (``python -m rbp.tuning.reaper DRIVER_PID``) keeps a list of the driver's descendants
(the agents are the raylet's children); when the driver is gone it stops those still running
(SIGTERM, then SIGKILL) and exits. A driver that ends its block stops the watchdog first.

Descendants, not an environment marker: the agents set their process title, which overwrites
their environment block, so a marker there is not reliably readable.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil

POLL_SECONDS = 0.5  # how often the watchdog looks at the driver and lists its descendants
GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL


@contextlib.contextmanager
def watched(active: bool = True) -> Iterator[None]:
    """While the block runs, a watchdog stops this process's descendants should this process die;
    a block that ends (normally or by an exception) stops the watchdog.

    ``active=False`` (a driver joining a cluster it did not start): nothing is watched.
    """
    if not active:
        yield
        return
    # Its own session: a Ctrl-C to the driver's terminal does not reach it (the driver's own
    # clean-up then stops Ray and, leaving the block, the watchdog).
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "rbp.tuning.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield
    finally:
        watchdog.terminate()
        watchdog.wait()


def watch(driver_pid: int) -> None:
    """List ``driver_pid``'s descendants until it ends, then stop those still running."""
    known: dict[int, psutil.Process] = {}
    try:
        driver = psutil.Process(driver_pid)
        while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
            known.update(descendants(driver))
            time.sleep(POLL_SECONDS)
    except psutil.NoSuchProcess:
        pass
    stop(list(known.values()))


def descendants(driver: psutil.Process) -> dict[int, psutil.Process]:
    """The driver's children, theirs, and so on (this watchdog left out), by PID."""
    return {p.pid: p for p in driver.children(recursive=True) if p.pid != os.getpid()}


def stop(processes: list[psutil.Process]) -> None:
    """SIGTERM the processes still running (``is_running`` tells a reused PID apart), SIGKILL what is
    left after the grace period."""
    alive = [p for p in processes if p.is_running()]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()


if __name__ == "__main__":
    watch(int(sys.argv[1]))

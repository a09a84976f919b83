"""The multi-host test's harness (``nshosts.py``): finding a host's process 1 when ``unshare`` forks late."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nshosts
import psutil
import pytest

# A stand-in for ``unshare --fork``: forks its one child only after a pause, as a busy machine does.
LATE_FORK = "import os, time; time.sleep(0.5); pid = os.fork(); pid or time.sleep(60); os.waitpid(pid, 0)"


def test_init_pid_waits_for_the_launcher_to_fork_process_1(tmp_path: Path) -> None:
    launcher = subprocess.Popen([sys.executable, "-c", LATE_FORK])
    host = nshosts.Host("head", "10.200.0.1", tmp_path, launcher)
    try:
        found = host.init_pid
        assert [child.pid for child in psutil.Process(launcher.pid).children()] == [found]
    finally:
        for child in psutil.Process(launcher.pid).children():
            child.kill()
        launcher.kill()
        launcher.wait()


def test_init_pid_of_a_host_whose_boot_failed_names_its_boot_log(tmp_path: Path) -> None:
    (tmp_path / "boot.log").write_text("mount: /mnt: permission denied\n")
    launcher = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    launcher.wait()
    host = nshosts.Host("worker1", "10.200.0.2", tmp_path, launcher)
    with pytest.raises(AssertionError, match=r"worker1 has no process 1 \(exit 3\): mount: /mnt: permission denied"):
        _ = host.init_pid

"""The watchdog of a local Ray cluster: what a killed driver started is stopped by PID; a clean exit leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from rbp.tuning.reaper import descendants, stop, watched

# A driver whose child starts a grandchild (as the raylet starts its agents), then waits.
GRANDCHILD = "import time; time.sleep(600)"
CHILD = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {GRANDCHILD!r}]); time.sleep(600)"
DRIVER = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}])
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_drivers_listed_descendants_are_stopped():
    """What the watchdog does each poll (list the descendants) and once the driver is gone (stop them).

    The whole loop runs in tests/tuning/test_tuning_resume.py, which kill -9s a real search."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(driver.stdout.readline()))
    deadline = time.monotonic() + 30
    while not child.children():  # until the child has started its own
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (grandchild,) = child.children()
    known = descendants(psutil.Process(driver.pid))
    assert set(known) == {child.pid, grandchild.pid}
    driver.kill()  # SIGKILL: the driver's own clean-up never runs; its descendants stay
    driver.wait()
    assert not gone(child.pid) and not gone(grandchild.pid)
    stop(list(known.values()))
    assert gone(child.pid) and gone(grandchild.pid)


def test_a_block_that_ends_stops_its_watchdog():
    def watchdogs() -> list[psutil.Process]:
        return [p for p in psutil.Process().children() if "rbp.tuning.reaper" in " ".join(p.cmdline())]

    with watched():
        assert len(watchdogs()) == 1
    assert watchdogs() == []
    with watched(active=False):
        assert watchdogs() == []

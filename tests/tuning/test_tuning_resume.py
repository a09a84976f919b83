"""Killing the ``rbp tune`` driver mid-search (SIGINT, SIGKILL) and ``--resume``: every trial exactly once.

The driver runs as a subprocess with a marker in its environment; Ray's processes inherit it, so
after a SIGKILL the leftovers of *this* search are found by the marker and stopped by PID (never
``ray stop``, which would stop every Ray process on the machine). A gate (``trial_gate/``) holds
every trial but the first until the driver has been interrupted, so "interrupted mid-search" holds
on a machine of any speed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

from rbp.results import read_results
from rbp.tuning import keys, tracking
from rbp.tuning.study import open_storage, resolve_storage

pytestmark = pytest.mark.slow

RBP = [sys.executable, "-m", "rbp"]
GATE_CODE = Path(__file__).parent / "trial_gate"
TINY = {"model.width": 8, "train.epochs": 4, "attack.steps": 2, "eval.val_pgd_steps": 2, "eval.test_pgd_steps": 2}


def marked_pids(marker: str) -> list[int]:
    """PIDs of processes whose environment holds ``RBP_TEST_MARKER=<marker>``."""
    pids = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get("RBP_TEST_MARKER") == marker:
                pids.append(process.pid)
        except psutil.Error:  # gone, or not ours to read
            continue
    return pids


def stop_marked(marker: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process carrying ``marker`` (what this test started).

    Ray's GCS and raylets can take many seconds over a SIGTERM (``ray stop`` waits 16 s); after
    ``grace`` seconds whatever is left is killed.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in marked_pids(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while marked_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not marked_pids(marker):
            return


class Driver:
    """``python -m rbp.cli tune ...`` in ``folder``, marked, output in ``folder/<name>.log``."""

    def __init__(self, folder: Path, marker: str) -> None:
        self.folder, self.marker = folder, marker
        # A private RAY_TMPDIR: this search's Ray session (and its address file) stays out of /tmp/ray.
        paths = os.pathsep.join(filter(None, [str(GATE_CODE), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "RBP_TEST_MARKER": marker, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
                    "RAY_TMPDIR": tempfile.mkdtemp(prefix="rbpt-", dir="/tmp"),
                    "RBP_TEST_GATE": str(folder / "gate"), "PYTHONPATH": paths}  # fmt: skip
        (folder / "gate").mkdir()

    def open_gate(self) -> None:
        """Lets the held trials train (see ``trial_gate/sitecustomize.py``)."""
        (self.folder / "gate" / "open").touch()

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        cmd = [*RBP, "tune", *args, "--num-cpus", "2", "--report-every", "5", "--auth-mode", "disabled"]
        return subprocess.Popen(cmd, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()


def rows_of(folder: Path):
    return read_results(folder / "results" / "tune" / "resume" / "rows")


def wait_for(condition, timeout: float, what: str, state=lambda: "") -> None:
    """Poll ``condition`` until true; after ``timeout`` seconds fail, saying ``what`` and ``state()``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} {state()}")
        time.sleep(0.5)


def command_line(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())[:150]
    except psutil.Error:
        return f"{pid} (gone)"


@pytest.fixture
def driver(tmp_path):
    marker = uuid.uuid4().hex
    driver = Driver(tmp_path, marker)
    yield driver
    stop_marked(marker)
    shutil.rmtree(driver.env["RAY_TMPDIR"], ignore_errors=True)


def spec_file(folder: Path) -> Path:
    body = {
        "experiment": "resume",
        "fixed": TINY,
        "space": {"train.lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
        "sampler": {"type": "random", "seed": 0},
        "trials": 3,
        "concurrency": 2,
    }
    path = folder / "resume.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_killed_driver_then_resume_records_every_trial_once(driver, tmp_path, sig):
    spec = spec_file(tmp_path)
    first = driver.start("first", str(spec))
    wait_for(lambda: len(rows_of(tmp_path)) >= 1 or first.poll() is not None, 240, "a first finished trial")
    assert first.poll() is None, driver.log("first")[-3000:]
    assert (tmp_path / "gate" / "claimed").exists()  # the trials met the gate (so it holds the others)
    os.kill(first.pid, sig)  # the driver only; Ray's own processes are its children
    code = first.wait(timeout=120)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        # The Ray processes the killed driver started go within seconds (rbp.tuning.reaper), not a minute.
        wait_for(lambda: not marked_pids(driver.marker), 20, "the killed driver's Ray processes to go",
                 lambda: [command_line(pid) for pid in marked_pids(driver.marker)])  # fmt: skip
    else:
        assert code == 130, driver.log("first")[-3000:]
        last = [line for line in driver.log("first").splitlines() if line.strip()][-1]
        assert "--resume` continues it" in last and "Tuner.restore" not in driver.log("first")  # rbp's hint only
    assert len(rows_of(tmp_path)) == 1  # interrupted mid-search: the gate held the other two trials

    driver.open_gate()
    second = driver.start("second", str(spec), "--resume")
    assert second.wait(timeout=300) == 0, driver.log("second")[-3000:]
    assert "3 trials in the study (3 complete)" in driver.log("second")

    rows = rows_of(tmp_path)
    assert len(rows) == 3 and rows["trial_id"].is_unique and set(rows["status"]) == {"finished"}
    assert len(set(rows["search"])) == 1  # one search, continued
    client = tracking.client(tracking.resolve_tracking_uri(None, tmp_path / "results"))
    every = tracking.search_all(client, client.get_experiment_by_name("resume").experiment_id)
    runs = [run for run in every if keys.TRIAL_TAG in run.data.tags]
    (parent,) = [run for run in every if keys.TRIAL_TAG not in run.data.tags]
    assert {run.data.tags[keys.PARENT_TAG] for run in runs} == {parent.info.run_id}
    trial_ids = [run.data.tags[keys.TRIAL_TAG] for run in runs]
    assert sorted(trial_ids) == sorted(rows["trial_id"])  # one run per trial: restarts reused theirs
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert {run.info.run_id for run in runs} == set(rows["mlflow_run_id"])
    for run in runs:  # a restarted trial's metric history reaches its last epoch
        assert max(m.step for m in client.get_metric_history(run.info.run_id, "val_pgd_acc")) == 4
    # Optuna: every trial once, each told its value (none left RUNNING by the killed driver).
    storage = open_storage(resolve_storage(None, tmp_path / "results"))
    study = optuna.load_study(study_name="resume", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted(rows["study_trial"]) == [0, 1, 2]
    by_number = {int(run.data.tags[keys.STUDY_TRIAL_TAG]): run for run in runs}
    assert {n: by_number[n].data.metrics["val_pgd_acc"] for n in by_number} == {t.number: t.value for t in study.trials}

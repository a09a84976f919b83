"""A real multi-host Ray cluster: ``ray up cluster-onprem.yaml`` on three hosts, a search and an ablation
submitted as Ray jobs, one worker host killed mid-search, ``ray down``.

The hosts are Linux namespaces on this machine (``nshosts.py``): a head and two workers on a bridge
with private test addresses, each with its own sshd, processes, home and ``/tmp/ray``, and the same
shared folder at ``/mnt`` (the NFS of a real cluster). Everything else is the user's path of
docs/cluster.md: the test's copy of ``cluster-onprem.yaml`` differs only in the addresses, the SSH
user and key, and the Python environment (the test's own, linked, instead of a fresh pip install).
Root only (namespaces); the hosts and every process on them are stopped by PID even when the test fails.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nshosts
import pytest
import yaml
from trialfiles import trial_results

from rbp.results import read_results
from rbp.tuning import keys, tracking

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EPOCHS = 5
TRIALS = 6

pytestmark = pytest.mark.slow


def onprem_copy(hosts: nshosts.Hosts) -> dict:
    """cluster-onprem.yaml with the hosts' addresses, root's test key and the test's Python environment.

    The file's install steps (a venv, pip install of the pins and of ``~/rbp``) become a link to this
    venv and ``PYTHONPATH=~/rbp`` (the synced checkout); its PATH line in ``~/.bashrc`` stays as is.
    """
    text = (REPO / "cluster-onprem.yaml").read_text()
    head, *workers = hosts.hosts
    config = yaml.safe_load(text.replace("10.0.0.10", head.address))
    config["cluster_name"] = hosts.tag
    config["provider"]["worker_ips"] = [w.address for w in workers]
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(hosts.key)}
    config["file_mounts"] = {"~/rbp": str(REPO)}
    path_lines = [c for c in config["setup_commands"] if ".bashrc" in c]
    assert len(path_lines) == 1 and len(config["setup_commands"]) == 3, "the on-prem setup changed: update this test"
    config["setup_commands"] = [
        f"ln -sfn {VENV_BIN.parent} ~/rbp-env",
        "grep -qs PYTHONPATH ~/.bashrc || echo 'export PYTHONPATH=$HOME/rbp' >> ~/.bashrc",
        *path_lines,
    ]
    return config


@pytest.fixture
def hosts():
    reason = nshosts.unavailable_reason()
    if reason is not None:
        pytest.skip(f"multi-host cluster test: {reason}")
    nshosts.remove_stale()
    root = Path(tempfile.mkdtemp(prefix="rbpc-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        with nshosts.Hosts(root) as made:
            yield made
    finally:
        shutil.rmtree(root, ignore_errors=True)
        control = ssh_control_dir(f"{nshosts.PREFIX}{os.getpid()}")  # the cluster name is the hosts' tag
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.parent.rmdir()  # only when no other cluster uses it


def ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's launcher keeps its SSH control sockets for ``cluster_name`` (ray 2.60's command_runner)."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(cluster_name.encode()).hexdigest()[:10]


def active_nodes(status: str) -> int:
    """Nodes in the ``Active:`` section of ``ray status`` (lines ``<count> <node type>``, or one per node id)."""
    section = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    count = 0
    for line in section.splitlines():
        first = line.split()[0] if line.split() else ""
        count += int(first) if first.isdigit() else int(first.startswith("node_"))
    return count


def user_env(hosts: nshosts.Hosts) -> dict[str, str]:
    """The environment of root logged in on the head, running Ray's CLI (no PYTHONPATH: jobs bring code)."""
    launcher_tmp = hosts.root / "launcher"
    launcher_tmp.mkdir(exist_ok=True)
    return {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(hosts.home(hosts.hosts[0])),
        "LANG": "C.UTF-8",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_TMPDIR": str(launcher_tmp),  # the launcher's files apart from the head's own /tmp/ray
        "RAY_UP_enable_autoscaler_v2": "0",  # v2 counts the head towards min_workers: one worker short
    }


def ray_cli(hosts: nshosts.Hosts, args: list[str], timeout: float) -> str:
    done = hosts.run_on(hosts.hosts[0], [str(VENV_BIN / "ray"), *args], env=user_env(hosts), timeout=timeout)
    return done.stdout + done.stderr


def submit(hosts: nshosts.Hosts, entrypoint: list[str], log: Path):
    """``ray job submit --working-dir <checkout> -- ENTRYPOINT`` on the head, in the background."""
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", "http://127.0.0.1:8265",
               "--working-dir", str(REPO), "--", *entrypoint]  # fmt: skip
    return hosts.popen_on(hosts.hosts[0], command, user_env(hosts), log)


def wait(job, log: Path, timeout: float) -> str:
    job.wait(timeout=timeout)
    out = log.read_text()
    assert job.returncode == 0, out[-5000:]
    return out


def running_on(hosts: nshosts.Hosts, host: nshosts.Host) -> set[str]:
    """Trial folder names with a working directory on ``host`` (Ray makes one where a trial runs)."""
    return {p.name for p in (host.folder / "ray").glob("session_*/artifacts/*/*/working_dirs/*")}


def epochs_done(search: Path, trial_dir: str) -> int:
    """Epochs of the trial whose result the driver has processed (the lines of its ``result.json``).

    A checkpoint folder on the storage may be one the driver never heard of (the worker wrote it,
    then died), and a trial restarts from the driver's last registered checkpoint. Ray's driver
    writes an epoch's result, then fetches and registers its checkpoint, and processes no later
    result of the trial before that: once epoch k is in ``result.json``, epoch k - 1's checkpoint
    is registered, and epoch k's may still be in flight.
    """
    path = search / trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(line)["epoch"] for line in lines if line.strip()), default=0)


def kill_when_mid_trial(hosts: nshosts.Hosts, victim: nshosts.Host, storage: Path, job, timeout: float) -> set[str]:
    """Kill ``victim`` once every trial there has a registered checkpoint but not its last (the assertion
    after the kill is about each of them); returns its trials then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        for search in storage.glob("hosts-*"):
            there = running_on(hosts, victim)
            live = [name for name in there if epochs_done(search, name) < EPOCHS]
            if live and all(epochs_done(search, name) > 1 for name in live):  # each has a registered checkpoint
                hosts.kill(victim)
                return there
        time.sleep(0.3)
    raise AssertionError("no trial of the victim host reached a mid-search checkpoint")


def ablation_spec(shared: Path) -> Path:
    spec = {
        "name": "hosts",
        "results": "/mnt/rbp/ablation",
        "base": {"model.width": 8, "train.epochs": 2, "attack.steps": 2, "eval.val_pgd_steps": 2,
                 "eval.test_pgd_steps": 2},
        "seeds": [0],
        "studies": {"density": {"cells": [{"name": "10%", "set": {"sparsity.density": 0.1}},
                                          {"name": "30%", "set": {"sparsity.density": 0.3}}]}},
    }  # fmt: skip
    path = shared / "rbp" / "ablation.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def tune_spec(shared: Path) -> Path:
    spec = {
        "experiment": "hosts",
        "fixed": {"model.width": 8, "train.epochs": EPOCHS, "attack.steps": 3, "eval.val_pgd_steps": 2,
                  "eval.test_pgd_steps": 2},
        "space": {"train.lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
        "sampler": {"type": "random", "seed": 0},
        "scheduler": {"type": "fifo"},
        "trials": TRIALS,
        "concurrency": 4,  # one CPU each: two trials on each worker
        "max_failures": 2,
    }  # fmt: skip
    path = shared / "rbp" / "tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_search_survives_a_lost_host_on_a_cluster_made_by_ray_up(hosts):
    started = time.monotonic()
    head, worker1, worker2 = hosts.hosts
    config = hosts.root / "cluster.yaml"
    config.write_text(yaml.safe_dump(onprem_copy(hosts)))
    (hosts.shared / "rbp").mkdir()
    mnt = hosts.shared / "rbp"  # /mnt/rbp on every host

    # 1. ray up: the head, both workers (installed and started by the head's autoscaler), MLflow.
    ray_cli(hosts, ["up", "-y", "--no-config-cache", str(config)], timeout=900)
    deadline = time.monotonic() + 300  # the head's autoscaler sets the workers up after `ray up` returns
    while not all(any("raylet" in p for p in hosts.processes(w)) for w in (worker1, worker2)):
        assert time.monotonic() < deadline, [hosts.processes(w) for w in (worker1, worker2)]
        time.sleep(1)
    status = ""
    for _ in range(60):  # a started raylet registers with the head within seconds
        status = ray_cli(hosts, ["status", "--address", f"{head.address}:6379"], timeout=120)
        if active_nodes(status) == 3:
            break
        time.sleep(1)
    assert active_nodes(status) == 3, status
    booted = time.monotonic() - started

    # 2. rbp ablate on the cluster: one cell per worker, rows on the shared folder.
    abl_log = hosts.root / "ablate.log"
    ablation_spec(hosts.shared)
    wait(submit(hosts, ["rbp", "ablate", "/mnt/rbp/ablation.yaml", "--address", "auto"], abl_log), abl_log, 900)
    rows = read_results(mnt / "ablation" / "rows")
    assert sorted(rows["cell"]) == ["10%", "30%"] and set(rows["status"]) == {"finished"}, rows

    # 3. rbp tune as a Ray job; worker2 is killed while it holds a half-trained trial.
    tune_spec(hosts.shared)
    tune_log = hosts.root / "tune.log"
    job = submit(hosts, ["rbp", "tune", "/mnt/rbp/tune.yaml", "--address", "auto", "--storage", "/mnt/rbp/ray",
                         "--results", "/mnt/rbp/results", "--tracking-uri", f"http://{head.address}:5000",
                         "--report-every", "10"], tune_log)  # fmt: skip
    cut_off = kill_when_mid_trial(hosts, worker2, mnt / "ray", job, timeout=900)
    out = wait(job, tune_log, timeout=1500)
    errors = {e.parent.name: e.read_text()[-1500:] for e in (mnt / "ray").glob("hosts-*/*/error.txt")}
    assert f"search hosts: {TRIALS} trials in the study ({TRIALS} complete)" in out, (out[-3000:], errors)

    # Every trial once in Parquet and in MLflow, none left RUNNING.
    rows = read_results(mnt / "results" / "tune" / "hosts" / "rows")
    assert len(rows) == TRIALS and rows["trial_id"].is_unique and set(rows["status"]) == {"finished"}
    client = tracking.client(f"sqlite:///{mnt / 'mlflow.db'}")
    every = tracking.search_all(client, client.get_experiment_by_name("hosts").experiment_id)
    runs = [r for r in every if keys.TRIAL_TAG in r.data.tags]  # the trials, not the search's parent run
    assert sorted(r.data.tags[keys.TRIAL_TAG] for r in runs) == sorted(rows["trial_id"])
    assert {r.info.status for r in every} == {"FINISHED"}

    # Trials ran on both workers (never on the head); those cut off resumed after their last epoch.
    (search,) = (mnt / "ray").glob("hosts-*")
    results = trial_results(search)
    assert set(results) == set(rows["trial_id"])
    nodes = {r["node_ip"] for lines in results.values() for r in lines}
    assert nodes == {worker1.address, worker2.address}, nodes
    resumed = 0
    for trial_id, lines in results.items():
        epochs = [r["epoch"] for r in lines]
        assert epochs[-1] == EPOCHS, (trial_id, epochs)
        lost = [i for i, r in enumerate(lines) if r["node_ip"] == worker2.address]
        if not lost or lost[-1] == len(lines) - 1:  # never there, or finished there before the kill
            assert epochs == list(range(1, EPOCHS + 1)), (trial_id, epochs)
            continue
        before, after = epochs[: lost[-1] + 1], lines[lost[-1] + 1 :]
        assert before == list(range(1, len(before) + 1)), (trial_id, epochs)
        assert {r["node_ip"] for r in after} == {worker1.address}, (trial_id, lines)
        # Resumed from its last registered checkpoint: the next epoch, or the same one again when the
        # kill came between its result and its checkpoint (its last epoch too); never from the start.
        resumed_at = after[0]["epoch"]
        assert before[-1] <= resumed_at <= before[-1] + 1 and resumed_at > 1, (trial_id, epochs)
        assert epochs[len(before) :] == list(range(resumed_at, EPOCHS + 1)), (trial_id, epochs)
        resumed += 1
    assert resumed >= 1 and len(cut_off) >= 1, (cut_off, results)

    # 4. ray down stops Ray on the head (the killed host is gone; the fixture stops the rest by PID).
    ray_cli(hosts, ["down", "-y", str(config)], timeout=600)
    assert not [p for p in hosts.processes(head) if "gcs_server" in p or "raylet" in p]
    print(f"\ncluster up in {booted:.0f} s; whole test {time.monotonic() - started:.0f} s", file=sys.stderr)

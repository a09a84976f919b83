"""Taking a search to a cluster: every ``cluster*.yaml`` passes Ray's own validation, and ``rbp tune
--address`` runs on a real multi-process Ray cluster (a head and a worker node on loopback).

The cluster test starts its Ray processes with a marker in their environment and a private
``RAY_TMPDIR``, and stops exactly those processes by PID afterwards (never ``ray stop``, which
stops every Ray process on the machine).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml
from servers import free_port
from test_tuning_resume import marked_pids, stop_marked
from trialfiles import worker_pids

from rbp.results import read_results
from rbp.tuning import keys, tracking

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


CLUSTER_FILES = sorted(p.name for p in REPO.glob("cluster*.yaml"))


def cluster_config(name: str = "cluster.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def validated(config: dict) -> dict:
    # Private API, the checks `ray up` runs before it touches a cloud; pinned with ray==2.60.0.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_every_cluster_file_passes_ray_validation_and_sets_up_the_same(name):
    import ray

    assert {"cluster.yaml", "cluster-onprem.yaml"} <= set(CLUSTER_FILES)
    prepared = validated(cluster_config(name))
    setup = " ".join(prepared["setup_commands"])
    # The tested stack, never a nightly wheel: the checkout's constraints file pins the Ray this test runs.
    assert "-c ~/rbp/constraints.txt" in setup
    assert f"ray=={ray.__version__}" in (REPO / "constraints.txt").read_text().splitlines()
    assert '-e "$HOME/rbp[cluster]"' in setup and "nightly" not in setup and "ray-wheels" not in setup
    assert "rbp-env/bin:$PATH' >> ~/.bashrc" in setup  # `ray` on the login PATH, where the launcher runs it
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=" in c for c in starts if "ray start" in c)
    head = " ".join(prepared["head_start_ray_commands"])
    assert "mlflow server" in head and "/health" in head  # the tracking server, ready when `ray up` returns


def test_aws_file_boots_a_current_image_with_s3_access_and_data_on_every_worker():
    prepared = validated(cluster_config())
    assert prepared["provider"]["type"] == "aws"
    nodes = prepared["available_node_types"]
    head, worker = nodes[prepared["head_node_type"]], nodes["gpu_worker"]
    assert head["resources"] == {"CPU": 0}  # the head runs the driver, not trials
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1 and prepared["max_workers"] >= 1
    for node in (head, worker):
        image = node["node_config"]["ImageId"]
        # Never Ray's `latest_dlami` (Ubuntu 18.04 / CUDA 11.2 in Ray 2.60): an image ID or AWS's SSM name.
        assert image.startswith("ami-") or re.fullmatch(r"resolve:ssm:/aws/service/.*ubuntu-2[24]\.04.*", image)
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert "describe-images" in (REPO / "cluster.yaml").read_text()  # how to pin the current ID
    # The data comes to every node (setup_commands run on the head and on every worker).
    assert any("aws s3 sync" in c for c in prepared["setup_commands"])


def test_onprem_file_keeps_every_listed_machine_and_names_each_nodes_address():
    prepared = validated(cluster_config("cluster-onprem.yaml"))
    provider = prepared["provider"]
    assert provider["type"] == "local" and provider["head_ip"] not in provider["worker_ips"]
    raw = cluster_config("cluster-onprem.yaml")
    assert raw["min_workers"] == raw["max_workers"] == len(provider["worker_ips"])
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all("--node-ip-address=" in c for c in starts if "ray start" in c)  # no default route needed
    head = " ".join(prepared["head_start_ray_commands"])
    assert "--num-cpus=0" in head and f"--host {provider['head_ip']}" in head


def wait_for_nodes(address: str, env: dict, count: int, timeout: float = 90.0) -> None:
    """Until ``ray status`` lists ``count`` active nodes (a joining node shows up after seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        active = status.stdout.split("Pending:")[0]
        if active.count(" node_") >= count:
            return
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(1.0)


@pytest.fixture
def local_cluster():
    """A head (1 CPU) and a worker node (1 CPU) on 127.0.0.1; yields (address, env)."""
    marker, port = uuid.uuid4().hex, free_port()
    tmp = tempfile.mkdtemp(prefix="rbpt-", dir="/tmp")  # short: Ray's socket paths must fit
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RBP_TEST_MARKER": marker, "RAY_TMPDIR": tmp,
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common]
        subprocess.run(head, env=env, check=True, timeout=180, capture_output=True)
        worker = [RAY, "start", f"--address=127.0.0.1:{port}", *common]
        subprocess.run(worker, env=env, check=True, timeout=180, capture_output=True)
        wait_for_nodes(f"127.0.0.1:{port}", env, 2)
        yield f"127.0.0.1:{port}", env
    finally:
        stop_marked(marker)
        assert not marked_pids(marker)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_search_runs_on_a_two_node_cluster_given_its_address(local_cluster, tmp_path):
    address, env = local_cluster
    spec = tmp_path / "cluster.yaml"
    body = {
        "experiment": "cluster",
        "fixed": {"model.width": 8, "train.epochs": 2, "attack.steps": 2, "eval.val_pgd_steps": 2,
                  "eval.test_pgd_steps": 2},
        "space": {"train.lr": {"type": "loguniform", "low": 0.02, "high": 0.2}},
        "sampler": {"type": "random", "seed": 0},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "trials": 3,
        "concurrency": 2,  # 1 CPU each: one trial per node
    }  # fmt: skip
    spec.write_text(yaml.safe_dump(body))
    cmd = [sys.executable, "-m", "rbp", "tune", str(spec), "--address", address, "--auth-mode", "disabled",
           "--report-every", "5"]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert re.search(r"resource usage: 2(\.0)?/2(\.0)? CPUs", done.stdout)  # both nodes busy at once
    rows = read_results(tmp_path / "results" / "tune" / "cluster" / "rows")
    assert len(rows) == 3 and set(rows["status"]) <= {"finished", "early_stopped"}
    client = tracking.client(tracking.resolve_tracking_uri(None, tmp_path / "results"))
    every = tracking.search_all(client, client.get_experiment_by_name("cluster").experiment_id)
    runs = [run for run in every if keys.TRIAL_TAG in run.data.tags]  # the search's parent run aside
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    # A fresh worker process per trial on a cluster (the third trial does not take over a finished
    # one's): Ray Tune ignores max_failures for a trial whose reused worker dies while taking it over.
    workers = worker_pids(tmp_path / "results" / "ray")
    assert len(workers) == 3 and len(set(workers.values())) == 3, workers

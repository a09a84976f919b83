"""rbp models as MLflow Models: pyfunc equals rbp.load bit for bit, the registry, a served model over REST.

The committed digits models (``results/digits/models/``) are logged into a fresh SQLite store; no
Ray is needed. Serving starts ``mlflow models serve --env-manager local`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from servers import free_port, request, serving

import rbp
from rbp.artefacts.load import load_any
from rbp.base.errors import RbpError
from rbp.tuning import tracking
from rbp.tuning.mlflow_model import check_alias, log_model, register

MODELS = Path(__file__).resolve().parents[2] / "results" / "digits" / "models"
SUBNET, DENSE = MODELS / "baselines.subnet_ours.rbpz", MODELS / "baselines.fp_pgd_at.pt"


def images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` digits-shaped float32 images in [0, 1]."""
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def reference(path: Path, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return rbp.load(path)(torch.from_numpy(batch)).numpy()


@pytest.fixture
def store(tmp_path):
    """A fresh SQLite store with one run per model file; the process's tracking URI is left as it was."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    experiment = client.create_experiment("models", artifact_location=(tmp_path / "artifacts").as_uri())
    before = mlflow.get_tracking_uri()
    yield uri, client, experiment
    assert mlflow.get_tracking_uri() == before  # logging switched it only for the call


@pytest.mark.parametrize("path", [SUBNET, DENSE], ids=["rbpz", "checkpoint"])
def test_pyfunc_output_equals_rbp_load_bit_for_bit(store, path):
    uri, client, experiment = store
    run = client.create_run(experiment)
    _, cfg = load_any(path)
    model_id = log_model(client, run, path, cfg)
    with mlflow_at(uri):
        model = mlflow.pyfunc.load_model(f"models:/{model_id}")
        batch = images(16)
        assert np.array_equal(model.predict(batch), reference(path, batch))
        inputs, outputs = model.metadata.signature.inputs.to_dict(), model.metadata.signature.outputs.to_dict()
        assert inputs[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 1, 8, 8)}
        assert outputs[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 10)}
        with pytest.raises(MlflowException, match="shape"):  # the signature is enforced
            model.predict(np.zeros((2, 1, 9, 9), dtype=np.float32))
    (logged,) = client.search_logged_models([experiment], f"source_run_id = '{run.info.run_id}'")
    assert logged.model_id == model_id and logged.name == "model"


def mlflow_at(uri: str):
    from rbp.tuning.mlflow_model import fluent_tracking_uri

    return fluent_tracking_uri(uri)


def test_register_makes_a_version_with_the_alias_and_a_second_one_moves_it(store):
    uri, client, experiment = store
    runs = [client.create_run(experiment) for _ in range(2)]
    _, cfg = load_any(SUBNET)
    for run in runs:
        log_model(client, run, SUBNET, cfg)
    first = register(client, client.get_run(runs[0].info.run_id), "rbp-digits", "champion")
    second = register(client, client.get_run(runs[1].info.run_id), "rbp-digits", "champion")
    assert (int(first.version), int(second.version)) == (1, 2) and second.run_id == runs[1].info.run_id
    assert int(client.get_model_version_by_alias("rbp-digits", "champion").version) == 2
    with mlflow_at(uri):
        model = mlflow.pyfunc.load_model("models:/rbp-digits@champion")
        batch = images(4, seed=1)
        assert np.array_equal(model.predict(batch), reference(SUBNET, batch))


def test_register_refuses_a_run_without_a_model_and_a_reserved_alias(store):
    _, client, experiment = store
    run = client.create_run(experiment)
    with pytest.raises(RbpError, match="has no MLflow model"):
        register(client, client.get_run(run.info.run_id), "rbp-digits", "champion")
    assert client.search_registered_models() == []  # nothing registered
    for alias in ("v3", "latest", "a b", ""):
        with pytest.raises(RbpError, match="--alias"):
            check_alias(alias)
    check_alias("champion")


@pytest.mark.slow
def test_a_registered_model_served_by_mlflow_answers_as_rbp_load(store, tmp_path):
    uri, client, experiment = store
    run = client.create_run(experiment)
    _, cfg = load_any(SUBNET)
    log_model(client, run, SUBNET, cfg)
    register(client, client.get_run(run.info.run_id), "rbp-digits", "champion")
    port = free_port()
    bin_dir = Path(sys.executable).parent  # mlflow and the uvicorn it runs, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", "models:/rbp-digits@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with serving(command, env, tmp_path / "serve.log", f"http://127.0.0.1:{port}/ping") as server:
        batch = images(8, seed=2)
        status, answer = request(
            f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": batch.tolist()}).encode()
        )
        assert status == 200, answer
        served = np.asarray(answer["predictions"], dtype=np.float32)
        # float32 -> JSON -> float32 is exact; the server computes with the same torch on the same CPU.
        np.testing.assert_allclose(served, reference(SUBNET, batch), rtol=0, atol=1e-5)
        assert np.array_equal(served.argmax(1), reference(SUBNET, batch).argmax(1))
        wrong = json.dumps({"inputs": np.zeros((2, 3, 8, 8)).tolist()}).encode()
        status, answer = request(f"http://127.0.0.1:{port}/invocations", wrong)
        assert 400 <= status < 500 and "shape" in json.dumps(answer), (status, answer)
        status, _ = request(f"http://127.0.0.1:{port}/invocations", b"{not json")
        assert 400 <= status < 500
        assert server.poll() is None  # bad requests did not bring it down

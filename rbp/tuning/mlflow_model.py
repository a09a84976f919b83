"""An rbp model as an MLflow Model: a pyfunc wrapping the model file, logged per trial, registered on demand.

Each trial's kept model (its ``.rbpz``, or the ``best.pt`` checkpoint of a model the format cannot
hold) is logged as an MLflow Model, so that ``mlflow.pyfunc.load_model``, the Model Registry,
aliases such as ``@champion`` and ``mlflow models serve`` work on it. The pyfunc rebuilds the model
with :func:`rbp.load` from the file it carries: its outputs equal ``rbp.load``'s bit for bit, and
the file's own checks (digest, checksums) still run. MLflow's ``mlflow.pytorch`` flavour is not used
because it pickles the whole module (tied to class import paths) and would drop those checks.

Input: float32 images in [0, 1] shaped ``(N, C, H, W)`` as the data set's (the signature says
which); output: float32 logits ``(N, classes)``. Serving needs rbp installed where it runs
(``mlflow models serve --env-manager local``).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from rbp.base.errors import RbpError
from rbp.base.version import __version__
from rbp.config.schema import Config, data_shape

MODEL_FILE = "model"  # the pyfunc's artifact key: the .rbpz or .pt it wraps
PROGRESS_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
REQUIREMENTS = ("torch", "numpy")  # besides rbp itself, what the pyfunc imports


class RbpPyfunc(mlflow.pyfunc.PythonModel):
    """``predict``: images (N, C, H, W) float32 in [0, 1] -> logits (N, classes) float32, on the CPU.

    Logged as code (``pyfunc_code.py``), as MLflow 3 recommends, not as a pickled instance.
    """

    def load_context(self, context: Any) -> None:
        from rbp.artefacts.load import load_any  # what rbp.load runs

        self.model, _ = load_any(context.artifacts[MODEL_FILE])

    # np.ndarray: a type hint MLflow accepts without reading a schema from it (the signature is the schema).
    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            images = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))
            return self.model(images).numpy()


def signature(cfg: Config) -> ModelSignature:
    """Tensor signature of ``cfg``'s data set: any batch size, the data set's image shape and classes."""
    classes, shape = data_shape(cfg.data)
    images = TensorSpec(np.dtype(np.float32), (-1, *shape))
    return ModelSignature(Schema([images]), Schema([TensorSpec(np.dtype(np.float32), (-1, classes))]))


@contextlib.contextmanager
def fluent_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent functions (``Model.log`` among them) at ``uri``, then the process's URI again.

    They resolve the process-wide tracking URI, not a client's; rbp's recorder writes with a
    client of its own store, on one thread, so switching around one call is safe. Meanwhile MLflow
    draws no progress bars (copying a model's file into it would print one into a search's output).
    """
    before, bars = mlflow.get_tracking_uri(), os.environ.get(PROGRESS_BARS)
    mlflow.set_tracking_uri(uri)
    os.environ[PROGRESS_BARS] = "false"
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if bars is None:
            os.environ.pop(PROGRESS_BARS, None)
        else:
            os.environ[PROGRESS_BARS] = bars


def log_model(client: Any, run: Any, model_file: Path, cfg: Config, name: str = "model") -> str:
    """Log ``model_file`` (``.rbpz`` or ``.pt``) as an MLflow Model of ``run``; returns its model id.

    ``client`` is the ``MlflowClient`` of the run's store, ``run`` the ``mlflow.entities.Run`` (the
    caller has it already: one store query per seed saved). The model is created in the run's
    experiment with the run's params (so the Models tab compares trials by their config); left to
    itself ``Model.log`` would file it under the process's active experiment.
    """
    run_id = run.info.run_id
    model = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, params=run.data.params, model_type="rbp"
    )
    requirements = [f"rbp=={__version__}", *(f"{p}=={metadata.version(p)}" for p in REQUIREMENTS)]
    with fluent_tracking_uri(client.tracking_uri), warnings.catch_warnings():
        # Advice that does not apply: the signature is given (no input example needed).
        warnings.filterwarnings("ignore", ".*An input example was not provided", UserWarning)
        Model.log(
            None,  # artifact_path: deprecated for name, still positional
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=model.model_id,
            python_model=str(Path(__file__).with_name("pyfunc_code.py")),  # code, not a pickle
            artifacts={MODEL_FILE: str(model_file)},
            signature=signature(cfg),
            pip_requirements=requirements,  # given, so MLflow does not load the model to infer them
        )
    return model.model_id


def register(client: Any, run: Any, name: str, alias: str) -> Any:
    """A new version of registered model ``name`` from ``run``'s logged model, with ``alias`` on it.

    ``client`` is an ``MlflowClient``; returns the ``ModelVersion``. Raises :class:`RbpError` when the
    run has no logged model (a search by an rbp that logged only the ``.rbpz`` file).
    """
    models = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run.info.run_id}'")
    if not models:
        raise RbpError(
            f"--register: run {run.info.run_name or run.info.run_id} has no MLflow model (its search logged "
            "the model file only); retrain its config with `rbp best --write best.yaml` then `rbp train`"
        )
    model_id = sorted(models, key=lambda m: m.name)[0].model_id  # "model", or the lowest seed's
    try:
        # The registry resolves a models:/ source through the process-wide tracking URI.
        with fluent_tracking_uri(client.tracking_uri):
            try:
                client.create_registered_model(name)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            version = client.create_model_version(
                name, f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id
            )
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as error:
        raise RbpError(f"--register {name}: {str(error.message).splitlines()[0]}") from None
    return version


def check_alias(alias: str) -> None:
    """Refuse an alias the registry would refuse, before anything is registered (MLflow's rules)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias) or re.fullmatch(r"[vV]\d+", alias) or alias == "latest":
        raise RbpError(
            f"--alias {alias!r}: use letters, digits, '_' and '-' (not 'latest', not v<number>), e.g. champion"
        )

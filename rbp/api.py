"""The Python API: train a config, build a model, evaluate one, from a notebook or a script.

Every function imports torch (and the rest of the package) when called, so ``import rbp`` stays light.
The same objects the command line uses: :class:`~rbp.config.schema.Config` is the one validated
config, :func:`train` is ``rbp train``, :func:`evaluate` is ``rbp eval``'s clean / PGD accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rbp.config.schema import Config


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults <- the YAML file at ``path`` <- ``KEY=VALUE`` overrides, validated (as ``rbp train --config``)."""
    from rbp.config.load import load_config as load

    return load(path, overrides)


def _merged(tree: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(tree)
    for key, value in overrides.items():
        out[key] = _merged(out.get(key) or {}, value) if isinstance(value, Mapping) else value
    return out


def train(config: Config | str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Train ``config`` (a :class:`Config`, a YAML path, or the defaults) with ``overrides`` on top, in
    its run folder (``run.out_dir/<run id>``); the run's summary (test metrics, kept weights, sizes).

    Overrides are sections or values: ``rbp.train(data={"name": "fashion_mnist"}, seed=1)``. A run
    already in its folder is resumed (a finished one returns its summary without training).
    """
    from rbp.config.load import from_dict
    from rbp.config.schema import Config
    from rbp.runs.epochs import train_run

    if isinstance(config, Config):
        tree = config.to_dict()
    else:
        tree = load_config(config).to_dict() if config is not None else {}
    return train_run(from_dict(_merged(tree, overrides)), resume=True)


def create_model(
    arch: str,
    *,
    mode: str = "subnet",
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    density: float = 0.1,
    seed: int = 0,
    **overrides: Any,
) -> nn.Module:
    """A freshly initialised ``arch`` (``list_models()``) in ``mode`` (subnet | binary | dense | adder),
    as ``rbp train`` builds it: ±1 frozen weights and scores for a subnet keeping ``density`` of them.

    Inputs are images in [0, 1] of ``input_shape``; the normalisation is the identity (a trained
    model carries its data set's). ``overrides`` are config sections, e.g. ``sparsity={"p": 0.1}``.
    """
    from rbp.config.load import from_dict
    from rbp.models import build_model

    tree = _merged({"seed": seed, "model": {"arch": arch, "mode": mode}, "sparsity": {"density": density}}, overrides)
    cfg = from_dict(tree)
    channels = input_shape[0]
    return build_model(cfg, num_classes, tuple(input_shape), [0.0] * channels, [1.0] * channels)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float = 0.0,
    steps: int = 0,
    step_size: float | None = None,
    restarts: int = 1,
    norm: str = "linf",
    batch_size: int = 500,
) -> dict[str, float]:
    """Clean and (with ``steps`` > 0) PGD accuracy in [0, 1] of ``model`` on ``images`` (N, C, H, W) in
    [0, 1] (uint8 images are scaled) and ``labels`` (N,), as ``rbp eval``; the step defaults to
    ``2.5 * eps / steps``."""
    from rbp.data import Batches, Split, to_unit_float
    from rbp.evaluation import accuracy

    step = step_size if step_size is not None else (2.5 * eps / steps if steps else 0.0)
    device = next(model.parameters()).device
    batches = Batches(Split(to_unit_float(images), labels), batch_size, device=device)
    return accuracy(model, batches, eps=eps, step_size=step, steps=steps, restarts=restarts, norm=norm)

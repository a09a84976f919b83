"""Checkpoints: ``torch.save`` of state dicts + the resolved config, loaded with ``weights_only=True``.

A checkpoint is a dict ``{format, version, rbp_version, run_id, config, data_info, model, trainer?,
metrics?}``. Loading validates all of it: the config must validate and hash to ``run_id``, the
state dict must match the architecture, and a subnet's frozen weights must equal the ones its seed
generates; anything else is reported as one :class:`RbpError` line and no model is returned.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rbp.base.atomic import atomic_path
from rbp.base.errors import RbpError
from rbp.base.version import __version__
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.models import build_model
from rbp.nn import subnet_layers

FORMAT, VERSION = "rbp-checkpoint", 2
# What a checkpoint claims besides its tensors: covered by its digest, so an edit shows as tampering.
_CLAIMS = ("run_id", "config", "data_info", "metrics")


def claims_digest(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a checkpoint's (or artefact header's) claims: config, data
    statistics, metrics. It detects edits, not forgers (anyone can recompute it): no secret key."""
    claims = {key: payload.get(key) for key in _CLAIMS}
    return hashlib.sha256(json.dumps(claims, sort_keys=True, default=str).encode()).hexdigest()


def check_data_info(info: Any) -> tuple[int, tuple[int, int, int], list[float], list[float]]:
    """``(num_classes, (C, H, W), mean, std)`` of a ``data_info`` dict; ValueError if malformed."""
    if not isinstance(info, dict):
        raise ValueError("data_info is missing")
    classes, shape, mean, std = (info.get(k) for k in ("num_classes", "input_shape", "mean", "std"))
    ok = is_int(classes, 2) and isinstance(shape, (list, tuple)) and len(shape) == 3
    ok = ok and all(is_int(d, 1) for d in shape)
    ok = ok and all(isinstance(v, (list, tuple)) and len(v) == shape[0] for v in (mean, std))
    ok = ok and all(isinstance(x, (int, float)) and math.isfinite(x) for x in [*mean, *std])
    if not ok or min(std) <= 0:
        raise ValueError("data_info must hold num_classes, input_shape (C, H, W), mean and positive std per channel")
    return classes, tuple(shape), list(mean), list(std)


def is_int(value: Any, low: int = 0) -> bool:
    """An int (not a bool) of at least ``low``: JSON headers are checked with it."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def save_checkpoint(
    path: Path,
    cfg: Config,
    data_info: dict[str, Any],
    model: nn.Module,
    trainer: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write ``model``'s state (+ the trainer's, to resume) with everything needed to rebuild it."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "rbp_version": __version__,
        "run_id": cfg.run_id(),
        "config": cfg.to_dict(),
        "data_info": data_info,
        "model": model.state_dict(),
        "trainer": trainer,
        "metrics": metrics or {},
    }
    payload["digest"] = claims_digest(payload)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], Config]:
    """The checkpoint's payload and its validated config; :class:`RbpError` if unusable."""
    path = Path(path)
    if path.is_dir():
        raise RbpError(f"checkpoint {path} is a folder; give a checkpoint in it, e.g. {path / 'best.pt'}")
    if not path.is_file():
        raise RbpError(f"checkpoint {path}: no such file; give a run's best.pt or last.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip/CRC/unpickling errors all mean the same thing to a user
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise RbpError(f"checkpoint {path} is unreadable or corrupt ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise RbpError(f"checkpoint {path} is not an rbp checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise RbpError(f"checkpoint {path} has format version {payload.get('version')}; this rbp reads {VERSION}")
    try:
        cfg = from_dict(payload["config"])
    except RbpError as error:
        raise RbpError(f"checkpoint {path}: its {error}") from None
    if cfg.run_id() != payload.get("run_id"):
        raise RbpError(f"checkpoint {path} is tampered: its config does not hash to its run id {payload.get('run_id')}")
    if payload.get("digest") != claims_digest(payload):
        raise RbpError(f"checkpoint {path} is tampered: its data_info or metrics do not match its digest")
    try:
        check_data_info(payload.get("data_info"))
    except ValueError as error:
        raise RbpError(f"checkpoint {path} is tampered: {error}") from None
    return payload, cfg


def pretrained_weights(cfg: Config) -> dict[str, torch.Tensor] | None:
    """The dense state dict that ``init.scheme: pretrained`` (HYDRA-style) starts from, else None."""
    if cfg.init.scheme != "pretrained":
        return None
    path = Path(cfg.init.pretrained).expanduser()
    try:
        payload, dense = read_checkpoint(path)
    except RbpError as error:
        raise RbpError(f"init.pretrained: {error}") from None
    if dense.model.mode != "dense" or dense.model.spectral_norm:
        raise RbpError(f"init.pretrained: {path} is a {dense.model.mode} model; give a dense run's best.pt")
    return payload["model"]


def _check_state(path: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    if set(state) != set(expected):
        diff = sorted(set(state) ^ set(expected))[:3]
        raise RbpError(f"checkpoint {path} is tampered: its tensors do not match the architecture (e.g. {diff})")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            raise RbpError(f"checkpoint {path} is tampered: {key} has the wrong shape or type")
    for name in subnet_layers(model):  # frozen ±s weights must be the ones the seed draws
        if not torch.equal(state[f"{name}.weight"], expected[f"{name}.weight"]):
            raise RbpError(f"checkpoint {path} is tampered: frozen weights of {name} differ from the seed's")


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode on ``device``: ``(model, config, payload)``."""
    path = Path(path)
    payload, cfg = read_checkpoint(path)
    if not isinstance(payload.get("model"), dict):
        raise RbpError(f"checkpoint {path} is tampered: model state missing")
    info = payload["data_info"]
    # A HYDRA-style model's frozen weights came from a dense run, not from its seed: its own state holds
    # them, so it is rebuilt from the file alone (the dense run's checkpoint need not exist any more).
    own = payload["model"] if cfg.init.scheme == "pretrained" else None
    model = build_model(cfg, info["num_classes"], tuple(info["input_shape"]), info["mean"], info["std"], own)
    _check_state(path, model, payload["model"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), cfg, payload

"""Encode a trained subnet as an ``.rbpz`` (:mod:`~rbp.artefacts.rbpz_format`) and write it atomically."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rbp.artefacts.codec import encode_mask
from rbp.artefacts.rbpz_format import DTYPES, FORMAT, MASKS, STATE, VERSION, ZIP_EPOCH, Artefact, header_digest
from rbp.base.atomic import atomic_path
from rbp.base.errors import RbpError
from rbp.base.version import __version__
from rbp.config.schema import Config
from rbp.models import first_non_finite
from rbp.nn import subnet_layers


def _json_safe(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Scalars only (numbers, strings, bools, None): metrics are informative, never code."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict tensors the seed does not regenerate: all but subnet layers' weight and scores."""
    derived = {f"{name}.{part}" for name in subnet_layers(model) for part in ("weight", "scores")}
    return {name: t for name, t in model.state_dict().items() if name not in derived}


def encode_masks(model: nn.Module) -> tuple[list[dict[str, Any]], bytes, dict[str, np.ndarray]]:
    entries, blobs, masks = [], [], {}
    offset = 0
    with torch.no_grad():
        for name, layer in subnet_layers(model).items():
            mask = layer.mask().detach().flatten().cpu().numpy().astype(bool)
            encoding, k, blob = encode_mask(mask)
            entry = {"name": name, "shape": list(layer.weight.shape), "density": layer.density, "kept": layer.kept}
            entries.append({**entry, "encoding": encoding, "rice_k": k, "offset": offset, "length": len(blob)})
            blobs.append(blob)
            masks[name] = mask
            offset += len(blob)
    return entries, b"".join(blobs), masks


def _encode_state(model: nn.Module) -> tuple[list[dict[str, Any]], bytes, dict[str, np.ndarray]]:
    entries, blobs, arrays = [], [], {}
    offset = 0
    for name, tensor in state_tensors(model).items():
        dtype = next((key for key, (torch_dtype, _) in DTYPES.items() if torch_dtype == tensor.dtype), None)
        if dtype is None:
            raise RbpError(f"export: state tensor {name} has dtype {tensor.dtype}; the format stores {list(DTYPES)}")
        array = tensor.detach().cpu().numpy()
        blob = array.astype(DTYPES[dtype][1]).tobytes()
        entries.append(
            {"name": name, "dtype": dtype, "shape": list(array.shape), "offset": offset, "length": len(blob)}
        )
        blobs.append(blob)
        arrays[name] = array.copy()
        offset += len(blob)
    return entries, b"".join(blobs), arrays


def encode(model: nn.Module, cfg: Config, data_info: dict[str, Any], metrics: dict[str, Any] | None = None) -> Artefact:
    """The artefact of a subnet ``model`` built from ``cfg`` (on any device), in memory."""
    if cfg.model.mode != "subnet" or not subnet_layers(model):
        raise RbpError(
            f"export is for subnet models (seed + masks); this model is {cfg.model.mode}: keep its checkpoint instead"
        )
    if cfg.init.scheme == "pretrained":
        raise RbpError("export needs weights the seed regenerates; init.scheme pretrained keeps a dense model's")
    bad = first_non_finite(model)
    if bad is not None:
        raise RbpError(f"export: {bad} holds non-finite values (the run diverged); nothing to export")
    layers, masks_blob, masks = encode_masks(model)
    tensors, state_blob, arrays = _encode_state(model)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "rbp_version": __version__,
        "run_id": cfg.run_id(),
        "seed": cfg.seed,
        # Without the ``run`` section: where the model was trained is no property of it (and would
        # make the file's size depend on the length of a folder name).
        "config": {key: value for key, value in cfg.to_dict().items() if key != "run"},
        "data_info": {k: list(v) if isinstance(v, tuple) else v for k, v in data_info.items()},
        "metrics": _json_safe(metrics),
        "layers": layers,
        "tensors": tensors,
        "members": {
            MASKS: {"length": len(masks_blob), "sha256": hashlib.sha256(masks_blob).hexdigest()},
            STATE: {"length": len(state_blob), "sha256": hashlib.sha256(state_blob).hexdigest()},
        },
    }
    header["digest"] = header_digest(header)
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return Artefact(header, header_bytes, masks_blob, state_blob, masks, arrays, cfg)


def write_artefact(artefact: Artefact, path: str | Path) -> int:
    """Write the zip to a temporary name, then rename (a reader never sees half a file); its bytes."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in artefact.members().items():
                info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    except OSError as error:
        raise RbpError(f"export: cannot write {path}: {error.strerror or error}") from None
    return path.stat().st_size

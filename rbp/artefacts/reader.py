"""Read and validate an ``.rbpz`` and rebuild its model; any inconsistency is one :class:`RbpError` line."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rbp.artefacts.checkpoint import check_data_info, is_int
from rbp.artefacts.codec import ENCODINGS, MAX_RICE_K, decode_mask
from rbp.artefacts.rbpz_format import (
    DTYPES,
    FORMAT,
    HEADER,
    MASKS,
    MEMBERS,
    STATE,
    SUFFIX,
    VERSION,
    Artefact,
    header_digest,
)
from rbp.artefacts.writer import state_tensors
from rbp.base.errors import RbpError
from rbp.base.version import __version__
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.models import build_model
from rbp.nn import subnet_layers

log = logging.getLogger(__name__)


def _fail(path: Path, problem: str) -> RbpError:
    return RbpError(f"artefact {path}: {problem}")


def _read_members(path: Path) -> dict[str, bytes]:
    """The three members' bytes; any container problem (not a zip, truncated, CRC) -> RbpError."""
    if not path.is_file():
        raise _fail(path, "no such file; export one with `rbp export RUN_DIR --out model.rbpz`")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [info.filename for info in infos]
            if sorted(names) != sorted(MEMBERS):
                raise _fail(
                    path,
                    f"not an rbp artefact (members {names[:5]}, expected {list(MEMBERS)}); "
                    "a training checkpoint becomes one with `rbp export`",
                )
            if any(info.file_size > size or info.compress_type != zipfile.ZIP_STORED for info in infos):
                raise _fail(path, "is corrupt (member sizes or compression do not fit the file)")
            return {name: zf.read(name) for name in MEMBERS}  # read() checks each member's CRC-32
    except RbpError:
        raise
    except Exception as error:  # zipfile raises a zoo of types (BadZipFile, EOFError, ...) on bad bytes
        reason = str(error).splitlines()[0][:100] if str(error) else type(error).__name__
        raise _fail(path, f"is truncated, corrupt or not a zip ({reason})") from None


def _expect(path: Path, ok: bool, problem: str) -> None:
    if not ok:
        raise _fail(path, problem)


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _fail(path, "header.json is not valid JSON") from None
    _expect(path, isinstance(header, dict) and header.get("format") == FORMAT, f"not an rbp artefact (no '{FORMAT}')")
    version = header.get("version")
    _expect(path, version == VERSION, f"has format version {version!r}; this rbp {__version__} reads {VERSION}")
    for key, kind in (("config", dict), ("data_info", dict), ("metrics", dict), ("layers", list), ("tensors", list)):
        _expect(path, isinstance(header.get(key), kind), f"header field {key!r} is missing or not a {kind.__name__}")
    _expect(path, isinstance(header.get("members"), dict), "header field 'members' is missing")
    _expect(path, header.get("digest") == header_digest(header), "is tampered: its header does not match its digest")
    return header


def _check_blob(path: Path, header: dict[str, Any], name: str, blob: bytes) -> None:
    entry = header["members"].get(name)
    _expect(path, isinstance(entry, dict), f"header lists no length/sha256 of {name}")
    _expect(
        path, entry.get("length") == len(blob), f"{name} is {len(blob)} bytes, the header says {entry.get('length')}"
    )
    digest = hashlib.sha256(blob).hexdigest()
    _expect(path, entry.get("sha256") == digest, f"checksum mismatch: {name} is not the data the header describes")


def _slices(path: Path, entries: list[Any], blob: bytes, what: str) -> list[bytes]:
    """Each entry's [offset, offset + length) of ``blob``: contiguous, in order, covering it exactly."""
    parts, end = [], 0
    for index, entry in enumerate(entries):
        _expect(path, isinstance(entry, dict), f"{what}[{index}] is not an object")
        name = entry.get("name")
        _expect(path, isinstance(name, str), f"{what}[{index}] has no name")
        shape = entry.get("shape")
        _expect(path, isinstance(shape, list) and all(is_int(d) for d in shape), f"{what} {name}: bad shape {shape}")
        offset, length = entry.get("offset"), entry.get("length")
        _expect(path, offset == end and is_int(length), f"{what} {name}: offset/length do not follow the previous")
        end += length
        _expect(path, end <= len(blob), f"{what} {name}: its length runs past the end of the data")
        parts.append(blob[offset:end])
    _expect(path, end == len(blob), f"{len(blob) - end} bytes of data after the last of the {what}")
    return parts


def _decode_layer(path: Path, entry: dict[str, Any], blob: bytes) -> np.ndarray:
    name, n = entry["name"], math.prod(entry["shape"])
    density, kept, encoding, k = (entry.get(key) for key in ("density", "kept", "encoding", "rice_k"))
    _expect(path, isinstance(density, float) and 0.0 < density <= 1.0, f"layer {name}: bad density {density!r}")
    _expect(
        path,
        is_int(kept, 1) and kept == max(1, math.floor(density * n)),
        f"layer {name}: kept {kept!r} != floor(density*n)",
    )
    _expect(path, encoding in ENCODINGS, f"layer {name}: unknown mask encoding {encoding!r}; known {list(ENCODINGS)}")
    _expect(path, is_int(k) and k <= MAX_RICE_K, f"layer {name}: bad Rice parameter {k!r}")
    mask = decode_mask(encoding, k, blob, n, kept)
    _expect(
        path,
        mask is not None,
        f"layer {name}: mask data ({len(blob)} bytes, {encoding}) does not decode to {kept} of {n} kept",
    )
    return mask


def _decode_tensor(path: Path, entry: dict[str, Any], blob: bytes) -> np.ndarray:
    name, dtype = entry["name"], entry.get("dtype")
    _expect(path, dtype in DTYPES, f"tensor {name}: dtype {dtype!r} not one of {list(DTYPES)}")
    item = np.dtype(DTYPES[dtype][1])
    _expect(
        path,
        len(blob) == math.prod(entry["shape"]) * item.itemsize,
        f"tensor {name}: {len(blob)} bytes do not fit shape {entry['shape']}",
    )
    return np.frombuffer(blob, dtype=item).astype(item.newbyteorder("=")).reshape(entry["shape"])


def read_artefact(path: str | Path) -> Artefact:
    """Read and fully validate an ``.rbpz`` (checksums, config, every mask decoded); builds no model."""
    path = Path(path)
    members = _read_members(path)
    header = _parse_header(path, members[HEADER])
    for name in (MASKS, STATE):
        _check_blob(path, header, name, members[name])
    cfg = _config_of(path, header)
    _data_info(path, header["data_info"])
    artefact = Artefact(header, members[HEADER], members[MASKS], members[STATE], config=cfg)
    for entry, blob in zip(header["layers"], _slices(path, header["layers"], members[MASKS], "layers"), strict=True):
        artefact.masks[entry["name"]] = _decode_layer(path, entry, blob)
    for entry, blob in zip(header["tensors"], _slices(path, header["tensors"], members[STATE], "tensors"), strict=True):
        artefact.tensors[entry["name"]] = _decode_tensor(path, entry, blob)
    _expect(path, len(artefact.masks) == len(header["layers"]), "a layer is listed twice")
    _expect(path, len(artefact.tensors) == len(header["tensors"]), "a tensor is listed twice")
    return artefact


def _config_of(path: Path, header: dict[str, Any]) -> Config:
    try:
        cfg = from_dict(header["config"])
    except RbpError as error:
        raise _fail(path, f"its {error}") from None
    _expect(path, cfg.run_id() == header.get("run_id"), "its config does not hash to its run id (edited?)")
    _expect(path, cfg.seed == header.get("seed"), f"its seed {header.get('seed')!r} differs from the config's")
    _expect(path, cfg.model.mode == "subnet", f"its config is a {cfg.model.mode} model, not a subnet")
    return cfg


def _data_info(path: Path, info: dict[str, Any]) -> tuple[int, tuple[int, int, int], list[float], list[float]]:
    try:
        return check_data_info(info)
    except ValueError as error:
        raise _fail(path, str(error)) from None


def _check_against_model(path: Path, artefact: Artefact, model: nn.Module) -> None:
    """Header layers and tensors must be exactly the model's, with the same shapes and densities."""
    layers = subnet_layers(model)
    for entry in artefact.header["layers"]:
        name = entry["name"]
        _expect(
            path,
            name in layers,
            f"unknown layer {name!r}: the config's {_arch(artefact)} has no such subnet layer",
        )
        layer = layers[name]
        _expect(
            path,
            list(layer.weight.shape) == entry["shape"],
            f"layer {name}: shape {entry['shape']} != the model's {list(layer.weight.shape)}",
        )
        _expect(
            path,
            layer.density == entry["density"],
            f"layer {name}: density {entry['density']} != the config's {layer.density}",
        )
    missing = [name for name in layers if name not in artefact.masks]
    _expect(path, not missing, f"no mask for layers {missing[:3]}")
    expected = state_tensors(model)
    unknown = [name for name in artefact.tensors if name not in expected]
    _expect(path, not unknown, f"unknown tensors {unknown[:3]}")
    missing = [name for name in expected if name not in artefact.tensors]
    _expect(path, not missing, f"no data for tensors {missing[:3]}")
    for name, tensor in expected.items():
        array = artefact.tensors[name]
        _expect(
            path,
            tuple(array.shape) == tuple(tensor.shape),
            f"tensor {name}: shape {list(array.shape)} != {list(tensor.shape)}",
        )
        _expect(
            path, DTYPES[_dtype_name(array)][0] == tensor.dtype, f"tensor {name}: dtype {array.dtype} != {tensor.dtype}"
        )


def _arch(artefact: Artefact) -> str:
    return str(artefact.header["config"].get("model", {}).get("arch", "?"))


def _dtype_name(array: np.ndarray) -> str:
    return {np.dtype(np.float32): "float32", np.dtype(np.int64): "int64"}[array.dtype]


@torch.no_grad()
def _install(path: Path, artefact: Artefact, model: nn.Module) -> None:
    """Scores := 0/1 masks (top-kept picks exactly the ones), state := stored tensors; then verify."""
    state = {name: torch.from_numpy(array.copy()) for name, array in artefact.tensors.items()}
    model.load_state_dict(state, strict=False)
    for name, layer in subnet_layers(model).items():
        mask = torch.from_numpy(artefact.masks[name]).view_as(layer.scores)
        layer.scores.copy_(mask.to(layer.scores.dtype))
        rebuilt = layer.mask()
        _expect(
            path,
            int(rebuilt.sum()) == layer.kept and torch.equal(rebuilt.bool(), mask),
            f"layer {name}: mask did not install",
        )


def build_from_artefact(path: str | Path, artefact: Artefact) -> tuple[nn.Module, Config]:
    """A validated artefact -> ``(model in eval mode on the CPU, config)``; RbpError if inconsistent."""
    path = Path(path)
    cfg = artefact.config if artefact.config is not None else _config_of(path, artefact.header)
    classes, shape, mean, std = _data_info(path, artefact.header["data_info"])
    try:
        model = build_model(cfg, classes, shape, mean, std)
    except (ValueError, RuntimeError) as error:
        raise _fail(path, f"its config does not build ({error})") from None
    _check_against_model(path, artefact, model)
    _install(path, artefact, model)
    return model.eval(), cfg


def load_artefact(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config, Artefact]:
    """Read, validate and rebuild an ``.rbpz``: ``(model in eval mode on device, config, artefact)``."""
    artefact = read_artefact(path)
    model, cfg = build_from_artefact(path, artefact)
    return model.to(device), cfg, artefact


def is_artefact(path: str | Path) -> bool:
    """An ``.rbpz`` by name, or a zip whose members are this format's (checkpoints are zips too)."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return True
    try:
        with zipfile.ZipFile(path) as zf:
            return HEADER in zf.namelist()
    except Exception:  # not a zip, unreadable, missing: let the checkpoint reader say why
        return False

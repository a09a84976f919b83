"""Compact artefacts (``.rbpz``): a trained subnet stored as config + seed + masks + BN statistics.

The frozen ±s weights of a subnet are regenerated from ``(seed, layer name)`` (``rbp.nn.init``), so
a trained subnet is fully described by its resolved config, its masks and the state that training
changed besides the scores (the batch-norm running statistics). The file is a zip (stored, no
compression; written deterministically) with exactly three members, and never holds pickles:

- ``header.json``  format name + version, rbp version, run id, seed, the resolved config,
  ``data_info``, training metrics, one entry per subnet layer (name, shape, the layer's exact
  density float, kept count, mask encoding, Rice parameter, byte offset and length in
  ``masks.bin``), one entry per state tensor (name, dtype, shape, offset, length in
  ``state.bin``), and the length and sha256 of both blobs.
- ``masks.bin``    the layers' masks, one after another, each in the smaller of two encodings
  (:func:`encode_mask`): ``bitmap`` (``numpy.packbits``, 1 bit a weight) or Rice-coded gaps
  between the positions of the minority class (``rice-kept`` / ``rice-pruned``).
- ``state.bin``    every remaining state-dict tensor (BN ``running_mean``/``running_var`` float32,
  ``num_batches_tracked`` int64), raw little-endian, so outputs are bit-identical.

Loading builds the model from the config (the seed regenerates the frozen weights), sets each
subnet layer's ``scores`` to its 0/1 mask, so that the top-``kept`` selection picks exactly the
stored entries, and checks every layer's mask against the decoded one. Any inconsistency is one
:class:`RbpError` line naming the file, and no model is returned.

:func:`size_breakdown` is the one place where sizes are accounted (export, ``rbp info``, tables):
its ``subnet_bits`` equals the file size exactly (zip structures included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rbp.base.atomic import atomic_path
from rbp.base.errors import RbpError
from rbp.base.version import __version__
from rbp.checkpoint import check_data_info, claims_digest, is_int, load_model
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.models import build_model, first_non_finite
from rbp.nn import subnet_layers, weight_layers

log = logging.getLogger(__name__)

FORMAT, VERSION = "rbpz", 2
SUFFIX = ".rbpz"
HEADER, MASKS, STATE = "header.json", "masks.bin", "state.bin"
MEMBERS = (HEADER, MASKS, STATE)
ENCODINGS = ("bitmap", "rice-kept", "rice-pruned")
MAX_RICE_K = 32
# numpy dtype (little-endian) of each state dtype the format stores.
DTYPES: dict[str, tuple[torch.dtype, str]] = {"float32": (torch.float32, "<f4"), "int64": (torch.int64, "<i8")}
# Zip structures per stored member (local header 30 B + central directory entry 46 B, each plus
# the name) and the end-of-central-directory record (22 B): what ``zipfile`` writes for small,
# stored members without extra fields or comments (tested against real files).
_ZIP_PER_MEMBER, _ZIP_END = 30 + 46, 22
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same model gives the same bytes


# --------------------------------------------------------------------------------------------
# Mask codecs: pure numpy, vectorised (ResNet-18 has 11.2M weights).
# --------------------------------------------------------------------------------------------


def _gaps(positions: np.ndarray) -> np.ndarray:
    """Sorted positions (int64) -> gaps >= 0: the number of skipped entries before each one."""
    return np.diff(positions, prepend=-1) - 1


def rice_bits(gaps: np.ndarray, k: int) -> int:
    """Exact size in bits of Rice coding ``gaps`` with parameter ``k`` (unary quotient + k bits)."""
    return int((gaps >> k).sum()) + gaps.size * (k + 1)


def rice_bytes(gaps: np.ndarray, k: int) -> int:
    """Exact size in bytes of :func:`rice_encode`: each of its two streams padded to whole bytes."""
    unary = int((gaps >> k).sum()) + gaps.size
    return (unary + 7) // 8 + (gaps.size * k + 7) // 8


def best_rice_k(gaps: np.ndarray) -> int:
    """The ``k`` in [0, MAX_RICE_K] giving the fewest bits (bits(k) is convex: search near log2 mean)."""
    if gaps.size == 0:
        return 0
    guess = int(math.log2(max(float(gaps.mean()), 1.0)))
    candidates = range(max(0, guess - 2), min(MAX_RICE_K, guess + 3) + 1)
    return min(candidates, key=lambda k: rice_bits(gaps, k))


def rice_encode(positions: np.ndarray, k: int) -> bytes:
    """Sorted positions -> Rice-coded gaps, as two streams so that both directions vectorise.

    Stream 1 (unary): for each gap ``q = gap >> k`` zero bits then a one; stream 2: the
    remainders ``gap & (2**k - 1)`` as k-bit fields, most significant bit first. Each stream is
    packed little-endian bit order and zero-padded to whole bytes. Same bit count as interleaved
    Rice coding (up to one byte of padding).
    """
    gaps = _gaps(positions.astype(np.int64))
    quotients, remainders = gaps >> k, gaps & ((1 << k) - 1)
    unary = np.zeros(int(quotients.sum()) + gaps.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 1  # the terminating one of each codeword
    shifts = np.arange(k - 1, -1, -1, dtype=np.int64)
    fields = ((remainders[:, None] >> shifts) & 1).astype(np.uint8)  # (count, k), MSB first
    return np.packbits(unary, bitorder="little").tobytes() + np.packbits(fields, bitorder="little").tobytes()


def _unpack(blob: bytes, bits: int) -> np.ndarray | None:
    """``bits`` bits (uint8 0/1) of ``blob``, or None unless the blob is exactly that long, zero-padded."""
    if len(blob) != (bits + 7) // 8:
        return None
    unpacked = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), bitorder="little")
    return None if unpacked[bits:].any() else unpacked[:bits]


def rice_decode(blob: bytes, k: int, count: int, n: int) -> np.ndarray | None:
    """Inverse of :func:`rice_encode`: ``count`` sorted positions in [0, n), or None if malformed."""
    remainder_bytes = (count * k + 7) // 8
    unary_bytes = len(blob) - remainder_bytes
    if unary_bytes < 0:
        return None
    ones = np.flatnonzero(np.unpackbits(np.frombuffer(blob[:unary_bytes], dtype=np.uint8), bitorder="little"))
    if ones.size != count or unary_bytes != ((int(ones[-1]) + 8) // 8 if count else 0):
        return None  # wrong number of codewords, or padding that is not minimal
    fields = _unpack(blob[unary_bytes:], count * k)
    if fields is None:
        return None
    quotients = np.diff(ones, prepend=-1) - 1
    if count and int(quotients.max()) > (n - 1) >> k:  # before shifting: no int64 overflow
        return None
    weights = np.left_shift(1, np.arange(k - 1, -1, -1, dtype=np.int64))
    remainders = fields.reshape(count, k).astype(np.int64) @ weights if k else np.zeros(count, dtype=np.int64)
    positions = np.cumsum((quotients << k) + remainders + 1) - 1
    return None if count and int(positions[-1]) >= n else positions


def encode_mask(mask: np.ndarray) -> tuple[str, int, bytes]:
    """Flat bool mask -> ``(encoding, rice_k, blob)``, whichever encoding is smallest.

    ``bitmap`` costs ceil(n / 8) bytes; Rice-coded gaps of the minority class (kept positions at
    low density, pruned ones at high density) cost about n·H(density) bits plus a few percent.
    """
    kept = int(mask.sum())
    minority = "kept" if kept <= mask.size - kept else "pruned"
    positions = np.flatnonzero(mask if minority == "kept" else ~mask)
    gaps = _gaps(positions)
    k = best_rice_k(gaps)
    if rice_bytes(gaps, k) < (mask.size + 7) // 8:  # ties go to the simpler bitmap
        return f"rice-{minority}", k, rice_encode(positions, k)
    return "bitmap", 0, np.packbits(mask, bitorder="little").tobytes()


def decode_mask(encoding: str, k: int, blob: bytes, n: int, kept: int) -> np.ndarray | None:
    """Flat bool mask of ``n`` entries with exactly ``kept`` set, or None if ``blob`` is malformed."""
    if encoding == "bitmap":
        bits = _unpack(blob, n)
        mask = None if bits is None else bits.astype(bool)
    elif encoding in ("rice-kept", "rice-pruned"):
        minority = encoding == "rice-kept"
        positions = rice_decode(blob, k, kept if minority else n - kept, n)
        if positions is None:
            return None
        mask = np.zeros(n, dtype=bool) if minority else np.ones(n, dtype=bool)
        mask[positions] = minority
    else:
        return None
    return mask if mask is not None and int(mask.sum()) == kept else None


# --------------------------------------------------------------------------------------------
# The artefact in memory, and its size.
# --------------------------------------------------------------------------------------------


@dataclass
class Artefact:
    """An ``.rbpz`` in memory: the parsed header, its exact bytes, both blobs and what they decode to.

    ``masks``: layer name -> flat bool array (n,) with exactly ``kept`` set. ``tensors``: state
    name -> numpy array in native byte order, shaped as in the state dict.
    """

    header: dict[str, Any]
    header_bytes: bytes
    masks_blob: bytes
    state_blob: bytes
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    config: Config | None = None  # the header's config, validated

    def members(self) -> dict[str, bytes]:
        return {HEADER: self.header_bytes, MASKS: self.masks_blob, STATE: self.state_blob}


def binary_entropy(p: float) -> float:
    """H(p) in bits; 0 at p = 0 or 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@dataclass(frozen=True)
class SizeBreakdown:
    """Sizes in bits of one model: dense references and the ``.rbpz`` subnet, part by part.

    ``dense_fp32_bits``: 32 bits per conv/linear weight; ``binary_dense_bits``: 1 bit per weight
    (neither counts BN statistics: ``stats_bits`` holds them). The subnet is
    ``mask_bits + stats_bits + header_bits + container_bits`` and equals the file size.
    ``entropy_bits``: sum over layers of n·H(kept / n), the bound for masks of that density.
    """

    weights: int
    kept: int
    dense_fp32_bits: int
    binary_dense_bits: int
    mask_bits: int
    stats_bits: int
    header_bits: int
    container_bits: int
    entropy_bits: float

    @property
    def subnet_bits(self) -> int:
        return self.mask_bits + self.stats_bits + self.header_bits + self.container_bits

    @property
    def subnet_bytes(self) -> int:
        return self.subnet_bits // 8

    def as_dict(self) -> dict[str, float | int]:
        """Flat dict (bits and bytes) for results tables and JSON."""
        row = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {**row, "subnet_bits": self.subnet_bits, "subnet_bytes": self.subnet_bytes}


def size_breakdown(artefact: Artefact) -> SizeBreakdown:
    """The one size account of a subnet artefact (used by export, ``rbp info`` and the tables)."""
    layers = artefact.header["layers"]
    weights = sum(math.prod(layer["shape"]) for layer in layers)
    entropy = sum(math.prod(ly["shape"]) * binary_entropy(ly["kept"] / math.prod(ly["shape"])) for ly in layers)
    container = sum(_ZIP_PER_MEMBER + 2 * len(name.encode()) for name in MEMBERS) + _ZIP_END
    return SizeBreakdown(
        weights=weights,
        kept=sum(layer["kept"] for layer in layers),
        dense_fp32_bits=32 * weights,
        binary_dense_bits=weights,
        mask_bits=8 * len(artefact.masks_blob),
        stats_bits=8 * len(artefact.state_blob),
        header_bits=8 * len(artefact.header_bytes),
        container_bits=8 * container,
        entropy_bits=entropy,
    )


def model_size(
    model: nn.Module, cfg: Config, data_info: dict[str, Any], metrics: dict[str, Any] | None = None
) -> SizeBreakdown:
    """:func:`size_breakdown` of the artefact ``model`` would export to (nothing is written)."""
    return size_breakdown(encode(model, cfg, data_info, metrics))


def storage_bits(model: nn.Module, cfg: Config, data_info: dict[str, Any]) -> int:
    """Bits to store ``model`` in its most compact faithful form: the one number the tables compare.

    A seeded subnet: its ``.rbpz`` (:func:`model_size`). A HYDRA-style subnet (frozen weights from
    a dense model): its masks + 32 bits per kept weight + the 32-bit state. Dense: 32 bits per
    floating-point state value; binary: 1 bit per conv/linear weight and 32 bits for the rest.
    """
    if cfg.model.mode == "subnet" and cfg.init.scheme != "pretrained":
        return model_size(model, cfg, data_info).subnet_bits
    tensors = {k: t for k, t in model.state_dict().items() if t.is_floating_point()}
    if cfg.model.mode == "subnet":
        layers = subnet_layers(model)
        masks_blob = _encode_masks(model)[1]
        frozen = {f"{name}.{kind}" for name in layers for kind in ("weight", "scores")}
        rest = sum(32 * t.numel() for k, t in tensors.items() if k not in frozen)
        return 8 * len(masks_blob) + 32 * sum(layer.kept for layer in layers.values()) + rest
    total = sum(32 * t.numel() for t in tensors.values())
    if cfg.model.mode == "binary":
        total -= 31 * sum(layer.weight.numel() for layer in weight_layers(model).values())
    return total


# --------------------------------------------------------------------------------------------
# Export.
# --------------------------------------------------------------------------------------------


def _json_safe(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """Scalars only (numbers, strings, bools, None): metrics are informative, never code."""
    return {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool, type(None)))}


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict tensors the seed does not regenerate: all but subnet layers' weight and scores."""
    derived = {f"{name}.{part}" for name in subnet_layers(model) for part in ("weight", "scores")}
    return {name: t for name, t in model.state_dict().items() if name not in derived}


def _encode_masks(model: nn.Module) -> tuple[list[dict[str, Any]], bytes, dict[str, np.ndarray]]:
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
    for name, tensor in _state_tensors(model).items():
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
    layers, masks_blob, masks = _encode_masks(model)
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


def header_digest(header: dict[str, Any]) -> str:
    """sha256 over everything the header says (claims, layer and tensor tables, the blobs' sha256), so
    an edit of any field that changes outputs or claims is caught; like every keyless digest it
    detects edits, not a forger who recomputes it."""
    body = {key: value for key, value in header.items() if key != "digest"}
    canonical = json.dumps({"claims": claims_digest(header), "body": body}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_artefact(artefact: Artefact, path: str | Path) -> int:
    """Write the zip to a temporary name, then rename (a reader never sees half a file); its bytes."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in artefact.members().items():
                info = zipfile.ZipInfo(name, date_time=_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
    except OSError as error:
        raise RbpError(f"export: cannot write {path}: {error.strerror or error}") from None
    return path.stat().st_size


def _source_checkpoint(source: Path) -> Path:
    """A run folder -> its best.pt; a checkpoint file -> itself."""
    if source.is_dir():
        best = source / "best.pt"
        if not best.is_file():
            raise RbpError(f"export: {source} holds no best.pt; give a finished run folder or a checkpoint file")
        return best
    if not source.is_file():
        raise RbpError(f"export: {source}: no such run folder or checkpoint file")
    if is_artefact(source):
        raise RbpError(f"export: {source} is already an exported artefact; `rbp info {source}` describes it")
    return source


def _run_metrics(checkpoint: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's epoch metrics, plus the run's test metrics when it is the run's best.pt."""
    metrics = dict(payload.get("metrics") or {})
    summary = checkpoint.with_name("summary.json")
    if checkpoint.name == "best.pt" and summary.is_file():
        try:
            metrics.update(json.loads(summary.read_text()))
        except (OSError, ValueError):
            log.warning("export: cannot read %s; exporting without test metrics", summary)
    metrics.pop("run_dir", None)  # a path of the training machine, not a property of the model
    return metrics


def export_run(source: str | Path, out: str | Path | None = None) -> tuple[Path, Artefact, SizeBreakdown]:
    """Export a run folder (its best.pt) or a checkpoint to ``out`` (default: beside it, ``model.rbpz``)."""
    checkpoint = _source_checkpoint(Path(source))
    model, cfg, payload = load_model(checkpoint, "cpu")
    artefact = encode(model, cfg, payload["data_info"], _run_metrics(checkpoint, payload))
    out = Path(out) if out is not None else checkpoint.with_name("model" + SUFFIX)
    size = write_artefact(artefact, out)
    sizes = size_breakdown(artefact)
    if size * 8 != sizes.subnet_bits:  # the account must be the file: a zipfile change would show here
        log.warning("export: %s is %d bytes but the size account says %d", out, size, sizes.subnet_bytes)
    log.debug("exported %s: %d bytes", out, size)
    return out, artefact, sizes


# --------------------------------------------------------------------------------------------
# Reading and validating.
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------


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
    expected = _state_tensors(model)
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


def load_any(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config]:
    """An ``.rbpz`` artefact or a training checkpoint -> ``(model in eval mode on device, config)``."""
    if is_artefact(path):
        model, cfg, _ = load_artefact(path, device)
        return model, cfg
    model, cfg, _ = load_model(path, device)
    return model, cfg

"""Compact artefacts: mask codecs, size accounting, bit-exact round trips, and bad files -> RbpError."""

from __future__ import annotations

import hashlib
import json
import math
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import rbp
from rbp.artefacts.codec import decode_mask, encode_mask, rice_decode, rice_encode
from rbp.artefacts.export import export_run
from rbp.artefacts.load import load_any
from rbp.artefacts.rbpz_format import header_digest
from rbp.artefacts.reader import load_artefact, read_artefact
from rbp.artefacts.sizes import model_size, size_breakdown
from rbp.artefacts.writer import encode, write_artefact
from rbp.base.errors import RbpError
from rbp.cli import main
from rbp.config.load import load_config
from rbp.models import build_model, list_models
from rbp.nn import subnet_layers

SMALL = {"mlp": ((1, 8, 8), 8), "convnet": ((1, 8, 8), 4), "resnet18": ((3, 32, 32), 4), "resnet34": ((3, 32, 32), 4),
         "resnet50": ((3, 32, 32), 4), "wrn34_10": ((3, 32, 32), 1)}  # fmt: skip


def _config(arch: str, shape: tuple[int, int, int], width: int | None, *extra: str):
    c, h, w = shape
    return load_config(
        None,
        [f"model.arch={arch}", "data.name=synthetic", f"data.synthetic_shape=[{c},{h},{w}]", *extra]
        + ([f"model.width={width}"] if width else []),
    )


def _info(shape: tuple[int, int, int]) -> dict:
    return {"num_classes": 10, "input_shape": list(shape), "mean": [0.5] * shape[0], "std": [0.25] * shape[0]}


def _trained(arch: str, *extra: str, steps: int = 3):
    """A small subnet after a few SGD steps on random data: scores and BN statistics have moved."""
    shape, width = SMALL[arch]
    cfg = _config(arch, shape, width, *extra)
    info = _info(shape)
    model = build_model(cfg, 10, shape, info["mean"], info["std"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x, y = torch.rand(8, *shape, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), cfg, info


def _logits(model: torch.nn.Module, shape: tuple[int, int, int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.rand(4, *shape, generator=torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------------------------------------- codecs


@pytest.mark.parametrize("k", [0, 1, 3, 7, 12])
def test_rice_round_trip(k):
    rng = np.random.default_rng(k)
    n = 5000
    for count in (0, 1, 2, 37, 1000, n):
        positions = np.sort(rng.choice(n, size=count, replace=False)).astype(np.int64)
        decoded = rice_decode(rice_encode(positions, k), k, count, n)
        assert decoded is not None and np.array_equal(decoded, positions)
    edge = np.array([0, n - 1], dtype=np.int64)  # first and last position
    assert np.array_equal(rice_decode(rice_encode(edge, k), k, 2, n), edge)


@pytest.mark.parametrize(
    "density,encoding",
    [(1e-4, "rice-kept"), (0.01, "rice-kept"), (0.5, "bitmap"), (0.99, "rice-pruned"), (1.0, "rice-pruned")],
)
def test_mask_codec_picks_the_smaller_encoding_and_round_trips(density, encoding):
    n = 40_000
    kept = max(1, math.floor(density * n))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(0).choice(n, size=kept, replace=False)] = True
    chosen, k, blob = encode_mask(mask)
    assert chosen == encoding
    assert len(blob) <= (n + 7) // 8
    assert np.array_equal(decode_mask(chosen, k, blob, n, kept), mask)
    if density == 1.0:
        assert blob == b""  # a dense layer costs nothing


def test_rice_is_within_two_percent_of_the_entropy_bound():
    n, density = 1_000_000, 0.01
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(0).choice(n, size=int(n * density), replace=False)] = True
    _, _, blob = encode_mask(mask)
    entropy_bytes = n * -(density * math.log2(density) + (1 - density) * math.log2(1 - density)) / 8
    assert entropy_bytes < len(blob) < 1.02 * entropy_bytes


def test_decoder_rejects_malformed_masks():
    mask = np.zeros(1000, dtype=bool)
    mask[[3, 500, 999]] = True
    encoding, k, blob = encode_mask(mask)
    assert encoding == "rice-kept"
    assert decode_mask(encoding, k, blob, 1000, 3) is not None
    assert decode_mask(encoding, k, blob + b"\x00", 1000, 3) is None  # padding beyond a byte
    assert decode_mask(encoding, k, blob[:-1], 1000, 3) is None
    assert decode_mask(encoding, k, blob, 1000, 4) is None  # count disagrees with the header
    assert decode_mask(encoding, k, blob, 500, 3) is None  # a position beyond the layer
    bitmap = np.packbits(mask, bitorder="little").tobytes()
    assert np.array_equal(decode_mask("bitmap", 0, bitmap, 1000, 3), mask)
    assert decode_mask("bitmap", 0, bitmap, 998, 3) is None  # set padding bits / wrong length
    assert decode_mask("bitmap", 0, bitmap, 1000, 2) is None
    assert decode_mask("zstd", 0, bitmap, 1000, 3) is None


# ------------------------------------------------------------------------------- generator pin


def test_full_model_weight_values_are_pinned():
    """build_model -> initialize -> per-layer generator: values recorded once; must never change."""
    cfg = _config("mlp", (1, 8, 8), 8, "init.scheme=signed_kaiming")
    state = build_model(cfg, 10, (1, 8, 8), [0.5], [0.25]).state_dict()
    s1, s7 = math.sqrt(2) / math.sqrt(64), math.sqrt(2) / math.sqrt(8)
    assert state["body.1.weight"].flatten()[:6].tolist() == pytest.approx([s1, s1, -s1, s1, s1, -s1], rel=1e-7)
    assert state["body.7.weight"].flatten()[:6].tolist() == pytest.approx([-s7, s7, -s7, -s7, s7, s7], rel=1e-7)
    scores = [-0.008595215156674385, 0.004197795409709215, 0.008655911311507225, 0.0038281010929495096]
    assert state["body.1.scores"].flatten()[:4].tolist() == pytest.approx(scores, rel=1e-6)


# ------------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("arch", list_models())
def test_round_trip_is_bit_identical_for_every_architecture(arch, tmp_path):
    model, cfg, info = _trained(arch)
    path = tmp_path / "model.rbpz"
    artefact = encode(model, cfg, info, {"val_pgd_acc": 0.5})
    size = write_artefact(artefact, path)
    # The size account is the file, byte for byte (zip structures included).
    assert (
        size
        == path.stat().st_size
        == size_breakdown(artefact).subnet_bytes
        == model_size(model, cfg, info, {"val_pgd_acc": 0.5}).subnet_bytes
    )
    loaded, loaded_cfg, read = load_artefact(path)
    assert not loaded.training and loaded_cfg == cfg and read.header["metrics"] == {"val_pgd_acc": 0.5}
    assert torch.equal(_logits(loaded, SMALL[arch][0]), _logits(model, SMALL[arch][0]))
    original, rebuilt = model.state_dict(), loaded.state_dict()
    for name, layer in subnet_layers(model).items():
        twin = subnet_layers(loaded)[name]
        assert twin.density == layer.density and twin.kept == layer.kept == int(twin.mask().sum())
        assert torch.equal(twin.mask(), layer.mask()) and torch.equal(twin.weight, layer.weight)
    for key in original:
        if not key.endswith(".scores"):
            assert torch.equal(original[key], rebuilt[key]), key


def test_export_is_deterministic(tmp_path):
    model, cfg, info = _trained("mlp")
    write_artefact(encode(model, cfg, info), tmp_path / "a.rbpz")
    write_artefact(encode(model, cfg, info), tmp_path / "b.rbpz")
    assert (tmp_path / "a.rbpz").read_bytes() == (tmp_path / "b.rbpz").read_bytes()


def test_resnet18_at_99_percent_pruned_is_at_most_180_kb(tmp_path):
    """The product's size bar, at full width: CIFAR ResNet-18, density 0.01, adaptive p = 0.1."""
    cfg = load_config(None, ["model.arch=resnet18", "data.name=synthetic", "sparsity.density=0.01", "sparsity.p=0.1"])
    info = _info((3, 32, 32))
    model = build_model(cfg, 10, (3, 32, 32), info["mean"], info["std"])  # random scores: random masks
    with torch.no_grad():
        model.train()(torch.rand(4, 3, 32, 32))  # non-trivial BN statistics
    model.eval()
    artefact = encode(model, cfg, info)
    size = write_artefact(artefact, tmp_path / "r18.rbpz")
    sizes = size_breakdown(artefact)
    assert size == sizes.subnet_bytes <= 180_000
    assert sizes.dense_fp32_bits // 8 == 4 * 11_164_352  # 44.7 MB
    assert sizes.entropy_bits <= sizes.mask_bits <= 1.02 * sizes.entropy_bits
    assert torch.equal(_logits(rbp.load(tmp_path / "r18.rbpz"), (3, 32, 32)), _logits(model, (3, 32, 32)))


@pytest.mark.parametrize("mode", ["dense", "binary"])
def test_export_refuses_dense_and_binary_models(mode):
    cfg = _config("mlp", (1, 8, 8), 8, f"model.mode={mode}")
    model = build_model(cfg, 10, (1, 8, 8), [0.5], [0.25])
    with pytest.raises(RbpError, match="export is for subnet models"):
        encode(model, cfg, _info((1, 8, 8)))


# ------------------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(path, model) of a small exported mlp."""
    model, cfg, info = _trained("mlp")
    path = tmp_path_factory.mktemp("art") / "mlp.rbpz"
    write_artefact(encode(model, cfg, info, {"test_clean_acc": 0.25}), path)
    return path, model


def _members(path: Path) -> tuple[dict, bytes, bytes]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("header.json")), zf.read("masks.bin"), zf.read("state.bin")


def _rewrite(path: Path, out: Path, edit=None, masks=None, state=None, fix_checksums: bool = True) -> Path:
    """A valid zip with an edited header/blobs; checksums recomputed so deeper checks are reached."""
    header, old_masks, old_state = _members(path)
    masks, state = old_masks if masks is None else masks, old_state if state is None else state
    if edit is not None:
        edit(header)
    if fix_checksums:  # as a forger would: blob checksums and the header digest recomputed
        for name, blob in (("masks.bin", masks), ("state.bin", state)):
            header["members"][name] = {"length": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        header["digest"] = header_digest(header)
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("header.json", json.dumps(header))
        zf.writestr("masks.bin", masks)
        zf.writestr("state.bin", state)
    return out


def _set(path: list, value):
    def edit(header):
        node = header
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _rejected(path: Path, needle: str) -> str:
    with pytest.raises(RbpError) as caught:
        load_artefact(path)
    message = str(caught.value)
    assert str(path) in message and needle in message and "\n" not in message
    return message


def test_bad_containers_are_rejected(small, tmp_path):
    path, _ = small
    _rejected(tmp_path / "none.rbpz", "no such file")
    (tmp_path / "garbage.rbpz").write_bytes(b"not a zip at all")
    _rejected(tmp_path / "garbage.rbpz", "not a zip")
    data = path.read_bytes()
    (tmp_path / "half.rbpz").write_bytes(data[: len(data) // 2])
    _rejected(tmp_path / "half.rbpz", "truncated")
    with zipfile.ZipFile(tmp_path / "other.rbpz", "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04N.")  # e.g. a torch checkpoint renamed
    _rejected(tmp_path / "other.rbpz", "not an rbp artefact")


@pytest.mark.parametrize(
    "edit,needle",
    [
        (_set(["version"], 3), "format version 3"),
        (_set(["format"], "onnx"), "not an rbp artefact"),
        (_set(["layers", 0, "shape"], [16, 32]), "shape"),
        (_set(["layers", 0, "name"], "body.99"), "unknown layer"),
        (_set(["layers", 0, "density"], 0.9), "kept"),
        (_set(["layers", 1, "length"], 1), "offset/length"),
        (_set(["layers", 0, "encoding"], "zstd"), "unknown mask encoding"),
        (_set(["tensors", 0, "name"], "body.9.running_mean"), "unknown tensors"),
        (_set(["tensors", 0, "dtype"], "float16"), "dtype"),
        (_set(["config", "sparsity", "density"], 0.5), "run id"),
        (_set(["config", "model", "arch"], "alexnet"), "model.arch"),
        (_set(["data_info", "input_shape"], [1, 8]), "data_info"),
        (lambda h: h["layers"].pop(), "bytes of data after"),
    ],
)
def test_inconsistent_headers_are_rejected(small, tmp_path, edit, needle):
    _rejected(_rewrite(small[0], tmp_path / "bad.rbpz", edit), needle)


@pytest.mark.parametrize(
    "edit",
    [
        _set(["data_info", "mean"], [0.1]),
        _set(["data_info", "std"], [0.5]),
        _set(["metrics", "test_clean_acc"], 0.99),
        _set(["tensors", 0, "shape"], [7]),
        _set(["run_id"], "000000000000"),
    ],
)
def test_any_header_edit_is_tampering(small, tmp_path, edit):
    """Editing what changes outputs (input statistics) or claims (metrics), then re-zipping, is caught."""
    path = _rewrite(small[0], tmp_path / "edited.rbpz", edit, fix_checksums=False)
    _rejected(path, "tampered")


def test_tampered_mask_data_is_rejected(small, tmp_path):
    path, _ = small
    header, masks, _ = _members(path)
    flipped = bytes([masks[0] ^ 0x10]) + masks[1:]
    _rejected(_rewrite(path, tmp_path / "sum.rbpz", masks=flipped, fix_checksums=False), "checksum mismatch")
    _rejected(_rewrite(path, tmp_path / "long.rbpz", masks=masks + b"\x00"), "bytes of data after")

    def longer(h):  # mask length grown by one byte, data and checksums consistent with it
        h["layers"][-1]["length"] += 1

    _rejected(_rewrite(path, tmp_path / "len.rbpz", longer, masks=masks + b"\x00"), "does not decode")
    _rejected(_rewrite(path, tmp_path / "bits.rbpz", masks=flipped), "layer body.1")


def test_random_corruptions_are_rejected_or_harmless(small, tmp_path):
    """Bit flips, byte overwrites, truncations, insertions, deletions: RbpError or the same model."""
    path, model = small
    data = path.read_bytes()
    expected = _logits(model, (1, 8, 8))
    rng = random.Random(0)
    target, rejected, harmless = tmp_path / "fuzz.rbpz", 0, 0
    for trial in range(400):
        buf = bytearray(data)
        kind, at = trial % 5, rng.randrange(len(data))
        if kind == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            buf[at] = (buf[at] + rng.randrange(1, 256)) % 256
        elif kind == 2:
            del buf[at:]
        elif kind == 3:
            buf.insert(at, rng.randrange(256))
        else:
            del buf[at]
        target.write_bytes(bytes(buf))
        try:
            loaded, _, _ = load_artefact(target)
        except RbpError as error:
            assert "\n" not in str(error)
            rejected += 1
        else:  # the corruption hit bytes that do not matter (e.g. a zip timestamp)
            assert torch.equal(_logits(loaded, (1, 8, 8)), expected)
            harmless += 1
    assert rejected + harmless == 400 and rejected >= 380  # 395 with this seed: the checksums catch almost all


# ------------------------------------------------------------------------------- loaders and CLI


def test_load_any_dispatches_on_the_file(small, tmp_path):
    path, model = small
    renamed = tmp_path / "model.zip"
    renamed.write_bytes(path.read_bytes())
    for candidate in (path, renamed):
        loaded, cfg = load_any(candidate)
        assert cfg.model.arch == "mlp" and torch.equal(_logits(loaded, (1, 8, 8)), _logits(model, (1, 8, 8)))
    assert not rbp.load(path).training
    with pytest.raises(RbpError, match="checkpoint"):
        load_any(tmp_path / "missing.pt")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    fast = ["train.epochs=1", "model.width=8", "attack.steps=2", "eval.val_pgd_steps=2", "eval.test_pgd_steps=2"]
    args = ["train", "--quiet", *(arg for key in fast for arg in ("--set", key)), "--set", f"run.out_dir={out}"]
    assert main(args) == 0
    (folder,) = out.iterdir()
    return folder


def test_cli_export_info_and_eval(run_dir, tmp_path, capsys):
    out = tmp_path / "model.rbpz"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    sizes = size_breakdown(read_artefact(out))
    assert out.stat().st_size == sizes.subnet_bytes
    assert f"kept weights {sizes.kept:,}" in printed and "dense FP32" in printed and "KB" in printed
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "arch convnet" in printed and "body.3" in printed and "entropy bound" in printed
    assert f"test_clean_acc {summary['test_clean_acc']:.4f}" in printed
    results = []
    for source in (out, run_dir / "best.pt"):
        assert main(["eval", str(source), "--attack", "pgd", "--steps", "2", "--device", "cpu"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["clean_acc"] == results[1]["clean_acc"] == pytest.approx(summary["test_clean_acc"])
    assert results[0]["pgd_acc"] == results[1]["pgd_acc"]


def test_cli_export_defaults_to_the_run_folder(run_dir, capsys):
    assert main(["export", str(run_dir / "best.pt")]) == 0
    assert (run_dir / "model.rbpz").is_file() and str(run_dir / "model.rbpz") in capsys.readouterr().out


def test_cli_bad_artefacts_exit_2(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.rbpz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    unwritable = str(tmp_path / "no" / "such" / "folder" / "m.rbpz")
    for args in (["info", str(bad)], ["eval", str(bad)], ["export", str(tmp_path / "nowhere")],
                 ["export", str(run_dir), "--out", unwritable]):  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("rbp: error: ") and "\n" not in err


def test_export_of_a_dense_run_exits_2(tmp_path, capsys):
    args = ["train", "--set", "train.epochs=1", "--set", "model.width=4", "--set", "model.mode=dense",
            "--set", "attack.steps=1", "--set", "eval.val_pgd_steps=1", "--set", "eval.test_pgd_steps=1",
            "--quiet", "--set", f"run.out_dir={tmp_path}"]  # fmt: skip
    assert main(args) == 0
    (folder,) = tmp_path.iterdir()
    capsys.readouterr()
    assert main(["export", str(folder)]) == 2
    assert "export is for subnet models" in capsys.readouterr().err
    with pytest.raises(RbpError, match="subnet"):
        export_run(folder, tmp_path / "dense.rbpz")
    assert not (tmp_path / "dense.rbpz").exists()

"""MNIST and Fashion-MNIST from the official IDX files: tiny files written here, corrupt ones, the real ones."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import idx_bytes, idx_image, write_idx, write_idx_set

from rbp.base.errors import RbpError
from rbp.cli import main
from rbp.config.load import load_config
from rbp.config.schema import DataConfig, data_shape
from rbp.data import load_splits
from rbp.data import splits as data_module  # where the loader reads the default root
from rbp.data.idx import FASHION_MNIST_DEBIAN_ROOT


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """The four gzip files: 12 train images (ids 0..11, label n % 10), 4 test images (ids 500..503)."""
    root = tmp_path / "idx"
    write_idx_set(root, range(12), range(500, 504))
    return root


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
def test_reader_round_trips_images_and_labels(tmp_path: Path, name: str, gz: bool) -> None:
    write_idx_set(tmp_path, range(12), range(500, 504), gz=gz)
    splits = load_splits(DataConfig(name=name, root=tmp_path, val_fraction=0.0))
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape == (12, 1, 28, 28)
    assert splits.test.x.shape == (4, 1, 28, 28)
    for i in range(12):  # file order kept, rows and columns not swapped
        assert torch.equal(splits.train.x[i, 0], torch.from_numpy(idx_image(i)))
    assert torch.equal(splits.test.x[3, 0], torch.from_numpy(idx_image(503)))
    assert splits.train.y.dtype == torch.int64 and splits.train.y.tolist() == [n % 10 for n in range(12)]
    assert splits.test.y.tolist() == [0, 1, 2, 3]
    assert (splits.info.num_classes, splits.info.input_shape) == data_shape(DataConfig(name=name)) == (10, (1, 28, 28))
    assert len(splits.info.mean) == len(splits.info.std) == 1


def test_gzip_and_raw_names_may_mix(idx_root: Path) -> None:
    """Each file is found under either name: here the test images are unzipped, the rest gzip."""
    gz = idx_root / "t10k-images-idx3-ubyte.gz"
    (idx_root / "t10k-images-idx3-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    splits = load_splits(DataConfig(name="fashion_mnist", root=idx_root, val_fraction=0.0))
    assert torch.equal(splits.test.x[0, 0], torch.from_numpy(idx_image(500)))


def test_validation_comes_out_of_train_and_test_is_t10k(idx_root: Path) -> None:
    splits = load_splits(DataConfig(name="fashion_mnist", root=idx_root, val_fraction=0.25))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 4)
    ids = {(int(v) % 256) for v in torch.cat([splits.train.x, splits.val.x])[:, 0, 0, 0]}
    assert ids == {(n * 11) % 256 for n in range(12)}  # train + val is the train file, once
    assert DataConfig(name="fashion_mnist").val_fraction == 0.02


def test_missing_file_names_it_and_both_ways_to_get_it(idx_root: Path) -> None:
    (idx_root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(RbpError) as info:
        load_splits(DataConfig(name="fashion_mnist", root=idx_root))
    message = str(info.value)
    assert message.startswith("data.root:") and "train-labels-idx1-ubyte" in message and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message


def test_missing_root_says_how_to_get_the_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN_ROOT", tmp_path / "not-installed")
    with pytest.raises(RbpError) as info:
        load_splits(DataConfig(name="fashion_mnist"))
    message = str(info.value)
    assert "data.root: required for fashion_mnist" in message and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message
    with pytest.raises(RbpError, match="data.root: required for mnist.*data.download=true"):
        load_splits(DataConfig(name="mnist"))


def test_fashion_mnist_default_root_is_the_debian_folder(monkeypatch: pytest.MonkeyPatch, idx_root: Path) -> None:
    monkeypatch.setattr(data_module, "FASHION_MNIST_DEBIAN_ROOT", idx_root)
    assert len(load_splits(DataConfig(name="fashion_mnist")).test) == 4
    with pytest.raises(RbpError, match="required for mnist"):  # MNIST has no package: no default root
        load_splits(DataConfig(name="mnist"))


def _labels(values: list[int]) -> bytes:
    return idx_bytes(2049, np.array(values))


@pytest.mark.parametrize(
    ("file", "content", "reason"),
    [
        ("train-images-idx3-ubyte", idx_bytes(2049, np.zeros((12, 28, 28))), "magic number 2049, expected 2051"),
        ("train-labels-idx1-ubyte", idx_bytes(2051, np.zeros(12)), "magic number 2051, expected 2049"),
        ("train-images-idx3-ubyte", idx_bytes(2051, np.zeros((12, 28, 28)))[:-100], "expected 9408"),
        ("train-images-idx3-ubyte", idx_bytes(2051, np.zeros((12, 28, 28)))[:10], "shorter than the 16-byte header"),
        ("train-images-idx3-ubyte", idx_bytes(2051, np.zeros((12, 28, 28))) + b"\0", "expected 9408"),
        ("train-labels-idx1-ubyte", _labels(list(range(10))), "10 labels for the 12 images"),
        ("t10k-labels-idx1-ubyte", _labels([0, 1, 11, 2]), "label 11 outside 0..9"),
        ("t10k-images-idx3-ubyte", idx_bytes(2051, np.zeros((4, 32, 32))), "images are 32x32, expected 28x28"),
        ("train-labels-idx1-ubyte", b"", "0 bytes"),
    ],
    ids=[
        "images-magic",
        "labels-magic",
        "truncated",
        "truncated-header",
        "trailing",
        "count",
        "label-11",
        "32x32",
        "empty",
    ],
)
@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_bad_file_is_a_one_line_error_naming_it(
    tmp_path: Path, file: str, content: bytes, reason: str, gz: bool
) -> None:
    write_idx_set(tmp_path, range(12), range(500, 504), gz=gz)
    bad = tmp_path / (file + (".gz" if gz else ""))
    write_idx(bad, content)
    with pytest.raises(RbpError) as info:
        load_splits(DataConfig(name="fashion_mnist", root=tmp_path))
    message = str(info.value)
    assert message.startswith(f"data.root: {bad} is not a readable Fashion-MNIST file") and "\n" not in message
    assert reason in message


@pytest.mark.parametrize("cut", [0.5, 0.99], ids=["half", "last-bytes"])
def test_truncated_or_damaged_gzip_is_a_one_line_error(idx_root: Path, cut: float) -> None:
    bad = idx_root / "train-images-idx3-ubyte.gz"
    packed = bad.read_bytes()
    bad.write_bytes(packed[: int(len(packed) * cut)])
    with pytest.raises(RbpError, match=f"{bad} is not a readable Fashion-MNIST file"):
        load_splits(DataConfig(name="fashion_mnist", root=idx_root))
    bad.write_bytes(packed[:20] + bytes(b ^ 0xFF for b in packed[20:40]) + packed[40:])  # a damaged deflate stream
    with pytest.raises(RbpError, match=f"{bad} is not a readable"):
        load_splits(DataConfig(name="fashion_mnist", root=idx_root))


def test_download_fetches_only_the_missing_files(idx_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    good = {p.name: p.read_bytes() for p in idx_root.iterdir()}
    (idx_root / "t10k-images-idx3-ubyte.gz").unlink()

    def fake_download(url: str, root: Path, filename: str, md5: str) -> None:
        calls.append((url, filename))
        if "ossci" in url:  # the first MNIST mirror is down: the next one is tried
            raise OSError("mirror down")
        (Path(root) / filename).write_bytes(good[filename])

    monkeypatch.setattr("torchvision.datasets.utils.download_url", fake_download)
    splits = load_splits(DataConfig(name="mnist", root=idx_root, download=True, val_fraction=0.0))
    assert [filename for _, filename in calls] == ["t10k-images-idx3-ubyte.gz"] * 2
    assert len(splits.test) == 4

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    (idx_root / "t10k-images-idx3-ubyte.gz").unlink()
    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    with pytest.raises(RbpError, match="data.download: could not download fashion_mnist.*network unreachable"):
        load_splits(DataConfig(name="fashion_mnist", root=idx_root, download=True))


def test_threat_model_and_recipe_defaults() -> None:
    for name in ("fashion_mnist", "mnist"):
        cfg = load_config(None, [f"data.name={name}"])
        assert cfg.attack.eps == 0.1 and cfg.attack.step_size == 0.025 and cfg.data.augment is False
        assert cfg.model.width == 16 and cfg.train.epochs == 3
    # A value given wins, even when it equals the section's default; digits keeps its own recipe.
    given = load_config(None, ["data.name=fashion_mnist", "train.epochs=15", "model.width=32"])
    assert (given.train.epochs, given.model.width) == (15, 32)
    digits = load_config()
    assert (digits.train.epochs, digits.model.width) != (3, 16)
    assert load_config(None, ["data.name=fashion_mnist"]).run_id() != given.run_id()


def test_resolved_config_reloads_to_the_same_run_id(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.name=fashion_mnist", "seed=1"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg and load_config(path).run_id() == cfg.run_id()


def test_cli_train_on_tiny_files(idx_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    args = ["data.name=fashion_mnist", f"data.root={idx_root}", "data.val_fraction=0.25", "data.batch_size=4"]
    args += ["train.epochs=1", "model.width=4", "attack.steps=1", "eval.val_pgd_steps=1", "eval.test_pgd_steps=1"]
    args += [f"run.out_dir={out}"]
    assert main(["train", "--quiet", *[part for a in args for part in ("--set", a)]]) == 0
    (folder,) = out.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert 0.0 <= summary["test_clean_acc"] <= 1.0


def test_cli_bad_file_exits_2(idx_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_idx(idx_root / "train-images-idx3-ubyte.gz", b"\0\0\x08\x02garbage")
    assert main(["train", "--set", "data.name=fashion_mnist", "--set", f"data.root={idx_root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rbp: error: data.root:") and "train-images-idx3-ubyte.gz" in err and "\n" not in err


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_MNIST_DEBIAN_ROOT.is_dir(),
    reason=f"the real Fashion-MNIST files are not installed in {FASHION_MNIST_DEBIAN_ROOT} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_files_train_a_few_steps(tmp_path: Path) -> None:
    splits = load_splits(DataConfig(name="fashion_mnist"))
    assert (len(splits.train) + len(splits.val), len(splits.test)) == (60_000, 10_000)
    assert torch.bincount(splits.test.y).tolist() == [1000] * 10
    assert splits.info.mean[0] == pytest.approx(splits.train.x.float().mean().item() / 255, abs=0.005)
    # A few steps of the default recipe on a slice of the real images: the loss goes down.
    from rbp.training.trainer import Trainer

    cfg = load_config(None, ["data.name=fashion_mnist", "attack.steps=2", "run.device=cpu"])
    trainer = Trainer(cfg, splits=splits)
    first_batches = [(splits.train.x[i : i + 128].float() / 255, splits.train.y[i : i + 128]) for i in (0, 128, 256)]
    losses = [trainer.step(x, y)[0].item() for _ in range(4) for x, y in first_batches]
    assert losses[-1] < losses[0]

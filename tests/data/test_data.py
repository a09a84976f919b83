"""Data loading, splitting and batching: digits, tiny on-disk CIFAR/SVHN files, synthetic, Batches."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import cifar_batch, image, write_pickle

from rbp.base.errors import RbpError
from rbp.config.load import load_config
from rbp.config.schema import DataConfig
from rbp.data import Batches, Split, load_splits, random_crop_flip, to_unit_float

# ----------------------------------------------------------------------------- helpers


def _rows(split: Split) -> Counter[bytes]:
    return Counter(row.numpy().tobytes() for row in split.x)


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(name="digits", val_fraction=0.1))


def test_digits_shapes_dtypes_ranges(digits) -> None:
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (1, 8, 8)
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert set(split.y.tolist()) <= set(range(10))
    assert digits.train.x.max() == 1.0  # 16/16: the scale is 0..16, not 0..255
    assert digits.info.num_classes == 10 and digits.info.input_shape == (1, 8, 8)
    assert len(digits.info.mean) == len(digits.info.std) == 1
    everything = torch.cat([digits.train.x, digits.val.x, digits.test.x])
    assert digits.info.mean[0] == pytest.approx(everything.mean().item(), abs=1e-5)
    assert digits.info.std[0] == pytest.approx(everything.std().item(), abs=1e-3)


# Taken from scikit-learn 1.9.1's load_digits() when the file was copied into rbp: the pixel counts
# (0..16, uint8, in order) and the labels (uint8) hash to these, so the packaged digits are sklearn's exactly.
DIGITS_PIXELS_SHA256 = "8f26b2bd9d135c256808f68f14fdabddde6d9c7f869ae419704b051f0f14b3b3"
DIGITS_LABELS_SHA256 = "8ba4f891220f5e4c9c819638d1602d74b83618f167043c6da52a2a247841ddf0"
DIGITS_PER_LABEL = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_are_sklearns_images_and_labels_shipped_in_the_package() -> None:
    """The CSV inside rbp is scikit-learn's digits exactly; loading it imports no sklearn (2 s) and needs none."""
    import hashlib
    import subprocess
    import sys

    from rbp.data.digits import load_digits

    split, _ = load_digits()
    assert split.x.shape == (1797, 1, 8, 8) and split.y.shape == (1797,)
    counts = (split.x * 16).round().to(torch.uint8)
    assert torch.equal(counts.float() / 16, split.x)  # every pixel is a count / 16, nothing else
    assert hashlib.sha256(counts.numpy().tobytes()).hexdigest() == DIGITS_PIXELS_SHA256
    assert hashlib.sha256(split.y.to(torch.uint8).numpy().tobytes()).hexdigest() == DIGITS_LABELS_SHA256
    assert torch.bincount(split.y).tolist() == DIGITS_PER_LABEL
    code = "import sys; from rbp.data.digits import load_digits; load_digits(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_digits_split_sizes(digits) -> None:
    assert len(digits.test) == round(0.2 * 1797) == 359
    assert len(digits.val) == round(0.1 * (1797 - 359))
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797


def test_digits_splits_are_disjoint_and_cover_everything(digits) -> None:
    from rbp.data.digits import load_digits

    full = load_digits()[0].x  # the data set itself (checked against sklearn's above)
    # As multisets of rows (digits has a few duplicate images): train + val + test is the data set once.
    assert _rows(digits.train) + _rows(digits.val) + _rows(digits.test) == _rows(Split(full, torch.zeros(1797).long()))
    # And no row is in two splits unless the data set holds it twice.
    full_counts = _rows(Split(full, torch.zeros(1797).long()))
    for a, b in [(digits.train, digits.val), (digits.train, digits.test), (digits.val, digits.test)]:
        assert all(full_counts[row] > 1 for row in _rows(a).keys() & _rows(b).keys())


def test_digits_deterministic_per_split_seed(digits) -> None:
    again = load_splits(DataConfig(name="digits", val_fraction=0.1))
    for a, b in [(digits.train, again.train), (digits.val, again.val), (digits.test, again.test)]:
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load_splits(DataConfig(name="digits", val_fraction=0.1, split_seed=1))
    assert not torch.equal(digits.test.x, other.test.x)
    assert not torch.equal(digits.val.x, other.val.x)


def test_digits_test_split_independent_of_val_fraction(digits) -> None:
    no_val = load_splits(DataConfig(name="digits", val_fraction=0.0))
    assert torch.equal(no_val.test.x, digits.test.x)
    assert len(no_val.val) == 0 and no_val.val.x.shape == (0, 1, 8, 8)
    assert len(no_val.train) == 1797 - 359


def test_val_fraction_defaults_per_data_set() -> None:
    assert DataConfig(name="digits").val_fraction == 0.1 and DataConfig(name="cifar10").val_fraction == 0.02
    splits = load_splits(DataConfig(name="digits"))
    assert len(splits.val) == round(0.1 * (1797 - 359))


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_reader_round_trips_images_and_labels(cifar10_root: Path) -> None:
    splits = load_splits(DataConfig(name="cifar10", root=cifar10_root, val_fraction=0.0))
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape == (20, 3, 32, 32)
    assert splits.test.x.shape == (3, 3, 32, 32)
    # File order is kept: batch 1 (ids 0..3) first, ..., batch 5 last.
    for i in range(20):
        assert torch.equal(splits.train.x[i], torch.from_numpy(image(i)))
    assert splits.train.y.tolist() == [i % 10 for i in range(20)]
    assert splits.test.y.tolist() == [0, 1, 2]
    assert torch.equal(splits.test.x[2], torch.from_numpy(image(102)))
    assert splits.info.num_classes == 10 and splits.info.input_shape == (3, 32, 32)
    assert splits.info.mean == (0.4914, 0.4822, 0.4465)


def test_cifar_channel_major_layout(tmp_path: Path) -> None:
    """A row is 1024 red values, then 1024 green, then 1024 blue, each plane row-major."""
    row = np.zeros(3072, dtype=np.uint8)
    row[0] = 10  # red (0, 0)
    row[1] = 20  # red (0, 1)
    row[32] = 30  # red (1, 0)
    row[1024] = 40  # green (0, 0)
    row[2048 + 1023] = 50  # blue (31, 31)
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_pickle(folder / name, {b"data": row[None], b"labels": [3]})
    x = load_splits(DataConfig(name="cifar10", root=tmp_path, val_fraction=0.0)).test.x[0]
    assert (x[0, 0, 0], x[0, 0, 1], x[0, 1, 0], x[1, 0, 0], x[2, 31, 31]) == (10, 20, 30, 40, 50)
    assert int(x.sum()) == 150


def test_cifar10_validation_comes_out_of_train(cifar10_root: Path) -> None:
    cfg = DataConfig(name="cifar10", root=cifar10_root, val_fraction=0.25)
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 3)
    train_ids, val_ids = _ids(splits.train), _ids(splits.val)
    assert not train_ids & val_ids and train_ids | val_ids == set(range(20))
    again = load_splits(cfg)
    assert torch.equal(again.val.x, splits.val.x) and torch.equal(again.train.y, splits.train.y)
    others = [_ids(load_splits(cfg.model_copy(update={"split_seed": s})).val) for s in range(1, 4)]
    assert any(ids != val_ids for ids in others)


def _ids(split: Split) -> set[int]:
    """Recover each image's id n from its first pixel: (n * 11) % 256, unique for n < 24."""
    lookup = {(n * 11) % 256: n for n in range(24)}
    return {lookup[int(v)] for v in split.x[:, 0, 0, 0]}


def test_cifar100_reader(cifar100_root: Path) -> None:
    splits = load_splits(DataConfig(name="cifar100", root=cifar100_root, val_fraction=0.0))
    assert splits.train.x.shape == (6, 3, 32, 32) and splits.test.x.shape == (2, 3, 32, 32)
    assert splits.train.y.tolist() == list(range(50, 56))  # fine labels, not coarse
    assert torch.equal(splits.test.x[1], torch.from_numpy(image(201)))
    assert splits.info.num_classes == 100 and splits.info.std == (0.2673, 0.2564, 0.2762)


def test_root_with_tilde_is_expanded(cifar10_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(cifar10_root.parent))
    splits = load_splits(DataConfig(name="cifar10", root=Path("~") / cifar10_root.name))
    assert len(splits.test) == 3


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_missing_root_is_a_one_line_error(name: str) -> None:
    with pytest.raises(RbpError, match=f"data.root: required for {name}") as info:
        load_splits(DataConfig(name=name))
    assert "\n" not in str(info.value) and "--set data.root=" in str(info.value)


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_name_the_file_and_the_fix(tmp_path: Path, name: str, missing: str) -> None:
    with pytest.raises(RbpError) as info:
        load_splits(DataConfig(name=name, root=tmp_path))
    message = str(info.value)
    assert message.startswith("data.root:") and missing in message and "data.download=true" in message
    assert "\n" not in message


def test_missing_later_batch_is_named(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(RbpError, match="data_batch_4"):
        load_splits(DataConfig(name="cifar10", root=cifar10_root))


@pytest.mark.parametrize(
    "content",
    [
        b"not a pickle at all",
        pickle.dumps([1, 2, 3]),
        pickle.dumps({b"data": np.zeros((2, 5), np.uint8)}),
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}),
        b"",
    ],
    ids=["garbage", "not-a-dict", "bad-shape", "label-out-of-range", "empty"],
)
def test_corrupt_cifar_file_is_a_one_line_error(cifar10_root: Path, content: bytes) -> None:
    bad = cifar10_root / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(content)
    with pytest.raises(RbpError) as info:
        load_splits(DataConfig(name="cifar10", root=cifar10_root))
    assert "data.root" in str(info.value) and str(bad) in str(info.value) and "\n" not in str(info.value)


def test_cifar_pickle_cannot_run_code(cifar10_root: Path) -> None:
    marker = cifar10_root / "pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(evil)
    with pytest.raises(RbpError, match="refusing to load global os.system"):
        load_splits(DataConfig(name="cifar10", root=cifar10_root))
    assert not marker.exists()


def test_download_calls_torchvision_then_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_cifar10(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        folder = Path(root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        for name in names:
            write_pickle(folder / name, cifar_batch(range(2), 10, b"labels"))

    monkeypatch.setattr("torchvision.datasets.CIFAR10", fake_cifar10)
    splits = load_splits(DataConfig(name="cifar10", root=tmp_path, download=True, val_fraction=0.0))
    assert sorted(calls) == [(str(tmp_path), False, True), (str(tmp_path), True, True)]
    assert len(splits.train) == 10 and len(splits.test) == 2


def test_failed_download_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR100", offline)
    with pytest.raises(RbpError, match="data.download: could not download cifar100.*network unreachable"):
        load_splits(DataConfig(name="cifar100", root=tmp_path, download=True))


# ----------------------------------------------------------------------------- SVHN


def test_svhn_reader_axis_order_and_label_10(svhn_root: Path) -> None:
    splits = load_splits(DataConfig(name="svhn", root=svhn_root, val_fraction=0.0))
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape == (10, 3, 32, 32)
    assert splits.train.x.is_contiguous()
    for i in range(10):
        assert torch.equal(splits.train.x[i], torch.from_numpy(image(i)))
    assert splits.train.y.dtype == torch.int64
    assert splits.train.y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # stored label 10 is the digit 0
    assert torch.equal(splits.test.x[3], torch.from_numpy(image(303)))
    assert splits.info.num_classes == 10 and splits.info.mean == (0.4377, 0.4438, 0.4728)


def test_corrupt_svhn_file_is_a_one_line_error(svhn_root: Path) -> None:
    bad = svhn_root / "test_32x32.mat"
    bad.write_bytes(b"MATLAB? no, garbage" * 20)
    with pytest.raises(RbpError) as info:
        load_splits(DataConfig(name="svhn", root=svhn_root))
    assert "data.root" in str(info.value) and str(bad) in str(info.value) and "\n" not in str(info.value)


def test_svhn_file_without_x_is_an_error(svhn_root: Path) -> None:
    from scipy.io import savemat

    savemat(str(svhn_root / "train_32x32.mat"), {"y": np.ones((3, 1))})
    with pytest.raises(RbpError, match="train_32x32.mat"):
        load_splits(DataConfig(name="svhn", root=svhn_root))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism() -> None:
    cfg = DataConfig(
        name="synthetic", synthetic_shape=(2, 5, 6), synthetic_size=50, synthetic_classes=3, val_fraction=0.1
    )
    splits = load_splits(cfg)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 5, 10)
    for split in (splits.train, splits.val, splits.test):
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (2, 5, 6)
        assert 0.0 <= split.x.min() and split.x.max() <= 1.0
        assert split.y.dtype == torch.int64 and set(split.y.tolist()) <= {0, 1, 2}
    assert splits.info.input_shape == (2, 5, 6) and splits.info.num_classes == 3
    assert splits.info.mean == (0.5, 0.5) and splits.info.std == (0.2887, 0.2887)
    assert torch.equal(load_splits(cfg).train.x, splits.train.x)
    assert not torch.equal(load_splits(cfg.model_copy(update={"split_seed": 7})).train.x, splits.train.x)


def test_synthetic_tiny_size_still_has_a_test_row() -> None:
    splits = load_splits(DataConfig(name="synthetic", synthetic_size=3, val_fraction=0.0))
    assert (len(splits.train), len(splits.test)) == (3, 1)


# ----------------------------------------------------------------------------- batching


def _numbered(n: int, shape: tuple[int, int, int] = (1, 2, 2)) -> Split:
    """Sample i is the constant image i (uint8) with label i, so batches can be traced back."""
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, *shape).contiguous()
    return Split(x, torch.arange(n))


def test_to_unit_float() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_unit_float(x), torch.tensor([0.0, 0.2, 1.0]))
    assert to_unit_float(x).dtype == torch.float32
    f = torch.rand(4)
    assert to_unit_float(f) is f  # copy-free
    assert to_unit_float(f.double()).dtype == torch.float32
    with pytest.raises(TypeError):
        to_unit_float(torch.zeros(2, dtype=torch.int32))


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once(shuffle: bool) -> None:
    split = _numbered(10)
    batches = Batches(split, 3, shuffle=shuffle, generator=torch.Generator().manual_seed(0))
    out = list(batches)
    assert len(batches) == len(out) == 4 and [len(y) for _, y in out] == [3, 3, 3, 1]
    labels = torch.cat([y for _, y in out])
    assert sorted(labels.tolist()) == list(range(10))
    for x, y in out:
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 2, 2)
        assert torch.allclose(x[:, 0, 0, 0], y.float() / 255)  # images travel with their labels
    assert (labels.tolist() != list(range(10))) == shuffle


def test_batches_drop_last() -> None:
    batches = Batches(_numbered(10), 3, drop_last=True)
    assert len(batches) == 3 and sum(len(y) for _, y in batches) == 9
    assert len(Batches(_numbered(2), 3, drop_last=True)) == 0 and list(Batches(_numbered(2), 3, drop_last=True)) == []


def test_batches_float_split_and_empty_split() -> None:
    split = Split(torch.rand(5, 2, 3, 3), torch.zeros(5, dtype=torch.int64))
    ((x, _),) = list(Batches(split, 8))
    assert torch.equal(x, split.x)
    assert list(Batches(Split(torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.int64)), 4)) == []


def test_shuffle_is_deterministic_by_generator_state() -> None:
    split = _numbered(50)

    def order(generator: torch.Generator) -> list[int]:
        return torch.cat([y for _, y in Batches(split, 8, shuffle=True, generator=generator)]).tolist()

    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    first, second = order(g), order(g)
    assert first != second  # each epoch draws a new permutation
    g.set_state(state)
    assert order(g) == first
    assert order(torch.Generator().manual_seed(3)) == first
    assert order(torch.Generator().manual_seed(4)) != first


def test_shuffle_or_augment_need_a_generator() -> None:
    with pytest.raises(ValueError, match="Generator"):
        Batches(_numbered(4), 2, shuffle=True)
    with pytest.raises(ValueError, match="Generator"):
        Batches(_numbered(4), 2, augment=True)
    with pytest.raises(ValueError):
        Batches(_numbered(4), 0)


def _candidates(image: torch.Tensor, pad: int = 4) -> list[torch.Tensor]:
    """Every crop of the zero-padded image, plain and mirrored, by a per-sample reference loop."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [crop.flip(-1) for crop in crops]


def test_augmentation_is_a_crop_and_flip_of_the_original() -> None:
    torch.manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 8, 10), dtype=torch.uint8)  # no zeros: padding is recognisable
    split = Split(x, torch.arange(64))
    seen_flip = seen_shift = False
    ((out, y),) = list(Batches(split, 64, augment=True, generator=torch.Generator().manual_seed(1)))
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    for augmented, label in zip(out, y, strict=True):
        original = x[label]
        candidates = _candidates(original)
        matches = [k for k, cand in enumerate(candidates) if torch.equal(to_unit_float(cand), augmented)]
        assert matches, "augmented image is no crop/flip of its original"
        seen_flip |= matches[0] >= 81
        seen_shift |= matches[0] % 81 != 40  # index 40 is the centred (unshifted) crop
    assert seen_flip and seen_shift


def test_augmentation_of_a_constant_image_keeps_enough_ones() -> None:
    split = Split(torch.full((1000, 3, 8, 8), 255, dtype=torch.uint8), torch.zeros(1000, dtype=torch.int64))
    ((out, _),) = list(Batches(split, 1000, augment=True, generator=torch.Generator().manual_seed(2)))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    ones = out[:, 0].sum(dim=(1, 2))
    assert ones.min() >= 4 * 4 and ones.max() == 64  # worst shift leaves (8 - 4) x (8 - 4); some are unshifted
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])  # one crop for all channels


def test_augmentation_is_reproducible_and_random_per_epoch() -> None:
    split = Split(torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8), torch.arange(16))
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    first = [x for x, _ in Batches(split, 5, shuffle=True, augment=True, generator=g)]
    second = [x for x, _ in Batches(split, 5, shuffle=True, augment=True, generator=g)]
    g.set_state(state)
    again = [x for x, _ in Batches(split, 5, shuffle=True, augment=True, generator=g)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_random_crop_flip_helper() -> None:
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4) + 1
    offsets = torch.tensor([[4, 4], [3, 5]])  # sample 0 unshifted; sample 1 one row up, one column right
    out = random_crop_flip(x, offsets, torch.tensor([True, False]))
    assert torch.equal(out[0], x[0].flip(-1))
    expected = torch.zeros(1, 3, 4)
    expected[:, 1:, :3] = x[1, :, :2, 1:]
    assert torch.equal(out[1], expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_batches_identical_on_cpu_and_gpu() -> None:
    split = Split(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40))

    def run(device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(9)
        return list(Batches(split, 16, shuffle=True, augment=True, generator=generator, device=device))

    for (xc, yc), (xg, yg) in zip(run("cpu"), run("cuda"), strict=True):
        assert xg.device.type == "cuda" and yg.device.type == "cuda"
        assert torch.equal(xc, xg.cpu()) and torch.equal(yc, yg.cpu())


@pytest.mark.parametrize("name", ["digits", "synthetic", "cifar10", "cifar100", "svhn"])
def test_data_shape_without_files_matches_the_loaded_data(name, request):
    from rbp.config.schema import data_shape

    overrides = [f"data.name={name}"]
    if name not in ("digits", "synthetic"):
        overrides.append(f"data.root={request.getfixturevalue(f'{name}_root')}")
    if name == "synthetic":
        overrides += ["data.synthetic_shape=[2,5,7]", "data.synthetic_classes=4"]
    cfg = load_config(None, overrides).data
    info = load_splits(cfg).info
    assert data_shape(cfg) == (info.num_classes, info.input_shape)

"""Speed switches (autocast, channels-last, device-resident data) keep what training computes."""

import math

import pytest
import torch

from rbp.config import load_config
from rbp.train import Trainer

TINY = ["train.epochs=1", "model.width=8", "attack.steps=3", "eval.val_pgd_steps=2", "run.progress=false"]


def _trainer(tmp_path, *overrides):
    return Trainer(load_config(None, [*TINY, f"run.out_dir={tmp_path}", *overrides]))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_loss_is_close_to_fp32(tmp_path, amp):
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    reference, mixed = _trainer(tmp_path), _trainer(tmp_path, f"train.amp={amp}")
    torch.manual_seed(0)
    loss32, _ = reference._loss(x, y)
    torch.manual_seed(0)
    with mixed.autocast():
        loss16, _ = mixed._loss(x, y)
    assert math.isclose(loss16.item(), loss32.item(), rel_tol=0.05)


@pytest.mark.parametrize("overrides", [["train.amp=bf16"], ["train.amp=fp16"], ["train.channels_last=true"]])
def test_switches_train_a_whole_epoch(tmp_path, overrides):
    trainer = _trainer(tmp_path, *overrides)
    scores = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.run_epoch()
    assert math.isfinite(metrics["train_loss"]) and 0 <= metrics["val_pgd_acc"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(scores, trainer.model.parameters(), strict=True))


def test_channels_last_and_device_resident_data_match_the_plain_run(tmp_path):
    plain = _trainer(tmp_path).run_epoch()
    resident = _trainer(tmp_path, "run.data_on_device=true").run_epoch()
    assert resident == plain  # on the CPU, resident data is the same data
    channels_last = _trainer(tmp_path, "train.channels_last=true").run_epoch()
    assert math.isclose(channels_last["train_loss"], plain["train_loss"], rel_tol=1e-4)


def test_amp_is_part_of_the_run_id_but_data_placement_is_not():
    base = load_config()
    assert load_config(None, ["train.amp=bf16"]).run_id() != base.run_id()
    assert load_config(None, ["run.data_on_device=true"]).run_id() == base.run_id()


def test_yaml_off_means_no_autocast(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(path).train.amp == "off" and load_config(None, ["train.amp=off"]).train.amp == "off"

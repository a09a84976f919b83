"""Speed switches (autocast, channels-last, device-resident data) keep what training computes."""

import math
import subprocess
import sys

import pytest
import torch

from rbp.config.load import load_config
from rbp.nn import SubnetMixin
from rbp.training.trainer import Trainer

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
    for where in (["data.root=/data/a"], ["data.root=/mnt/b", "data.download=true"]):  # where, not what
        assert load_config(None, where).run_id() == base.run_id()
    assert load_config(None, ["train.cuda_graph=true"]).run_id() != base.run_id()


def test_yaml_off_means_no_autocast(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(path).train.amp == "off" and load_config(None, ["train.amp=off"]).train.amp == "off"


def _steps(trainer, batches):
    """Losses and final parameters after one training step per batch."""
    trainer.model.train()
    losses = [trainer.step(x, y)[0].item() for x, y in batches]
    return losses, [p.detach().clone() for p in trainer.model.parameters()]


def _batches(n, device="cpu"):
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(32, 1, 8, 8, generator=gen).to(device), torch.randint(0, 10, (32,), generator=gen).to(device))
            for _ in range(n)]  # fmt: skip


@pytest.mark.slow  # torch.compile takes ~20 s on 2 CPU cores
def test_compiled_step_equals_the_eager_step(tmp_path):
    batches = _batches(3)
    torch.manual_seed(0)
    eager_losses, eager_params = _steps(_trainer(tmp_path), batches)
    torch.manual_seed(0)
    compiled = _trainer(tmp_path, "train.compile=true")
    assert compiled.net is not compiled.model  # the step really runs the compiled module
    assert getattr(SubnetMixin.effective_weight, "_rbp_eager", False)  # the mask cache stays eager
    compiled_losses, compiled_params = _steps(compiled, batches)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert compiled.state_dict()["model"].keys() == _trainer(tmp_path).state_dict()["model"].keys()


def test_importing_the_trainer_does_not_import_dynamo():
    """torch._dynamo costs 1.4 s at import: processes that only evaluate (the tune driver, rbp eval) skip it."""
    code = "import sys, rbp.training.trainer, rbp.tuning.trainable; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cuda_graph_switch_on_the_cpu_runs_the_unchanged_eager_step(tmp_path):
    batches = _batches(3)
    torch.manual_seed(0)
    eager_losses, eager_params = _steps(_trainer(tmp_path), batches)
    torch.manual_seed(0)
    fallback = _trainer(tmp_path, "train.cuda_graph=true", "run.device=cpu")
    assert fallback.captured is None
    losses, params = _steps(fallback, batches)
    assert losses == eager_losses
    assert all(torch.equal(a, b) for a, b in zip(eager_params, params, strict=True))


def test_cuda_graph_with_fp16_scaling_is_a_config_error():
    from rbp.base.errors import RbpError

    with pytest.raises(RbpError, match=r"train.cuda_graph .* use amp bf16"):
        load_config(None, ["train.cuda_graph=true", "train.amp=fp16"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_captured_step_trains_like_the_eager_step_and_never_leaves_stale_masks(tmp_path, optimizer):
    # Without random starts the step is deterministic up to kernel choice, so graph == eager.
    overrides = ["run.device=cuda", "attack.random_start=false", f"train.optimizer={optimizer}", "train.epochs=2"]
    batches = _batches(4, "cuda")
    eager, graphed = _trainer(tmp_path, *overrides), _trainer(tmp_path, *overrides, "train.cuda_graph=true")
    assert graphed.captured is not None
    for _ in range(2):  # two epochs: the learning rate changes in between, so the graph re-captures
        eager_losses, eager_params = _steps(eager, batches)
        graphed_losses, graphed_params = _steps(graphed, batches)
        assert graphed_losses == pytest.approx(eager_losses, rel=1e-3)
        for a, b in zip(eager_params, graphed_params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
        assert graphed.evaluate("val") == pytest.approx(eager.evaluate("val"), abs=0.02)
        eager.scheduler.step()
        graphed.scheduler.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_warm_up_steps_before_a_capture_leave_no_trace(tmp_path, optimizer):
    from rbp.training.step_graph import undone_updates

    batches = _batches(2)
    torch.manual_seed(0)
    reference_losses, reference_params = _steps(_trainer(tmp_path, f"train.optimizer={optimizer}"), batches)
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, f"train.optimizer={optimizer}")
    trainer.model.train()
    before = {id(t) for t in trainer.model.parameters()}
    with undone_updates(trainer.model, trainer.optimizer, trainer.device):
        for x, y in batches * 2:  # creates momentum / Adam state and moves every score and BN statistic
            trainer.step(x, y)
    assert before == {id(t) for t in trainer.model.parameters()}  # restored in place, same tensors
    losses, params = _steps(trainer, batches)
    # Zeroed fresh optimiser state is exactly what a first step assumes: the run continues unchanged.
    assert losses == reference_losses
    assert all(torch.equal(a, b) for a, b in zip(reference_params, params, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("mode", ["subnet", "dense"])
def test_a_training_step_never_waits_for_the_gpu(tmp_path, mode):
    trainer = _trainer(tmp_path, "run.device=cuda", "train.amp=bf16", f"model.mode={mode}")
    trainer.model.train()
    ((x, y),) = _batches(1, "cuda")
    trainer.step(x, y)  # first step: lazily created optimiser state and mask-sort constants
    torch.cuda.set_sync_debug_mode("error")  # any host sync (.item(), nonzero, ...) now raises
    try:
        trainer.step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")

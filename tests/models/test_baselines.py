"""The baselines are configs of the same trainer: LCNN parts, HYDRA-style start, narrowed dense nets."""

import math

import pytest
import torch

from rbp.artefacts.checkpoint import load_model
from rbp.base.errors import RbpError
from rbp.config.load import load_config
from rbp.models import build_model, kept_parameters
from rbp.models.probe import dense_width_for
from rbp.nn import subnet_layers, weight_layers
from rbp.nn.lcnn import CenteredSoftplus, LipschitzBatchNorm1d, LipschitzBatchNorm2d, curvature_penalty
from rbp.runs.epochs import make_trainer, train_run
from rbp.training.trainer import Trainer

TINY = ["train.epochs=1", "model.width=8", "attack.steps=2", "eval.val_pgd_steps=2", "eval.test_pgd_steps=2"]
LCNN = ["model.mode=dense", "model.activation=centered_softplus", "model.norm=lipschitz", "model.last_bn=lipschitz",
        "model.spectral_norm=true", "train.method=clean", "train.curvature_penalty=0.01"]  # fmt: skip


def _cfg(tmp_path, *overrides):
    return load_config(None, [*TINY, f"run.out_dir={tmp_path}", "run.progress=false", *overrides])


def test_centered_softplus_is_zero_at_zero_and_close_to_relu_for_large_b():
    act = CenteredSoftplus(init_b=5.0)
    assert act.log_b.exp().item() == pytest.approx(5.0)
    x = torch.linspace(-3, 3, 61)
    assert act(torch.zeros(1)).abs().item() < 1e-6
    sharp = CenteredSoftplus(init_b=200.0)
    torch.testing.assert_close(sharp(x), x.clamp(min=0), atol=5e-3, rtol=0)


def test_lipschitz_batch_norm_caps_every_channel_gain_at_gamma():
    bn = LipschitzBatchNorm2d(3)
    with torch.no_grad():
        bn.log_gamma.fill_(math.log(2.0))
        bn.running_var.copy_(torch.tensor([1e-4, 1.0, 100.0]))  # gains 100, 1, 0.1
    bn.eval()
    x = torch.ones(2, 3, 4, 4)
    out = bn(x)
    gains = out[0, :, 0, 0] / (x[0, :, 0, 0] - bn.running_mean)
    torch.testing.assert_close(gains, torch.tensor([2.0, 1.0, 0.1]), rtol=1e-3, atol=1e-4)
    assert not any(p.requires_grad for n, p in bn.named_parameters() if n != "log_gamma")


def test_curvature_penalty_sums_b_and_abs_log_gamma():
    model = torch.nn.Sequential(CenteredSoftplus(5.0), LipschitzBatchNorm1d(4), CenteredSoftplus(3.0))
    with torch.no_grad():
        model[1].log_gamma.fill_(-0.5)
    assert curvature_penalty(model).item() == pytest.approx(5.0 + 3.0 + 0.5)


def test_lcnn_config_trains_clean_with_penalty_and_spectral_norm(tmp_path):
    trainer = Trainer(_cfg(tmp_path, *LCNN))
    model = trainer.model
    assert any(isinstance(m, CenteredSoftplus) for m in model.modules())
    assert isinstance(model.last_bn, LipschitzBatchNorm1d)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "log_" in n}
    metrics = trainer.run_epoch()
    assert math.isfinite(metrics["train_loss"])
    changed = [n for n, p in model.named_parameters() if "log_" in n and not torch.equal(p, before[n])]
    assert changed, "curvature parameters (log b, log gamma) are not trained"
    for name, layer in weight_layers(model).items():
        sigma = torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2)
        assert sigma <= 1.05, f"{name}: spectral norm {sigma:.3f}"


def test_grad_norm_penalty_adds_to_the_loss(tmp_path):
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    plain = Trainer(_cfg(tmp_path, "model.mode=dense", "train.method=clean"))
    penalised = Trainer(_cfg(tmp_path, "model.mode=dense", "train.method=clean", "train.grad_norm_penalty=10"))
    assert penalised._loss(x, y)[0] > plain._loss(x, y)[0]


def test_hydra_style_start_keeps_dense_weights_and_prunes_by_magnitude(tmp_path):
    dense = _cfg(tmp_path, "model.mode=dense")
    train_run(dense)
    best = tmp_path / dense.run_id() / "best.pt"
    hydra_cfg = _cfg(tmp_path, "init.scheme=pretrained", f"init.pretrained={best}", "sparsity.allocation=uniform")
    trainer = make_trainer(hydra_cfg)
    dense_model, _, _ = load_model(best)
    dense_weights = dict(dense_model.state_dict())
    for name, layer in subnet_layers(trainer.model).items():
        w = dense_weights[f"{name}.weight"]
        assert torch.equal(layer.weight, w)
        kept = layer.mask().bool()
        if (~kept).any():  # the start is magnitude pruning
            assert w.abs()[kept].min() >= w.abs()[~kept].max()
    trainer.run_epoch()
    summary = train_run(hydra_cfg)
    assert 0 <= summary["test_clean_acc"] <= 1
    load_model(tmp_path / hydra_cfg.run_id() / "best.pt")  # the frozen-weight check accepts it


def test_hydra_needs_a_dense_checkpoint(tmp_path):
    with pytest.raises(RbpError, match="init.pretrained"):
        make_trainer(_cfg(tmp_path, "init.scheme=pretrained", f"init.pretrained={tmp_path / 'none.pt'}"))
    with pytest.raises(RbpError, match="init.scheme pretrained"):
        load_config(None, ["init.scheme=pretrained"])


@pytest.mark.parametrize("arch,shape", [("convnet", (1, 8, 8)), ("mlp", (1, 8, 8)), ("resnet18", (3, 32, 32))])
def test_dense_width_for_matches_a_subnet_kept_count(arch, shape):
    subnet = load_config(None, [f"model.arch={arch}", "sparsity.density=0.1"])
    kept, _ = kept_parameters(build_model(subnet, 10, shape, [0.5] * shape[0], [0.25] * shape[0]))
    width = dense_width_for(subnet, 10, shape, kept)
    dense = load_config(None, [f"model.arch={arch}", "model.mode=dense", f"model.width={width}"])
    weights, _ = kept_parameters(build_model(dense, 10, shape, [0.5] * shape[0], [0.25] * shape[0]))
    neighbour = load_config(None, [f"model.arch={arch}", "model.mode=dense", f"model.width={width + 1}"])
    above, _ = kept_parameters(build_model(neighbour, 10, shape, [0.5] * shape[0], [0.25] * shape[0]))
    assert abs(weights - kept) <= abs(above - kept)
    assert abs(weights - kept) / kept < 0.35


def test_spectral_norm_only_for_dense():
    with pytest.raises(RbpError, match="spectral_norm"):
        load_config(None, ["model.spectral_norm=true"])

"""AdderNet mode: the L1 forward, both gradient rules, every architecture, the adaptive lr, artefacts."""

from __future__ import annotations

import math
import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rbp.artefacts.checkpoint import load_model, save_checkpoint
from rbp.base.errors import RbpError
from rbp.cli import main
from rbp.config.load import load_config
from rbp.data import to_unit_float
from rbp.evaluation import accuracy, autoattack_accuracy
from rbp.models import build_model, list_models
from rbp.nn import AdderConv2d, AdderLinear, AdderMixin, adder_layers, exact_gradients, scale_adder_gradients
from rbp.nn import adder as adder_module
from rbp.training.trainer import Trainer

INFO = {"num_classes": 10, "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25]}


def _model(arch="convnet", shape=(1, 8, 8), *overrides):
    width = "model.width=1" if arch == "wrn34_10" else "model.width=4"  # wrn: the widen factor
    cfg = load_config(None, [f"model.arch={arch}", "model.mode=adder", width, *overrides])
    return build_model(cfg, 10, shape, [0.5] * shape[0], [0.25] * shape[0]), cfg


def _loop_conv(x, weight, bias, stride, padding):
    """-Σ|patch - filter| + bias, one output element at a time."""
    x = F.pad(x, (padding,) * 4)
    n, _, h, w = x.shape
    out_c, _, k, _ = weight.shape
    out = torch.empty(n, out_c, (h - k) // stride + 1, (w - k) // stride + 1, dtype=torch.float64)
    for b in range(n):
        for o in range(out_c):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    patch = x[b, :, i * stride : i * stride + k, j * stride : j * stride + k]
                    out[b, o, i, j] = -(patch - weight[o]).abs().sum() + bias[o]
    return out


def test_conv_forward_equals_a_loop_over_patches():
    torch.manual_seed(0)
    layer = AdderConv2d(3, 4, 3, stride=2, padding=1, bias=True).double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    expected = _loop_conv(x, layer.weight.detach(), layer.bias.detach(), 2, 1)
    torch.testing.assert_close(layer(x), expected)
    one_by_one = AdderConv2d(3, 5, 1, bias=False).double()
    torch.testing.assert_close(one_by_one(x), _loop_conv(x, one_by_one.weight.detach(), torch.zeros(5), 1, 0))


def test_linear_forward_equals_a_loop():
    torch.manual_seed(0)
    layer = AdderLinear(6, 3).double()
    nn.init.normal_(layer.bias)
    x = torch.randn(4, 6, dtype=torch.float64)
    w, b = layer.weight.detach(), layer.bias.detach()
    expected = torch.tensor(
        [[-sum(abs(x[p, j] - w[o, j]) for j in range(6)) + b[o] for o in range(3)] for p in range(4)]
    )
    torch.testing.assert_close(layer(x), expected.double())
    assert layer(x.view(2, 2, 6)).shape == (2, 2, 3)


def _integral_of_hardtanh(d: torch.Tensor) -> torch.Tensor:
    """H with H' = HardTanh: d²/2 inside [-1, 1], |d| - 1/2 outside."""
    return torch.where(d.abs() <= 1, d * d / 2, d.abs() - 0.5)


def _rule_surrogate(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(P, O) whose autograd gives the published rules: d/dx = HardTanh(w - x), d/dw = x - w."""
    d_x = weight.detach().unsqueeze(0) - rows.unsqueeze(1)  # (P, O, J), only x carries a gradient
    d_w = weight.unsqueeze(0) - rows.detach().unsqueeze(1)  # only w carries a gradient
    return (-_integral_of_hardtanh(d_x) - d_w.pow(2) / 2).sum(2)


def _plain(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The forward as written, -Σ|x - w|, for plain autograd."""
    return -(rows.unsqueeze(1) - weight.unsqueeze(0)).abs().sum(2)


def _conv_reference(x: torch.Tensor, layer: AdderConv2d, rule) -> torch.Tensor:
    cols = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # (N, J, L)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return rule(rows, layer.weight.flatten(1)).sum(1)  # only gradients are compared: a scalar per row


def _grads(output: torch.Tensor, x: torch.Tensor, layer: nn.Module, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(output, (x, layer.weight), g)


@pytest.mark.parametrize("chunk", [adder_module.CHUNK_ELEMENTS, 7])
def test_training_gradients_follow_the_published_rules(monkeypatch, chunk):
    monkeypatch.setattr(adder_module, "CHUNK_ELEMENTS", chunk)  # 7: many chunks, same result
    torch.manual_seed(0)
    layer = AdderConv2d(2, 3, 3, stride=1, padding=1).double()
    nn.init.normal_(layer.weight, std=1.5)  # |w - x| both inside and outside [-1, 1]
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    g = torch.randn_like(out)
    got = _grads(out, x, layer, g)
    rows_g = g.flatten(2).transpose(1, 2).reshape(-1, 3)  # (N·L, O): the same upstream gradient per row
    cols = F.unfold(x, 3, padding=1)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    want = torch.autograd.grad((_rule_surrogate(rows, layer.weight.flatten(1)) * rows_g).sum(), (x, layer.weight))
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    exact = torch.autograd.grad((_plain(rows, layer.weight.flatten(1)) * rows_g).sum(), (x, layer.weight))
    assert not torch.allclose(got[0], exact[0]) and not torch.allclose(got[1], exact[1])  # the rules differ


@pytest.mark.parametrize("chunk", [adder_module.CHUNK_ELEMENTS, 7])
def test_exact_gradients_are_autograd_of_the_plain_formula(monkeypatch, chunk):
    monkeypatch.setattr(adder_module, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(1)
    conv = AdderConv2d(2, 3, 3, stride=2, padding=1).double()
    linear = AdderLinear(5, 4).double()
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(5).double(), linear)
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    model(x)  # materialise the lazy layer
    with exact_gradients(model):
        assert conv.exact_gradients and linear.exact_gradients
        out = conv(x)
        g = torch.randn_like(out)
        got = _grads(out, x, conv, g)
        rows_g = g.flatten(2).transpose(1, 2).reshape(-1, 3)
        cols = F.unfold(x, 3, padding=1, stride=2)
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        want = torch.autograd.grad((_plain(rows, conv.weight.flatten(1)) * rows_g).sum(), (x, conv.weight))
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])
        v = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
        out = linear(v)
        g = torch.randn_like(out)
        want = torch.autograd.grad((_plain(v, linear.weight) * g).sum(), (v, linear.weight))
        for a, b in zip(_grads(out, v, linear, g), want, strict=True):
            torch.testing.assert_close(a, b)
    assert not conv.exact_gradients and not linear.exact_gradients  # restored


def _flag_recorder(model: nn.Module) -> list[bool]:
    """The ``exact_gradients`` flag of every adder layer at every forward call."""
    seen: list[bool] = []
    for layer in adder_layers(model).values():
        layer.register_forward_hook(lambda module, args, out: seen.append(module.exact_gradients))
    return seen


def test_every_evaluation_path_attacks_with_exact_gradients(monkeypatch):
    model, _ = _model()
    seen = _flag_recorder(model)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    result = accuracy(model, [(x, y)], eps=0.1, step_size=0.05, steps=2)
    assert set(result) == {"clean_acc", "pgd_acc"} and seen and all(seen)

    class FakeAutoAttack:  # pyautoattack's interface: the model's forward and backward, in the test's hands
        def __init__(self, net, **kwargs):
            self.net = net
            self.apgd_targeted = self.fab = SimpleNamespace(n_target_classes=9)
            self.attacks_to_run = ["apgd-ce"]

        def run_standard_evaluation(self, x, y, *, batch_size):
            x = x.clone().requires_grad_(True)
            self.net(x).sum().backward()
            return x.detach(), y

    fake = ModuleType("pyautoattack")
    fake.AutoAttack = FakeAutoAttack
    fake.checks = SimpleNamespace(check_square_sr=lambda accuracy_after, logger: None)
    monkeypatch.setitem(sys.modules, "pyautoattack", fake)
    seen.clear()
    autoattack_accuracy(model, x, y, eps=0.1)
    assert seen and all(seen)
    seen.clear()
    model(x)
    assert seen == [False] * len(adder_layers(model))  # outside evaluation: the training rules


def _fed_to_batch_norm(model: nn.Module, shape: tuple[int, ...]) -> dict[str, bool]:
    """Per adder layer: is its output tensor the input of a batch norm?"""
    outputs: dict[str, torch.Tensor] = {}
    normalised: set[int] = set()
    for name, layer in adder_layers(model).items():
        layer.register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(lambda m, args: normalised.add(id(args[0])))
    model(torch.rand(2, *shape))
    return {name: id(out) in normalised for name, out in outputs.items()}


@pytest.mark.parametrize("arch", list_models())
def test_every_arch_in_adder_mode_runs_forward_and_backward(arch):
    shape = (1, 8, 8) if arch in ("mlp", "convnet") else (3, 16, 16)
    model, _ = _model(arch, shape)
    layers = adder_layers(model)
    assert layers and set(layers) == {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert all(m.affine for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, 10)
    logits.logsumexp(dim=1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    fed = _fed_to_batch_norm(model, shape)
    if arch == "wrn34_10":  # pre-activation: a block's last conv and shortcut feed the residual sum
        assert {n for n, ok in fed.items() if not ok} == {n for n in fed if n.endswith(("conv2", "shortcut"))}
    else:
        assert all(fed.values()), [n for n, ok in fed.items() if not ok]


def test_adaptive_scale_touches_adder_weights_only():
    torch.manual_seed(0)
    model = nn.Sequential(AdderLinear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 4), AdderLinear(4, 3))
    model(torch.randn(8, 6)).pow(2).sum().backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    scale_adder_gradients(model, eta=0.3)
    for name, p in model.named_parameters():
        if name in ("0.weight", "3.weight"):
            torch.testing.assert_close(p.grad.norm(), torch.tensor(0.3 * math.sqrt(p.numel())))
            torch.testing.assert_close(p.grad / p.grad.norm(), before[name] / before[name].norm())
        else:  # biases, batch norm, the ordinary linear layer
            assert torch.equal(p.grad, before[name]), name


def test_trainer_step_applies_the_adaptive_scale(tmp_path):
    eta, lr = 0.2, 0.05
    cfg = load_config(None, ["model.mode=adder", "model.width=4", "train.method=clean", "train.momentum=0",
                             "train.weight_decay=0", f"train.lr={lr}", f"train.adder_eta={eta}",
                             f"run.out_dir={tmp_path}"])  # fmt: skip
    trainer = Trainer(cfg)
    before = {name: layer.weight.detach().clone() for name, layer in adder_layers(trainer.model).items()}
    x, y = to_unit_float(trainer.splits.train.x[:16]), trainer.splits.train.y[:16]
    trainer.step(x, y)
    for name, layer in adder_layers(trainer.model).items():  # SGD: |Δw| = lr · eta · √k for every adder layer
        step = (layer.weight.detach() - before[name]).norm().item()
        assert step == pytest.approx(lr * eta * math.sqrt(layer.weight.numel()), rel=1e-4), name


def test_config_rules_for_adder_mode():
    cfg = load_config(None, ["model.mode=adder"])
    assert cfg.init.scheme == "kaiming_normal" and cfg.train.adder_eta == 0.1
    assert load_config(None, []).run_id() == load_config(None, ["train.adder_eta=0.1"]).run_id()
    with pytest.raises(RbpError, match="model.last_bn"):
        load_config(None, ["model.mode=adder", "model.last_bn=none"])
    with pytest.raises(RbpError, match="init.scheme"):
        load_config(None, ["model.mode=adder", "init.scheme=binary"])
    with pytest.raises(RbpError, match="adder_eta"):
        load_config(None, ["train.adder_eta=0"])


def test_save_load_gives_identical_outputs(tmp_path):
    model, cfg = _model()
    model.train()
    model(torch.rand(16, 1, 8, 8))  # running statistics away from their initial values
    save_checkpoint(tmp_path / "m.pt", cfg, INFO, model)
    loaded, loaded_cfg, _ = load_model(tmp_path / "m.pt")
    assert loaded_cfg.model.mode == "adder" and isinstance(loaded.body[0], AdderMixin)
    model.eval()
    x = torch.rand(8, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_export_of_an_adder_run_exits_2_with_one_line(tmp_path, capsys):
    args = ["train", "--set", "train.epochs=1", "--set", "model.width=4", "--set", "model.mode=adder",
            "--set", "attack.steps=1", "--set", "eval.val_pgd_steps=1", "--set", "eval.test_pgd_steps=1",
            "--quiet", "--set", f"run.out_dir={tmp_path}"]  # fmt: skip
    assert main(args) == 0
    (folder,) = tmp_path.iterdir()
    capsys.readouterr()
    assert main(["export", str(folder), "--out", str(tmp_path / "adder.rbpz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rbp: error: export is for subnet models") and "adder" in err and "\n" not in err
    assert not (tmp_path / "adder.rbpz").exists()

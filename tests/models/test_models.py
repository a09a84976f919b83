"""Every registered architecture exists in every mode and trains only what the mode allows."""

import math

import pytest
import torch
from torch import nn

from rbp.config.load import load_config
from rbp.models import Normalize, build_model, kept_parameters, layer_report, list_models
from rbp.nn import SubnetMixin, subnet_layers

BIG = {"resnet50", "wrn34_10"}


def _build(arch, mode, shape=(3, 32, 32), *overrides):
    cfg = load_config(None, [f"model.arch={arch}", f"model.mode={mode}", *overrides])
    return build_model(cfg, 10, shape, [0.5] * shape[0], [0.25] * shape[0])


def _input_shape(arch):
    return (1, 8, 8) if arch in ("mlp", "convnet") else (3, 32, 32)


@pytest.mark.parametrize("mode", ["dense", "binary", "subnet"])
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in list_models()])
def test_every_arch_in_every_mode_runs_forward_and_backward(arch, mode):
    shape = _input_shape(arch)
    model = _build(arch, mode, shape)
    assert isinstance(model[0], Normalize)  # normalisation is the first module
    x = torch.rand(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(dim=1).sum().backward()
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    if mode == "subnet":
        assert trained and all(name.endswith("scores") for name in trained)
        assert all(not m.affine for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"


def test_small_nets_also_take_32x32_images():
    for arch in ("mlp", "convnet"):
        assert _build(arch, "subnet", (3, 32, 32))(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_imagenet_stem():
    model = _build("resnet18", "subnet", (3, 64, 64), "model.stem=imagenet")
    stem_conv = model.body.stem[0]
    assert stem_conv.kernel_size == (7, 7) and stem_conv.stride == (2, 2)
    assert isinstance(model.body.stem[3], nn.MaxPool2d)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_last_bn_switch():
    with_bn = _build("convnet", "subnet", (1, 8, 8))
    assert isinstance(with_bn.last_bn, nn.BatchNorm1d) and not with_bn.last_bn.affine
    without = _build("convnet", "subnet", (1, 8, 8), "model.last_bn=none")
    assert isinstance(without.last_bn, nn.Identity)


def test_every_prunable_layer_gets_its_allocated_kept_count():
    model = _build("resnet18", "subnet", (3, 32, 32), "sparsity.density=0.01", "sparsity.p=0.1")
    layers = subnet_layers(model)
    assert "body.stem.0" in layers and "body.fc" in layers  # first conv and classifier take part
    rows = layer_report(model)
    for row, (name, layer) in zip(rows, layers.items(), strict=True):
        assert row["layer"] == name
        assert int(layer.mask().sum()) == max(1, math.floor(layer.density * layer.weight.numel())) == row["kept"]
    kept, total = kept_parameters(model)
    assert abs(kept - 0.01 * total) <= len(layers)


def test_same_seed_same_model_other_seed_other_weights():
    a = _build("convnet", "subnet", (1, 8, 8))
    b = _build("convnet", "subnet", (1, 8, 8))
    c = _build("convnet", "subnet", (1, 8, 8), "seed=1")
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
    assert not torch.equal(a.body[0].weight, c.body[0].weight)
    assert all(isinstance(m, SubnetMixin) for m in subnet_layers(a).values())

"""Invariants of the method's layers: exact top-k masks, frozen ±s weights, STE gradients, init."""

import math

import pytest
import torch

from rbp.nn import (
    BinaryConv2d,
    BinaryLinear,
    LayerFactory,
    SubnetConv2d,
    SubnetLinear,
    initialize,
    layer_generator,
)
from rbp.nn.init import SIGNED_SCALES


def _subnet(kind: str, shape: tuple[int, ...]):
    return (
        SubnetConv2d(shape[1], shape[0], shape[2], bias=False)
        if kind == "conv"
        else SubnetLinear(shape[1], shape[0], bias=False)
    )


@pytest.mark.parametrize("trial", range(12))
def test_mask_keeps_exactly_floor_density_times_n(trial):
    gen = torch.Generator().manual_seed(trial)
    kind = "conv" if trial % 2 else "linear"
    dims = torch.randint(1, 20, (3,), generator=gen).tolist()
    shape = (dims[0], dims[1], 3, 3) if kind == "conv" else (dims[0], dims[1])
    layer = _subnet(kind, shape)
    density = float(torch.rand((), generator=gen)) * 0.99 + 0.01
    layer.set_density(density)
    initialize(layer, seed=trial, scheme="binary")
    n = math.prod(shape)
    mask = layer.mask()
    assert mask.shape == layer.weight.shape
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == max(1, math.floor(density * n))
    # The kept entries are exactly those of largest |score|.
    kept_scores = layer.scores.abs()[mask.bool()]
    dropped_scores = layer.scores.abs()[~mask.bool()]
    if dropped_scores.numel():
        assert kept_scores.min() >= dropped_scores.max()


def test_set_density_rejects_out_of_range():
    layer = SubnetLinear(4, 3, bias=False)
    for bad in (0.0, -0.1, 1.2):
        with pytest.raises(ValueError, match="density"):
            layer.set_density(bad)


def test_weights_are_frozen_buffers_and_scores_the_only_parameters():
    layer = SubnetConv2d(3, 4, 3, bias=False)
    assert [name for name, _ in layer.named_parameters()] == ["scores"]
    assert "weight" in dict(layer.named_buffers())


def test_straight_through_gradient_reaches_scores_through_abs():
    torch.manual_seed(0)
    layer = SubnetLinear(6, 5, bias=False)
    layer.set_density(0.3)
    initialize(layer, seed=1, scheme="signed_kaiming")
    x = torch.randn(7, 6)
    upstream = torch.randn(7, 5)
    (layer(x) * upstream).sum().backward()
    # d/dW_eff of sum(upstream * x W_eff^T) is upstream^T x; the mask passes it on times w,
    # and the abs contributes sign(scores).
    grad_weff = upstream.T @ x
    expected = grad_weff * layer.weight * layer.scores.detach().sign()
    torch.testing.assert_close(layer.scores.grad, expected)
    assert layer.scores.grad.ne(0).float().mean() > 0.9  # pruned weights get gradients too


@pytest.mark.parametrize("scheme", sorted(SIGNED_SCALES))
def test_signed_schemes_give_plus_minus_s(scheme):
    layer = SubnetConv2d(8, 16, 3, bias=False)
    layer.set_density(0.25)
    initialize(layer, seed=3, scheme=scheme, alpha=2.0)
    fan_in = 8 * 9
    expected = {
        "binary": 1.0,
        "signed_kaiming": math.sqrt(2) / math.sqrt(fan_in),
        "signed_kaiming_density": math.sqrt(2) / math.sqrt(fan_in * 0.25),
        "scaled": 2.0 * math.sqrt(2) / math.sqrt(fan_in * 0.25),
    }[scheme]
    values = layer.weight.abs().unique()
    assert values.numel() == 1 and math.isclose(values.item(), expected, rel_tol=1e-6)
    signs = layer.weight.sign()
    assert 0.4 < (signs > 0).float().mean() < 0.6
    assert layer.scores.abs().max() <= 0.01


def test_score_fan_in_scaling():
    layer = SubnetLinear(100, 10, bias=False)
    initialize(layer, seed=0, scheme="binary", score_scale=0.5, score_fan_in=True)
    assert layer.scores.abs().max() <= 0.05 and layer.scores.abs().max() > 0.04


def test_seeded_init_is_reproducible_and_per_layer():
    def build():
        net = torch.nn.Sequential(SubnetLinear(5, 5, bias=False), SubnetLinear(5, 5, bias=False))
        initialize(net, seed=7, scheme="binary")
        return net

    a, b = build(), build()
    for la, lb in zip(a, b, strict=True):
        assert torch.equal(la.weight, lb.weight) and torch.equal(la.scores, lb.scores)
    assert not torch.equal(a[0].weight, a[1].weight)  # layers draw from their own generators


def test_weight_generator_is_pinned():
    """An accidental change of the generator would silently change every model: pin it."""
    first = torch.randn(6, generator=layer_generator(0, "body.0"))
    assert torch.where(first >= 0, 1, -1).tolist() == PINNED_SIGNS


PINNED_SIGNS = [1, -1, -1, -1, -1, 1]  # recorded once; must never change


def test_binary_layer_uses_sign_and_clipped_ste():
    layer = BinaryLinear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, -0.2, 1.5, -3.0]] * 3))
        layer.scale.fill_(0.5)
    x = torch.ones(1, 4)
    out = layer(x)
    torch.testing.assert_close(out, torch.full((1, 3), 0.5 * (1 - 1 + 1 - 1)))
    out.sum().backward()
    # Gradient passes only where |latent| <= 1.
    assert layer.weight.grad[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    layer.clip_()
    assert layer.weight.abs().max() <= 1.0


def test_binary_conv_trains_latent_weights():
    layer = BinaryConv2d(2, 3, 3, bias=False)
    initialize(layer, seed=0, scheme="signed_kaiming")
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    assert layer.effective_weight().abs().unique().numel() == 1


@pytest.mark.parametrize(
    "mode,affine,has_bias", [("subnet", False, False), ("binary", True, True), ("dense", True, True)]
)
def test_factory_modes(mode, affine, has_bias):
    f = LayerFactory(mode)
    assert f.bn2d(4).affine is affine and f.bn1d(4).affine is affine
    assert (f.linear(3, 2).bias is not None) is has_bias
    assert f.conv(3, 4, 3).bias is None


def test_factory_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        LayerFactory("quantum")

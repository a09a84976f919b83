"""The masked-weight cache: identical results to recomputing, one top-k per step, never stale."""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from rbp.attacks import pgd
from rbp.config.load import load_config
from rbp.models import build_model
from rbp.nn import layers as layers_module
from rbp.nn import set_mask_cache, subnet_layers, topk_masks


def _model():
    cfg = load_config(None, ["model.arch=convnet", "model.width=8"])
    return build_model(cfg, 10, (1, 8, 8), [0.3], [0.4])


def _pgd_training_step(model, x, y, optimizer):
    torch.manual_seed(0)
    x_adv = pgd(model, x, y, eps=0.1, step_size=0.025, steps=4)
    loss = F.cross_entropy(model(x_adv), y)
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return loss.detach(), grads


@pytest.mark.parametrize("method", ["topk", "sort"])
def test_cached_and_uncached_give_identical_outputs_and_gradients(method, monkeypatch):
    # The cached path takes its masks from one grouped call: force either algorithm there.
    monkeypatch.setattr(layers_module, "topk_masks", functools.partial(layers_module.topk_masks, method=method))
    cached, plain = _model(), _model()
    set_mask_cache(plain, False)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    opt_c = torch.optim.SGD(cached.parameters(), lr=0.5, momentum=0.9)
    opt_p = torch.optim.SGD(plain.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):  # several steps: the cache must follow every score update
        loss_c, grads_c = _pgd_training_step(cached, x, y, opt_c)
        loss_p, grads_p = _pgd_training_step(plain, x, y, opt_p)
        assert torch.equal(loss_c, loss_p)
        for name in grads_p:
            assert torch.equal(grads_c[name], grads_p[name]), name


def test_one_grouped_sort_per_optimiser_step(monkeypatch):
    model = _model()
    calls = []
    original = layers_module.topk_masks

    def counting(magnitudes, kept, method=None):
        calls.append(len(magnitudes))
        return original(magnitudes, kept, method)

    monkeypatch.setattr(layers_module, "topk_masks", counting)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _pgd_training_step(model, x, y, opt)  # 4 attack forwards + 1 training forward
    assert calls == [len(subnet_layers(model))]  # every layer's mask from one call
    calls.clear()
    _pgd_training_step(model, x, y, opt)  # scores changed: recomputed once more, not per forward
    assert calls == [len(subnet_layers(model))]


@pytest.mark.parametrize("seed", range(4))
def test_grouped_sort_and_per_layer_topk_keep_the_same_weights(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3, 3, 3), (17,), (64, 40), (1, 1)]
    magnitudes = [torch.rand(s, generator=gen) * 10 ** float(torch.randn((), generator=gen)) for s in shapes]
    kept = [1 + int(torch.randint(0, m.numel(), (), generator=gen)) for m in magnitudes]
    sort, topk = topk_masks(magnitudes, kept, "sort"), topk_masks(magnitudes, kept, "topk")
    for m, k, a, b in zip(magnitudes, kept, sort, topk, strict=True):
        assert a.shape == m.shape and int(a.sum()) == k
        assert torch.equal(a, b)
        if k < m.numel():
            assert m[a.bool()].min() > m[~a.bool()].max()


def test_grouped_sort_keeps_exact_counts_under_ties_and_zeros():
    magnitudes = [torch.zeros(10), torch.full((3, 4), 0.5), torch.tensor([0.0, 2.0, 2.0, 2.0, 1.0])]
    for method in ("sort", "topk"):
        masks = topk_masks(magnitudes, [3, 12, 2], method)
        assert [int(m.sum()) for m in masks] == [3, 12, 2]
        assert masks[2][[0, 4]].sum() == 0  # two of the three tied largest, never a smaller value


def test_grouped_sort_rejects_impossible_kept_counts():
    with pytest.raises(ValueError, match="kept counts"):
        topk_masks([torch.rand(4)], [5], "sort")


def test_grouped_masks_pass_gradients_straight_through_to_each_layer():
    model = _model()
    layers = list(subnet_layers(model).values())
    masks = layers[0]._group.masks()
    weights = [torch.randn_like(m) for m in masks]
    sum((w * m).sum() for w, m in zip(weights, masks, strict=True)).backward()
    for layer, w in zip(layers, weights, strict=True):  # d|s|/ds = sign(s), d mask/d|s| = identity
        assert torch.equal(layer.scores.grad, w * layer.scores.sign())


def test_a_stale_mask_is_impossible():
    model = _model().eval()
    x = torch.rand(4, 1, 8, 8)
    model(x)  # fills the caches
    reference = copy.deepcopy(model)
    set_mask_cache(reference, False)
    layer = next(iter(subnet_layers(model).values()))
    with torch.no_grad():
        layer.scores.mul_(-1).add_(torch.randn_like(layer.scores))  # in place, as an optimiser does
        next(iter(subnet_layers(reference).values())).scores.copy_(layer.scores)
    assert torch.equal(model(x), reference(x))
    layer.set_density(0.5)
    next(iter(subnet_layers(reference).values())).set_density(0.5)
    assert torch.equal(model(x), reference(x))
    reference.load_state_dict(model.state_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[next(k for k in state if k.endswith("scores"))].uniform_()
    model.load_state_dict(state)
    reference.load_state_dict(state)
    assert torch.equal(model(x), reference(x))


def test_cache_built_without_grad_does_not_block_score_gradients():
    model = _model()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with torch.no_grad():
        model(x)
    F.cross_entropy(model(x), y).backward()
    assert all(layer.scores.grad is not None for layer in subnet_layers(model).values())


def test_autocast_materialises_the_weight_in_the_compute_dtype():
    model = _model()
    layer = next(iter(subnet_layers(model).values()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.effective_weight().dtype == torch.bfloat16
    assert layer.effective_weight().dtype == torch.float32

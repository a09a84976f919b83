"""The masked-weight cache: identical results to recomputing, one top-k per step, never stale."""

import copy

import torch
import torch.nn.functional as F

from rbp.attacks import pgd
from rbp.config import load_config
from rbp.models import build_model
from rbp.nn import layers as layers_module
from rbp.nn import set_mask_cache, subnet_layers


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


def test_cached_and_uncached_give_identical_outputs_and_gradients():
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


def test_one_top_k_per_layer_per_optimiser_step(monkeypatch):
    model = _model()
    calls = []
    original = layers_module._TopKMask.forward

    def counting(ctx, magnitudes, kept):
        calls.append(kept)
        return original(ctx, magnitudes, kept)

    monkeypatch.setattr(layers_module._TopKMask, "forward", staticmethod(counting))
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _pgd_training_step(model, x, y, opt)  # 4 attack forwards + 1 training forward
    assert len(calls) == len(subnet_layers(model))
    calls.clear()
    _pgd_training_step(model, x, y, opt)  # scores changed: recomputed once more, not per forward
    assert len(calls) == len(subnet_layers(model))


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

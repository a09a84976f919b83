"""Attacks stay in the eps-ball and in [0, 1], raise the loss, and touch only input gradients."""

import pytest
import torch
import torch.nn.functional as F

from rbp.attacks import bn_mode, pgd, project, trades_adversary, trades_loss
from rbp.config.load import load_config
from rbp.models import build_model


@pytest.fixture(scope="module")
def model():
    cfg = load_config(None, ["model.arch=convnet", "model.mode=dense"])
    torch.manual_seed(0)
    net = build_model(cfg, 10, (1, 8, 8), [0.3], [0.4]).eval()
    return net


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)


def _radius(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize("norm,eps,step", [("linf", 0.1, 0.025), ("l2", 0.5, 0.125)])
@pytest.mark.parametrize("best_loss", [False, True])
def test_pgd_stays_in_ball_and_raises_loss(model, batch, norm, eps, step, best_loss):
    x, y = batch
    x_adv = pgd(model, x, y, eps=eps, step_size=step, steps=10, norm=norm, best_loss=best_loss)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (_radius(x_adv, x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert adv > clean + 0.1


def test_best_loss_iterate_is_at_least_as_strong_as_the_last(model, batch):
    x, y = batch
    torch.manual_seed(1)
    last = pgd(model, x, y, eps=0.3, step_size=0.3, steps=5)  # big steps oscillate
    torch.manual_seed(1)
    best = pgd(model, x, y, eps=0.3, step_size=0.3, steps=5, best_loss=True)
    with torch.no_grad():
        loss_last = F.cross_entropy(model(last), y, reduction="none")
        loss_best = F.cross_entropy(model(best), y, reduction="none")
    assert (loss_best >= loss_last - 1e-5).all()


def test_fgsm_with_random_start(model, batch):
    x, y = batch
    x_adv = pgd(model, x, y, eps=0.1, step_size=0.125, steps=1, random_init=True)
    assert (_radius(x_adv, x, "linf") <= 0.1 + 1e-6).all()
    assert not torch.equal(x_adv, x)


def test_attack_computes_input_gradients_only(model, batch):
    x, y = batch
    model.zero_grad(set_to_none=True)
    pgd(model, x, y, eps=0.1, step_size=0.025, steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_zero_eps_returns_the_clean_input(model, batch):
    x, y = batch
    assert torch.equal(pgd(model, x, y, eps=0.0, step_size=0.1, steps=3), x)


def test_projection_onto_l2_ball_and_box():
    x = torch.full((2, 4), 0.5)
    far = x + torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.01, 0.0, 0.0, 0.0]])
    out = project(far, x, eps=1.0, norm="l2")
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out[1], far[1])  # inside the ball: unchanged


def test_trades_adversary_and_loss(model, batch):
    x, y = batch
    x_adv = trades_adversary(model, x, eps=0.1, step_size=0.025, steps=5)
    assert (_radius(x_adv, x, "linf") <= 0.1 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        kl = lambda z: F.kl_div(F.log_softmax(model(z), 1), p, reduction="batchmean")
        assert kl(x_adv) > kl(x + 0.001 * torch.randn_like(x))
    loss = trades_loss(model(x), model(x_adv), y, beta=6.0)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_bn_mode_restores(model):
    model.train()
    with bn_mode(model, train=False):
        assert not model.training
    assert model.training
    model.eval()

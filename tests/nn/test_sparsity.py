"""Sparsity allocation: the adaptive rule's densities, capping, sums, ERK, explicit dicts."""

import math

import pytest

from rbp.nn import allocate

SHAPES = {
    "stem": (16, 3, 3, 3),  # 432
    "mid": (32, 16, 3, 3),  # 4,608
    "big": (64, 32, 3, 3),  # 18,432
    "fc": (10, 256),  # 2,560
}
SIZES = {name: math.prod(shape) for name, shape in SHAPES.items()}


def _kept(densities):
    return {name: math.floor(densities[name] * SIZES[name]) for name in SIZES}


@pytest.mark.parametrize("rule", ["adaptive", "uniform", "erk"])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_kept_counts_sum_to_target_within_one_per_layer(rule, density, p):
    densities = allocate(SHAPES, density, rule, p)
    assert list(densities) == list(SHAPES)
    assert all(0 < d <= 1 for d in densities.values())
    target = density * sum(SIZES.values())
    assert target - len(SHAPES) <= sum(_kept(densities).values()) <= target


def test_p_one_is_uniform_density():
    densities = allocate(SHAPES, 0.1, "adaptive", p=1.0)
    assert all(math.isclose(d, 0.1) for d in densities.values())


def test_p_zero_keeps_the_same_count_in_every_layer():
    densities = allocate(SHAPES, 0.05, "adaptive", p=0.0)
    counts = {name: densities[name] * SIZES[name] for name in SIZES}
    assert max(counts.values()) - min(counts.values()) < 1e-6
    assert math.isclose(sum(counts.values()), 0.05 * sum(SIZES.values()))


def test_adaptive_density_follows_power_law():
    p = 0.3
    densities = allocate(SHAPES, 0.02, "adaptive", p)
    # density_i = c * n_i**(p-1): the ratio of two uncapped layers depends only on their sizes.
    ratio = densities["mid"] / densities["big"]
    assert math.isclose(ratio, (SIZES["mid"] / SIZES["big"]) ** (p - 1))


def test_capping_small_layers_and_resolving_the_rest():
    # With p = 0 and a high target, the 432-weight stem would need density > 1.
    densities = allocate(SHAPES, 0.5, "adaptive", p=0.0)
    assert densities["stem"] == 1.0
    uncapped = [n for n in SHAPES if densities[n] < 1.0]
    counts = [densities[n] * SIZES[n] for n in uncapped]
    assert max(counts) - min(counts) < 1e-6  # the rest still keep equal counts
    assert math.isclose(sum(densities[n] * SIZES[n] for n in SIZES), 0.5 * sum(SIZES.values()))


def test_density_one_keeps_everything():
    assert all(d == 1.0 for d in allocate(SHAPES, 1.0, "adaptive", 0.1).values())


def test_erk_prefers_layers_with_few_weights_per_unit():
    densities = allocate(SHAPES, 0.1, "erk")
    raw = {n: sum(s) / math.prod(s) for n, s in SHAPES.items()}
    uncapped = [n for n in SHAPES if densities[n] < 1.0]
    c = {n: densities[n] / raw[n] for n in uncapped}
    assert max(c.values()) - min(c.values()) < 1e-9  # one constant for every uncapped layer


def test_explicit_densities():
    given = {"stem": 1.0, "mid": 0.2, "big": 0.05, "fc": 0.5}
    assert allocate(SHAPES, 0.1, "explicit", explicit=given) == given
    with pytest.raises(ValueError, match="missing"):
        allocate(SHAPES, 0.1, "explicit", explicit={"stem": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        allocate(SHAPES, 0.1, "explicit", explicit={**given, "nope": 0.5})


@pytest.mark.parametrize("density,p", [(0.0, 0.5), (1.2, 0.5), (-0.1, 0.5), (0.1, 1.5), (0.1, -0.2)])
def test_out_of_range_arguments(density, p):
    with pytest.raises(ValueError):
        allocate(SHAPES, density, "adaptive", p)


def test_unknown_rule():
    with pytest.raises(ValueError, match="allocation rule"):
        allocate(SHAPES, 0.1, "magic")

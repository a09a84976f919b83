"""Sparsity allocation: per-layer densities (kept fractions) from one global target.

Every rule is "density_i proportional to raw_i, capped at 1": with a constant ``c`` chosen so the
kept counts ``c * raw_i * n_i`` sum to ``K * sum(n_i)``; a layer whose density would exceed 1 is
capped and ``c`` re-solved over the others from the remaining budget.

- ``adaptive`` (exponent p in [0, 1]): ``raw_i = n_i**(p - 1)``, so layer i keeps ``c * n_i**p``
  weights; p = 1 is uniform density, p = 0 the same kept count in every layer.
- ``uniform``: ``raw_i = 1``.
- ``erk`` (Erdős–Rényi-kernel): ``raw_i = sum(shape_i) / prod(shape_i)``.
- ``explicit``: the given ``{layer name: density}``, every layer named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

RULES = ("adaptive", "uniform", "erk", "explicit")


def _raw_weights(shapes: Mapping[str, Sequence[int]], rule: str, p: float) -> dict[str, float]:
    if rule == "uniform":
        return {name: 1.0 for name in shapes}
    if rule == "adaptive":
        return {name: float(math.prod(shape)) ** (p - 1.0) for name, shape in shapes.items()}
    if rule == "erk":
        return {name: sum(shape) / math.prod(shape) for name, shape in shapes.items()}
    raise ValueError(f"unknown allocation rule {rule!r}; choose one of {', '.join(RULES)}")


def _scale_with_cap(sizes: Mapping[str, int], raw: Mapping[str, float], density: float) -> dict[str, float]:
    """density_i = min(1, c * raw_i) with sum(density_i * n_i) = density * sum(n_i)."""
    budget = density * sum(sizes.values())
    capped: set[str] = set()
    while True:
        active = [name for name in sizes if name not in capped]
        remaining = budget - sum(sizes[name] for name in capped)
        c = remaining / sum(raw[name] * sizes[name] for name in active)
        # Capping raises c for the rest, so every layer over 1 now stays over: cap them together.
        over = {name for name in active if c * raw[name] > 1.0}
        if not over:
            break
        capped |= over
        if len(capped) == len(sizes):
            break
    return {name: 1.0 if name in capped else c * raw[name] for name in sizes}


def allocate(
    shapes: Mapping[str, Sequence[int]],
    density: float,
    rule: str = "adaptive",
    p: float = 1.0,
    explicit: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-layer densities in (0, 1] for layers of the given weight ``shapes`` (in order).

    ``density`` is the global kept fraction K in (0, 1]; ``floor(density_i * n_i)`` summed over
    the layers is within one weight per layer of ``K * sum(n_i)``.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if rule == "explicit":
        explicit = dict(explicit or {})
        missing, unknown = set(shapes) - set(explicit), set(explicit) - set(shapes)
        if missing or unknown:
            raise ValueError(
                f"explicit densities must name every layer exactly; missing {sorted(missing)}, "
                f"unknown {sorted(unknown)}; layers are {list(shapes)}"
            )
        return {name: float(explicit[name]) for name in shapes}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    return _scale_with_cap(sizes, _raw_weights(shapes, rule, p), density)

"""Seeded weight initialisation: ±s binary schemes, Kaiming for dense baselines, score init.

Every layer draws from its own CPU generator derived from ``(seed, layer name)``, so a
(seed, config) pair reproduces every weight bit for bit on any machine and device, and adding a
layer does not change the others' weights.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
from torch import nn

from rbp.nn.layers import BinaryMixin, SubnetMixin, weight_layers

RELU_GAIN = math.sqrt(2.0)


def _binary(fan_in: int, density: float, alpha: float, gain: float) -> float:
    return 1.0


def _signed_kaiming(fan_in: int, density: float, alpha: float, gain: float) -> float:
    return gain / math.sqrt(fan_in)


def _signed_kaiming_density(fan_in: int, density: float, alpha: float, gain: float) -> float:
    # Only a fraction `density` of the fan-in survives the mask: rescale to keep Kaiming's variance.
    return gain / math.sqrt(fan_in * density)


def _scaled(fan_in: int, density: float, alpha: float, gain: float) -> float:
    return alpha * _signed_kaiming_density(fan_in, density, alpha, gain)


# scheme -> s(fan_in, density, alpha, gain); every weight of the layer becomes ±s.
SIGNED_SCALES: dict[str, Callable[[int, float, float, float], float]] = {
    "binary": _binary,
    "signed_kaiming": _signed_kaiming,
    "signed_kaiming_density": _signed_kaiming_density,
    "scaled": _scaled,
}


def layer_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from sha256(seed, layer name): stable across runs and machines."""
    digest = hashlib.sha256(f"rbp:{seed}:{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def signs(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """±1 (float32) of a standard normal draw: the sign pattern of a seeded Kaiming init."""
    return torch.where(torch.randn(shape, generator=generator) >= 0, 1.0, -1.0)


@torch.no_grad()
def initialize(
    model: nn.Module,
    *,
    seed: int,
    scheme: str,
    alpha: float = 1.0,
    score_scale: float = 0.01,
    score_fan_in: bool = False,
    gain: float = RELU_GAIN,
) -> None:
    """(Re)initialise every conv/linear layer of ``model`` in place from ``seed``.

    Subnet layers: ``weight = s * sign(w0)`` with ``s`` from ``scheme`` and the layer's own density
    (set densities first), ``scores ~ U(-a, a)`` with ``a = score_scale`` (``/ sqrt(fan_in)`` when
    ``score_fan_in``). Binary layers: latent ``w0 * gain / sqrt(fan_in)`` clipped to [-1, 1] and
    ``scale = s``. Dense layers: ``scheme`` must be ``kaiming_normal``; biases start at zero.
    """
    for name, layer in weight_layers(model).items():
        generator = layer_generator(seed, name)
        shape = layer.weight.shape
        fan_in = layer.weight[0].numel()
        if scheme == "kaiming_normal":
            if isinstance(layer, (SubnetMixin, BinaryMixin)):
                raise ValueError("kaiming_normal makes real weights; subnet/binary layers need a ±s scheme")
            layer.weight.copy_(torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in)))
        elif scheme in SIGNED_SCALES:
            density = getattr(layer, "density", 1.0)
            scale = SIGNED_SCALES[scheme](fan_in, density, alpha, gain)
            if isinstance(layer, BinaryMixin):
                latent = torch.randn(shape, generator=generator) * (gain / math.sqrt(fan_in))
                layer.weight.copy_(latent.clamp_(-1.0, 1.0))
                layer.scale.fill_(scale)
            else:
                layer.weight.copy_(signs(shape, generator) * scale)
        else:
            raise ValueError(f"unknown init scheme {scheme!r}")
        if isinstance(layer, SubnetMixin):
            bound = score_scale / math.sqrt(fan_in) if score_fan_in else score_scale
            layer.scores.copy_((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        if layer.bias is not None:
            layer.bias.zero_()

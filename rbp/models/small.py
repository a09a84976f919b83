"""Small networks for 8x8 digits and 32x32 images: an MLP and a 3-conv + 2-linear net."""

from __future__ import annotations

import math

from torch import nn

from rbp.models.registry import ArchSpec, register_model
from rbp.nn import LayerFactory


@register_model("mlp")
def mlp(f: LayerFactory, spec: ArchSpec) -> nn.Module:
    """Flatten -> [linear, BN, act] x 2 -> linear. Default width 256."""
    width = spec.width or 256
    return nn.Sequential(
        nn.Flatten(),
        f.linear(math.prod(spec.input_shape), width, bias=False),
        f.bn1d(width),
        f.act(),
        f.linear(width, width, bias=False),
        f.bn1d(width),
        f.act(),
        f.linear(width, spec.num_classes),
    )


@register_model("convnet")
def convnet(f: LayerFactory, spec: ArchSpec) -> nn.Module:
    """conv(w) -> conv(2w, /2) -> conv(2w, /2) -> linear(4w) -> linear; each hidden layer BN + act.

    Default width w = 32; a (C, H, W) input reaches the classifier as 2w x ceil(H/4) x ceil(W/4).
    """
    w = spec.width or 32
    channels, height, width = spec.input_shape
    flat = 2 * w * math.ceil(height / 4) * math.ceil(width / 4)
    return nn.Sequential(
        f.conv(channels, w, 3, padding=1),
        f.bn2d(w),
        f.act(),
        f.conv(w, 2 * w, 3, stride=2, padding=1),
        f.bn2d(2 * w),
        f.act(),
        f.conv(2 * w, 2 * w, 3, stride=2, padding=1),
        f.bn2d(2 * w),
        f.act(),
        nn.Flatten(),
        f.linear(flat, 4 * w, bias=False),
        f.bn1d(4 * w),
        f.act(),
        f.linear(4 * w, spec.num_classes),
    )

"""One layer factory for every architecture, so every model exists in every mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from rbp.nn.adder import AdderConv2d, AdderLinear
from rbp.nn.layers import BinaryConv2d, BinaryLinear, SubnetConv2d, SubnetLinear
from rbp.nn.lcnn import CenteredSoftplus, LipschitzBatchNorm1d, LipschitzBatchNorm2d

Mode = Literal["dense", "binary", "subnet", "adder"]

_CONV = {"dense": nn.Conv2d, "binary": BinaryConv2d, "subnet": SubnetConv2d, "adder": AdderConv2d}
_LINEAR = {"dense": nn.Linear, "binary": BinaryLinear, "subnet": SubnetLinear, "adder": AdderLinear}


@dataclass(frozen=True)
class LayerFactory:
    """Builds conv / linear / batch norm / activation layers for one ``mode``.

    ``subnet``: frozen ±s weights with trained scores; every batch norm is non-affine and no
    layer has a bias, so nothing but scores is trained. ``binary``: learned sign weights.
    ``dense``: ordinary full-precision layers with affine batch norm. ``adder``: AdderNet layers
    (outputs ``-Σ|x - w|``, full-precision weights, rbp.nn.adder) with affine batch norm, which
    every architecture applies to each layer's output (WideResNet's pre-activation blocks at the
    next block's input, so residual sums add raw outputs). ``norm="lipschitz"`` makes
    every batch norm a non-affine one with a learned gain bound (the LCNN's).
    """

    mode: Mode = "subnet"
    activation: str = "relu"
    norm: str = "batchnorm"

    def __post_init__(self) -> None:
        if self.mode not in _CONV:
            raise ValueError(f"unknown mode {self.mode!r}; choose dense, binary, subnet or adder")
        if self.norm not in ("batchnorm", "lipschitz"):
            raise ValueError(f"unknown norm {self.norm!r}; choose batchnorm or lipschitz")

    @property
    def affine_bn(self) -> bool:
        return self.mode != "subnet"

    def conv(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
        return _CONV[self.mode](cin, cout, kernel_size, stride=stride, padding=padding, bias=False)

    def linear(self, fin: int, fout: int, bias: bool = True) -> nn.Linear:
        return _LINEAR[self.mode](fin, fout, bias=bias and self.mode != "subnet")

    def bn2d(self, channels: int) -> nn.BatchNorm2d:
        if self.norm == "lipschitz":
            return LipschitzBatchNorm2d(channels)
        return nn.BatchNorm2d(channels, affine=self.affine_bn)

    def bn1d(self, features: int) -> nn.BatchNorm1d:
        if self.norm == "lipschitz":
            return LipschitzBatchNorm1d(features)
        return nn.BatchNorm1d(features, affine=self.affine_bn)

    def act(self) -> nn.Module:
        if self.activation == "relu":
            return nn.ReLU(inplace=True)
        if self.activation == "centered_softplus":
            return CenteredSoftplus()
        raise ValueError(f"unknown activation {self.activation!r}")

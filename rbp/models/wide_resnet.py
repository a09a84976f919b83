"""WideResNet (pre-activation blocks), as used for adversarial training: WRN-34-10 by default."""

from __future__ import annotations

import torch
from torch import nn

from rbp.models.registry import ArchSpec, register_model
from rbp.nn import LayerFactory


class WideBlock(nn.Module):
    """BN -> act -> conv3x3(/stride) -> BN -> act -> conv3x3, plus a 1x1 shortcut when shapes change."""

    def __init__(self, f: LayerFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.act1 = f.bn2d(cin), f.act()
        self.conv1 = f.conv(cin, cout, 3, stride=stride, padding=1)
        self.bn2, self.act2 = f.bn2d(cout), f.act()
        self.conv2 = f.conv(cout, cout, 3, padding=1)
        self.shortcut = None if cin == cout and stride == 1 else f.conv(cin, cout, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """depth = 6n + 4; widths 16, 16k, 32k, 64k for widen factor k."""

    def __init__(self, f: LayerFactory, depth: int, widen: int, spec: ArchSpec) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = f.conv(spec.input_shape[0], widths[0], 3, padding=1)
        groups, cin = [], widths[0]
        for index, cout in enumerate(widths[1:]):
            stride = 1 if index == 0 else 2
            groups.append(
                nn.Sequential(*(WideBlock(f, cin if b == 0 else cout, cout, stride if b == 0 else 1) for b in range(n)))
            )
            cin = cout
        self.groups = nn.Sequential(*groups)
        self.head = nn.Sequential(f.bn2d(cin), f.act(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = f.linear(cin, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.groups(self.stem(x))))


@register_model("wrn34_10")
def wrn34_10(f: LayerFactory, spec: ArchSpec) -> WideResNet:
    """WRN-34-10; ``model.width`` overrides the widen factor (10)."""
    return WideResNet(f, 34, spec.width or 10, spec)

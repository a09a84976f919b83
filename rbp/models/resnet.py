"""ResNet-18/34/50 with a CIFAR stem (3x3 conv, no max-pool) or an ImageNet stem (7x7/2 + max-pool)."""

from __future__ import annotations

import torch
from torch import nn

from rbp.models.registry import ArchSpec, register_model
from rbp.nn import LayerFactory


def _shortcut(f: LayerFactory, cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(f.conv(cin, cout, 1, stride=stride), f.bn2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, f: LayerFactory, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = f.conv(cin, planes, 3, stride=stride, padding=1), f.bn2d(planes)
        self.conv2, self.bn2 = f.conv(planes, planes, 3, padding=1), f.bn2d(planes)
        self.act1, self.act2 = f.act(), f.act()
        self.shortcut = _shortcut(f, cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, f: LayerFactory, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = f.conv(cin, planes, 1), f.bn2d(planes)
        self.conv2, self.bn2 = f.conv(planes, planes, 3, stride=stride, padding=1), f.bn2d(planes)
        self.conv3, self.bn3 = f.conv(planes, cout, 1), f.bn2d(cout)
        self.act1, self.act2, self.act3 = f.act(), f.act(), f.act()
        self.shortcut = _shortcut(f, cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        return self.act3(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """(N, C, H, W) images -> (N, num_classes) logits. ``width`` is the first stage's width (64)."""

    def __init__(
        self, f: LayerFactory, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...], spec: ArchSpec
    ) -> None:
        super().__init__()
        width = spec.width or 64
        channels = spec.input_shape[0]
        if spec.stem == "imagenet":
            self.stem = nn.Sequential(
                f.conv(channels, width, 7, stride=2, padding=3),
                f.bn2d(width),
                f.act(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(f.conv(channels, width, 3, padding=1), f.bn2d(width), f.act())
        stages, cin = [], width
        for index, depth in enumerate(depths):
            planes = width * 2**index
            blocks = []
            for b in range(depth):
                blocks.append(block(f, cin, planes, stride=2 if index > 0 and b == 0 else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = f.linear(cin, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))))


@register_model("resnet18")
def resnet18(f: LayerFactory, spec: ArchSpec) -> ResNet:
    return ResNet(f, BasicBlock, (2, 2, 2, 2), spec)


@register_model("resnet34")
def resnet34(f: LayerFactory, spec: ArchSpec) -> ResNet:
    return ResNet(f, BasicBlock, (3, 4, 6, 3), spec)


@register_model("resnet50")
def resnet50(f: LayerFactory, spec: ArchSpec) -> ResNet:
    return ResNet(f, Bottleneck, (3, 4, 6, 3), spec)

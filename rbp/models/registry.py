"""Architecture registry: each architecture is a small function registered by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from rbp.nn import LayerFactory


@dataclass(frozen=True)
class ArchSpec:
    """What an architecture builder may use besides the layer factory."""

    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W) of the images
    width: int | None = None  # base width; None is the architecture's own default
    stem: Literal["cifar", "imagenet"] = "cifar"


Builder = Callable[[LayerFactory, ArchSpec], nn.Module]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = builder
        return builder

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    if name not in _REGISTRY:
        raise ValueError(f"unknown arch {name!r}; choose one of {', '.join(list_models())}")
    return _REGISTRY[name]

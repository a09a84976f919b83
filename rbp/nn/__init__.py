"""Layers, initialisation and sparsity allocation of robust binary subnetworks."""

from rbp.nn.factory import LayerFactory, Mode
from rbp.nn.init import SIGNED_SCALES, initialize, layer_generator
from rbp.nn.layers import (
    BinaryConv2d,
    BinaryLinear,
    BinaryMixin,
    SubnetConv2d,
    SubnetLinear,
    SubnetMixin,
    clip_binary_weights,
    set_mask_cache,
    subnet_layers,
    weight_layers,
)
from rbp.nn.sparsity import RULES, allocate

__all__ = [
    "RULES",
    "SIGNED_SCALES",
    "BinaryConv2d",
    "BinaryLinear",
    "BinaryMixin",
    "LayerFactory",
    "Mode",
    "SubnetConv2d",
    "SubnetLinear",
    "SubnetMixin",
    "allocate",
    "clip_binary_weights",
    "initialize",
    "layer_generator",
    "set_mask_cache",
    "subnet_layers",
    "weight_layers",
]

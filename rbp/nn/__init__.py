"""Layers, initialisation and sparsity allocation of robust binary subnetworks."""

from rbp.nn.factory import LayerFactory, Mode
from rbp.nn.init import SIGNED_SCALES, initialize, layer_generator
from rbp.nn.layers import (
    BinaryConv2d,
    BinaryLinear,
    BinaryMixin,
    MaskGroup,
    SubnetConv2d,
    SubnetLinear,
    SubnetMixin,
    clip_binary_weights,
    forget_masks,
    group_masks,
    set_mask_cache,
    subnet_layers,
    topk_masks,
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
    "MaskGroup",
    "Mode",
    "SubnetConv2d",
    "SubnetLinear",
    "SubnetMixin",
    "allocate",
    "clip_binary_weights",
    "forget_masks",
    "group_masks",
    "initialize",
    "layer_generator",
    "set_mask_cache",
    "subnet_layers",
    "topk_masks",
    "weight_layers",
]

"""Layers, initialisation and sparsity allocation of robust binary subnetworks."""

from rbp.nn.adder import (
    AdderConv2d,
    AdderLinear,
    AdderMixin,
    adder_layers,
    exact_gradients,
    scale_adder_gradients,
)
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
    compile_model,
    forget_masks,
    group_masks,
    set_mask_cache,
    subnet_layers,
    topk_masks,
    weight_layers,
)
from rbp.nn.sparsity import RULES, allocate

__all__ = [
    "AdderConv2d",
    "AdderLinear",
    "AdderMixin",
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
    "adder_layers",
    "allocate",
    "clip_binary_weights",
    "compile_model",
    "exact_gradients",
    "forget_masks",
    "group_masks",
    "initialize",
    "layer_generator",
    "set_mask_cache",
    "scale_adder_gradients",
    "subnet_layers",
    "topk_masks",
    "weight_layers",
]

"""Architectures, each buildable in every mode (dense | binary | subnet) through one factory."""

from rbp.models import resnet, small, wide_resnet  # noqa: F401  (register the architectures)
from rbp.models.build import Normalize, build_model, check_fits_memory, first_non_finite, kept_parameters, layer_report
from rbp.models.probe import dense_width_for, subnet_layer_names
from rbp.models.registry import ArchSpec, get_builder, list_models, register_model

__all__ = [
    "ArchSpec",
    "Normalize",
    "build_model",
    "check_fits_memory",
    "dense_width_for",
    "first_non_finite",
    "get_builder",
    "kept_parameters",
    "layer_report",
    "list_models",
    "register_model",
    "subnet_layer_names",
]

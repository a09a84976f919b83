"""The validated config of a run: defaults <- YAML <- ``--set``, and the checks that need the registries.

The schema (:mod:`rbp.config.schema`) checks every field on its own; what needs the architecture
registry (the arch exists; explicit per-layer densities name exactly its subnet layers, probed on
the meta device) is checked here, so that models and data import the schema only. Every config a
user gives goes through :func:`from_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from rbp.base.errors import RbpError
from rbp.config.io import config_error, parse_override, read_yaml_mapping, set_path
from rbp.config.schema import Config, data_shape
from rbp.models.probe import subnet_layer_names
from rbp.models.registry import list_models


def from_dict(tree: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`, raising a one-line :class:`RbpError`."""
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as error:
        raise RbpError(config_error(error)) from None
    check_registries(cfg)
    return cfg


def check_registries(cfg: Config) -> None:
    """The arch is registered; explicit densities name exactly its subnet layers (checked now, not mid-build)."""
    m = cfg.model
    if m.arch not in list_models():
        raise RbpError(f"config error: model.arch: unknown arch {m.arch!r}; choose one of {', '.join(list_models())}")
    if cfg.sparsity.allocation != "explicit" or m.mode != "subnet":
        return
    names = subnet_layer_names(m.mode, m.arch, m.width, m.stem, *data_shape(cfg.data))
    given = set(cfg.sparsity.layer_densities or {})
    unknown, missing = sorted(given - set(names)), [n for n in names if n not in given]
    if unknown or missing:
        problem = f"unknown layer {unknown[0]!r}" if unknown else f"no density for layer {missing[0]!r}"
        raise RbpError(f"config error: sparsity.layer_densities: {problem}; the {m.arch} layers are {', '.join(names)}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file at ``path`` <- ``KEY=VALUE`` overrides, validated and resolved."""
    tree = read_yaml_mapping(path, "config error") if path is not None else {}
    for text in overrides:
        set_path(tree, *parse_override(text))
    return from_dict(tree)

"""The core config as flat dotted keys: what a search space, a trial config and MLflow params use.

A trial's config is a flat dict such as ``{"train.lr": 0.1, "sparsity.p": 0.3}``; MLflow params
are strings. These helpers go between the nested :class:`~rbp.config.schema.Config` and those forms,
typed by the config's own field annotations, so ``rbp best`` casts ``"0.1"`` back to a float and
``"True"`` to a bool for exactly the fields that hold them.
"""

from __future__ import annotations

import json
import os
import types
import typing
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from rbp.config.schema import Config

Kind = Literal["bool", "int", "float", "str", "json"]


def _kind(annotation: Any) -> Kind:
    """The value kind of a field type: ``int | None`` -> int, ``Literal['a', 'b']`` -> str, lists -> json."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(annotation) if a is not type(None)]
        return _kind(inner)
    if origin is Literal:
        return _kind(type(get_args(annotation)[0]))
    if annotation is bool:  # before int: bool is an int subclass
        return "bool"
    if annotation in (int, float):
        return "int" if annotation is int else "float"
    if annotation is str or (isinstance(annotation, type) and issubclass(annotation, os.PathLike)):
        return "str"
    return "json"


def _walk(model: type[BaseModel], prefix: str, out: dict[str, tuple[Kind, bool]]) -> None:
    hints = typing.get_type_hints(model)
    for name in model.model_fields:
        annotation = hints[name]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _walk(annotation, f"{prefix}{name}.", out)
        else:
            out[f"{prefix}{name}"] = (_kind(annotation), type(None) in get_args(annotation))


@cache
def config_keys() -> dict[str, tuple[Kind, bool]]:
    """Every leaf key of the core config (``"train.lr"``) -> (value kind, may be None)."""
    out: dict[str, tuple[Kind, bool]] = {}
    _walk(Config, "", out)
    return out


def flatten_config(tree: dict[str, Any] | Config) -> dict[str, Any]:
    """Nested config tree (or a Config) -> ``{"train.lr": 0.1, ...}`` over the keys present.

    Walks the config's own sections, so dict-valued fields (``sparsity.layer_densities``) stay
    whole values; keys that are not config keys are kept as given (validation reports them).
    """
    if isinstance(tree, Config):
        tree = tree.to_dict()
    keys = config_keys()
    flat: dict[str, Any] = {}

    def visit(node: dict[str, Any], prefix: str) -> None:
        for name, value in node.items():
            key = f"{prefix}{name}"
            if key not in keys and isinstance(value, dict):
                visit(value, f"{key}.")
            else:
                flat[key] = value

    visit(tree, "")
    return flat


def config_value_text(value: Any) -> str:
    """A config value as an MLflow param: JSON for lists/dicts, ``None`` for null, else ``str``."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "None" if value is None else str(value)


def parse_config_value(key: str, text: str) -> Any:
    """Inverse of :func:`config_value_text` for config key ``key`` (ValueError if it does not parse)."""
    kind, optional = config_keys()[key]
    if optional and text == "None":
        return None
    if kind == "bool":
        if text.strip().lower() not in ("true", "false"):
            raise ValueError(f"not a bool: {text!r}")
        return text.strip().lower() == "true"
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(str(error)) from None
    return text

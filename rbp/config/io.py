"""Config text in and out: YAML files, ``--set KEY=VALUE`` overrides, dotted keys, one-line errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    ValidationError,
)

from rbp.base.errors import RbpError, first_problem


def config_error(error: ValidationError) -> str:
    """One line naming the bad field, its problem and the value given."""
    field, message = first_problem(error)
    if message == "unknown key":
        message += " (`rbp train --print-config` lists every key)"
    return f"config error: {field or 'config'}: {message}"


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RbpError(f"config error: {dotted}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 0.1}`` -> ``{"train": {"lr": 0.1}}``: dotted keys as the tree :func:`from_dict` takes."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        set_path(tree, key, value)
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=c"`` -> ``("a.b", c)`` with ``c`` parsed as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RbpError(f"config error: --set {text!r}: expected KEY=VALUE, e.g. --set model.arch=resnet18")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is ``{}``); errors are one line prefixed by ``what``."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RbpError(f"{what}: cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise RbpError(
            f"{what}: {path} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
            "save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise RbpError(f"{what}: {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise RbpError(f"{what}: {path} must hold a mapping, not {type(loaded).__name__}")
    return loaded or {}

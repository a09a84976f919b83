"""The config described for people and editors: YAML with each field's description, and its JSON Schema.

Both are read from the schema's ``Field(description=...)``, so the text a user sees cannot drift from
the fields the loader accepts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rbp.config.schema import Config

# The draft pydantic writes; named so that editors (yaml-language-server, VS Code) need not guess it.
JSON_SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def commented_yaml(cfg: Config) -> str:
    """``cfg`` as YAML, every field under ``# comment`` lines: its description and, if any, its choices.

    The values are :meth:`Config.to_yaml`'s, in the schema's order; comments are the only addition, so
    the text loads (``rbp train --config``) back to the same config and run id.
    """
    return "".join(_section(cfg, cfg.to_dict(), indent=""))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file: every section, field, description, default and bound.

    Sections forbid unknown keys (``additionalProperties: false``), as the loader does.
    """
    return {"$schema": JSON_SCHEMA_DRAFT, **Config.model_json_schema()}


def _section(model: BaseModel, values: dict[str, Any], indent: str) -> Iterator[str]:
    for name, field in type(model).model_fields.items():
        if isinstance(getattr(model, name), BaseModel):
            yield "\n"  # a blank line before each section, for the eye
            yield from _comment(field, indent)
            yield f"{indent}{name}:\n"
            yield from _section(getattr(model, name), values[name], indent + "  ")
        else:
            yield from _comment(field, indent)
            value = values[name]
            # Flow style keeps a list or mapping on its field's line, under its own comment.
            flow = None if isinstance(value, list | dict) else False
            yield textwrap.indent(yaml.safe_dump({name: value}, default_flow_style=flow, width=120), indent)


def _comment(field: FieldInfo, indent: str) -> Iterator[str]:
    choices = _choices(field.annotation)
    text = " ".join(filter(None, [field.description, f"(one of: {', '.join(choices)})" if choices else ""]))
    for line in textwrap.wrap(text, width=100 - len(indent)):
        yield f"{indent}# {line}\n"


def _choices(annotation: Any) -> list[str]:
    """The values of a ``Literal`` annotation, also inside ``Literal[...] | None``; else none."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is Literal:
            return [str(choice) for choice in get_args(candidate)]
    return []

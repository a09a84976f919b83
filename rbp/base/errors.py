"""The one exception type users see (a bad input, reported as one line and exit code 2), and the one
way a schema's validation error becomes that line."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class RbpError(Exception):
    """A user-facing error: the message names the offending field or file and the fix."""


class StrictModel(BaseModel):
    """A schema section of a spec: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# Parts of a pydantic error location that name validators or union members, not a field.
_NOT_FIELDS = ("function-", "literal[", "list[")


def first_problem(error: ValidationError) -> tuple[str, str]:
    """``(dotted field, message)`` of the problem to report: an unknown key first (a typo may be what
    makes the rest fail), else the first; a scalar value given is quoted as ``(got ...)``."""
    first = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    where = ".".join(str(part) for part in first["loc"] if not str(part).startswith(_NOT_FIELDS))
    if first["type"] == "extra_forbidden":
        return where, "unknown key"
    if first["type"] == "missing":
        return where, "required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    if "input" in first and not isinstance(first["input"], (dict, list)):
        message += f" (got {first['input']!r})"
    return where, message

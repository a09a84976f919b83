"""Search specs: what to search, how, and with what budget, as validated YAML data.

A spec (``tune/*.yaml``) names the MLflow experiment, a base core config (``base``: a config YAML,
and ``fixed``: dotted core-config overrides), the search ``space`` (dotted core-config keys ->
distributions), the metric(s) and mode(s), the sampler, the scheduler, the trial budget, the
concurrency and the resources per trial. Everything is checked before Ray starts: unknown spec keys,
space or fixed keys the core config lacks, values the core config rejects, an empty space, and
combinations that cannot work (grid over a continuous range, ASHA with several objectives) are one
:class:`~rbp.base.errors.RbpError` line naming the key.

Conditional parameters: a parameter with ``when: {key: value-or-list}`` is sampled only when the
earlier (or fixed) ``key`` has one of those values. Two conditions are implied and always apply:
``sparsity.p`` only for ``sparsity.allocation: adaptive`` and ``init.alpha`` only for
``init.scheme: scaled``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rbp.base.errors import RbpError, StrictModel, first_problem
from rbp.base.metrics import EPOCH_METRICS
from rbp.config.io import nested, parse_override, read_yaml_mapping
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.tuning.configkeys import config_keys, flatten_config

# Implied conditions: these parameters mean nothing unless the other key has one of the values.
IMPLIED_CONDITIONS: dict[str, dict[str, list[Any]]] = {
    "sparsity.p": {"sparsity.allocation": ["adaptive"]},
    "init.alpha": {"init.scheme": ["scaled"]},
}

Mode = Literal["max", "min"]


class Param(StrictModel):
    """One searched core-config key: a range (float/int/loguniform) or a list of choices."""

    type: Literal["float", "int", "loguniform", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0, description="grid step of a float/int range")
    log: bool = Field(False, description="sample the range on a log scale (low > 0)")
    choices: list[Any] | None = None
    when: dict[str, Any] | None = Field(None, description="{key: value or [values]}: sample only then")

    @model_validator(mode="after")
    def _shape(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty list `choices`")
            if any(v is not None for v in (self.low, self.high, self.step)) or self.log:
                raise ValueError("categorical takes `choices`, not low/high/step/log")
            if any(isinstance(c, (list, dict)) for c in self.choices):
                raise ValueError("choices must be numbers, strings, booleans or null")
            return self
        if self.choices is not None:
            raise ValueError(f"{self.type} takes low/high, not `choices`")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs `low` and `high`")
        for name, value in (("low", self.low), ("high", self.high), ("step", self.step)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} is not a number (got {value}); give a finite bound")
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got {self.low} >= {self.high})")
        if (self.log or self.type == "loguniform") and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low})")
        if self.step is not None and (self.log or self.type == "loguniform"):
            raise ValueError("step and a log scale cannot be combined")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("int ranges need whole numbers for low/high/step")
        return self

    @property
    def is_log(self) -> bool:
        return self.log or self.type == "loguniform"

    def candidates(self) -> list[Any]:
        """Values worth validating against the core config: every choice, or both range ends."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]  # type: ignore[arg-type]
        return [self.low, self.high]


class SamplerSpec(StrictModel):
    type: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    seed: int | None = 0
    startup_trials: int = Field(10, ge=0, description="tpe: random trials before the model kicks in")
    population_size: int = Field(50, ge=2, description="nsga2: individuals per generation")


class SchedulerSpec(StrictModel):
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0, description="asha: keep the top 1/factor at each rung")


class ResourcesSpec(StrictModel):
    cpu: float = Field(1.0, gt=0, description="CPU cores per trial (also torch's thread count)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; fractions share one GPU (0.25: four trials)")


class Spec(StrictModel):
    """A validated search spec; see the module docstring and ``tune/digits.yaml``."""

    experiment: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="MLflow experiment name")
    description: str = ""
    base: Path | None = Field(None, description="a core config YAML (as `rbp train --config`), relative to the spec")
    fixed: dict[str, Any] = Field(default_factory=dict, description="dotted core-config overrides")
    space: dict[str, Param] = Field(default_factory=dict)
    start: list[dict[str, Any]] = Field(default_factory=list, description="configs to try first (warm start)")
    metric: str | list[str] = "val_pgd_acc"
    mode: Mode | list[Mode] = "max"
    sampler: SamplerSpec = SamplerSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    trials: int = Field(8, ge=1, description="trial budget: trials in the study (a larger one extends a search)")
    repeats: int = Field(1, ge=1, description="seeds per sampled config; the objective is their mean")
    concurrency: int = Field(1, ge=1, description="trials running at once")
    resources: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(2, ge=0, description="restarts of a trial whose worker dies (from its checkpoint)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept per trial")
    top: int = Field(5, ge=1, description="rows of the final summary table")

    @field_validator("metric", "mode")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("needs at least one entry")
        return value

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return self.mode if isinstance(self.mode, list) else [self.mode]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1


class LoadedSpec(BaseModel):
    """A spec with everything resolved: its path, the constant config keys and the resolved defaults."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    path: Path
    spec: Spec
    constants: dict[str, Any]  # flat dotted keys: base config + fixed, the same in every trial
    resolved: dict[str, Any]  # flat resolved config of the constants (defaults filled): for conditions

    def conditions(self, name: str) -> dict[str, list[Any]]:
        """Effective conditions of parameter ``name``: implied ones and the spec's ``when``."""
        out = {k: list(v) for k, v in IMPLIED_CONDITIONS.get(name, {}).items()}
        for key, value in (self.spec.space[name].when or {}).items():
            out[key] = value if isinstance(value, list) else [value]
        return out


def _error(where: str, message: str) -> RbpError:
    return RbpError(f"spec error: {where}: {message}")


def _format_validation(path: Path, error: ValidationError) -> RbpError:
    where, message = first_problem(error)
    return _error(f"{path}: {where or 'spec'}", message)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    return read_yaml_mapping(path, f"spec error: {what}")


def _validated(where: str, flat: dict[str, Any]) -> Config:
    try:
        return from_dict(nested(flat))
    except RbpError as error:
        raise _error(where, str(error)) from None


def _check_keys(where: str, keys: list[str]) -> None:
    known = config_keys()
    for key in keys:
        if key not in known:
            section = key.split(".")[0]
            hint = "; `rbp train --print-config` lists every key"
            if not any(k.startswith(f"{section}.") for k in known) and "." in key:
                hint = f"; the core config has no section {section!r}{hint}"
            raise _error(f"{where}.{key}", f"the core config has no key {key!r}{hint}")


def _check_space(loaded: LoadedSpec) -> None:
    spec, path = loaded.spec, loaded.path
    if not spec.space:
        raise _error(str(path), "space is empty: name at least one core-config key to search (e.g. train.lr)")
    _check_keys(f"{path}: space", list(spec.space))
    for key in spec.space:
        if key in loaded.constants:
            raise _error(f"{path}: space.{key}", "is also fixed (in `fixed`, `base` or --set); keep one")
    earlier: set[str] = set()
    for name, param in spec.space.items():
        for key, values in loaded.conditions(name).items():
            if key not in config_keys():
                raise _error(f"{path}: space.{name}.when.{key}", f"the core config has no key {key!r}")
            if key in spec.space and key not in earlier:
                raise _error(f"{path}: space.{name}.when.{key}", f"{key} must come before {name} in the space")
            if key not in spec.space and loaded.resolved.get(key) not in values:
                raise _error(
                    f"{path}: space.{name}",
                    f"is never sampled: it needs {key} in {values} but {key} is {loaded.resolved.get(key)!r}",
                )
        for value in param.candidates():
            flat = {**loaded.constants, name: value}
            for key, values in loaded.conditions(name).items():
                if key in spec.space:  # a searched condition: validate under a value that enables it
                    flat[key] = values[0]
            _validated(f"{path}: space.{name} = {value!r}", flat)
        earlier.add(name)
    if spec.sampler.type == "grid":
        ranges = [name for name, p in spec.space.items() if p.type != "categorical"]
        if ranges:
            raise _error(f"{path}: space.{ranges[0]}", "the grid sampler needs categorical parameters (list `choices`)")


def _check_objectives(loaded: LoadedSpec) -> None:
    spec, path = loaded.spec, loaded.path
    for metric in spec.metrics:
        if metric not in EPOCH_METRICS:
            raise _error(f"{path}: metric", f"unknown metric {metric!r}; choose from {', '.join(EPOCH_METRICS)}")
    if len(spec.modes) != len(spec.metrics):
        raise _error(
            f"{path}: mode", f"give one mode per metric ({len(spec.metrics)} metrics, {len(spec.modes)} modes)"
        )
    if spec.multi_objective and spec.scheduler.type == "asha":
        raise _error(
            f"{path}: scheduler.type", "asha stops trials on one metric; it cannot run a multi-objective search"
        )
    no_val = loaded.resolved.get("data.val_fraction") == 0
    if no_val and any(m.startswith(("val_", "best_val")) for m in spec.metrics):
        raise _error(f"{path}: metric", "validation metrics need data.val_fraction > 0")


def _check_start(loaded: LoadedSpec) -> None:
    spec, path = loaded.spec, loaded.path
    for i, point in enumerate(spec.start):
        for key, value in point.items():
            if key not in spec.space:
                raise _error(f"{path}: start[{i}].{key}", "is not a searched key (start points set searched keys only)")
            param = spec.space[key]
            if param.type == "categorical" and value not in (param.choices or []):
                raise _error(f"{path}: start[{i}].{key}", f"{value!r} is not one of the choices {param.choices}")
            if param.type != "categorical" and not (param.low <= value <= param.high):  # type: ignore[operator]
                raise _error(f"{path}: start[{i}].{key}", f"{value!r} is outside [{param.low}, {param.high}]")
        _validated(f"{path}: start[{i}]", {**loaded.constants, **point})


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = (), trials: int | None = None) -> LoadedSpec:
    """Read, validate and resolve the spec at ``path``.

    ``overrides`` (``KEY=VALUE``, as ``--set``) are added to ``fixed``; ``trials`` replaces the
    budget. Raises :class:`RbpError` (one line, naming the key) on any problem.
    """
    path = Path(path)
    raw = _read_yaml(path, "spec")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as error:
        raise _format_validation(path, error) from None
    fixed = dict(spec.fixed)
    for text in overrides:
        key, value = parse_override(text)
        fixed[key] = value
    updates: dict[str, Any] = {"fixed": fixed}
    if trials is not None:
        if trials < 1:
            raise RbpError(f"--trials must be at least 1, got {trials}")
        updates["trials"] = trials
    spec = spec.model_copy(update=updates)

    base_tree: dict[str, Any] = {}
    if spec.base is not None:
        base_path = spec.base if spec.base.is_absolute() else path.parent / spec.base
        base_tree = _read_yaml(base_path, "base config")
    constants = flatten_config(base_tree)
    _check_keys(f"{path}: base", list(constants))
    _check_keys(f"{path}: fixed", list(fixed))
    constants.update(fixed)
    resolved = flatten_config(_validated(f"{path}: fixed", constants))
    loaded = LoadedSpec(path=path, spec=spec, constants=constants, resolved=resolved)
    _check_space(loaded)
    _check_objectives(loaded)
    _check_start(loaded)
    return loaded


def grid_size(spec: Spec) -> int:
    """Number of configs a grid search enumerates (product of the choices)."""
    return math.prod(len(p.choices or []) for p in spec.space.values())

"""The schema of an ablation spec (YAML, data not code): base config, seeds, studies of cells, figures.

A spec names a base config, seeds, and studies; ``extends: OTHER.yaml`` starts from another spec
and overrides its keys (``base`` key by key). Each study lists cells (named config variants, or a
``grid`` whose product makes the cells) and the columns of its table.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from rbp.base.errors import RbpError, StrictModel, first_problem
from rbp.base.metrics import TABLE_METRICS, is_table_metric
from rbp.config.io import parse_override, read_yaml_mapping

log = logging.getLogger(__name__)


class CellSpec(StrictModel):
    name: str
    set: dict[str, Any] = Field(default_factory=dict, description="dotted core-config overrides")
    baseline: Literal["small_dense"] | None = None
    pretrained_from: str | None = Field(None, description="HYDRA-style: start from this cell's best.pt")
    seeds: list[int] | None = Field(
        None, description="this cell's seeds instead of the spec's (e.g. more for key cells)"
    )


class StudySpec(StrictModel):
    caption: str = ""
    set: dict[str, Any] = Field(default_factory=dict, description="overrides shared by the study's cells")
    cells: list[CellSpec] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values; product adds cells")
    columns: list[str] = Field(default_factory=lambda: ["test_clean_acc", "test_pgd20_acc", "kept_params"])

    @model_validator(mode="after")
    def _known_columns(self) -> StudySpec:
        for column in self.columns:
            if not is_table_metric(column):
                raise ValueError(f"unknown metric {column!r}; choose from {', '.join(TABLE_METRICS)}")
        return self

    def all_cells(self) -> list[CellSpec]:
        keys = list(self.grid)
        product = itertools.product(*(self.grid[k] for k in keys))
        grid_cells = (
            [
                CellSpec(
                    name=", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values, strict=True)),
                    set=dict(zip(keys, values, strict=True)),
                )
                for values in product
            ]
            if keys
            else []
        )
        return [*self.cells, *grid_cells]


class FigureSpec(StrictModel):
    kind: Literal["density_sweep", "layer_densities", "masks", "pareto", "sweep"]
    study: str | list[str] | None = Field(
        None, description="density_sweep: the study whose cells are drawn; sweep: a study or a list of studies"
    )
    x: str | None = Field(None, description="sweep: the config key on the x axis, e.g. train.epochs")
    lines: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="sweep: label -> the config values of its cells (key -> a value or a list of values; "
        "the key cell: cell names)",
    )
    log_x: bool = Field(True, description="sweep: a logarithmic x axis")
    baselines: list[str] = Field(default_factory=list, description="density_sweep: cells drawn as lines")
    metric: str = "test_pgd20_acc"
    rules: list[str] = Field(default_factory=lambda: ["uniform", "adaptive:0.1", "adaptive:0.5", "erk"])
    cell: str | None = Field(None, description="masks: the cell whose trained subnet is drawn")
    source: Path | None = Field(None, description="pareto: CSV of a multi-objective search's front")
    name: str | None = None


class AblationSpec(StrictModel):
    name: str
    description: str = ""
    results: Path | None = Field(None, description="folder of rows, runs, tables, figures; default results/<name>")
    base: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [0])
    studies: dict[str, StudySpec]
    figures: list[FigureSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _non_empty(self) -> AblationSpec:
        if not self.seeds:
            raise ValueError("seeds is empty: give at least one seed")
        for study_name, study in self.studies.items():
            if not study.all_cells():
                raise ValueError(f"study {study_name!r} has no cells: give cells or a non-empty grid")
            for cell in study.cells:
                if cell.seeds is not None and self.seeds[0] not in cell.seeds:
                    raise ValueError(
                        f"cell {cell.name!r}: its seeds must include the spec's first seed {self.seeds[0]} "
                        "(whose model is kept under models/)"
                    )
        if not self.studies:
            raise ValueError("no studies: give at least one study with cells")
        return self

    @property
    def folder(self) -> Path:
        return Path(self.results).expanduser() if self.results else Path("results") / self.name


def read_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AblationSpec:
    """Read and validate an ablation spec's structure (one-line errors); :func:`rbp.ablation.jobs.load_spec`
    also validates every cell's config.

    ``overrides`` (``KEY=VALUE``, as ``--set``) are added to the spec's base, e.g. the machine's
    ``data.root``; a cell's own settings still win.
    """
    path = Path(path)
    tree = _read_tree(path, set())
    for text in overrides:
        key, value = parse_override(text)
        tree["base"] = {**tree.get("base", {}), key: value}
    try:
        spec = AblationSpec.model_validate(tree)
    except ValidationError as error:
        where, message = first_problem(error)
        raise RbpError(f"ablation spec {path}: {where}: {message}") from None
    taken = next((p for p in (spec.folder, *spec.folder.parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():
        raise RbpError(f"ablation spec {path}: results: {taken} is a file; give a folder (created if missing)")
    return spec


def _read_tree(path: Path, seen: set[Path]) -> dict[str, Any]:
    """The spec's YAML mapping with ``extends`` resolved: the parent's keys, then this file's on top
    (``base`` merged key by key, every other key replaced whole)."""
    tree = read_yaml_mapping(path, "ablation spec error")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise RbpError(f"ablation spec {path}: extends: {parent} extends itself (a cycle); remove the loop")
    if not parent_path.is_file():
        raise RbpError(f"ablation spec {path}: extends: no file {parent_path}; give a path relative to {path.parent}")
    merged = _read_tree(parent_path, seen | {path.resolve()})
    base = {**merged.get("base", {}), **tree.get("base", {})}
    return {**merged, **tree, "base": base}

"""Ablation specs: a grid of cells × seeds, run only where Parquet holds no result, then rendered.

A spec (YAML, data not code) names a base config, seeds, and studies; ``extends: OTHER.yaml``
starts from another spec and overrides its keys (``base`` key by key). Each study lists cells
(named config variants, or a ``grid`` whose product makes the cells) and the columns of its table.
A cell × seed is identified by its resolved config's run id: a result already in the results
folder is reused, never recomputed. Tables and figures are pure functions of the results dataset
and the spec (:mod:`rbp.tables`, :mod:`rbp.figures`).

Two baselines need more than overrides: ``baseline: small_dense`` narrows the dense network to
the base subnet's kept-weight count, and ``pretrained_from: CELL`` starts a HYDRA-style subnet
from the best checkpoint of another (dense) cell with the same seed.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rbp.base.atomic import atomic_path
from rbp.base.errors import RbpError
from rbp.config.io import nested, parse_override, read_yaml_mapping
from rbp.config.load import from_dict
from rbp.config.schema import Config
from rbp.results import read_results, result_row, write_row

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# Metrics a table column may name; higher is better unless listed in LOWER_IS_BETTER.
METRICS = (
    "test_clean_acc",
    "test_pgd20_acc",
    "test_autoattack_acc",
    "best_val_pgd_acc",
    "kept_params",
    "total_params",
    "density",
    "size_kb",
)
LOWER_IS_BETTER = {"kept_params", "total_params", "size_kb"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellSpec(_Strict):
    name: str
    set: dict[str, Any] = Field(default_factory=dict, description="dotted core-config overrides")
    baseline: Literal["small_dense"] | None = None
    pretrained_from: str | None = Field(None, description="HYDRA-style: start from this cell's best.pt")
    seeds: list[int] | None = Field(
        None, description="this cell's seeds instead of the spec's (e.g. more for key cells)"
    )


class StudySpec(_Strict):
    caption: str = ""
    set: dict[str, Any] = Field(default_factory=dict, description="overrides shared by the study's cells")
    cells: list[CellSpec] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values; product adds cells")
    columns: list[str] = Field(default_factory=lambda: ["test_clean_acc", "test_pgd20_acc", "kept_params"])

    @model_validator(mode="after")
    def _known_columns(self) -> StudySpec:
        for column in self.columns:
            if column not in METRICS:
                raise ValueError(f"unknown metric {column!r}; choose from {', '.join(METRICS)}")
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


class FigureSpec(_Strict):
    kind: Literal["density_sweep", "layer_densities", "masks", "pareto"]
    study: str | None = Field(None, description="density_sweep: the study whose cells vary the density")
    baselines: list[str] = Field(default_factory=list, description="density_sweep: cells drawn as lines")
    metric: str = "test_pgd20_acc"
    rules: list[str] = Field(default_factory=lambda: ["uniform", "adaptive:0.1", "adaptive:0.5", "erk"])
    cell: str | None = Field(None, description="masks: the cell whose trained subnet is drawn")
    source: Path | None = Field(None, description="pareto: CSV of a multi-objective search's front")
    name: str | None = None


class AblationSpec(_Strict):
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


@dataclass(frozen=True)
class Job:
    """One cell at one seed: the config to run and where its row and run folder live."""

    study: str
    cell: str
    seed: int
    config: Config


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AblationSpec:
    """Read and validate an ablation spec, including every cell's config (one-line errors).

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
        first = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo before what it hides
        where = ".".join(str(p) for p in first["loc"])
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise RbpError(f"ablation spec {path}: {where}: {message}") from None
    jobs(spec)  # every cell's config must validate now, not halfway through the runs
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


def _cell_config(
    spec: AblationSpec, cell: CellSpec, seed: int, resolve: dict[str, Callable], shared: dict[str, Any]
) -> Config:
    # Cells run unattended: no progress bars (the run section is not part of the run id).
    items = {
        "run.progress": False,
        **spec.base,
        **shared,
        **cell.set,
        "seed": seed,
        "run.out_dir": str(spec.folder / "runs"),
    }
    if cell.baseline == "small_dense":
        items["model.width"] = resolve["small_dense"](spec, seed)
    if cell.pretrained_from is not None:
        items["init.pretrained"] = str(resolve["pretrained"](spec, cell.pretrained_from, seed))
    try:
        return from_dict(nested(items))
    except RbpError as error:
        raise RbpError(f"ablation {spec.name}, cell {cell.name!r}: {error}") from None


def base_config(spec: AblationSpec, seed: int = 0) -> Config:
    """The spec's base config at ``seed``, without any study's or cell's settings."""
    return from_dict(nested({**spec.base, "seed": seed}))


def _small_dense_width(spec: AblationSpec, seed: int) -> int:
    """Width of the dense net whose weight count matches the base subnet's kept count."""
    return _matched_width(base_config(spec, seed).model_dump_json())


@functools.cache
def _matched_width(base_json: str) -> int:
    """Memoised per base config: every job listing asks again."""
    from rbp.config.schema import data_shape
    from rbp.models import kept_parameters
    from rbp.models.probe import dense_width_for

    base = Config.model_validate_json(base_json)
    kept, _ = kept_parameters(shape_only_model(base))
    return dense_width_for(base, *data_shape(base.data), kept)


def shape_only_model(cfg: Config) -> nn.Module:
    """The configured model built from its data set's shape alone, no data files read: for counting
    and drawing layers (normalisation constants are placeholders; not for training or evaluation)."""
    from rbp.config.schema import data_shape
    from rbp.models import build_model

    classes, shape = data_shape(cfg.data)
    return build_model(cfg, classes, shape, [0.0] * shape[0], [1.0] * shape[0])


def _find_cell(spec: AblationSpec, name: str) -> tuple[CellSpec, StudySpec]:
    for study in spec.studies.values():
        for cell in study.all_cells():
            if cell.name == name:
                return cell, study
    raise RbpError(f"ablation {spec.name}: pretrained_from names no cell {name!r}")


def _pretrained_path(spec: AblationSpec, name: str, seed: int) -> Path:
    cell, study = _find_cell(spec, name)
    source = _cell_config(spec, cell, seed, _RESOLVERS, study.set)
    return spec.folder / "runs" / source.run_id() / "best.pt"


_RESOLVERS: dict[str, Callable] = {"small_dense": _small_dense_width, "pretrained": _pretrained_path}


def jobs(spec: AblationSpec) -> list[Job]:
    """Every (study, cell, seed) of the spec with its resolved config, in spec order."""
    out = []
    for study_name, study in spec.studies.items():
        for cell in study.all_cells():
            for seed in cell.seeds or spec.seeds:
                out.append(Job(study_name, cell.name, seed, _cell_config(spec, cell, seed, _RESOLVERS, study.set)))
    return out


def _run_order(pending: list[Job]) -> list[Job]:
    """Seed by seed, so every cell has a first result early; within a seed, HYDRA cells after the dense
    runs they start from."""
    return sorted(pending, key=lambda job: (job.seed, job.config.init.scheme == "pretrained"))


def model_path(folder: Path, job: Job) -> Path:
    """Where a cell's committed model lives: ``<folder>/models/<study>.<cell>.rbpz`` for a subnet (seed
    + masks, ``rbp eval`` reads it), ``.pt`` (its best checkpoint) for what the format cannot hold."""
    cfg = job.config
    suffix = ".rbpz" if cfg.model.mode == "subnet" and cfg.init.scheme != "pretrained" else ".pt"
    slug = ".".join(re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_") for part in (job.study, job.cell))
    return folder / "models" / f"{slug}{suffix}"


def _keep_model(job: Job, run_dir: Path, folder: Path) -> None:
    """Copy the trained model of ``job`` to :func:`model_path`, so every table row can be re-evaluated."""
    from rbp.export import export_run

    path = model_path(folder, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".rbpz":
        export_run(run_dir, path)
    else:
        with atomic_path(path) as tmp:
            shutil.copyfile(run_dir / "best.pt", tmp)


def run_job(job: Job, rows_folder: Path, keep_model: bool = False) -> dict[str, Any]:
    """Train one cell × seed (resuming its folder if a run was cut short) and write its row; with
    ``keep_model`` its model also goes to :func:`model_path` (for the first seed of a spec)."""
    from rbp.run import train_run
    from rbp.train import Diverged

    try:
        summary = train_run(job.config, resume=True)
        if keep_model:
            _keep_model(job, Path(summary["run_dir"]), rows_folder.parent)
        row = result_row(job.config, summary, extra={"cell": job.cell, "seed": job.seed})
    except Diverged as error:
        extra = {"cell": job.cell, "seed": job.seed}
        row = result_row(job.config, {}, status="diverged", reason=str(error), extra=extra)
    write_row(rows_folder, row)
    return row


def missing_jobs(spec: AblationSpec) -> list[Job]:
    """Distinct jobs whose run id has no row in the results folder yet."""
    table = read_results(spec.folder / "rows")
    done = set(table["run_id"]) if "run_id" in table else set()
    unique: dict[str, Job] = {}
    for job in jobs(spec):
        unique.setdefault(job.config.run_id(), job)
    return [job for run_id, job in unique.items() if run_id not in done]


def run_ablation(spec: AblationSpec, address: str | None = None) -> int:
    """Run the spec's missing cells (serially, or as Ray tasks on ``address``); returns how many ran."""
    pending = _run_order(missing_jobs(spec))
    total = len({job.config.run_id() for job in jobs(spec)})
    log.info("ablation %s: %d of %d runs missing", spec.name, len(pending), total)
    rows_folder = spec.folder / "rows"
    if address is None or not pending:
        for index, job in enumerate(pending, 1):
            log.info("[%d/%d] %s / %s / seed %d", index, len(pending), job.study, job.cell, job.seed)
            run_job(job, rows_folder, keep_model=job.seed == spec.seeds[0])
        return len(pending)
    from rbp.ablation_ray import run_on_ray  # the only place the ablation runner touches Ray

    run_on_ray(pending, rows_folder, address, keep_seed=spec.seeds[0])
    return len(pending)

"""The jobs of an ablation spec: every cell × seed with its resolved config and run id.

A cell × seed is identified by its resolved config's run id: a result already in the results
folder is reused, never recomputed. Two baselines need more than overrides: ``baseline:
small_dense`` narrows the dense network to the base subnet's kept-weight count, and
``pretrained_from: CELL`` starts a HYDRA-style subnet from the best checkpoint of another (dense)
cell with the same seed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbp.base.errors import RbpError
from rbp.config.io import nested
from rbp.config.load import from_dict
from rbp.config.schema import Config

if TYPE_CHECKING:
    from torch import nn
from rbp.ablation.spec import AblationSpec, CellSpec, StudySpec, read_spec


@dataclass(frozen=True)
class Job:
    """One cell at one seed: the config to run and where its row and run folder live."""

    study: str
    cell: str
    seed: int
    config: Config
    run_id: str  # the config's: where its run folder and result row are found


def _cell_config(spec: AblationSpec, cell: CellSpec, seed: int, shared: dict[str, Any]) -> Config:
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
        items["model.width"] = _small_dense_width(spec, seed)
    if cell.pretrained_from is not None:
        items["init.pretrained"] = str(_pretrained_path(spec, cell.pretrained_from, seed))
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
    source = _cell_config(spec, cell, seed, study.set)
    return spec.folder / "runs" / source.run_id() / "best.pt"


def jobs(spec: AblationSpec) -> list[Job]:
    """Every (study, cell, seed) of the spec with its resolved config, in spec order."""
    out = []
    for study_name, study in spec.studies.items():
        for cell in study.all_cells():
            for seed in cell.seeds or spec.seeds:
                config = _cell_config(spec, cell, seed, study.set)
                out.append(Job(study_name, cell.name, seed, config, config.run_id()))
    return out


def model_path(folder: Path, job: Job) -> Path:
    """Where a cell's committed model lives: ``<folder>/models/<study>.<cell>.rbpz`` for a subnet (seed
    + masks, ``rbp eval`` reads it), ``.pt`` (its best checkpoint) for what the format cannot hold."""
    cfg = job.config
    suffix = ".rbpz" if cfg.model.mode == "subnet" and cfg.init.scheme != "pretrained" else ".pt"
    slug = ".".join(re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_") for part in (job.study, job.cell))
    return folder / "models" / f"{slug}{suffix}"


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AblationSpec:
    """Read and validate an ablation spec, including every cell's config (one-line errors).

    ``overrides`` (``KEY=VALUE``, as ``--set``) are added to the spec's base, e.g. the machine's
    ``data.root``; a cell's own settings still win.
    """
    spec = read_spec(path, overrides)
    jobs(spec)  # every cell's config must validate now, not halfway through the runs
    return spec

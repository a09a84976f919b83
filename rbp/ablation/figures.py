"""Figures of an ablation spec (matplotlib, PNG + PDF): density and config sweeps, allocations, masks, Pareto fronts.

Drawn with matplotlib's object API (:class:`~matplotlib.figure.Figure`, never pyplot): files only, so
importing or drawing chooses no backend and leaves the process's own (an application's, a notebook's) as it was.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rbp.ablation.jobs import base_config, jobs, shape_only_model
from rbp.ablation.spec import AblationSpec, FigureSpec
from rbp.ablation.tables import study_rows
from rbp.base.atomic import atomic_path
from rbp.base.errors import RbpError
from rbp.base.metrics import header
from rbp.results import read_results

log = logging.getLogger(__name__)


def _save(fig: Figure, folder: Path, name: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        # No creation date in the PDF: re-rendering unchanged results leaves the files unchanged.
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", dpi=150, metadata=metadata)
    return paths


def _legend_beside(ax: Axes, **kwargs: object) -> None:
    """The legend right of the axes: with several lines (a sweep's models, an allocation's rules) a legend
    inside ("best") still covers points, and ``_save``'s tight bounding box makes room for it."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, **kwargs)


def density_sweep(spec: AblationSpec, figure: FigureSpec, results: pd.DataFrame) -> Figure:
    """Metric (mean ± std over seeds) against the kept fraction, baselines as horizontal lines."""
    if not isinstance(figure.study, str) or figure.study not in spec.studies:
        raise RbpError(f"figure density_sweep: study {figure.study!r} is not one study of the spec")
    # Only subnet cells have a kept fraction; dense references are drawn as baselines.
    density_of = {
        job.cell: job.config.sparsity.density
        for job in jobs(spec)
        if job.study == figure.study and job.config.model.mode == "subnet"
    }
    stats = {row.cell: row.stats.get(figure.metric) for row in study_rows(spec, figure.study, results)}
    points = sorted(
        ((density, stats[cell]) for cell, density in density_of.items() if stats.get(cell) is not None),
        key=lambda point: point[0],
    )
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    if points:
        ax.errorbar(
            [100 * d for d, _ in points],
            [100 * s.mean for _, s in points],
            yerr=[100 * s.std for _, s in points],
            marker="o",
            capsize=3,
            label="subnet (ours)",
        )
    # One colour and dash per reference line (the subnet is C0), so two baselines stay apart.
    for i, name in enumerate(figure.baselines):
        stat = _cell_stat(spec, results, name, figure.metric)
        if stat is not None:
            ax.axhline(100 * stat, linestyle=("--", ":", "-.")[i % 3], color=f"C{i + 1}", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("kept weights (%)")
    ax.set_ylabel(header(figure.metric))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best")
    return fig


def sweep(spec: AblationSpec, figure: FigureSpec, results: pd.DataFrame) -> Figure:
    """Metric (mean ± std over seeds) against config key ``figure.x`` over the cells of one study or
    several (``figure.study``: a name or a list), one line per entry of ``figure.lines`` (its label ->
    the config values its cells have; the keys ``cell`` and ``study`` select by name)."""
    studies = [figure.study] if isinstance(figure.study, str) else figure.study or []
    if not studies or not set(studies) <= set(spec.studies) or figure.x is None or not figure.lines:
        raise RbpError(f"figure sweep: needs studies of the spec (got {figure.study!r}), x and lines")
    stats = {
        (study, row.cell): row.stats.get(figure.metric) for study in studies for row in study_rows(spec, study, results)
    }
    configs = {(job.study, job.cell): job.config for job in jobs(spec) if job.study in studies}
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    xs_drawn: set[float] = set()
    for label, where in figure.lines.items():
        points = sorted(
            (
                (_config_value(config, figure.x), stats[key])
                for key, config in configs.items()
                if stats.get(key) is not None and _matches(*key, config, where)
            ),
            key=lambda point: point[0],
        )
        if points:
            xs_drawn.update(x for x, _ in points)
            ax.errorbar(
                [x for x, _ in points],
                [100 * s.mean for _, s in points],
                yerr=[100 * s.std for _, s in points],
                marker="o",
                capsize=3,
                label=label,
            )
    if figure.log_x:
        ax.set_xscale("log")
    ax.set_xticks(sorted(xs_drawn), [f"{x:g}" for x in sorted(xs_drawn)])
    ax.minorticks_off()
    ax.set_xlabel(figure.x)
    ax.set_ylabel(header(figure.metric))
    if ax.get_legend_handles_labels()[0]:
        _legend_beside(ax)
    return fig


def _config_value(config: object, key: str) -> object:
    """The value at dotted ``key`` of a config (``train.epochs``)."""
    value = config
    for part in key.split("."):
        if not hasattr(value, part):
            raise RbpError(f"figure sweep: {key!r} is not a config key")
        value = getattr(value, part)
    return value


def _matches(study: str, cell: str, config: object, where: dict[str, object]) -> bool:
    """Whether cell ``cell`` of ``study`` with ``config`` has every value of ``where`` (a list: any of its
    values); the keys ``cell`` and ``study`` name cells (a line that no config value singles out)."""
    names = {"study": study, "cell": cell}
    for key, wanted in where.items():
        value = names[key] if key in names else _config_value(config, key)
        if value not in (wanted if isinstance(wanted, list) else [wanted]):
            return False
    return True


def _cell_stat(spec: AblationSpec, results: pd.DataFrame, cell: str, metric: str) -> float | None:
    for study in spec.studies:
        for row in study_rows(spec, study, results):
            stat = row.stats.get(metric)
            if row.cell == cell and stat is not None:
                return stat.mean
    return None


def _rule_label(rule: str) -> str:
    name, _, p = rule.partition(":")
    return {"erk": "ERK", "uniform": "uniform"}.get(name, f"{name}, p = {p}" if p else name)


def layer_densities(spec: AblationSpec, figure: FigureSpec) -> Figure:
    """Per-layer density of the base model under each allocation rule (``rule`` or ``adaptive:p``),
    layers from input to output with their weight counts."""
    from rbp.nn import allocate, subnet_layers

    base = base_config(spec)
    layers = subnet_layers(shape_only_model(base))
    shapes = {name: tuple(layer.weight.shape) for name, layer in layers.items()}
    fig = Figure(figsize=(max(5, 0.6 * len(shapes)), 3.5))
    ax = fig.subplots()
    width = 0.8 / len(figure.rules)
    for index, rule in enumerate(figure.rules):
        name, _, p = rule.partition(":")
        densities = allocate(shapes, base.sparsity.density, name, float(p) if p else 1.0)
        xs = [i + index * width for i in range(len(shapes))]
        ax.bar(xs, [100 * d for d in densities.values()], width, label=_rule_label(rule))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))])
    labels = [f"{_layer_label(n, layers[n])}\n{math.prod(s):,} w" for n, s in shapes.items()]
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlabel("layer, input to output (weights)")
    ax.set_yscale("log")
    ax.set_ylabel("kept weights (%)")
    ax.set_title(f"per-layer density at global density {100 * base.sparsity.density:g}%")
    _legend_beside(ax, title="allocation", title_fontsize=8)
    return fig


def _layer_label(name: str, layer: torch.nn.Module) -> str:
    """``conv 0`` / ``linear 13``: the layer's kind and its index in the model body."""
    kind = "conv" if layer.weight.dim() == 4 else "linear"
    return f"{kind} {name.removeprefix('body.')}"


def masks(spec: AblationSpec, figure: FigureSpec) -> Figure:
    """Mask patterns of a trained subnet, from the cell's committed model (``models/...rbpz``): each
    layer's kept-weight map (conv: kept count per kernel), one colour bar for all panels."""
    from rbp.ablation.jobs import model_path
    from rbp.artefacts.load import load_any
    from rbp.nn import subnet_layers

    job = next((j for j in jobs(spec) if j.cell == figure.cell and j.seed == spec.seeds[0]), None)
    if job is None:
        raise RbpError(f"figure masks: no cell {figure.cell!r} in the spec")
    path = model_path(spec.folder, job)
    if not path.is_file():
        raise RbpError(f"figure masks: no model {path} yet; `rbp ablate` writes it when the cell has run")
    model, _ = load_any(path)
    layers = subnet_layers(model)
    fig = Figure(figsize=(2.2 * len(layers), 2.8))
    axes = fig.subplots(1, len(layers), squeeze=False)
    with torch.no_grad():
        for ax, (name, layer) in zip(axes[0], layers.items(), strict=True):
            mask = layer.mask()
            # (out, in, kh, kw) -> kept fraction per kernel; linear layers are their (out, in) mask.
            image = mask.flatten(2).mean(-1) if mask.dim() == 4 else mask
            shown = ax.imshow(image.cpu().numpy(), aspect="auto", cmap="magma", interpolation="nearest", vmin=0, vmax=1)
            shape = "x".join(map(str, mask.shape))
            ax.set_title(
                f"{_layer_label(name, layer)} ({shape})\n{100 * layer.kept / mask.numel():.1f}% kept", fontsize=7
            )
            ax.set_xlabel("inputs", fontsize=7)
            ax.set_ylabel("outputs", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    bar = fig.colorbar(shown, ax=axes[0].tolist(), fraction=0.02, pad=0.02)
    bar.set_label("kept fraction per kernel (conv) / kept (linear)", fontsize=7)
    fig.suptitle(f"mask patterns: {figure.cell}, seed {job.seed}", fontsize=8, y=1.08)
    return fig


# Metrics a search optimises -> their column in its rows (rbp.tuning.report's names, without importing the platform).
PARETO_COLUMNS = {"val_pgd_acc": "final_val_pgd_acc", "val_clean_acc": "final_val_clean_acc"}


def pareto(figure: FigureSpec) -> Figure:
    """Robust accuracy against kept weights of a multi-objective search, front highlighted."""
    if figure.source is None or not Path(figure.source).is_file():
        raise RbpError(f"figure pareto: source {figure.source} is not a CSV file; run the multi-objective search first")
    front = pd.read_csv(figure.source)
    # The search's metric names its column in the rows (val_pgd_acc -> final_val_pgd_acc); no fallback.
    metric = figure.metric if figure.metric in front else PARETO_COLUMNS.get(figure.metric, figure.metric)
    for column in (metric, "kept_params"):
        if column not in front:
            raise RbpError(f"figure pareto: {figure.source} has no column {column!r} (metric: {figure.metric})")
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    # Every trial of the search, where its rows sit beside the front (rbp tune's layout).
    trials = read_results(Path(figure.source).parent / "rows")
    if metric in trials and "kept_params" in trials:
        ax.scatter(trials["kept_params"], 100 * trials[metric], color="lightgray", label="trials")
    front = front.sort_values("kept_params")
    # A staircase: between two front members, the accuracy reachable with at most that many weights.
    ax.step(front["kept_params"], 100 * front[metric], where="post", marker="o", label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("kept weights")
    ax.set_ylabel(header(figure.metric))  # the metric's name, not its rows' column
    ax.legend(loc="lower right")
    return fig


def write_figures(spec: AblationSpec, results: pd.DataFrame) -> list[Path]:
    """Every figure of the spec as PNG + PDF under ``<folder>/figures``; a figure that cannot be
    drawn yet (its runs are missing) is reported and skipped."""
    written = []
    for index, figure in enumerate(spec.figures):
        name = figure.name or f"{index}_{figure.kind}"
        try:
            if figure.kind == "density_sweep":
                fig = density_sweep(spec, figure, results)
            elif figure.kind == "layer_densities":
                fig = layer_densities(spec, figure)
            elif figure.kind == "masks":
                fig = masks(spec, figure)
            elif figure.kind == "sweep":
                fig = sweep(spec, figure, results)
            else:
                fig = pareto(figure)
        except RbpError as error:
            log.warning("figure %s skipped: %s", name, error)
            continue
        written += _save(fig, spec.folder / "figures", name)
    return written

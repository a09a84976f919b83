"""Paper-style tables from the results dataset: Markdown and LaTeX (booktabs), mean ± std over seeds.

Pure functions of the spec and the results table: every cell of a study gets a row even when
it has no result (shown as ``—`` with a note, never dropped), the best mean of each column is in
bold (highest accuracy, fewest parameters, smallest size).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rbp.ablation.jobs import base_config, jobs
from rbp.ablation.spec import AblationSpec
from rbp.base.atomic import write_text_atomic
from rbp.base.metrics import metric


@dataclass
class Stat:
    mean: float
    std: float
    n: int


@dataclass
class Row:
    cell: str
    stats: dict[str, Stat | None]
    notes: list[str] = field(default_factory=list)


def study_rows(spec: AblationSpec, study: str, results: pd.DataFrame) -> list[Row]:
    """One :class:`Row` per cell of ``study``, in spec order, aggregated over its seeds."""
    columns = spec.studies[study].columns
    by_cell: dict[str, list[str]] = {}
    for job in jobs(spec):
        if job.study == study:
            by_cell.setdefault(job.cell, []).append(job.run_id)
    rows = []
    for cell, run_ids in by_cell.items():
        found = results[results["run_id"].isin(run_ids)] if "run_id" in results else pd.DataFrame()
        found = found.drop_duplicates("run_id")
        finished = found[found["status"] == "finished"] if "status" in found else found
        stats: dict[str, Stat | None] = {}
        for column in columns:
            values = finished[column].dropna().astype(float).tolist() if column in finished else []
            if values:
                std = pd.Series(values).std(ddof=1) if len(values) > 1 else 0.0
                stats[column] = Stat(sum(values) / len(values), float(std), len(values))
            else:
                stats[column] = None
        row = Row(cell, stats)
        if len(found) > len(finished):
            row.notes.append(f"{len(found) - len(finished)} run(s) diverged")
        if len(found) < len(run_ids):
            row.notes.append(f"{len(run_ids) - len(found)} of {len(run_ids)} seeds have no result yet")
        rows.append(row)
    return rows


def at_chance(row: Row, chance: float) -> bool:
    """A row whose worst accuracy column is at or below guessing (1 / classes): a failed model, which
    must not win a column (e.g. fewest weights) in bold."""
    means = [stat.mean for column, stat in row.stats.items() if metric(column).accuracy and stat is not None]
    return bool(means) and min(means) <= chance


def _best(rows: list[Row], column: str) -> float | None:
    means = [r.stats[column].mean for r in rows if r.stats.get(column) is not None]
    if not means:
        return None
    return max(means) if metric(column).higher_is_better else min(means)


def _format(column: str, stat: Stat | None) -> str:
    if stat is None:
        return "—"
    if metric(column).percent:
        text = f"{100 * stat.mean:.1f}"
        return f"{text} ± {100 * stat.std:.1f}" if stat.n > 1 else text
    if column in ("kept_params", "total_params"):
        return f"{stat.mean:,.0f}"
    return f"{stat.mean:,.1f}"


def _cells(rows: list[Row], columns: list[str], bold: tuple[str, str], chance: float) -> list[list[str]]:
    """Formatted cell text per row, the column's best mean wrapped in ``bold`` (rows at chance excluded)."""
    contenders = [row for row in rows if not at_chance(row, chance)]
    best = {column: _best(contenders, column) for column in columns}
    table = []
    for row in rows:
        texts = []
        for column in columns:
            stat, text = row.stats.get(column), _format(column, row.stats.get(column))
            won = stat is not None and best[column] is not None and math.isclose(stat.mean, best[column])
            if won and row in contenders:
                text = f"{bold[0]}{text}{bold[1]}"
            texts.append(text)
        table.append(texts)
    return table


def _notes(rows: list[Row]) -> list[str]:
    return [f"{row.cell}: {'; '.join(row.notes)}" for row in rows if row.notes]


def _chance(spec: AblationSpec) -> float:
    from rbp.config.schema import data_shape

    return 1.0 / data_shape(base_config(spec).data)[0]


def _seeds_note(spec: AblationSpec, study: str) -> str:
    counts = sorted({len(cell.seeds or spec.seeds) for cell in spec.studies[study].all_cells()})
    bold = "bold: best of each column among rows above chance"
    if counts == [1]:
        return f"one seed, no std; {bold}"
    seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} (per cell)"
    return f"mean ± std over {seeds} seeds; {bold}"


def markdown(spec: AblationSpec, study: str, results: pd.DataFrame) -> str:
    """The study as a Markdown table with a caption line and notes for missing results."""
    columns, rows = spec.studies[study].columns, study_rows(spec, study, results)
    lines = [f"**{study}**: {spec.studies[study].caption} ({_seeds_note(spec, study)})", ""]
    lines.append("| cell | " + " | ".join(metric(c).header for c in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for row, texts in zip(rows, _cells(rows, columns, ("**", "**"), _chance(spec)), strict=True):
        lines.append(f"| {row.cell} | " + " | ".join(texts) + " |")
    notes = _notes(rows)
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, replacement in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, replacement)
    return text


def latex(spec: AblationSpec, study: str, results: pd.DataFrame) -> str:
    """The study as a booktabs LaTeX table (``\\usepackage{booktabs}``)."""
    columns, rows = spec.studies[study].columns, study_rows(spec, study, results)
    cells = _cells(rows, columns, (r"\textbf{", "}"), _chance(spec))
    caption = _latex_escape(f"{spec.studies[study].caption or study} ({_seeds_note(spec, study)})").replace(
        "±", r"$\pm$"
    )
    label = re.sub(r"[^A-Za-z0-9]+", "-", f"{spec.name}-{study}")
    body = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{tab:{label}}}",
        r"\begin{tabular}{l" + "r" * len(columns) + "}",
        r"\toprule",
        "cell & " + " & ".join(_latex_escape(metric(c).header) for c in columns) + r" \\",
        r"\midrule",
    ]
    for row, texts in zip(rows, cells, strict=True):
        texts = [t.replace("±", r"$\pm$").replace("—", "--") for t in texts]
        body.append(_latex_escape(row.cell) + " & " + " & ".join(texts) + r" \\")
    body += [r"\bottomrule", r"\end{tabular}"]
    notes = _notes(rows)
    if notes:
        body.append(r"\par\footnotesize " + _latex_escape("; ".join(notes)))
    body.append(r"\end{table}")
    return "\n".join(body) + "\n"


def write_tables(spec: AblationSpec, results: pd.DataFrame) -> list[Path]:
    """``<folder>/tables/<study>.md`` and ``.tex`` for every study, plus ``tables.md`` with them all."""
    folder = spec.folder / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    written, combined = [], [f"# {spec.name}\n", spec.description + "\n" if spec.description else ""]
    for study in spec.studies:
        text = markdown(spec, study, results)
        for suffix, content in ((".md", text), (".tex", latex(spec, study, results))):
            path = folder / f"{study}{suffix}"
            write_text_atomic(path, content)
            written.append(path)
        combined.append(text)
    write_text_atomic(folder / "tables.md", "\n".join(combined))
    return [*written, folder / "tables.md"]

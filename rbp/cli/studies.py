"""``rbp ablate`` and ``rbp tables``: run an ablation spec's missing cells; render its tables and figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from rbp.cli.options import add_command, add_overrides, add_quiet


def _render(spec) -> None:
    from rbp.ablation.figures import write_figures
    from rbp.ablation.tables import write_tables
    from rbp.results import read_results

    results = read_results(spec.folder / "rows")
    tables = write_tables(spec, results)
    figures = write_figures(spec, results)
    print((spec.folder / "tables" / "tables.md").read_text())
    print(f"wrote {len(tables)} table files and {len(figures)} figure files under {spec.folder}")


def _ablate(args: argparse.Namespace) -> int:
    from rbp.ablation.jobs import load_spec
    from rbp.ablation.runner import run_ablation

    spec = load_spec(args.spec, args.overrides)
    ran = run_ablation(spec, address=args.address)
    print(f"ablation {spec.name}: ran {ran} missing run(s)")
    _render(spec)
    return 0


def _tables(args: argparse.Namespace) -> int:
    from rbp.ablation.jobs import load_spec

    _render(load_spec(args.spec, args.overrides))
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rbp ablate`` and ``rbp tables`` to the ``rbp`` parser's commands."""
    ablate = add_command(
        commands,
        "ablate",
        "run an ablation spec's missing cells, then render its tables and figures",
        [
            "rbp ablate ablations/digits_paper.yaml",
            "rbp ablate ablations/fashion_mnist.yaml --address auto   # the cells as Ray tasks on a running cluster",
            "rbp ablate ablations/cifar10_resnet18.yaml --set data.root=/data/cifar10",
        ],
    )
    ablate.add_argument("spec", type=Path, help="ablation spec YAML (base config, cells, seeds, tables)")
    ablate.add_argument("--address", help="run the cells as Ray tasks on this cluster (e.g. auto)")
    add_overrides(ablate, "add to the spec's base for every cell, e.g. --set data.root=/data/cifar10 (repeatable)")
    add_quiet(ablate)
    ablate.set_defaults(handler=_ablate)

    tables = add_command(
        commands,
        "tables",
        "render an ablation spec's tables and figures from its results (runs nothing)",
        ["rbp tables ablations/digits_paper.yaml", "rbp tables ablations/fashion_mnist_gap.yaml"],
    )
    tables.add_argument("spec", type=Path, help="the ablation spec YAML whose results to render")
    add_overrides(tables, "as for rbp ablate: the same --set gives the same cells")
    add_quiet(tables)
    tables.set_defaults(handler=_tables)

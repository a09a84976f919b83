"""``rbp eval``, ``rbp export``, ``rbp info``: what a trained model does and holds."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from rbp.base.errors import RbpError
from rbp.cli.options import add_command, add_quiet

if TYPE_CHECKING:
    from rbp.artefacts.sizes import SizeBreakdown


def _eval(args: argparse.Namespace) -> int:
    check_out(args.out, "--out")  # before the long computation: its result must not be thrown away
    check_out(args.state, "--state")
    if args.state is not None and args.attack != "autoattack":
        raise RbpError(f"--state keeps AutoAttack's progress; it needs --attack autoattack, not {args.attack}")
    import torch

    from rbp.artefacts.load import load_any
    from rbp.base.atomic import write_text_atomic
    from rbp.config.load import from_dict
    from rbp.data import Batches, Split, load_splits, to_unit_float
    from rbp.evaluation import accuracy, autoattack_accuracy
    from rbp.training.trainer import resolve_device

    device = resolve_device(args.device)
    model, cfg = load_any(args.checkpoint, device)  # a checkpoint or an exported .rbpz
    tree = cfg.to_dict()
    if args.data_root is not None:
        tree["data"]["root"] = str(args.data_root)
    cfg = from_dict(tree)
    split = getattr(load_splits(cfg.data), args.split)
    n = min(args.samples or len(split), len(split))
    x, y = split.x[:n], split.y[:n]
    eps = cfg.attack.eps if args.eps is None else args.eps
    norm = args.norm or cfg.attack.norm
    result: dict = {"checkpoint": str(args.checkpoint), "split": args.split, "samples": n, "eps": eps, "norm": norm}
    if args.attack == "autoattack":
        aa = autoattack_accuracy(
            model,
            to_unit_float(x),
            y,
            eps=eps,
            norm=norm,
            batch_size=args.batch_size,
            seed=args.seed,
            device=device,
            state_path=args.state,
        )
        result.update(clean_acc=aa["clean_acc"], autoattack_acc=aa["autoattack_acc"])
    else:
        steps = args.steps if args.attack == "pgd" else 0
        # The run's own evaluation step (eval.step_scale), as its validation and test attacks used.
        step_size = args.step_size or (cfg.eval.step_scale * eps / steps if steps else 0.0)
        torch.manual_seed(args.seed)
        batches = Batches(Split(x, y), args.batch_size, device=device)
        result.update(
            accuracy(model, batches, eps=eps, step_size=step_size, steps=steps, restarts=args.restarts, norm=norm)
        )
        if steps:
            result.update(steps=steps, step_size=step_size, restarts=args.restarts)
    if args.out is not None:  # saved first: nothing after the computation can lose it
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def check_out(path: Path | None, option: str) -> None:
    """An output file the command will write: not a folder, and its folder exists (one-line errors)."""
    if path is None:
        return
    if path.is_dir():
        raise RbpError(f"{option} {path} is a folder; give a file name, e.g. {path / 'result'}")
    if not path.parent.is_dir():
        raise RbpError(f"{option} {path}: no folder {path.parent}; create it first or choose another path")


def _export(args: argparse.Namespace) -> int:
    from rbp.artefacts.export import export_run

    check_out(args.out, "--out")
    out, _, sizes = export_run(args.source, args.out)
    print(
        f"kept weights {sizes.kept:,} of {sizes.weights:,} ({sizes.kept / sizes.weights:.2%})   "
        f"file {out} {_bytes(sizes.subnet_bits)}   dense FP32 {_bytes(sizes.dense_fp32_bits)} "
        f"({sizes.dense_fp32_bits / sizes.subnet_bits:,.0f}x larger)"
    )
    return 0


def _bytes(bits: float) -> str:
    """Bits as bytes in decimal units (1 KB = 1000 B), as file sizes are usually quoted."""
    value = bits / 8
    if value < 1e3:
        return f"{value:,.0f} B"
    return f"{value / 1e3:,.1f} KB" if value < 1e6 else f"{value / 1e6:,.1f} MB"


def _info(args: argparse.Namespace) -> int:
    from rbp.artefacts.reader import read_artefact
    from rbp.artefacts.sizes import size_breakdown

    artefact = read_artefact(args.artefact)  # validates everything, builds no model
    header, cfg, data = artefact.header, artefact.config, artefact.header["data_info"]
    written_by = f"rbp {header.get('rbp_version')}"
    print(f"{args.artefact}: {header['format']} v{header['version']} ({written_by}), run {cfg.run_id()}")
    print(
        f"arch {cfg.model.arch} ({cfg.model.mode}, width {cfg.model.width or 'default'}, last BN {cfg.model.last_bn}), "
        f"seed {cfg.seed}, init {cfg.init.scheme}, data {cfg.data.name} {tuple(data['input_shape'])} "
        f"{data['num_classes']} classes"
    )
    print(f"sparsity {cfg.sparsity.allocation} (p {cfg.sparsity.p}), global density {cfg.sparsity.density}")
    _print_layers(header["layers"])
    _print_sizes(size_breakdown(artefact))
    print("training metrics:" if header["metrics"] else "training metrics: none recorded")
    for key, value in header["metrics"].items():
        print(f"  {key} {value:.4f}" if isinstance(value, float) else f"  {key} {value}")
    return 0


def _print_layers(layers: list[dict]) -> None:
    print(f"{'layer':<34} {'shape':<18} {'weights':>10} {'density':>9} {'kept':>8} {'encoding':>12} {'bytes':>8}")
    for layer in layers:
        shape, weights = "x".join(map(str, layer["shape"])), math.prod(layer["shape"])
        print(
            f"{layer['name']:<34} {shape:<18} {weights:>10,} {layer['density']:>9.4%} "
            f"{layer['kept']:>8,} {layer['encoding']:>12} {layer['length']:>8,}"
        )


def _print_sizes(sizes: SizeBreakdown) -> None:
    print(
        f"kept weights {sizes.kept:,} of {sizes.weights:,} ({sizes.kept / sizes.weights:.2%})\n"
        f"size {_bytes(sizes.subnet_bits)} = masks {_bytes(sizes.mask_bits)} + BN statistics "
        f"{_bytes(sizes.stats_bits)} + header {_bytes(sizes.header_bits)} + zip {_bytes(sizes.container_bits)}\n"
        f"mask entropy bound {_bytes(sizes.entropy_bits)}   dense FP32 {_bytes(sizes.dense_fp32_bits)}   "
        f"binary dense {_bytes(sizes.binary_dense_bits)}"
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``rbp eval``, ``rbp export`` and ``rbp info`` to the ``rbp`` parser's commands."""
    ev = add_command(
        commands,
        "eval",
        "evaluate a checkpoint: clean, PGD or AutoAttack accuracy, printed as JSON",
        [
            "rbp eval results/digits/models/baselines.subnet_ours.rbpz --attack pgd --steps 50 --restarts 5",
            "rbp eval results/digits/models/baselines.fp_pgd_at.pt --attack autoattack --samples 100",
            "rbp eval model.rbpz --attack autoattack --samples 1000 --state aa.json   # again to resume",
            "rbp eval results/digits/models/density.density_0_01.rbpz --attack clean --split val --out result.json",
        ],
    )
    ev.add_argument("checkpoint", type=Path, help="a run's best.pt or last.pt, or an exported .rbpz")
    ev.add_argument(
        "--attack", choices=("clean", "pgd", "autoattack"), default="pgd", help="no attack, PGD, or standard AutoAttack"
    )
    ev.add_argument("--steps", type=int, default=20, help="PGD steps")
    ev.add_argument("--restarts", type=int, default=1, help="PGD random restarts")
    ev.add_argument("--eps", type=float, help="radius in pixel units; default: the run's attack.eps")
    ev.add_argument("--step-size", type=float, help="PGD step; default: the run's eval.step_scale * eps / steps")
    ev.add_argument("--norm", choices=("linf", "l2"), help="default: the run's attack.norm")
    ev.add_argument("--split", choices=("test", "val"), default="test", help="the split of the run's data set")
    ev.add_argument("--samples", type=int, help="only the first N images of the split")
    ev.add_argument("--batch-size", type=int, default=500, help="images per forward pass")
    ev.add_argument("--data-root", type=Path, help="where the data set lives on this machine")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: cuda when available")
    ev.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    ev.add_argument("--out", type=Path, help="also write the result as JSON here")
    ev.add_argument(
        "--state",
        type=Path,
        help="AutoAttack: write the images still robust here after each attack; run again with the same "
        "file to continue a stopped evaluation after its last finished attack",
    )
    add_quiet(ev)
    ev.set_defaults(handler=_eval)

    export = add_command(
        commands,
        "export",
        "write a subnet as a compact .rbpz artefact (seed + masks + BN statistics)",
        [
            "rbp export runs/551120ad952b --out model.rbpz   # after `rbp train`: the default run's folder",
            "rbp export runs/551120ad952b/last.pt --out last.rbpz",
        ],
    )
    export.add_argument("source", type=Path, help="a run folder (its best.pt is exported) or a checkpoint")
    export.add_argument("--out", type=Path, help="the .rbpz to write; default: model.rbpz beside the checkpoint")
    export.set_defaults(handler=_export)

    info = add_command(
        commands,
        "info",
        "describe a .rbpz: arch, per-layer densities, sizes, metrics",
        [
            "rbp info results/digits/models/baselines.subnet_ours.rbpz",
            "rbp info results/fashion_mnist/models/density.99_pruned.rbpz",
        ],
    )
    info.add_argument("artefact", type=Path, help="an exported .rbpz")
    info.set_defaults(handler=_info)

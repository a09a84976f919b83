"""Time one PGD training step of the core Trainer over variants, in one process.

    python bench/train_step.py                       # the GPU workload: CIFAR ResNet-18, batch 128/256/512
    python bench/train_step.py --tiny                # a seconds-long CPU smoke run (the tests use it)
    python bench/train_step.py --fashion-mnist       # the Fashion-MNIST study's cells on the CPU (see --help)

Variants: dense vs subnet (99% pruned, adaptive p = 0.1, last BN) x fp32 vs bf16 autocast x
execution (eager, ``compile``: torch.compile, ``graph``: the step replayed from a CUDA graph, GPU
only) x batch sizes, PGD-10 L∞ (eps 8/255, step 2/255) on synthetic CIFAR-shaped data, SGD on the
trained tensors. ``--fashion-mnist`` times the Fashion-MNIST study's cells instead: conv net on
1x28x28 at widths 16/32/64, subnet (90% pruned) / dense / binary, PGD-10 and FGSM-RS training at
eps 0.1, fp32 eager at batch 128; each row also gives the seconds of one 58,800-image epoch.
Each variant gets warm-up steps, then the median of ``--repeats`` timed steps (CUDA events on a
GPU, perf_counter on the CPU). FLOPs per image are counted once per variant with
``torch.utils.flop_counter`` (convolutions and matmuls of the attack and the update); the table
(images/s, ms/step, peak GPU memory, fraction of ``--peak-tflops``) is printed last.
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
from timing import median_seconds  # bench/timing.py: scripts run with bench/ on sys.path
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from rbp.config.load import load_config
from rbp.data import Batches
from rbp.training.trainer import Trainer

EPOCH_IMAGES = 58_800  # a Fashion-MNIST training epoch: 60,000 less the 2% validation split


class _FlopCount(TorchDispatchMode):
    """Sums the FLOPs of every op in ``flop_registry`` (convolutions and matmuls, forward and backward).

    FlopCounterMode itself tracks modules with hooks that ``torch.autograd.grad`` (the attack) rejects.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        count = flop_registry.get(func.overloadpacket)
        if count is not None:
            self.total += count(*args, **(kwargs or {}), out_val=out)
        return out


def _flops_per_image(trainer: Trainer, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one training step (attack + loss + backward) divided by the batch size."""
    with _FlopCount() as counter:
        trainer._eager_step(x, y)
    return counter.total / x.shape[0]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="convnet width 8 on 3x8x8 images, batch 16 (CPU smoke)")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--fashion-mnist", action="store_true", help="the Fashion-MNIST study's CPU workload")
    parser.add_argument("--modes", nargs="+", default=None, choices=["dense", "subnet", "binary"])
    parser.add_argument("--widths", type=int, nargs="+", default=None, help="conv net widths (--fashion-mnist)")
    parser.add_argument("--methods", nargs="+", default=None, choices=["pgd", "fgsm"], help="training attacks")
    parser.add_argument("--amps", nargs="+", default=["off", "bf16"], choices=["off", "bf16"])
    parser.add_argument(
        "--execs", nargs="+", default=["eager", "compile", "graph"], choices=["eager", "compile", "graph"]
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    args = parser.parse_args(argv)
    base = ["attack.steps=10", f"run.device={args.device}", "data.val_fraction=0", "data.synthetic_size=1024"]
    if args.fashion_mnist:
        shape, arch, batches, density = (1, 28, 28), "convnet", [128], 0.1
        base += ["attack.eps=0.1", "attack.step_size=0.025"]
        modes, widths = args.modes or ["subnet", "dense", "binary"], args.widths or [16, 32, 64]
        methods = args.methods or ["pgd", "fgsm"]
        amps, execs = ["off"], ["eager"]
    else:
        shape, arch, batches, density = (
            ((3, 8, 8), "convnet", [16], 0.01) if args.tiny else ((3, 32, 32), "resnet18", args.batches, 0.01)
        )
        base.append("train.channels_last=true")
        modes, widths, methods = args.modes or ["dense", "subnet"], args.widths or [None], args.methods
        amps, execs = args.amps, args.execs
        if args.tiny:
            base += ["model.width=8", "attack.steps=2"]
    base += ["data.name=synthetic", f"data.synthetic_shape=[{','.join(map(str, shape))}]", f"model.arch={arch}",
             f"sparsity.density={density}", "sparsity.p=0.1"]  # fmt: skip
    rows, flops = [], {}
    for mode, width, method, amp, execution in itertools.product(modes, widths, methods or ["pgd"], amps, execs):
        switches = {"compile": ["train.compile=true"], "graph": ["train.cuda_graph=true"]}.get(execution, [])
        switches += [f"model.width={width}"] if width else []
        cfg = load_config(None, [*base, f"model.mode={mode}", f"train.method={method}", f"train.amp={amp}", *switches])
        trainer = Trainer(cfg)
        if execution == "graph" and trainer.captured is None:
            print(f"skipping {mode}/{amp}/graph: CUDA graphs need a GPU")
            continue
        trainer.model.train()
        for batch in batches:
            loader = Batches(trainer.splits.train, batch, device=trainer.device)
            x, y = next(iter(loader))
            if "train.channels_last=true" in base:
                x = x.contiguous(memory_format=torch.channels_last)
            key = (mode, width, method)
            if key not in flops:
                flops[key] = _flops_per_image(trainer, x, y)
            if trainer.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = median_seconds(functools.partial(trainer.step, x, y), trainer.device, args.warmup, args.repeats)
            peak = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else float("nan")
            rows.append(
                {
                    "mode": mode,
                    "width": width or "-",
                    "method": method,
                    "amp": amp,
                    "exec": execution,
                    "batch": batch,
                    "ms": 1000 * seconds,
                    "images_per_s": batch / seconds,
                    "epoch_s": EPOCH_IMAGES * seconds / batch,
                    "peak_gib": peak,
                    "peak_fraction": batch / seconds * flops[key] / (args.peak_tflops * 1e12),
                }
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    steps = 2 if args.tiny else 10
    print(f"\n{arch} {shape}, training step (PGD-{steps} or FGSM-RS), {device}, torch {torch.__version__}")
    for (mode, width, method), value in flops.items():
        limit = args.peak_tflops * 1e12 / value
        name = "/".join(str(part) for part in (mode, width, method) if part)
        print(f"{name}: {value / 1e9:.3g} GFLOP/image; at {args.peak_tflops:g} TFLOP/s at most {limit:,.0f} images/s")
    header = (
        f"{'mode':<7} {'width':>5} {'attack':<6} {'amp':<5} {'exec':<8} {'batch':>5} {'ms/step':>9} {'images/s':>10}"
    )
    print(f"{header} {'epoch s':>8} {'peak GiB':>9} {'of peak':>8}")
    for r in rows:
        print(
            f"{r['mode']:<7} {r['width']:>5} {r['method']:<6} {r['amp']:<5} {r['exec']:<8} {r['batch']:>5} "
            f"{r['ms']:>9.1f} {r['images_per_s']:>10.0f} {r['epoch_s']:>8.0f} {r['peak_gib']:>9.2f} "
            f"{100 * r['peak_fraction']:>7.1f}%"
        )
    return rows


if __name__ == "__main__":
    main()

"""Time one PGD training step of the core Trainer over variants, in one process.

    python bench/train_step.py                       # the GPU workload: CIFAR ResNet-18, batch 128/256/512
    python bench/train_step.py --tiny                # a seconds-long CPU smoke run (the tests use it)

Variants: dense vs subnet (99% pruned, adaptive p = 0.1, last BN) x fp32 vs bf16 autocast x
execution (eager, ``compile``: torch.compile, ``graph``: the step replayed from a CUDA graph, GPU
only) x batch sizes, PGD-10 L∞ (eps 8/255, step 2/255) on synthetic CIFAR-shaped data, SGD on the
trained tensors. Each variant gets warm-up steps, then the median of ``--repeats`` timed steps
(CUDA events on a GPU, perf_counter on the CPU). FLOPs per image are counted once per mode with
``torch.utils.flop_counter`` (convolutions and matmuls of the attack and the update); the table
(images/s, ms/step, peak GPU memory, fraction of ``--peak-tflops``) is printed last.
"""

from __future__ import annotations

import argparse
import functools

import torch
from timing import median_seconds  # bench/timing.py: scripts run with bench/ on sys.path
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from rbp.config import load_config
from rbp.data import Batches
from rbp.train import Trainer


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
    parser.add_argument("--modes", nargs="+", default=["dense", "subnet"], choices=["dense", "subnet"])
    parser.add_argument("--amps", nargs="+", default=["off", "bf16"], choices=["off", "bf16"])
    parser.add_argument(
        "--execs", nargs="+", default=["eager", "compile", "graph"], choices=["eager", "compile", "graph"]
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    args = parser.parse_args(argv)
    shape, arch, batches = ((3, 8, 8), "convnet", [16]) if args.tiny else ((3, 32, 32), "resnet18", args.batches)
    base = [
        "data.name=synthetic",
        f"data.synthetic_shape=[{','.join(map(str, shape))}]",
        f"model.arch={arch}",
        "sparsity.density=0.01",
        "sparsity.p=0.1",
        "attack.steps=10",
        f"run.device={args.device}",
        "data.val_fraction=0",
        "data.synthetic_size=1024",
        "train.channels_last=true",
    ]
    if args.tiny:
        base += ["model.width=8", "attack.steps=2"]
    rows, flops = [], {}
    for mode in args.modes:
        for amp in args.amps:
            for execution in args.execs:
                switches = {"compile": ["train.compile=true"], "graph": ["train.cuda_graph=true"]}.get(execution, [])
                cfg = load_config(None, [*base, f"model.mode={mode}", f"train.amp={amp}", *switches])
                trainer = Trainer(cfg)
                if execution == "graph" and trainer.captured is None:
                    print(f"skipping {mode}/{amp}/graph: CUDA graphs need a GPU")
                    continue
                trainer.model.train()
                for batch in batches:
                    loader = Batches(trainer.splits.train, batch, device=trainer.device)
                    x, y = next(iter(loader))
                    x = x.contiguous(memory_format=torch.channels_last)
                    if mode not in flops:
                        flops[mode] = _flops_per_image(trainer, x, y)
                    if trainer.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    seconds = median_seconds(
                        functools.partial(trainer.step, x, y), trainer.device, args.warmup, args.repeats
                    )
                    peak = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else float("nan")
                    rows.append(
                        {
                            "mode": mode,
                            "amp": amp,
                            "exec": execution,
                            "batch": batch,
                            "ms": 1000 * seconds,
                            "images_per_s": batch / seconds,
                            "peak_gib": peak,
                            "peak_fraction": batch / seconds * flops[mode] / (args.peak_tflops * 1e12),
                        }
                    )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    steps = 2 if args.tiny else 10
    print(f"\n{arch} {shape}, PGD-{steps} training step, channels-last, {device}, torch {torch.__version__}")
    for mode, value in flops.items():
        limit = args.peak_tflops * 1e12 / value
        print(f"{mode}: {value / 1e9:.3g} GFLOP/image; at {args.peak_tflops:g} TFLOP/s at most {limit:,.0f} images/s")
    header = f"{'mode':<7} {'amp':<5} {'exec':<8} {'batch':>5} {'ms/step':>9} {'images/s':>10} {'peak GiB':>9}"
    print(f"{header} {'of peak':>8}")
    for r in rows:
        print(
            f"{r['mode']:<7} {r['amp']:<5} {r['exec']:<8} {r['batch']:>5} {r['ms']:>9.1f} {r['images_per_s']:>10.0f} "
            f"{r['peak_gib']:>9.2f} {100 * r['peak_fraction']:>7.1f}%"
        )
    return rows


if __name__ == "__main__":
    main()

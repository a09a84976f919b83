"""Time one PGD training step of the core Trainer over variants, in one process.

    python bench/train_step.py                       # the GPU workload: CIFAR ResNet-18, batch 128/256/512
    python bench/train_step.py --tiny                # a seconds-long CPU smoke run (the tests use it)

Variants: dense vs subnet (99% pruned, adaptive p = 0.1, last BN) x fp32 vs bf16 autocast x batch
sizes, PGD-10 L∞ (eps 8/255, step 2/255) on synthetic CIFAR-shaped data. Each variant gets warm-up
steps, then the median of ``--repeats`` timed steps (CUDA events on a GPU, perf_counter on the
CPU); the table (images/s, ms/step, peak GPU memory) is printed last.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from rbp.config import load_config
from rbp.data import Batches
from rbp.train import Trainer


def _time(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of one call after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            step()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="convnet width 8 on 3x8x8 images, batch 16 (CPU smoke)")
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
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
    ]
    if args.tiny:
        base += ["model.width=8", "attack.steps=2"]
    rows = []
    for mode in ("dense", "subnet"):
        for amp in ("off", "bf16"):
            cfg = load_config(None, [*base, f"model.mode={mode}", f"train.amp={amp}"])
            trainer = Trainer(cfg)
            trainer.model.train()
            for batch in batches:
                loader = Batches(trainer.splits.train, batch, device=trainer.device)
                x, y = next(iter(loader))
                if trainer.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                seconds = _time(functools.partial(trainer.step, x, y), trainer.device, args.warmup, args.repeats)
                peak = torch.cuda.max_memory_allocated() / 2**30 if trainer.device.type == "cuda" else float("nan")
                rows.append(
                    {
                        "mode": mode,
                        "amp": amp,
                        "batch": batch,
                        "ms": 1000 * seconds,
                        "images_per_s": batch / seconds,
                        "peak_gib": peak,
                    }
                )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(f"\n{arch} {shape}, PGD-{'2' if args.tiny else '10'} training step, {device}, torch {torch.__version__}")
    print(f"{'mode':<7} {'amp':<5} {'batch':>5} {'ms/step':>9} {'images/s':>10} {'peak GiB':>9}")
    for r in rows:
        print(
            f"{r['mode']:<7} {r['amp']:<5} {r['batch']:>5} {r['ms']:>9.1f} {r['images_per_s']:>10.0f} "
            f"{r['peak_gib']:>9.2f}"
        )
    return rows


if __name__ == "__main__":
    main()

"""Cost of AdderNet layers against dense convolutions: one forward + backward of the whole conv net.

    python bench/adder_cost.py                                  # digits 1x8x8 and 1x28x28, batch 128
    python bench/adder_cost.py --shapes 1x28x28 --repeats 5 --device cuda

For each input shape, the ``convnet`` (``--width``, default 32) is built in ``dense`` and in
``adder`` mode with rbp's builder; one step is forward, cross-entropy, and backward to the weights
and the input (what a PGD training step repeats), under adder's training rules (``train``) and
under the exact gradient evaluation uses (``exact``). Prints the median seconds per step and the
ratio to the dense step.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F
from timing import median_seconds  # bench/timing.py: scripts run with bench/ on sys.path

from rbp.config.load import load_config
from rbp.models import build_model
from rbp.nn import exact_gradients


def _step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, exact: bool):
    def step() -> None:
        with exact_gradients(model) if exact else contextlib.nullcontext():
            x_in = x.clone().requires_grad_(True)
            F.cross_entropy(model(x_in), y).backward()

    return step


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1x8x8", "1x28x28"], help="C x H x W of the images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split("x"))
        x = torch.rand(args.batch, *shape, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        dense_s = None
        for mode, exact in (("dense", False), ("adder", False), ("adder", True)):
            cfg = load_config(None, [f"model.mode={mode}", f"model.width={args.width}"])
            model = build_model(cfg, 10, shape, [0.5] * shape[0], [0.25] * shape[0]).to(device).train()
            seconds = median_seconds(_step_fn(model, x, y, exact), device, args.warmup, args.repeats)
            dense_s = dense_s or seconds
            rule = "exact" if exact else "train"
            rows.append({"shape": text, "mode": mode, "rule": rule, "ms": 1000 * seconds, "ratio": seconds / dense_s})
            print(f"{text:>8} {mode:>5} {rule:>5} {1000 * seconds:9.1f} ms {seconds / dense_s:6.1f}x dense", flush=True)
    return rows


if __name__ == "__main__":
    main()

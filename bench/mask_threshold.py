"""Time the ways of finding every subnet layer's top-k mask, on one model's scores.

    python bench/mask_threshold.py                 # CIFAR ResNet-18 (21 layers, 11.2M scores), 99% pruned
    python bench/mask_threshold.py --tiny          # the digits conv net (CPU smoke run; the tests use it)

Methods (all give masks with exactly ``kept`` ones per layer):
  kthvalue    per layer, threshold = kthvalue of |scores|, mask = |scores| > threshold (ties aside)
  sort        per layer, one descending sort, ones at the first ``kept`` indices
  topk        per layer, ``topk(kept).indices``: ``rbp.nn.topk_masks(method="topk")``, its CPU default
  one-sort    all layers at once, one sort of (layer, |score|) keys: ``method="sort"``, its GPU default
Median of ``--repeats`` after warm-up; CUDA-event timing on a GPU, perf_counter on the CPU.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
from timing import median_seconds  # bench/timing.py: scripts run with bench/ on sys.path

from rbp.config.load import load_config
from rbp.models import build_model
from rbp.nn import subnet_layers, topk_masks


def _per_layer(select: Callable[[torch.Tensor, int], torch.Tensor]):
    def masks(magnitudes: list[torch.Tensor], kept: list[int]) -> list[torch.Tensor]:
        out = []
        for m, k in zip(magnitudes, kept, strict=True):
            mask = torch.zeros(m.numel(), device=m.device)
            mask[select(m.flatten(), k)] = 1.0
            out.append(mask.view_as(m))
        return out

    return masks


def _kthvalue(magnitudes: list[torch.Tensor], kept: list[int]) -> list[torch.Tensor]:
    out = []
    for m, k in zip(magnitudes, kept, strict=True):
        threshold = m.flatten().kthvalue(m.numel() - k).values if k < m.numel() else m.min() - 1
        out.append((m > threshold).float())
    return out


METHODS: dict[str, Callable[[list[torch.Tensor], list[int]], list[torch.Tensor]]] = {
    "kthvalue": _kthvalue,
    "sort": _per_layer(lambda flat, k: flat.argsort(descending=True)[:k]),
    "topk": functools.partial(topk_masks, method="topk"),
    "one-sort": functools.partial(topk_masks, method="sort"),
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the digits conv net instead of CIFAR ResNet-18")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.tiny:
        cfg = load_config(None, [])
        shape, classes = (1, 8, 8), 10
    else:
        cfg = load_config(None, ["model.arch=resnet18", "sparsity.density=0.01", "sparsity.p=0.1"])
        shape, classes = (3, 32, 32), 10
    model = build_model(cfg, classes, shape, [0.5] * shape[0], [0.25] * shape[0]).to(device)
    layers = list(subnet_layers(model).values())
    magnitudes = [layer.scores.detach().abs() for layer in layers]
    kept = [layer.kept for layer in layers]
    reference = METHODS["topk"](magnitudes, kept)
    results = {}
    for name, method in METHODS.items():
        masks = method(magnitudes, kept)
        assert [int(m.sum()) for m in masks] == kept, f"{name}: wrong kept counts"
        assert all(torch.equal(m, r) for m, r in zip(masks, reference, strict=True)), f"{name}: masks differ"
        results[name] = median_seconds(lambda: method(magnitudes, kept), device, args.warmup, args.repeats)  # noqa: B023
    total = sum(m.numel() for m in magnitudes)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{len(layers)} subnet layers, {total:,} scores, {sum(kept):,} kept; {name}, torch {torch.__version__}")
    print(f"{'method':<10} {'ms/step':>9}")
    for method, seconds in results.items():
        print(f"{method:<10} {1000 * seconds:>9.2f}")
    return results


if __name__ == "__main__":
    main()

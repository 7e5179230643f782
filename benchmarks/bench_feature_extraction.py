"""Feature-extraction throughput of a frozen EfficientNet-Lite: images per second.

What :func:`asymcl.data.feature_cache.build_feature_cache` runs per batch: inference of the frozen
ImageNet Lite0 (preprocessing included) on (B, 3, S, S) images, in fp32 or under bf16 autocast,
with the input batch contiguous or channels_last, at 128 and 224 px. All settings run in one
process, interleaved over rounds (so a load change on a shared machine hits them alike); the
median round is reported, with the ratio to fp32/contiguous at the same size.

    python benchmarks/bench_feature_extraction.py [--batch 64] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch

from asymcl.models import apply_finetune, build_backbone


def run_once(frozen, images: torch.Tensor, bf16: bool, channels_last: bool) -> float:
    batch = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        frozen(batch)
    return images.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}, bf16 native: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    )
    encoder = build_backbone(args.backbone, 3, "imagenet")
    frozen, _ = apply_finetune(encoder, "frozen")
    settings = [(bf16, cl) for bf16 in (False, True) for cl in (False, True)]
    print(f"{args.backbone}, batch {args.batch}, median of {args.rounds} rounds, images/s (ratio to fp32 contiguous)")
    print(
        f"{'size':>5} " + " ".join(f"{('bf16' if b else 'fp32') + (' ch-last' if c else ''):>20}" for b, c in settings)
    )
    for size in args.sizes:
        images = torch.rand(args.batch, 3, size, size)
        for bf16, cl in settings:  # warm-up: oneDNN picks its kernels on the first call
            run_once(frozen, images, bf16, cl)
        rates = {s: [] for s in settings}
        for _ in range(args.rounds):
            for setting in settings:
                rates[setting].append(run_once(frozen, images, *setting))
        median = {s: statistics.median(r) for s, r in rates.items()}
        base = median[(False, False)]
        print(f"{size:>5} " + " ".join(f"{median[s]:>11.1f} ({median[s] / base:4.2f}x)" for s in settings))


if __name__ == "__main__":
    main()

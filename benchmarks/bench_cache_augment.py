"""Cost of the feature cache's augmented views: milliseconds per image for V views.

What :func:`asymcl.data.feature_cache.render_views` runs for each image before extraction (its own
seeded generator, V views in one kornia call), for the ``dermoscopy`` and ``dermoscopy_lite``
presets (the latter without the hue jitter), with torch's threads as they are or set to one while
augmenting (what the cache does). Settings are interleaved over rounds in one process, so a load
change on a shared machine hits them alike; the median round is reported, with the ratio to
``dermoscopy`` at the default threads.

    python benchmarks/bench_cache_augment.py [--size 128] [--views 4] [--images 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from asymcl.data.augment import build_augmentation
from asymcl.data.feature_cache import render_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; {args.size} px, {args.views} views, ms per image"
    )
    images = torch.rand(args.images, 3, args.size, args.size)
    fingerprints = [str(i) for i in range(args.images)]
    settings = [(preset, threads) for preset in ("dermoscopy", "dermoscopy_lite") for threads in (None, 1)]
    augments = {p: build_augmentation(p, (args.size, args.size), 3) for p in ("dermoscopy", "dermoscopy_lite")}
    for preset, threads in settings:  # warm-up
        render_views(images[:2], fingerprints[:2], augments[preset], args.views, 0, threads)
    times = {s: [] for s in settings}
    for _ in range(args.rounds):
        for preset, threads in settings:
            start = time.perf_counter()
            render_views(images, fingerprints, augments[preset], args.views, 0, threads)
            times[(preset, threads)].append(1000 * (time.perf_counter() - start) / args.images)
    base = statistics.median(times[("dermoscopy", None)])
    for (preset, threads), values in times.items():
        ms = statistics.median(values)
        label = f"{preset}, {'default' if threads is None else threads} thread(s)"
        print(f"{label:<36} {ms:8.1f} ms/image ({base / ms:4.2f}x faster)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Per-run wall time of the claim grid's pretrained runs (issue 22), before and after, in one process.

The runs are the grid's own: ``asymcl claim-grid --profile pretrained``'s ``authors`` arm (frozen
ImageNet EfficientNet-Lite0 at 128 px, feature cache with 4 views per image, 10 + 10 epochs) at one
imbalance ratio, stage-1 batch 32 and 512, seed 0, each trained into a fresh folder. They run in
one process one after another, as in a sweep worker, with its torch threads (``--threads``, 1 = what
``--workers 2`` gives each worker on 2 cores), alternating

* ``before``: as before issue 22's speed work, reproduced by switching it off: every run reads and
  hashes its feature-cache shards again, un-gzips the Fashion-MNIST IDX files again, and deflates
  embeddings.npz (``np.savez_compressed``);
* ``after``: as asymcl runs now (shards and IDX arrays kept in memory by the process, embeddings
  stored undeflated).

Alternating in one process makes load from other processes hit both alike. The first run (which
may extract the feature cache, and imports and warms everything) is not counted. Printed: each
run's wall, then per batch size the median before, after, and their ratio, and whether the two
variants' metrics.json (final, history, best) and predictions.csv are identical.

``--extraction N`` then times the one-time extraction of a seed's training entry (N of its training
images, clean + 4 views): alone, and beside seed 0's entry of the same images, whose clean features
it takes (issue 22: only the views are computed); the views must come out identical.

    python benchmarks/claim_run_speed.py --data /work/shared/datasets/fashion-mnist \\
        [--cache-dir DIR] [--rho 200] [--method afcl] [--batches 32 512] [--repeats 2] [--threads 1] \\
        [--extraction N] [--extraction-threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import numpy as np
import torch


def _configs(data: str, rho: float, method: str, batches: list[int], cache_dir: str | None) -> dict[int, dict]:
    from asymcl.experiments.claim_presets import claim_specs
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

    spec = parse_spec(claim_specs(data, "pretrained", seeds=1, rhos=[rho], batches=batches)["authors"])
    points = [p for p in expand(spec) if p.overrides.get("method") == method]
    configs = resolve_points(spec, points, default_resolver())
    out = {}
    for config in configs.values():
        config = json.loads(json.dumps(config, default=str))
        if cache_dir is not None:
            config["data"]["cache_dir"] = cache_dir
        out[int(config["stage1"]["batch_size"])] = config
    return out


@contextlib.contextmanager
def _before():
    """Issue 22's speed work switched off: no shard memo, IDX files read again, deflated embeddings."""
    from asymcl.data import cache_store, idx
    from asymcl.training import pipeline

    with (
        mock.patch.object(cache_store, "_MEMO", OrderedDict()),
        mock.patch.object(cache_store, "_MEMO_BYTES", 0),
        mock.patch.object(idx, "_read_idx_kept", idx._read_idx_kept.__wrapped__),
        mock.patch.object(pipeline.np, "savez", np.savez_compressed),
    ):
        yield


def _outputs(run_dir: Path) -> tuple:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics[k] for k in ("final", "history", "best")}, (run_dir / "predictions.csv").read_bytes()


def _extraction(config: dict, images: int, threads: int) -> None:
    """Seconds to build seed 1's training entry (clean + views) of ``images`` training images, alone
    (an empty cache folder) and beside seed 0's entry of the same images (its clean features are
    taken, only the views are computed), alternating, in fresh temporary folders."""
    from asymcl.data.feature_cache import build_feature_cache
    from asymcl.training.config import resolve_config
    from asymcl.training.encoder import build_encoder
    from asymcl.training.modules import augmentation_preset
    from asymcl.training.run_data import RunData

    torch.set_num_threads(threads)
    config = resolve_config(config)
    data = RunData(config)
    dataset = data.splits["train"].subset(range(images))
    frozen = build_encoder(config, data.channels, data.image_hw).frozen_input().eval()
    kwargs = dict(
        augmentation=augmentation_preset(config, data.dataset_name, data.channels),
        views=config.data.cache_views,
        precision="fp32",
        view_precision=config.data.cache_precision,
        progress=False,
        log=lambda message: None,
    )
    times: dict[str, float] = {}
    built = {}
    with tempfile.TemporaryDirectory(prefix="claim-extraction-") as tmp:
        shared = Path(tmp) / "shared"
        build_feature_cache(dataset, frozen, seed=0, cache_dir=shared, **kwargs)  # seed 0's entry, not timed
        for variant in ("alone", "beside seed 0"):
            start = time.perf_counter()
            folder = Path(tmp) / "alone" if variant == "alone" else shared
            built[variant] = build_feature_cache(dataset, frozen, seed=1, cache_dir=folder, **kwargs)
            times[variant] = time.perf_counter() - start
    same_views = torch.equal(built["alone"].views, built["beside seed 0"].views)
    clean = (built["alone"].clean.float() - built["beside seed 0"].clean.float()).abs().max().item()
    print(
        f"\nseed 1's training entry, {images} images x (clean + {config.data.cache_views} views), {threads} thread(s):"
    )
    print(
        f"  alone {times['alone']:.1f} s, beside seed 0's entry {times['beside seed 0']:.1f} s "
        f"(ratio {times['beside seed 0'] / times['alone']:.2f}); views identical: {'yes' if same_views else 'NO'}; "
        f"clean features' largest difference {clean:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the Fashion-MNIST folder (four IDX files)")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: asymcl's)")
    parser.add_argument("--rho", type=float, default=200)
    parser.add_argument("--method", default="afcl")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant and batch size (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--extraction",
        type=int,
        default=0,
        metavar="N",
        help="also time seed 1's training entry of N images alone and beside seed 0's "
        "(the clean features taken), with --extraction-threads threads",
    )
    parser.add_argument("--extraction-threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = _configs(args.data, args.rho, args.method, args.batches, args.cache_dir)
    if args.repeats:
        _runs(configs, args)
    if args.extraction:
        _extraction(configs[args.batches[0]], args.extraction, args.extraction_threads)


def _runs(configs: dict[int, dict], args: argparse.Namespace) -> None:
    from asymcl.training.pipeline import run

    walls: dict[tuple[int, str], list[float]] = {}
    outputs: dict[tuple[int, str], tuple] = {}
    with tempfile.TemporaryDirectory(prefix="claim-run-speed-") as tmp:
        start = time.perf_counter()
        run(configs[args.batches[0]], Path(tmp) / "warm-up")
        print(f"warm-up run (imports, cache build or check; not counted): {time.perf_counter() - start:.1f} s")
        for repeat in range(args.repeats):
            for batch in args.batches:
                order = ("before", "after") if repeat % 2 == 0 else ("after", "before")
                for variant in order:
                    folder = Path(tmp) / f"{variant}-b{batch}-{repeat}"
                    with _before() if variant == "before" else contextlib.nullcontext():
                        start = time.perf_counter()
                        run(configs[batch], folder)
                        wall = time.perf_counter() - start
                    walls.setdefault((batch, variant), []).append(wall)
                    outputs.setdefault((batch, variant), _outputs(folder))
                    print(f"  stage-1 batch {batch:4d}  {variant:6s}  {wall:6.1f} s", flush=True)
                    shutil.rmtree(folder)
    print(
        f"\n{args.method}, rho {args.rho:g}, {args.threads} torch thread(s), {args.repeats} run(s) each, median wall:"
    )
    print(f"{'stage-1 batch':>14} {'before s':>9} {'after s':>9} {'after/before':>13}  same numbers")
    for batch in args.batches:
        before = statistics.median(walls[(batch, "before")])
        after = statistics.median(walls[(batch, "after")])
        same = outputs[(batch, "before")] == outputs[(batch, "after")]
        print(f"{batch:>14} {before:>9.1f} {after:>9.1f} {after / before:>13.2f}  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

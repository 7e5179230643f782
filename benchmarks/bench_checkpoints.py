"""Checkpoint size and write time of a frozen-backbone run, slim (issue 25) against full.

One two-stage (or ce) run on digits with a frozen ImageNet EfficientNet-Lite and an adapter, from
the feature cache, twice in fresh run directories:

* ``slim``: as asymcl writes checkpoints now (frozen backbone and stage 2's encoder by reference,
  best.ckpt weights-only, a finished stage's last.ckpt without optimizer state);
* ``full``: as before issue 25, reproduced here by switching those three off (every tensor in every
  checkpoint, optimizer state in best and last).

Printed per variant: each checkpoint's size, the run directory's size, the seconds spent inside
checkpoint writes (Lightning's saves plus the end-of-stage rewrite), the run's wall time, and the
time to load the final best.ckpt as predict/export do (slim: rebuilding the referenced weights and
checking their sha256 included). The
feature cache is built first (not timed), so both variants train from the same cached features.

    python benchmarks/bench_checkpoints.py [--method afcl] [--backbone efficientnet_lite0] \\
        [--adapter 256] [--epochs 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch


def _sizes(run_dir: Path) -> tuple[dict[str, int], int]:
    ckpts = {
        str(p.relative_to(run_dir / "checkpoints")): p.stat().st_size
        for p in sorted((run_dir / "checkpoints").rglob("*.ckpt"))
    }
    total = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    return ckpts, total


@contextlib.contextmanager
def _full_checkpoints():
    """The pre-issue-25 behaviour: no references, best.ckpt with optimizer state, last.ckpt kept whole."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from asymcl.training import modules, pipeline

    original_init = ModelCheckpoint.__init__

    def init(self, *args, **kwargs):
        kwargs["save_weights_only"] = False
        original_init(self, *args, **kwargs)

    with (
        mock.patch.object(modules.BaseModule, "checkpoint_references", lambda self: []),
        mock.patch.object(modules.LinearProbeModule, "checkpoint_references", lambda self: []),
        mock.patch.object(ModelCheckpoint, "__init__", init),
        mock.patch.object(pipeline, "_finish_stage_checkpoints", lambda ckpt_dir, save_last: None),
    ):
        yield


@contextlib.contextmanager
def _timed_writes(clock: list[float]):
    from asymcl.training import checkpoints

    original = checkpoints._write

    def write(checkpoint, path):
        start = time.perf_counter()
        try:
            original(checkpoint, path)
        finally:
            clock[0] += time.perf_counter() - start

    with mock.patch.object(checkpoints, "_write", write):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="afcl")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--adapter", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of each stage")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (times: the median)")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: a temporary one)")
    args = parser.parse_args()

    from asymcl.training.pipeline import prepare_feature_caches, run

    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    config = {
        "method": args.method,
        "model.backbone": args.backbone,
        "model.pretrained": "imagenet",
        "model.finetune": "frozen",
        "model.adapter": args.adapter,
        "stage1.epochs": args.epochs,
        "stage2.epochs": args.epochs,
        "trainer.progress_bar": False,
        "data.cache_dir": args.cache_dir or str(work / "cache"),
    }
    torch.set_num_threads(torch.get_num_threads())
    prepare_feature_caches(config)
    print(
        f"{args.method}, frozen {args.backbone} (ImageNet), adapter {args.adapter}, {args.epochs} + "
        f"{args.epochs} epochs, digits; torch threads {torch.get_num_threads()}"
    )
    try:
        for variant in ("full", "slim"):
            writes, walls, shown = [], [], None
            for repeat in range(args.repeats):
                out = work / f"{variant}-{repeat}"
                clock = [0.0]
                context = _full_checkpoints() if variant == "full" else contextlib.nullcontext()
                with context, _timed_writes(clock):
                    start = time.perf_counter()
                    run(config, out, report_cache=False)
                    walls.append(time.perf_counter() - start)
                writes.append(clock[0])
                shown = _sizes(out)
            from asymcl.training.checkpoints import load_checkpoint

            final = sorted((out / "checkpoints").rglob("best.ckpt"))[-1]
            start = time.perf_counter()
            load_checkpoint(final)
            load = time.perf_counter() - start
            ckpts, total = shown
            print(
                f"\n{variant}: run directory {total / 2**20:.1f} MB, checkpoints "
                f"{sum(ckpts.values()) / 2**20:.1f} MB; checkpoint writes {sorted(writes)[len(writes) // 2]:.2f} s "
                f"of a {sorted(walls)[len(walls) // 2]:.1f} s run (median of {args.repeats}); "
                f"loading {final.parent.name}/best.ckpt {load:.2f} s"
            )
            for name, size in ckpts.items():
                print(f"  {name:<20} {size / 2**20:8.2f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

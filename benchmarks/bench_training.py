"""Stage-1 training throughput: images per second and peak memory of one optimisation step.

A step is what ContrastiveModule.training_step does: two kornia-augmented views of a batch, the
encoder and projection head on both, AFCL, backward, AdamW. Timed outside Lightning so the number
is the model's and not the loop's. CPU in fp32 and bf16 autocast; CUDA in fp32 and bf16 when a GPU
is present. Peak memory: CUDA max_memory_allocated on GPU; on CPU each setting runs in its own
process and the figure is the growth of its peak resident set (ru_maxrss) from just before the
first step, i.e. activations, gradients and optimizer state.

    python benchmarks/bench_training.py [--batch 128] [--steps 5] [--threads N]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch

from asymcl.data.augment import build_augmentation
from asymcl.losses import AsymmetricFocalContrastiveLoss
from asymcl.models import ProjectionHead, build_backbone


def bench(backbone: str, device: str, dtype: torch.dtype | None, batch: int, steps: int, size: int = 28):
    torch.manual_seed(0)
    encoder = build_backbone(backbone, 1).to(device)
    head = ProjectionHead(encoder.feature_dim, 512, 128).to(device)
    augment = build_augmentation("grey28", (size, size), 1)
    criterion = AsymmetricFocalContrastiveLoss(gamma=1.0, eta=5.0, temperature=0.1)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    images = torch.rand(batch, 1, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)

    def step():
        with torch.no_grad():
            views = torch.cat([augment(images), augment(images)])
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            z = head(encoder(views))
            loss = criterion(torch.stack(z.split(batch), dim=1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (allocates optimizer state, counted in the peak)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return batch * steps / elapsed, peak_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--one", nargs=3, metavar=("BACKBONE", "DEVICE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:  # a single measurement in a fresh process (clean peak RSS)
        backbone, device, precision = args.one
        dtype = torch.bfloat16 if precision == "bf16" else None
        steps = args.steps if device == "cpu" else 20
        rate, peak = bench(backbone, device, dtype, args.batch, steps)
        print(f"{rate} {peak}")
        return
    settings = [("cpu", "fp32"), ("cpu", "bf16")]
    if torch.cuda.is_available():
        settings += [("cuda", "fp32"), ("cuda", "bf16")]
    print(f"stage-1 step, 28x28 grey, batch {args.batch} (2 views), AFCL, AdamW; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print(f"{'backbone':<16} {'device':<6} {'precision':<14} {'images/s':>10} {'peak MB':>9}")
    for backbone in ("small_cnn", "cifar_resnet18"):
        for device, precision in settings:
            command = [sys.executable, __file__, "--one", backbone, device, precision,
                       "--batch", str(args.batch), "--steps", str(args.steps)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rate, peak = map(float, result.stdout.split()[-2:])
            label = "fp32" if precision == "fp32" else "bf16 autocast"
            print(f"{backbone:<16} {device:<6} {label:<14} {rate:>10.1f} {peak:>9.0f}", flush=True)


if __name__ == "__main__":
    main()

"""Stage-1 training throughput: images per second and peak memory of one optimisation step.

A step is what ContrastiveModule.training_step does: two kornia-augmented views of a batch, the
encoder and projection head on both, AFCL, backward, AdamW. Timed outside Lightning so the number
is the model's and not the loop's. The batch is held on the device as uint8 (as decoded once) and
converted to [0, 1] floats inside the step, as a GPU data path would.

Each setting runs in its own process: on CPU the peak memory is the growth of the peak resident
set (ru_maxrss) from just before the first step (activations, gradients, optimizer state); on CUDA
torch.cuda.max_memory_allocated over the timed steps. Settings are the product of --backbones,
--devices and --precisions; precisions: fp32, bf16 (autocast), bf16-cl (bf16 + channels_last),
bf16-cl-compile (also torch.compile of encoder and head; the compile time is reported apart, the
timed steps come after it).

    python benchmarks/bench_training.py [--batch 128] [--steps 5] [--threads N]
    python benchmarks/bench_training.py --backbones efficientnet_lite0 --pretrained imagenet \\
        --size 224 --channels 3 --augment dermoscopy --devices cuda \\
        --precisions fp32 bf16 bf16-cl bf16-cl-compile --batch 128 --steps 20 --json out.json

Without --devices: cpu, and cuda where a GPU is present; without --precisions: fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from asymcl.data.augment import build_augmentation
from asymcl.losses import AsymmetricFocalContrastiveLoss, raise_pending_input_errors
from asymcl.models import ProjectionHead, build_backbone

PRECISIONS = ("fp32", "bf16", "bf16-cl", "bf16-cl-compile")


def bench(
    backbone: str,
    device: str,
    precision: str,
    batch: int,
    steps: int,
    *,
    size: int = 28,
    channels: int = 1,
    augment: str = "grey28",
    pretrained: str | None = None,
) -> dict:
    torch.manual_seed(0)
    dtype = None if precision == "fp32" else torch.bfloat16
    channels_last = "-cl" in precision
    kwargs = {} if pretrained is None else {"pretrained": pretrained}
    encoder = build_backbone(backbone, channels, **kwargs).to(device)
    head = ProjectionHead(encoder.feature_dim, 512, 128).to(device)
    if channels_last:
        encoder = encoder.to(memory_format=torch.channels_last)
    augment_module = build_augmentation(augment, (size, size), channels).to(device)
    criterion = AsymmetricFocalContrastiveLoss(gamma=1.0, eta=5.0, temperature=0.1)
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 7, (batch,), device=device)
    encode = encoder
    project = head
    if precision.endswith("-compile"):
        encode = torch.compile(encoder)
        project = torch.compile(head)

    def step():
        with torch.no_grad():
            x = images.float().div_(255.0)
            views = torch.cat([augment_module(x), augment_module(x)])
            if channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            z = project(encode(views))
            loss = criterion(torch.stack(z.split(batch), dim=1), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for _ in range(2 if precision.endswith("-compile") else 1):  # warm-up: optimizer state, compile
        step()
    synchronize()
    warmup_s = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    elapsed = time.perf_counter() - start
    raise_pending_input_errors()  # a NaN step must not pass as a throughput figure
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {
        "images_per_s": batch * steps / elapsed,
        "step_ms": 1e3 * elapsed / steps,
        "peak_mb": peak_mb,
        "warmup_s": warmup_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backbones", nargs="+", default=["small_cnn", "cifar_resnet18"])
    parser.add_argument("--pretrained", default=None, help="passed to build_backbone (e.g. imagenet)")
    parser.add_argument("--size", type=int, default=28, help="image side in pixels")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--augment", default="grey28", help="asymcl augmentation preset")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32", "bf16"])
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--one", nargs=3, metavar=("BACKBONE", "DEVICE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = dict(size=args.size, channels=args.channels, augment=args.augment, pretrained=args.pretrained)
    if args.one:  # a single measurement in a fresh process (clean peak RSS)
        backbone, device, precision = args.one
        print(json.dumps(bench(backbone, device, precision, args.batch, args.steps, **common)))
        return
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch.cuda.is_available() is False on this machine")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    print(
        f"stage-1 step, {args.size}x{args.size}x{args.channels} ({args.augment}), batch {args.batch} (2 views), "
        f"AFCL, AdamW, {args.steps} timed steps; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {gpu}" if gpu else "")
    )
    print(
        f"{'backbone':<18} {'device':<6} {'precision':<16} {'images/s':>10} {'step ms':>9} {'peak MB':>9} "
        f"{'warm-up s':>9}"
    )
    records = []
    for backbone in args.backbones:
        for device in devices:
            for precision in args.precisions:
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    backbone,
                    device,
                    precision,
                    "--batch",
                    str(args.batch),
                    "--steps",
                    str(args.steps),
                    "--size",
                    str(args.size),
                    "--channels",
                    str(args.channels),
                    "--augment",
                    args.augment,
                ]
                if args.pretrained:
                    command += ["--pretrained", args.pretrained]
                if args.threads:
                    command += ["--threads", str(args.threads)]
                result = subprocess.run(command, capture_output=True, text=True)
                record = {"backbone": backbone, "device": device, "precision": precision}
                if result.returncode != 0:  # one failing setting (e.g. compile) must not hide the rest
                    error = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
                    record["error"] = error
                    print(f"{backbone:<18} {device:<6} {precision:<16} FAILED: {error}", flush=True)
                else:
                    record.update(json.loads(result.stdout.strip().splitlines()[-1]))
                    print(
                        f"{backbone:<18} {device:<6} {precision:<16} {record['images_per_s']:>10.1f} "
                        f"{record['step_ms']:>9.1f} {record['peak_mb']:>9.0f} {record['warmup_s']:>9.1f}",
                        flush=True,
                    )
                records.append(record)
    if args.json:
        setting = {
            "batch": args.batch,
            "steps": args.steps,
            "size": args.size,
            "channels": args.channels,
            "augment": args.augment,
            "pretrained": args.pretrained,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "gpu": gpu,
            "threads": torch.get_num_threads(),
        }
        with open(args.json, "w") as f:
            json.dump({"setting": setting, "rows": records}, f, indent=1)
    if any("error" in r for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()

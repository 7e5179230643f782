"""Feature-cache extraction engines side by side: torch against ONNX Runtime (``data.cache_engine``).

What :func:`asymcl.data.feature_cache.build_feature_cache` runs per batch on a CPU: the frozen part
of a run's encoder (ImageNet weights, preprocessing included) in fp32, by torch (channels-last input,
as the cache feeds it) and by :func:`asymcl.data.cache_engine.onnx_runner`. Both run in one process,
interleaved over rounds, so a load change on a shared machine hits them alike; the median round is
reported, with the ratio, the one-time export cost and how many of the float16-rounded outputs are
bit-identical.

    python benchmarks/bench_cache_engine.py [--batch 32] [--rounds 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from asymcl.data.cache_engine import onnx_runner
from asymcl.training.config import resolve_config
from asymcl.training.encoder import build_encoder
from asymcl.training.run_dir import cpu_info

# (label, model keys, image side): the Lite0 single encoder of the last:K arms and the ISIC preset's pair.
CASES = [
    ("Lite0, 224 px", {"model.backbone": "efficientnet_lite0"}, 224),
    ("Lite2+Lite0, 260 px", {"model.backbone": "efficientnet_lite2+efficientnet_lite0"}, 260),
    (
        "Lite2+Lite0, 260 px, 3 taps",
        {
            "model.backbone": "efficientnet_lite2+efficientnet_lite0",
            "model.feature_layers": ["block10", "block14", "head"],
        },
        260,
    ),
]


def frozen_part(model: dict, side: int) -> torch.nn.Module:
    config = resolve_config(
        {
            "method": "afcl",
            "data.dataset": "digits",
            "model.pretrained": "imagenet",
            "model.finetune": "frozen",
            **model,
        }
    )
    return build_encoder(config, 3, (side, side)).frozen_input().eval()


def by_torch(frozen: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return frozen(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", type=int, nargs="+", default=list(range(len(CASES))), help="indices into CASES")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = cpu_info()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {info['cpu']} ({info['cores']} cores, "
        f"bf16 native: {info['cpu_bf16']}), load average {os.getloadavg()[0]:.1f}"
    )
    print(f"batch {args.batch}, fp32, median of {args.rounds} interleaved rounds, images/s")
    print(f"{'frozen part':<30} {'torch':>8} {'onnxruntime':>12} {'ratio':>6} {'export s':>9} {'fp16 equal':>10}")
    for index in args.cases:
        label, model, side = CASES[index]
        frozen = frozen_part(model, side)
        images = torch.rand(args.batch, 3, side, side)
        channels_last = images.contiguous(memory_format=torch.channels_last)
        start = time.perf_counter()
        runner = onnx_runner(frozen, images)
        export_seconds = time.perf_counter() - start

        engines = {"torch": lambda: by_torch(frozen, channels_last), "onnxruntime": lambda: runner(images)}  # noqa: B023
        outputs = {name: run() for name, run in engines.items()}  # warm-up: kernels are chosen on the first call
        equal = float((outputs["torch"].half() == outputs["onnxruntime"].half()).float().mean())
        rates: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, run in engines.items():
                start = time.perf_counter()
                run()
                rates[name].append(args.batch / (time.perf_counter() - start))
        median = {name: statistics.median(r) for name, r in rates.items()}
        print(
            f"{label:<30} {median['torch']:>8.1f} {median['onnxruntime']:>12.1f} "
            f"{median['onnxruntime'] / median['torch']:>5.2f}x {export_seconds:>9.1f} {equal:>10.1%}"
        )


if __name__ == "__main__":
    main()

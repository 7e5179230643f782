"""``model.finetune=last:K`` through the feature cache on real ISIC 2018 images: the size of the
cached maps, the extraction rate, and the speed of a training step on them.

For each encoder (EfficientNet-Lite0/Lite2, ImageNet weights), input size (224/260 px) and K
(1 = the head conv alone, 2, 3), on the first ``--images`` training images of the shared ISIC copy:

* the frozen prefix's output map (C, h, w) and its bytes per image in the cache: float16, the clean
  image plus ``--views`` views (what ``data.cache_views`` stores), and per 1,000 training images;
* the error of storing it as float16 vs bfloat16 (relative L2, vs the float32 maps);
* extraction: images/s of the frozen prefix, float32 (the clean images) and bf16 autocast (the
  views, ``data.cache_precision=auto`` on CPUs with bf16), input channels-last as the cache runs it;
* a training step from the cached maps, as stage 1 takes it (``--batch`` images x 2 views): the
  batched read (gather of 2B rows from the in-memory float16 tensor, to float32), then forward +
  backward + AdamW step of the last K units + pooling + a linear head, in float32 with the maps
  contiguous or channels_last, and under bf16 autocast.

The settings of one encoder and size run interleaved over ``--rounds`` rounds (a load change on a
shared machine hits them alike); medians are printed.

    python benchmarks/bench_last_k_cache.py [--root ../shared/datasets/isic2018] [--images 128]
        [--batch 64] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from asymcl.data.datasets import decode_image
from asymcl.models import apply_finetune, build_backbone


def load_images(root: Path, n: int) -> torch.Tensor:
    files = sorted((root / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[:n]
    if not files:
        raise SystemExit(f"no ISIC 2018 training images under {root}; pass --root")
    arrays = [torch.from_numpy(decode_image(str(f), 3, (224, 224))).permute(2, 0, 1) for f in files]
    return torch.stack(arrays).float().div_(255.0)


def extract(frozen: nn.Module, images: torch.Tensor, bf16: bool, batch: int = 32) -> tuple[torch.Tensor, float]:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    out = []
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for chunk in images.split(batch):
            out.append(frozen(chunk.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out), len(images) / (time.perf_counter() - start)


def step_time(
    trainable: nn.Module, head: nn.Module, optimizer, cached: torch.Tensor, batch: int, mode: str
) -> tuple[float, float]:
    """(seconds of the batched read, seconds of forward + backward + step) for one batch of 2B rows."""
    rows = torch.randint(0, len(cached), (2 * batch,))
    labels = torch.randint(0, 7, (2 * batch,))
    start = time.perf_counter()
    maps = cached[rows].float()
    if mode == "channels_last":
        maps = maps.contiguous(memory_format=torch.channels_last)
    read = time.perf_counter() - start
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "bf16" else nullcontext()
    start = time.perf_counter()
    with autocast:
        loss = nn.functional.cross_entropy(head(trainable(maps)).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return read, time.perf_counter() - start


def relative_error(maps: torch.Tensor, dtype: torch.dtype) -> float:
    return float((maps.to(dtype).float() - maps).norm() / maps.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("../shared/datasets/isic2018"),
        help="the ISIC 2018 folder in the official layout",
    )
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--encoders", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 260])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = load_images(args.root, args.images)
    print(
        f"{len(images)} ISIC 2018 training images (224 px files), {torch.get_num_threads()} threads, "
        f"batch {args.batch} images x 2 views, {args.views} views cached per image"
    )
    print(
        "encoder            px  K  map (C,h,w)     KB/img  MB/1k img  fp16 err  bf16 err  "
        "extract fp32  bf16 img/s  read ms  step ms fp32  ch-last  bf16"
    )
    modes = ("contiguous", "channels_last", "bf16")
    for name in args.encoders:
        for size in args.sizes:
            encoder = build_backbone(name, 3, "imagenet", input_size=(size, size))
            rows = {}
            for k in args.ks:
                frozen, trainable = apply_finetune(encoder, f"last:{k}")
                trainable.train()
                head = nn.Linear(encoder.feature_dim, 7)
                optimizer = torch.optim.AdamW([*trainable.parameters(), *head.parameters()], lr=1e-4)
                rows[k] = {
                    "frozen": frozen,
                    "trainable": trainable,
                    "head": head,
                    "optimizer": optimizer,
                    "x_fp32": [],
                    "x_bf16": [],
                    "read": [],
                    **{m: [] for m in modes},
                }
                extract(frozen, images[:8], bf16=False)  # warm-up
            for _ in range(args.rounds):
                for row in rows.values():
                    maps, rate = extract(row["frozen"], images, bf16=False)
                    row["x_fp32"].append(rate)
                    row["x_bf16"].append(extract(row["frozen"], images, bf16=True)[1])
                    row["maps"] = maps
                    cached = maps.half()
                    for mode in modes:
                        step_time(row["trainable"], row["head"], row["optimizer"], cached, args.batch, mode)  # warm
                        read, seconds = step_time(
                            row["trainable"], row["head"], row["optimizer"], cached, args.batch, mode
                        )
                        row[mode].append(seconds)
                        row["read"].append(read)
            for k, row in rows.items():
                maps = row["maps"]
                shape = tuple(maps.shape[1:])
                per_image = (1 + args.views) * maps[0].numel() * 2
                med = {key: statistics.median(row[key]) for key in ("x_fp32", "x_bf16", "read", *modes)}
                print(
                    f"{name:<18} {size:>3} {k:>2}  {str(shape):<15} {per_image / 1024:>6.0f}"
                    f"  {per_image * 1000 / 2**20:>9.0f}"
                    f"  {relative_error(maps, torch.float16):>8.1e}  {relative_error(maps, torch.bfloat16):>8.1e}"
                    f"  {med['x_fp32']:>12.1f}  {med['x_bf16']:>10.1f}  {med['read'] * 1e3:>7.1f}"
                    f"  {med['contiguous'] * 1e3:>12.0f}  {med['channels_last'] * 1e3:>7.0f}"
                    f"  {med['bf16'] * 1e3:>5.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

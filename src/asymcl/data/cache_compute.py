"""The arithmetic of the feature cache: views rendered from seeded generators, the frozen part run
over them, the outputs checked and stored as float16 (:mod:`asymcl.data.feature_cache` decides
what is missing and where it goes; :mod:`asymcl.data.cache_store` stores it)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from asymcl.data.datasets import ImageDataset
from asymcl.errors import DataError


def view_seed(seed: int | None, fingerprint: str) -> int:
    return int(hashlib.sha256(f"{seed}:{fingerprint}".encode()).hexdigest()[:15], 16)


def render_views(
    images: Tensor,
    fingerprints: Sequence[str],
    augment: nn.Module,
    views: int,
    seed: int | None,
    threads: int | None = 1,
) -> Tensor:
    """(n, C, H, W) in [0, 1] -> (n, 1 + views, C, H, W): the clean image, then its views, each
    image's views drawn from a generator seeded by (seed, its fingerprint). ``threads``: torch CPU
    threads while augmenting (None: unchanged)."""
    out = [images[:, None]]
    if views:
        drawn = []
        # One CPU thread for these many small kernels: with two, thread hand-offs cost more than the
        # work (benchmarks/bench_cache_augment.py).
        before = torch.get_num_threads()
        torch.set_num_threads(threads or before)
        try:
            for image, fingerprint in zip(images, fingerprints, strict=True):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(view_seed(seed, fingerprint))
                    drawn.append(augment(image[None].expand(views, -1, -1, -1).contiguous()))
        finally:
            torch.set_num_threads(before)
        out.append(torch.stack(drawn))
    return torch.cat(out, dim=1)


def load_images(dataset: ImageDataset, indices: Sequence[int]) -> Tensor:
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return torch.stack(list(pool.map(lambda i: dataset[int(i)][0], indices)))


def extract(frozen: nn.Module, batch: Tensor, precision: str, channels_last: bool, device: torch.device) -> Tensor:
    batch = batch.to(device)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.inference_mode(), autocast:
        out = frozen(batch)
    return out.float().cpu()


def compute_outputs(
    dataset,
    frozen,
    augment,
    todo,
    views,
    seed,
    batch_size,
    precisions,
    channels_last,
    device,
    bar,
    known_clean: Mapping[str, np.ndarray] | None = None,
    fp32_runner: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs of ``frozen`` for ``todo`` [(fingerprint, index into dataset)]: ``fingerprints``
    (n,), ``clean`` (n, *S) and ``views`` (n, V, *S), float16. ``known_clean``: fingerprint -> (*S)
    float16 clean outputs already computed (another entry's, same encoder and images): those images
    get only their views computed. The views are computed in the same batches either way.
    ``fp32_runner``: what runs the fp32 passes instead of torch (:mod:`asymcl.data.cache_engine`)."""
    known = known_clean or {}
    was_training = frozen.training
    frozen.eval()
    per_chunk = max(1, batch_size // (1 + views))
    clean_out: list[np.ndarray] = []
    views_out: list[np.ndarray] = []
    clean_precision, view_precision = precisions

    def run(batch: Tensor, precision: str) -> Tensor:
        if precision == "fp32" and fp32_runner is not None:
            return torch.cat([fp32_runner(batch[i : i + batch_size]) for i in range(0, len(batch), batch_size)])
        return torch.cat(
            [
                extract(frozen, batch[i : i + batch_size], precision, channels_last, device)
                for i in range(0, len(batch), batch_size)
            ]
        )

    try:
        for offset in range(0, len(todo), per_chunk):
            chunk = todo[offset : offset + per_chunk]
            images = load_images(dataset, [index for _, index in chunk])
            fingerprints = [fp for fp, _ in chunk]
            rendered = render_views(images, fingerprints, augment, views, seed)
            needed = [row for row, fp in enumerate(fingerprints) if fp not in known]
            computed = dict(zip(needed, run(rendered[needed, 0], clean_precision), strict=True)) if needed else {}
            outputs = torch.stack(
                [
                    computed[row] if row in computed else torch.tensor(known[fp], dtype=torch.float32)
                    for row, fp in enumerate(fingerprints)
                ]
            )[:, None]
            if views:
                viewed = run(rendered[:, 1:].flatten(0, 1), view_precision)
                outputs = torch.cat([outputs, viewed.view(len(chunk), views, *viewed.shape[1:])], dim=1)
            half = outputs.half()
            if not torch.isfinite(half).all():
                raise DataError(
                    "feature cache: the frozen part's outputs exceed the float16 range; cache the "
                    "pooled features (model.finetune=frozen) or train more blocks"
                )
            clean_out.append(half[:, 0].numpy())
            views_out.append(half[:, 1:].numpy())
            if bar is not None:
                bar.update(len(chunk))
    finally:
        frozen.train(was_training)
    return {
        "fingerprints": np.array([fp for fp, _ in todo]),
        "clean": np.concatenate(clean_out),
        "views": np.concatenate(views_out),
    }


def output_shape(frozen: nn.Module, image: Tensor, device: torch.device) -> tuple[int, ...]:
    """``frozen``'s output shape (without the batch axis) for ``image`` (1, C, H, W), found on a copy
    on the meta device (shapes only: no arithmetic, no memory), else by one real forward pass."""
    import copy

    try:
        probe = copy.deepcopy(frozen).to("meta")
        with torch.no_grad():
            return tuple(probe(image.to("meta")).shape[1:])
    except (NotImplementedError, RuntimeError):  # an operation without a meta kernel
        return tuple(extract(frozen, image, "fp32", False, device).shape[1:])

"""Batches for the Lightning modules.

For small datasets (``data.in_memory``, the default) the whole split is held as one uint8 tensor
(N, C, H, W) and a batch is made by indexing it with a list of indices: one ``tensor[index]`` per
batch instead of N ``__getitem__`` calls and a collate, which dominates the time on a CPU for
28x28 images. Batches stay uint8 until they reach the device (4x less to copy);
``to_float_images`` converts them there. Large datasets use the ordinary per-item path.

Sampling is our own small batch sampler rather than Lightning's injected DistributedSampler,
because it must (a) yield index lists for the in-memory path, (b) be seeded by ``(seed, epoch)``
only, so a resumed epoch draws exactly the batches of an uninterrupted one, and (c) shard the same
global order across DDP ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class InMemoryBatches(Dataset):
    """``dataset[list_of_indices]`` -> (uint8 images (B, C, H, W), int64 labels (B,))."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long, device=self.labels.device)
        return self.images[index], self.labels[index]


class IndexBatchSampler(Sampler[list[int]]):
    """Index lists of ``batch_size`` for one rank.

    ``order``: how one epoch's global order is drawn, from ``np.random.default_rng([seed, epoch])``:
    ``"sequential"`` (evaluation), ``"shuffle"`` (a permutation), or a ``base`` sampler with
    ``set_epoch`` (e.g. :class:`asymcl.data.ClassBalancedSampler`) that draws it. Training drops
    the incomplete last batch (a contrastive batch of one image has no pairs), but always yields at
    least one batch. Rank r of R takes global batches r, r + R, ...; evaluation shards keep every
    index exactly once over the ranks.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        order: str = "sequential",
        base: Sampler[int] | None = None,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if order not in ("sequential", "shuffle", "base") or (order == "base") != (base is not None):
            raise ValueError("order must be 'sequential', 'shuffle', or 'base' with a base sampler")
        self.num_items = num_items
        self.batch_size = batch_size
        self.order = order
        self.base = base
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.base is not None and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def _global_order(self) -> np.ndarray:
        if self.order == "shuffle":
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        if self.base is not None:  # order "base": __init__ takes a base sampler with it only
            if hasattr(self.base, "global_draw"):  # the same draw on every rank; we shard below
                return np.asarray(self.base.global_draw())
            return np.fromiter(iter(self.base), dtype=np.int64)
        return np.arange(self.num_items)

    def _batches(self) -> list[np.ndarray]:
        order = self._global_order()
        if self.drop_last:
            full = max(1, len(order) // self.batch_size)
            per_rank = max(1, full // self.world_size)
            batches = [
                order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(per_rank * self.world_size)
            ]
            return batches[self.rank :: self.world_size]
        shard = order[self.rank :: self.world_size]
        return [shard[i : i + self.batch_size] for i in range(0, len(shard), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        n = len(self._global_order()) if self.order == "base" else self.num_items
        if self.drop_last:
            return max(1, max(1, n // self.batch_size) // self.world_size)
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size) if n else 0


def make_loader(
    dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int,
    sampler: str = "random",
    in_memory: bool = True,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    cached: tuple[Tensor, Tensor] | None = None,
) -> DataLoader:
    """A DataLoader over an :class:`asymcl.data.ImageDataset` (see the module docstring).

    ``sampler``: ``"random"`` (a seeded permutation per epoch), ``"class_balanced"``
    (:class:`asymcl.data.ClassBalancedSampler`) or ``"m_per_class"``
    (:class:`asymcl.data.MPerClassBatchSampler`, m = batch_size // classes, so a batch holds
    m * classes images); evaluation loaders are sequential.
    ``cached``: the split's ``load_all()`` result, when the caller already holds it; on an
    accelerator it may live there (batches are then indexed on the device: no host copy per step).
    """
    n = len(dataset)
    if train and sampler == "m_per_class":
        from asymcl.data import MPerClassBatchSampler

        classes = np.unique(np.asarray(dataset.targets)).size
        batches = MPerClassBatchSampler(
            dataset.targets, batch_size // classes, seed=seed, rank=rank, world_size=world_size
        )
    elif train and sampler == "class_balanced":
        from asymcl.data import ClassBalancedSampler

        base = ClassBalancedSampler(dataset.targets, seed=seed, num_replicas=1, rank=0)
        batches = IndexBatchSampler(
            n, batch_size, order="base", base=base, seed=seed, drop_last=True, rank=rank, world_size=world_size
        )
    else:
        batches = IndexBatchSampler(
            n,
            batch_size,
            order="shuffle" if train else "sequential",
            seed=seed,
            drop_last=train,
            rank=rank,
            world_size=world_size,
        )
    if in_memory:
        images, labels = cached if cached is not None else dataset.load_all()
        return DataLoader(
            InMemoryBatches(images, labels),
            sampler=batches,
            batch_size=None,
            num_workers=0,
            generator=_own_generator(seed),
        )
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=_own_generator(seed),
    )


def _own_generator(seed: int) -> torch.Generator:
    """Making a DataLoader iterator draws a base seed; from its own generator it leaves torch's
    global one (which drives augmentation) untouched."""
    return torch.Generator().manual_seed(seed)


def to_float_images(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) in 0..255 -> float32 in [0, 1]; float input is passed through."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()

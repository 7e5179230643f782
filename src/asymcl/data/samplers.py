"""Class-balanced sampling that also works when training runs in several processes."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from asymcl.errors import DataError


def _label_array(targets, sampler: str) -> np.ndarray:
    """(N,) int64 labels from an array, a tensor or a dataset with ``.targets``; at least one."""
    if hasattr(targets, "targets"):
        targets = targets.targets
    if isinstance(targets, torch.Tensor):
        targets = targets.cpu().numpy()
    labels = np.asarray(targets, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise DataError(f"{sampler} needs at least one sample")
    return labels


class ClassBalancedSampler(Sampler[int]):
    """Draw indices with replacement, each with probability proportional to 1 / n_{y_i}.

    So every class present is drawn equally often in expectation: P(class k) = 1 / K' for the K'
    classes with at least one sample. Each epoch makes one global draw of
    ``num_replicas * ceil(num_samples / num_replicas)`` indices from a generator seeded with
    ``(seed, epoch)``; rank r takes positions r, r + R, r + 2R, ... of it, so the ranks' shares are
    disjoint parts of the same draw. Its first ``num_samples`` positions are exactly the
    single-process draw (numpy draws the positions in order); when R does not divide
    ``num_samples`` the draw runs on for fewer than R extra positions, so that every rank gets the
    same number of indices (as torch's DistributedSampler pads).

    targets: (N,) class labels, or a dataset with ``.targets``.
    num_samples: indices per epoch over all ranks (default N).
    num_replicas, rank: taken from torch.distributed when it is initialised, else 1 and 0.
    Call :meth:`set_epoch` each epoch (Lightning does for a DistributedSampler-like object).
    """

    def __init__(
        self,
        targets: Sequence[int] | np.ndarray | torch.Tensor | object,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        labels = _label_array(targets, "ClassBalancedSampler")
        if labels.min() < 0:
            raise DataError(f"ClassBalancedSampler got the negative label {labels.min()}")
        if num_replicas is None or rank is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            if num_replicas is None:
                num_replicas = dist.get_world_size() if initialised else 1
            if rank is None:
                rank = dist.get_rank() if initialised else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise DataError(f"rank {rank} is not in range for num_replicas={num_replicas}")
        total = labels.size if num_samples is None else int(num_samples)
        if total < 1:
            raise DataError(f"num_samples={num_samples} must be >= 1")
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        self.probabilities = weights / weights.sum()
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = math.ceil(total / self.num_replicas)  # per rank
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_draw(self) -> np.ndarray:
        """(total_size,) the indices drawn this epoch over all ranks."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.choice(self.probabilities.size, size=self.total_size, replace=True, p=self.probabilities)

    def __iter__(self) -> Iterator[int]:
        share = self.global_draw()[self.rank :: self.num_replicas]
        return iter(share.tolist())

    def __len__(self) -> int:
        return self.num_samples


class MPerClassBatchSampler(Sampler[list[int]]):
    """Batches that hold exactly ``m`` images of every class, for one rank.

    With a random sampler at rho = 100 a batch of 128 holds about one minority image, so a
    contrastive loss has almost no minority positives; here every batch has m per class (m >= 1,
    and the two views of an image are positives of each other already, so m = 1 works too).

    Per epoch, from ``np.random.default_rng([seed, epoch])``: ``R * per_rank`` global batches, each
    made of, for each class c in order, m indices drawn from class c without replacement when
    n_c >= m and with replacement otherwise (rare classes repeat within a batch). Rank r takes
    global batches r, r + R, ...: every rank's batch holds the promised m per class, and the ranks'
    batches are different draws of the same epoch. ``per_rank`` = max(1, N // (m K) // R), so an
    epoch shows about N images over all ranks, as the other samplers do.

    targets: (N,) labels (or a dataset with ``.targets``). Classes are the labels present.
    """

    def __init__(self, targets, m: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        labels = _label_array(targets, "MPerClassBatchSampler")
        if int(m) < 1:
            raise DataError(
                f"m-per-class sampling needs m >= 1 image of each class per batch, got m={m} "
                "(raise the batch size to at least the number of classes)"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in range for world_size={world_size}")
        self.classes = np.unique(labels)
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        self.m = int(m)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.per_rank = max(1, labels.size // (self.m * len(self.classes)) // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's ``world_size * per_rank`` batches over all ranks, each (m * K,)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for _ in range(self.per_rank * self.world_size):
            parts = [
                members[rng.choice(members.size, self.m, replace=members.size < self.m)] for members in self.members
            ]
            batches.append(np.concatenate(parts))
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.rank :: self.world_size]:
            yield batch.tolist()

    def __len__(self) -> int:
        return self.per_rank

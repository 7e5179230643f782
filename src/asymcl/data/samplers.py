"""Class-balanced sampling that also works when training runs in several processes."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from asymcl.errors import DataError


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
        if hasattr(targets, "targets"):
            targets = targets.targets
        if isinstance(targets, torch.Tensor):
            targets = targets.cpu().numpy()
        labels = np.asarray(targets, dtype=np.int64).reshape(-1)
        if labels.size == 0:
            raise DataError("ClassBalancedSampler needs at least one sample")
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

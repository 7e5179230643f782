"""The data of a run (:class:`RunData`) and a stage's Lightning DataModule over it."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from asymcl.training.config import RunConfig
from asymcl.training.data_module import make_loader, to_float_images
from asymcl.training.methods import stage_seed


def data_spec(config: RunConfig):
    """The data layer's :class:`~asymcl.data.DataSpec` for this run: the ``data`` section's
    what-to-load fields (the same declaration, :class:`~asymcl.data.spec.DataFields`) and the run's
    seed."""
    from dataclasses import fields

    from asymcl.data.spec import DataFields, DataSpec

    return DataSpec(**{f.name: getattr(config.data, f.name) for f in fields(DataFields)}, seed=config.seed)


class RunData:
    """The splits, loaded once (and held as tensors when ``data.in_memory``).

    What the modules need from the data (``num_classes``, ``channels``, ``image_hw``,
    ``dataset_name``, ``class_counts``) is plain attributes, so :meth:`shape_only` can stand in for
    the data where only a model's layout is needed (``asymcl predict``).
    """

    def __init__(self, config: RunConfig):
        from asymcl.data import build_splits
        from asymcl.training.encoder import uses_feature_cache

        self.splits = build_splits(data_spec(config))
        self.classes = list(self.splits.classes)
        self.num_classes = len(self.classes)
        train = self.splits["train"]
        self.channels, height, width = train.image_shape
        self.image_hw = (height, width)
        self.dataset_name = config.data.dataset
        self.class_counts = torch.as_tensor(np.bincount(train.targets, minlength=self.num_classes))
        self.feature_caches: dict | None = None
        # A run from cached features never needs the decoded images (attach_feature_caches).
        self.in_memory = config.data.in_memory and not uses_feature_cache(config)
        self.cache = {name: ds.load_all() for name, ds in self.splits.splits.items()} if self.in_memory else {}
        self._on_device: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def attach_feature_caches(self, caches: dict) -> None:
        """Train from ``{split: FeatureCache}``: the loaders then yield (image indices, labels)
        batches, which the modules look up in the caches."""
        self.feature_caches = caches
        self.in_memory = True
        self.cache = {
            name: (torch.arange(len(ds)), torch.as_tensor(ds.targets, dtype=torch.long))
            for name, ds in self.splits.splits.items()
        }

    @classmethod
    def shape_only(cls, *, num_classes: int, channels: int, image_hw: tuple[int, int], dataset_name: str) -> RunData:
        """The attributes a module is built from, without loading any data."""
        data = cls.__new__(cls)
        data.splits, data.cache, data.in_memory, data.feature_caches = None, {}, False, None
        data._on_device = {}
        data.classes = [str(k) for k in range(num_classes)]
        data.num_classes, data.channels, data.image_hw = num_classes, channels, (image_hw[0], image_hw[1])
        data.dataset_name = dataset_name
        data.class_counts = torch.ones(num_classes, dtype=torch.long)
        return data

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        sampler: str = "random",
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ):
        """``device``: an accelerator to hold the in-memory split on (copied once per run and
        device, as uint8); None or a CPU device keeps it in host memory."""
        cached = self.cache.get(split)
        if cached is not None and device is not None and torch.device(device).type != "cpu":
            key = (split, str(device))
            if key not in self._on_device:
                self._on_device[key] = (cached[0].to(device), cached[1].to(device))
            cached = self._on_device[key]
        return make_loader(
            self.splits[split],
            batch_size,
            train=train,
            seed=seed,
            sampler=sampler,
            in_memory=self.in_memory,
            num_workers=num_workers,
            rank=rank,
            world_size=world_size,
            cached=cached,
        )


class SplitsDataModule(pl.LightningDataModule):
    """One stage's loaders over a :class:`RunData`. At module level (not inside a function) so that
    it pickles, as ``trainer.strategy=ddp_spawn`` requires."""

    def __init__(self, data: RunData, config: RunConfig, stage: str):
        super().__init__()
        self.data = data
        self.batch_size = config.stage_section(stage).batch_size
        self.sampler = config.stage_sampler(stage)
        self.seed = stage_seed(config.seed, stage)
        self.num_workers = config.data.num_workers
        self.channels_last = config.trainer.channels_last

    def on_after_batch_transfer(self, batch, dataloader_idx: int = 0):
        inputs, labels = batch
        if self.data.feature_caches is not None:
            return inputs, labels  # image indices into the feature caches
        images = to_float_images(inputs)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def _loader(self, split: str, train: bool, sampler: str = "random"):
        trainer = self.trainer
        if trainer is None:  # Lightning attaches the trainer before it asks for a loader
            raise RuntimeError("SplitsDataModule builds its loaders for a Trainer; attach it to one first")
        return self.data.loader(
            split,
            self.batch_size,
            train=train,
            seed=self.seed,
            sampler=sampler,
            num_workers=self.num_workers,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            device=trainer.strategy.root_device,
        )

    def train_dataloader(self):
        return self._loader("train", True, self.sampler)

    def val_dataloader(self):
        return self._loader("val", False)

    def probe_dataloader(self):
        """The un-augmented training split, for stage 1's nearest-class-mean probe."""
        return self._loader("train", False)

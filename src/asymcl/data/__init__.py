"""Layer 2, data: sources, imbalance profiles, splits and samplers.

>>> from asymcl.data import DataSpec, build_splits
>>> splits = build_splits(DataSpec(dataset="fashion-mnist", root="data/fmnist",
...                                imbalance="binary:100", classes=[0, 6], seed=0))
>>> splits.classes, {k: len(v) for k, v in splits.splits.items()}

See :mod:`asymcl.data.splits` for the protocol (which split is carved from what) and
:mod:`asymcl.data.imbalance` for the profiles.
"""

from asymcl.data.datasets import ArrayImageDataset, FileImageDataset, ImageDataset
from asymcl.data.imbalance import ImbalanceProfile, parse_imbalance
from asymcl.data.samplers import ClassBalancedSampler
from asymcl.data.splits import DATASETS, DataSpec, Splits, build_splits, resolve_classes

__all__ = [
    "DATASETS",
    "ArrayImageDataset",
    "ClassBalancedSampler",
    "DataSpec",
    "FileImageDataset",
    "ImageDataset",
    "ImbalanceProfile",
    "Splits",
    "build_splits",
    "parse_imbalance",
    "resolve_classes",
]

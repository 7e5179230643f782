"""Layer 2, data: sources, imbalance profiles, splits and samplers.

>>> from asymcl.data import DataSpec, build_splits
>>> splits = build_splits(DataSpec(dataset="fashion-mnist", root="data/fmnist",
...                                imbalance="binary:100", classes=[0, 6], seed=0))
>>> splits.classes, {k: len(v) for k, v in splits.splits.items()}

See :mod:`asymcl.data.splits` for the protocol (which split is carved from what) and
:mod:`asymcl.data.imbalance` for the profiles.
"""

import importlib

# Exported names -> the module defining them, imported on first use (PEP 562): the CLI reads
# asymcl.data.spec to build its options without importing torch.
_EXPORTS = {
    "ArrayImageDataset": "datasets",
    "FileImageDataset": "datasets",
    "ImageDataset": "datasets",
    "ImbalanceProfile": "imbalance",
    "parse_imbalance": "imbalance",
    "ClassBalancedSampler": "samplers",
    "MPerClassBatchSampler": "samplers",
    "DATASETS": "spec",
    "IMAGE_SUFFIXES": "spec",
    "DataSpec": "spec",
    "Splits": "splits",
    "build_splits": "splits",
    "resolve_classes": "splits",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"asymcl.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'asymcl.data' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "IMAGE_SUFFIXES",
    "ArrayImageDataset",
    "ClassBalancedSampler",
    "DataSpec",
    "FileImageDataset",
    "ImageDataset",
    "ImbalanceProfile",
    "MPerClassBatchSampler",
    "Splits",
    "build_splits",
    "parse_imbalance",
    "resolve_classes",
]

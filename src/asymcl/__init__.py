"""asymcl: asymmetric focal contrastive learning for class-imbalanced image data.

Layers (each importable without the ones above it):

1. :mod:`asymcl.losses`      pure PyTorch losses (CL, FCL, ACL, AFCL, SupCon)
2. :mod:`asymcl.data`, :mod:`asymcl.models`   datasets, imbalance, samplers, augmentation, backbones
3. :mod:`asymcl.training`    Lightning modules and the two-stage pipeline
4. :mod:`asymcl.experiments` sweeps, reports, protocol presets
5. :mod:`asymcl.cli`         the ``asymcl`` command; :mod:`asymcl.api` whole runs from Python

Importing :mod:`asymcl` itself imports nothing heavy, so ``import asymcl.losses`` needs only torch.

The extension API (docs/extending.md) is re-exported here and imported on first use (PEP 562):
:func:`register_method` with a :class:`Method`, :func:`register_dataset` with a
:class:`DatasetInfo`, :func:`register_backbone` with a :class:`Backbone`, and
:func:`load_plugins`. Each registration function lives in the layer that owns its registry.

Whole runs from Python (docs/python-api.md) are re-exported the same way: :func:`train`,
:func:`sweep`, :func:`compare` and :func:`report`, which return a :class:`TrainResult`, a
:class:`SweepSummary`, a :class:`CompareSummary` and a :class:`ReportSummary`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Exported name -> the module defining it. A table rather than imports: `import asymcl` stays
# cheap (no torch), and the package root may name any layer only through this lazy lookup.
# The docs' reference page is built from this table (docs/tools/gen_pages.py).
_EXPORTS = {
    "register_method": "asymcl.training.methods",
    "Method": "asymcl.training.methods",
    "register_dataset": "asymcl.data.spec",
    "DatasetInfo": "asymcl.data.spec",
    "register_backbone": "asymcl.models.backbones",
    "Backbone": "asymcl.models.backbones",
    "load_plugins": "asymcl.plugins",
    "train": "asymcl.api",
    "sweep": "asymcl.api",
    "compare": "asymcl.api",
    "report": "asymcl.api",
    "TrainResult": "asymcl.api",
    "SweepSummary": "asymcl.api",
    "CompareSummary": "asymcl.api",
    "ReportSummary": "asymcl.api",
}

if TYPE_CHECKING:  # never runs: tells type checkers and IDEs what the lazy names are
    from asymcl.api import CompareSummary, ReportSummary, SweepSummary, TrainResult, compare, report, sweep, train


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'asymcl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["__version__", *_EXPORTS]

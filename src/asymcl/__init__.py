"""asymcl: asymmetric focal contrastive learning for class-imbalanced image data.

Layers (each importable without the ones above it):

1. :mod:`asymcl.losses`      pure PyTorch losses (CL, FCL, ACL, AFCL, SupCon)
2. :mod:`asymcl.data`, :mod:`asymcl.models`   datasets, imbalance, samplers, augmentation, backbones
3. :mod:`asymcl.training`    Lightning modules and the two-stage pipeline
4. :mod:`asymcl.experiments` sweeps, reports, protocol presets
5. :mod:`asymcl.cli`         the ``asymcl`` command; :mod:`asymcl.api` whole runs from Python
   (``asymcl.train``, ``asymcl.sweep``, ``asymcl.report``)

Importing :mod:`asymcl` itself imports nothing heavy, so ``import asymcl.losses`` needs only torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The whole-run API sits above every layer; it is imported on first use (PEP 562), so that
# `import asymcl` stays free of torch and Lightning. The TYPE_CHECKING import tells type checkers,
# IDEs and the docs what the names are; tests/test_architecture.py ignores it (it never runs).
if TYPE_CHECKING:
    from asymcl.api import ReportSummary, SweepSummary, TrainResult, report, sweep, train

#: name -> the module that defines it, imported when the name is first used.
_LAZY = {"train": "asymcl.api", "sweep": "asymcl.api", "report": "asymcl.api",
         "TrainResult": "asymcl.api", "SweepSummary": "asymcl.api", "ReportSummary": "asymcl.api"}

# A literal list: the docs read it without running this file (tests/test_api.py checks it against _LAZY).
__all__ = ["__version__", "train", "sweep", "report", "TrainResult", "SweepSummary", "ReportSummary"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'asymcl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

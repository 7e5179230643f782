"""The names of the ready-made comparisons, declared once and torch-free.

:mod:`asymcl.experiments.reproduce` and :mod:`asymcl.experiments.compare` hold what each name
means; the CLI builds its choices from these names when it builds its parser, which must not import
torch (``asymcl --help`` stays fast), so they live apart from the modules that use them.
"""

from __future__ import annotations

#: ``asymcl reproduce PRESET``: the benchmark protocols of method.md section 5.
PRESETS = ("fmnist-binary", "fmnist-lt", "isic2018")
#: ``asymcl reproduce --profile``.
PROFILES = ("quick", "full", "pretrained", "gpu")
#: ``asymcl compare --profile``.
COMPARE_PROFILES = ("quick", "pretrained")
#: ``asymcl claim-grid --profile`` (the first is the default).
CLAIM_PROFILES = ("pretrained", "quick", "isic-pretrained")
#: ``asymcl levers --preset`` (the first is the default): the reproduce presets whose pretrained
#: recipe the lever ablation of :mod:`asymcl.experiments.levers` starts from.
LEVERS_PRESETS = ("isic2018", "fmnist-lt")

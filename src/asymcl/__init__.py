"""asymcl: asymmetric focal contrastive learning for class-imbalanced image data.

Layers (each importable without the ones above it):

1. :mod:`asymcl.losses`      pure PyTorch losses (CL, FCL, ACL, AFCL, SupCon)
2. :mod:`asymcl.data`, :mod:`asymcl.models`   datasets, imbalance, samplers, augmentation, backbones
3. :mod:`asymcl.training`    Lightning modules and the two-stage pipeline
4. :mod:`asymcl.experiments` sweeps, reports, protocol presets
5. :mod:`asymcl.cli`         the ``asymcl`` command

Importing :mod:`asymcl` itself imports nothing heavy, so ``import asymcl.losses`` needs only torch.
"""

__version__ = "0.1.0"

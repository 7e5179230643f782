"""Batched image augmentation on the training device (kornia).

Each preset maps a float batch (B, C, H, W) in [0, 1] to an augmented batch of the same shape,
with independent random parameters per image. Stage 1 calls it twice on the same batch to make the
two views. Randomness comes from torch's global generator, which the trainer re-seeds at the
start of every epoch (so that a resumed run draws the same augmentations as an uninterrupted one).

Presets
-------
``grey28``: for small grey images (Fashion-MNIST, digits): random resized crop (scale 0.6-1,
    aspect 3/4-4/3), affine jitter (rotation 10 degrees, translation 10%), brightness/contrast
    jitter. No flips: they change the class of digits and characters.
``dermoscopy``: for skin-lesion photographs, whose orientation carries no meaning: random resized
    crop (scale 0.5-1), horizontal and vertical flips, any rotation, colour jitter (brightness,
    contrast, saturation 0.2, hue 0.05; brightness/contrast only for grey input).
``dermoscopy_lite``: ``dermoscopy`` without the hue jitter (kornia's hue step is an RGB-HSV round
    trip). It is cheaper where the feature cache renders augmented views on the CPU:
    benchmarks/bench_cache_augment.py measured 14% less time per image with one torch thread (the
    cache's setting), 1.5x less with two threads on a loaded machine. The pretrained presets use it.
``none``: identity.
"""

from __future__ import annotations

import kornia.augmentation as K
from torch import Tensor, nn

PRESETS = ("grey28", "dermoscopy", "dermoscopy_lite", "none")


class _Identity(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images


def build_augmentation(preset: str, image_size: tuple[int, int], channels: int) -> nn.Module:
    """Return the preset's module; ``image_size`` is (H, W) of the batches it will see."""
    size = (int(image_size[0]), int(image_size[1]))
    if preset == "none":
        return _Identity()
    if preset == "grey28":
        ops: list[K.AugmentationBase2D] = [
            K.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.75, 1.333)),
            K.RandomAffine(degrees=10.0, translate=(0.1, 0.1), p=0.8),
            K.ColorJiggle(brightness=0.3, contrast=0.3, p=0.8),
        ]
    elif preset in ("dermoscopy", "dermoscopy_lite"):
        hue = 0.05 if preset == "dermoscopy" else 0.0
        jitter = (
            K.ColorJiggle(brightness=0.2, contrast=0.2, saturation=0.2, hue=hue, p=0.8)
            if channels == 3
            else K.ColorJiggle(brightness=0.2, contrast=0.2, p=0.8)
        )
        ops = [
            K.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(0.75, 1.333)),
            K.RandomHorizontalFlip(),
            K.RandomVerticalFlip(),
            K.RandomRotation(degrees=180.0, p=0.75),
            jitter,
        ]
    else:
        raise ValueError(f"augmentation preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    return _Clamp(K.AugmentationSequential(*ops, data_keys=["input"]))


class _Clamp(nn.Module):
    """Keep pixels in [0, 1] after colour jitter (kornia's jitter can overshoot slightly)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, images: Tensor) -> Tensor:
        return self.inner(images).clamp_(0.0, 1.0)

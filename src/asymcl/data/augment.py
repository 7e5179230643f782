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

``dihedral`` is not a training preset (``data.augment`` refuses it) but the fixed views of
``eval.tta_augment=dihedral``: row j of the batch becomes the j-th non-identity symmetry of the square,
in the order horizontal flip, vertical flip, half turn, transpose, quarter turn, three-quarter turn,
anti-transpose (all 7 of a square image; the first 3, which keep the shape, of any other). No random
draw: the same image always gives the same views.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from asymcl.errors import DataError

PRESETS = ("grey28", "dermoscopy", "dermoscopy_lite", "none")
DIHEDRAL = "dihedral"
#: The symmetries of ``dihedral`` in view order, as (transpose first?, flip dims after); the first 3
#: keep a non-square image's shape.
_SYMMETRIES = (
    (False, (3,)),  # horizontal flip
    (False, (2,)),  # vertical flip
    (False, (2, 3)),  # half turn
    (True, ()),  # transpose (main diagonal)
    (True, (3,)),  # quarter turn (clockwise)
    (True, (2,)),  # three-quarter turn
    (True, (2, 3)),  # anti-transpose
)


#: The most views ``dihedral`` has (those of a square image).
DIHEDRAL_VIEWS = len(_SYMMETRIES)


def dihedral_views(image_size: tuple[int, int]) -> int:
    """How many views ``dihedral`` has for images of ``image_size`` (H, W): 7 square, else 3."""
    return DIHEDRAL_VIEWS if image_size[0] == image_size[1] else 3


class Dihedral(nn.Module):
    """(V, C, H, W) -> the same shape, row j the j-th symmetry of ``dihedral`` (see the module docstring)."""

    def __init__(self, image_size: tuple[int, int]):
        super().__init__()
        self.views = dihedral_views(image_size)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[0] > self.views:
            shape = "a square image" if self.views == DIHEDRAL_VIEWS else "a non-square image (flips and half turn)"
            raise DataError(
                f"eval.tta_augment=dihedral has {self.views} views of {shape}; eval.tta_views asks for "
                f"{images.shape[0]}: set it to {self.views} or fewer"
            )
        out = []
        for image, (transpose, dims) in zip(images, _SYMMETRIES, strict=False):
            view = image.transpose(-1, -2) if transpose else image
            out.append(view.flip([d - 1 for d in dims]) if dims else view)
        return torch.stack(out)

    def extra_repr(self) -> str:
        return f"views={self.views}"


class _Identity(nn.Module):
    def forward(self, images: Tensor) -> Tensor:
        return images


def build_augmentation(preset: str, image_size: tuple[int, int], channels: int) -> nn.Module:
    """Return the preset's module; ``image_size`` is (H, W) of the batches it will see."""
    size = (int(image_size[0]), int(image_size[1]))
    if preset == "none":
        return _Identity()
    if preset == DIHEDRAL:
        return Dihedral(size)
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

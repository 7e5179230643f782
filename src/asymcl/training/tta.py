"""Test-time augmentation (``eval.tta_views`` = V > 0) for a run's evaluation and ``asymcl predict --tta``.

For an image x with views v_1..v_V the prediction is the mean of the softmax probabilities

    p(x) = (softmax(g(x)) + sum_{j=1..V} softmax(g(v_j))) / (1 + V)          (K,)

with g the final model (encoder + classifier). The views are the feature cache's own
(:func:`asymcl.data.feature_cache.render_views`): the run's augmentation preset at the images'
size, drawn per image from a generator seeded by (the views' seed, the image's fingerprint: the
bytes of its file, or of its pixels for in-memory data). The views' seed is that of the run's
cached training views, :func:`asymcl.training.encoder.views_seed`: ``data.cache_seed``, or the
run's seed when that is null, so that each seed then evaluates on its own draw of views too. So the
same image and seed give the same views whether they come from the run's cache (val/test entries
with V views, extracted in float32 like the clean images, keyed by that seed), are rendered live
(a run without the cache), or are rendered by ``predict --tta`` from the image file. The exported
model stays single-view (one forward pass).

``eval.tta_augment=dihedral`` replaces those drawn views by fixed ones: the image's flips and quarter
turns (:class:`asymcl.data.augment.Dihedral`), label-preserving for images whose orientation carries no
meaning (dermoscopy). They draw nothing, so every run seed shares one cache entry of them (its seed is
0, :func:`tta_seed`), and ``predict --tta`` renders the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

# The views' seed and preset rule live beside the cache's views seed (encoder.views_seed), which the
# cache builder there reads too; predict and the run's evaluation reach them through here.
from asymcl.training.encoder import tta_seed, tta_views_preset  # noqa: F401  (tta_seed: public here)


def tta_preset(config, dataset_name: str, channels: int) -> str:
    """The augmentation preset of the run's test-time views: ``dihedral``, or (``eval.tta_augment``
    ``train``) the run's own training preset (:func:`asymcl.training.encoder.tta_views_preset`)."""
    from asymcl.training.modules import augmentation_preset

    return tta_views_preset(config, augmentation_preset(config, dataset_name, channels))


def tta_augmentation(config, dataset_name: str, channels: int, image_hw: tuple[int, int]):
    """The module that renders the run's test-time views at ``image_hw``."""
    from asymcl.data.augment import build_augmentation

    return build_augmentation(tta_preset(config, dataset_name, channels), image_hw, channels)


@torch.no_grad()
def _mean_probabilities(module, stacked: Tensor, from_frozen: bool) -> Tensor:
    """(B, 1 + V, *S) inputs -> (B, K): softmax of every row through the final model, averaged."""
    rows = stacked.flatten(0, 1)
    features = module.encoder.from_frozen(rows) if from_frozen else module.encoder(rows)
    probs = torch.softmax(module.classifier(features).float(), dim=1)
    return probs.view(stacked.shape[0], stacked.shape[1], -1).mean(dim=1)


@torch.no_grad()
def image_tta_probabilities(
    module, images: Tensor, fingerprints: Sequence[str], augment, views: int, seed: int, batch_size: int = 64
) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] -> (N, K) TTA probabilities, the views rendered here.

    ``seed``: the run's test-time views seed, :func:`tta_seed` (``data.cache_seed``, or the run's seed
    when that is null; 0 for dihedral views), the seed its cached val/test views are drawn and keyed by."""
    from asymcl.data.feature_cache import render_views

    module.eval()
    device = next(module.parameters()).device
    out = []
    per_chunk = max(1, batch_size // (1 + views))
    for start in range(0, len(images), per_chunk):
        chunk = images[start : start + per_chunk].float()
        stacked = render_views(chunk, fingerprints[start : start + per_chunk], augment, views, seed)
        out.append(_mean_probabilities(module, stacked.to(device), from_frozen=False).cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def cached_tta_probabilities(module, cache, batch_size: int = 64) -> np.ndarray:
    """(N, K) TTA probabilities of every image of a feature cache with views (val/test under
    ``eval.tta_views``): the clean entry and every cached view through the trainable rest."""
    module.eval()
    device = next(module.parameters()).device
    per_chunk = max(1, batch_size // (1 + cache.num_views))
    out = []
    for rows in torch.arange(len(cache)).split(per_chunk):
        stacked = torch.cat([cache.clean[rows][:, None], cache.views[rows]], dim=1).float()
        out.append(_mean_probabilities(module, stacked.to(device), from_frozen=True).cpu())
    return torch.cat(out).numpy()


def split_tta_probabilities(module, config, data, split: str) -> np.ndarray:
    """TTA probabilities of a run's ``split``: from its feature cache when the run has one, else
    the images' views rendered live (the same views: same preset, seed and fingerprints)."""
    if data.feature_caches is not None:
        return cached_tta_probabilities(module, data.feature_caches[split])
    from asymcl.data.feature_cache import image_fingerprints

    dataset = data.splits[split]
    images = data.cache[split][0] if split in data.cache else dataset.load_all()[0]
    return image_tta_probabilities(
        module,
        images.float().div(255.0),
        image_fingerprints(dataset),
        tta_augmentation(config, data.dataset_name, data.channels, data.image_hw),
        config.eval.tta_views,
        tta_seed(config),
    )

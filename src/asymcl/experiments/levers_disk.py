"""The plan of a lever ablation: what each arm's feature cache will take on disk, estimated before
anything is extracted (``asymcl levers --dry-run`` and the refusal of a plan that would not fit).
Kept apart from :mod:`asymcl.experiments.levers` (the arms and the rule) because it reads the data's
splits and builds networks on the meta device, which the rule never needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from asymcl.experiments.levers import SEEDS


def cache_shape(config, image_shape: Sequence[int]) -> tuple[int, ...]:
    """The shape of one cached output (no batch axis) of a resolved run config whose data's images
    are ``image_shape`` (C, H, W; ``data.image_size`` where the config sets it): a frozen network's
    features (its ``feature_dim``, multi-layer taps included), or for last:K the frozen prefix's
    output map, run on the meta device (no weights read, no memory)."""
    import torch

    from asymcl.models import parse_finetune
    from asymcl.training.encoder import build_encoder

    channels, height, width = image_shape
    if config.data.image_size is not None:
        height = width = int(config.data.image_size)
    with torch.device("meta"):
        encoder = build_encoder(config, int(channels), (int(height), int(width)), load_pretrained=False)
        if parse_finetune(config.model.finetune)[0] == "frozen":
            return (int(encoder.feature_dim),)
        return tuple(encoder.frozen_input()(torch.empty(1, channels, height, width)).shape[1:])


def _pool(split: str) -> str:
    # An image's id is unique within the source's pool, not across pools (Fashion-MNIST's ids are
    # row numbers in each IDX file): the test splits come from the test pool, the others from the
    # training pool (ISIC's ids are file names, unique anyway).
    return "test" if split.startswith("test") else "train"


def _images(
    base: Mapping[str, Any], method: str, seeds: Sequence[int] = SEEDS
) -> tuple[int, int, tuple[int, int, int]]:
    """:func:`image_counts`, and the (C, H, W) of the training images."""
    from asymcl.data import build_splits
    from asymcl.training.config import resolve_config
    from asymcl.training.run_data import data_spec

    per_seed: list[tuple[set, set]] = []
    for seed in seeds:
        config = resolve_config({**base, "method": method, "seed": seed})
        splits = build_splits(data_spec(config))
        train: set[tuple[str, str]] = set()
        evaluation: set[tuple[str, str]] = set()
        for name, dataset in splits.splits.items():
            (train if name == "train" else evaluation).update((_pool(name), str(i)) for i in dataset.ids)
        per_seed.append((train, evaluation))
    shape = splits.splits["train"].image_shape
    if config.data.cache_seed is None:  # each seed its own draw: its own entries
        return sum(len(t) for t, _ in per_seed), sum(len(e) for _, e in per_seed), shape
    return len(set().union(*(t for t, _ in per_seed))), len(set().union(*(e for _, e in per_seed))), shape


def image_counts(base: Mapping[str, Any], method: str) -> tuple[int, int]:
    """(training images, validation + test images) that the seeds' caches hold. Each seed has its
    own split; with one draw of views shared by the seeds (``data.cache_seed`` set, ISIC) an entry
    holds every image any seed asked for (found by fingerprint), so the images are counted once;
    with a draw per seed (``data.cache_seed`` null, Fashion-MNIST-LT) every seed has entries of its
    own (the clean features of one seed's evaluation images are copied into the next seed's entry,
    :func:`asymcl.data.cache_store.borrow_clean`), so each seed's images are counted."""
    n_train, n_eval, _ = _images(base, method)
    return n_train, n_eval


def disk_estimates(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{arm: (bytes of its feature caches, bytes not already counted for an earlier arm)}`` from
    the cache's own estimate (:func:`asymcl.data.cache_store.estimate_bytes`)."""
    from asymcl.data.cache_store import estimate_bytes
    from asymcl.training.config import resolve_config

    first = next(iter(specs.values()))
    method = next(iter(first["settings"]))
    n_train, n_eval, image_shape = _images(first["base"], method, first["grid"]["seed"])
    seen: set[tuple] = set()
    shapes: dict[tuple, tuple[int, ...]] = {}
    out = {}
    for name, raw in specs.items():
        config = resolve_config({**raw["base"], "method": method, "seed": SEEDS[0]})
        model = config.model
        identity = (model.backbone, config.data.image_size, model.finetune, tuple(model.feature_layers or ()))
        if identity not in shapes:
            shapes[identity] = cache_shape(config, image_shape)
        shape = shapes[identity]
        entries = {
            (*identity, "train", config.data.cache_views): estimate_bytes(shape, n_train, config.data.cache_views),
            (*identity, "eval", config.eval.tta_views): estimate_bytes(shape, n_eval, config.eval.tta_views),
        }
        out[name] = (sum(entries.values()), sum(v for k, v in entries.items() if k not in seen))
        seen.update(entries)
    return out

"""Real-data check of the EfficientNet-Lite preprocessing, and the encoder choice: a linear probe.

Frozen ImageNet EfficientNet-Lite features (clean images, no augmentation) of ISIC 2018 Task 3,
extracted through the feature cache with the same frozen module and key as the pipeline (so a
probe reuses the `pretrained` preset's cache and the other way round); a class-weighted logistic
regression (scikit-learn) on standardised features, its C chosen by UA on the lesion-grouped
validation split of :func:`asymcl.data.build_splits`, scored on the official test images, for each
seed's split. Several ``--backbone`` values probe each one and their concatenated features.
``../shared/method.md`` gives about 59% UA / 60% WA for Lite0 at 224 px as the reference: far
below it means the preprocessing does not match the weights.

    python benchmarks/isic_linear_probe.py --root ../shared/datasets/isic2018 --size 260 \
        --backbone efficientnet_lite2 --backbone efficientnet_lite0 --seeds 0 1 2

A second run reuses the cache (prints "0 computed").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from asymcl.data import DataSpec, build_splits
from asymcl.data.feature_cache import build_feature_cache
from asymcl.training.encoder import Encoder

C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)


def clean_features(backbone: str, splits, size: int, precision: str, cache_dir) -> dict[str, np.ndarray]:
    frozen = Encoder(backbone, 3, (size, size), pretrained="imagenet", finetune="frozen").frozen_input().eval()
    return {
        name: build_feature_cache(
            dataset, frozen, augmentation="none", views=0, seed=0, cache_dir=cache_dir, precision=precision
        )
        .clean.float()
        .numpy()
        for name, dataset in splits.splits.items()
    }


def probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """C chosen by validation UA; UA/WA on validation and test in percent."""
    scaler = StandardScaler().fit(features["train"])
    x = {k: scaler.transform(v) for k, v in features.items()}
    best = None
    for c in C_GRID:
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(x["train"], labels["train"])
        val_ua = balanced_accuracy_score(labels["val"], model.predict(x["val"]))
        if best is None or val_ua > best[0]:
            best = (val_ua, c, model)
    _, c, model = best
    out = {"C": c}
    for split in ("val", "test"):
        pred = model.predict(x[split])
        out[f"{split} UA"] = 100 * balanced_accuracy_score(labels[split], pred)
        out[f"{split} WA"] = 100 * float(np.mean(pred == labels[split]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument(
        "--backbone",
        action="append",
        help="repeat to probe several and their concatenation (default: efficientnet_lite0)",
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["auto", "bf16", "fp32"],
        help="fp32: the pipeline's clean-image precision, which shares its cache",
    )
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    backbones = args.backbone or ["efficientnet_lite0"]
    torch.manual_seed(0)

    arms = [*backbones, *(["+".join(backbones)] if len(backbones) > 1 else [])]
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        splits = build_splits(DataSpec(dataset="isic2018", root=args.root, image_size=args.size, seed=seed))
        labels = {name: np.asarray(ds.targets) for name, ds in splits.splits.items()}
        start = time.perf_counter()
        features = {b: clean_features(b, splits, args.size, args.precision, args.cache_dir) for b in backbones}
        print(
            f"seed {seed}: { ({k: len(v) for k, v in labels.items()}) }, features in "
            f"{time.perf_counter() - start:.1f} s (decoding included)"
        )
        if len(backbones) > 1:
            features[arms[-1]] = {s: np.concatenate([features[b][s] for b in backbones], 1) for s in labels}
        for arm in arms:
            row = probe(features[arm], labels)
            results[arm].append(row)
            print(
                f"  {arm} {args.size}px: C={row['C']}, val UA {row['val UA']:.1f} / WA {row['val WA']:.1f}; "
                f"test UA {row['test UA']:.1f} / WA {row['test WA']:.1f}"
            )
    print(f"mean over seeds {args.seeds}:")
    for arm, rows in results.items():
        mean = {k: np.mean([r[k] for r in rows]) for k in ("val UA", "val WA", "test UA", "test WA")}
        print(
            f"  {arm} {args.size}px: val UA {mean['val UA']:.1f} / WA {mean['val WA']:.1f}; "
            f"test UA {mean['test UA']:.1f} / WA {mean['test WA']:.1f}"
        )


if __name__ == "__main__":
    main()

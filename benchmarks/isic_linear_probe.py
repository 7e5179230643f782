"""Real-data check of the EfficientNet-Lite preprocessing and the feature cache: a linear probe.

Frozen ImageNet EfficientNet-Lite features (clean images, no augmentation) of ISIC 2018 Task 3
at 224 px, extracted through :func:`asymcl.data.feature_cache.build_feature_cache`; a
class-weighted logistic regression (scikit-learn) on standardised features, its C chosen by UA
on the lesion-grouped validation split of :func:`asymcl.data.build_splits`, scored on the
official test images. ``../shared/method.md`` gives about 59% UA / 60% WA for Lite0 as the
reference: far below it means the preprocessing does not match the weights.

    python benchmarks/isic_linear_probe.py --root ../shared/datasets/isic2018 [--backbone efficientnet_lite0]

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
from asymcl.models import apply_finetune, build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)

    splits = build_splits(DataSpec(dataset="isic2018", root=args.root, image_size=args.size, seed=args.seed))
    print({name: len(ds) for name, ds in splits.splits.items()}, "classes", splits.classes)
    encoder = build_backbone(args.backbone, 3, "imagenet")
    frozen, _ = apply_finetune(encoder, "frozen")
    features, labels = {}, {}
    start = time.perf_counter()
    for name in ("train", "val", "test"):
        dataset = splits.splits[name]
        cache = build_feature_cache(
            dataset, frozen, augmentation="none", views=0, seed=0, cache_dir=args.cache_dir,
            extra_key={"backbone": args.backbone, "weights": "imagenet"}, precision=args.precision,
        )
        features[name] = cache.clean.float().numpy()
        labels[name] = dataset.targets
    seconds = time.perf_counter() - start
    total = sum(len(v) for v in labels.values())
    print(f"features for {total} images in {seconds:.1f} s ({total / seconds:.1f} images/s incl. decoding)")

    scaler = StandardScaler().fit(features["train"])
    x = {k: scaler.transform(v) for k, v in features.items()}
    best = None
    for c in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
        model.fit(x["train"], labels["train"])
        val_ua = balanced_accuracy_score(labels["val"], model.predict(x["val"]))
        print(f"C={c:<6} val UA {100 * val_ua:.1f}")
        if best is None or val_ua > best[0]:
            best = (val_ua, c, model)
    val_ua, c, model = best
    pred = model.predict(x["test"])
    wa = float(np.mean(pred == labels["test"]))
    ua = balanced_accuracy_score(labels["test"], pred)
    val_wa = float(np.mean(model.predict(x["val"]) == labels["val"]))
    print(f"{args.backbone} {args.size}px frozen ImageNet features, C={c}: "
          f"val UA {100 * val_ua:.1f} / WA {100 * val_wa:.1f}; test UA {100 * ua:.1f} / WA {100 * wa:.1f} "
          f"({len(pred)} test images)")


if __name__ == "__main__":
    main()

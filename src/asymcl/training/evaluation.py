"""Evaluating a trained module on a split: its features, logits and the metrics of method.md section 4."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


@torch.no_grad()
def evaluate(module, data, split: str, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Features (N, F), logits (N, K), labels (N,) of ``split`` under ``module`` in eval mode."""
    module.eval()
    device = next(module.parameters()).device
    loader = data.loader(split, batch_size, train=False, seed=0)
    features, logits, labels = [], [], []
    from asymcl.training.data_module import to_float_images

    for inputs, targets in loader:
        inputs = inputs.to(device)
        if data.feature_caches is None:
            inputs = to_float_images(inputs)
        feats = module.encode(inputs, split)
        features.append(feats.float().cpu())
        logits.append(module.classifier(feats).float().cpu())
        labels.append(torch.as_tensor(targets).cpu())
    return {
        "features": torch.cat(features).numpy(),
        "logits": torch.cat(logits).numpy(),
        "labels": torch.cat(labels).numpy(),
    }


def split_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    from asymcl.training.modules import metric_collection, metrics_to_python

    # Local only: under DDP this runs on rank 0 alone, and a syncing metric would wait for the others.
    metrics = metric_collection(num_classes, sync_on_compute=False)
    metrics.update(torch.as_tensor(logits), torch.as_tensor(labels))
    return metrics_to_python(metrics.compute())

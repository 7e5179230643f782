"""``method=probe``: the practitioner's baseline, a class-weighted logistic regression on the frozen
pretrained encoder's clean features.

What a practitioner with an imbalanced dataset and a pretrained network tries first is
``LogisticRegression(class_weight="balanced")`` on its features, with C chosen on validation. A
comparison that leaves it out can credit a loss with what a one-liner already gives. scikit-learn
fits it (L-BFGS, multinomial), on standardised features:

    z = (x - mu) / sigma,   logits = W z + b
      = (W / sigma) x + (b - W (mu / sigma))

and the result is folded into the same :class:`asymcl.models.LinearClassifier` on the same
:class:`asymcl.training.encoder.Encoder` the end-to-end baselines train (adapter, if any, left at
its initial identity), so the run directory, ``predict``, ``export`` and reports treat it like any
other method. The encoder's outputs are those of the clean training images (from the feature cache
when the run trains from one), never augmented views. ``probe.c`` is the one hyperparameter; a
comparison tunes it on validation like every method's own keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymcl.errors import DataError
from asymcl.training.methods import PROBE
from asymcl.training.modules import EndToEndModule

STAGE = PROBE[0]


class ProbeModule(EndToEndModule):
    """Encoder + linear classifier whose weights come from :func:`fit_probe`, not from gradients."""

    stage = STAGE


def folded_weights(
    coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray, classes: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's (coef_ (K', D), intercept_ (K',)) on standardised inputs -> (W (K, D), b (K,))
    on raw inputs, one row per class id in ``range(num_classes)``.

    A binary problem has one row (the log-odds of ``classes[1]``): it becomes logits (0, w.x + b),
    whose softmax is the same probability.
    """
    weight = coef / scale[None, :]
    bias = intercept - (coef * (mean / scale)[None, :]).sum(axis=1)
    if len(classes) == 2 and coef.shape[0] == 1:
        weight = np.concatenate([np.zeros_like(weight), weight])
        bias = np.concatenate([np.zeros_like(bias), bias])
    if len(classes) != num_classes or np.any(np.asarray(classes) != np.arange(num_classes)):
        raise DataError(
            f"the probe's training split holds classes {list(classes)}, not all of 0..{num_classes - 1}; "
            "every class needs training images (check data.classes and the imbalance profile)"
        )
    return weight, bias


def fit_probe(module: ProbeModule, data, config) -> dict[str, Any]:
    """Fit scikit-learn's probe on the clean training features and write it into ``module.classifier``.

    Returns ``{"train_loss": float}`` (the fitted model's balanced log loss on the training split).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    from asymcl.training.evaluation import evaluate

    train = evaluate(module, data, "train")
    features = train["features"].astype(np.float64)
    labels = train["labels"].astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise DataError("the probe needs at least two classes in the training split")
    scaler = StandardScaler().fit(features)
    probe = LogisticRegression(C=float(config.probe.c), class_weight="balanced", max_iter=int(config.probe.max_iter))
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # A probe that stops at max_iter is still a valid (more regularised) fit; the run records
        # its validation score either way, and the comparison picks C on that score.
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(scaler.transform(features), labels)
    weight, bias = folded_weights(
        probe.coef_, probe.intercept_, scaler.mean_, scaler.scale_, probe.classes_, module.num_classes
    )
    with torch.no_grad():
        module.classifier.fc.weight.copy_(torch.as_tensor(weight, dtype=module.classifier.fc.weight.dtype))
        module.classifier.fc.bias.copy_(torch.as_tensor(bias, dtype=module.classifier.fc.bias.dtype))
    sample_weight = len(labels) / (len(np.unique(labels)) * np.bincount(labels)[labels])
    loss = log_loss(
        labels, probe.predict_proba(scaler.transform(features)), sample_weight=sample_weight, labels=probe.classes_
    )
    return {"train_loss": float(loss)}


def train_probe(module: ProbeModule, config, data, run_dir: Path, on_record) -> None:
    """The probe's one "stage": fit, score validation, write ``checkpoints/probe/{best,last}.ckpt``
    (Lightning's layout: ``{"state_dict": ...}``) and the history entry reports read."""
    from asymcl.training.evaluation import evaluate, split_metrics

    module.eval()
    fitted = fit_probe(module, data, config)
    val = evaluate(module, data, "val")
    metrics = split_metrics(val["logits"], val["labels"], data.num_classes)
    entry = {
        "epoch": 0,
        "train_loss": fitted["train_loss"],
        "val_wa": metrics["wa"],
        "val_ua": metrics["ua"],
        "val_macro_f1": metrics["macro_f1"],
        "val_per_class_recall": metrics["per_class_recall"],
    }
    from asymcl.training.checkpoints import SafeCheckpointIO

    checkpoint = {"state_dict": module.state_dict(), "epoch": 0}
    module.on_save_checkpoint(checkpoint)  # slim, as every stage's: the frozen weights by reference
    ckpt_dir = Path(run_dir) / "checkpoints" / STAGE
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for name in ("last.ckpt", "best.ckpt"):
        SafeCheckpointIO().save_checkpoint(checkpoint, ckpt_dir / name)
    on_record(STAGE, [entry], {"epoch": 0, "val_ua": entry["val_ua"]})

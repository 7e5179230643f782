"""Heads on top of an encoder's features."""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor, nn


class UnitTaps(Protocol):
    """An encoder's ``taps`` under ``model.feature_layers`` (:class:`asymcl.models.multilayer.FeatureTaps`):
    ``pooled(encoder.layers(), x)`` is the chosen units' outputs, average-pooled and concatenated."""

    def pooled(self, layers: tuple[nn.Module, list[nn.Module], nn.Module], x: Tensor) -> Tensor: ...


class ProjectionHead(nn.Module):
    """Stage-1 projection: Linear(in, hidden) - ReLU - Linear(hidden, out), then L2 normalisation.

    (B, in_dim) -> (B, out_dim) with unit rows; the contrastive loss is computed on these, while
    stage 2 and the baseline use the encoder's features before this head.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.out_dim = out_dim

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.net(features), dim=1)


class LinearClassifier(nn.Module):
    """(B, in_dim) features -> (B, num_classes) logits."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)


class GlobalAvgPool(nn.Module):
    """(B, C, H, W) feature maps -> (B, C) means over H, W."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


class Adapter(nn.Module):
    """Trainable block between a (possibly frozen) encoder and the heads, (B, D) -> (B, D).

    ``y = x + W2 relu(W1 LayerNorm(x) + b1) + b2`` with ``W1`` (hidden, D), ``W2`` (D, hidden).
    ``W2`` and ``b2`` start at zero, so at initialisation the adapter is the identity and a
    stage-2 linear classifier on it starts as a linear probe of the encoder's features; training
    moves the representation (stage 1) without losing what the frozen encoder gives. The CE
    baseline trains the same adapter end to end, so every method has the same trainable capacity.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = dim if hidden_dim is None else int(hidden_dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.feature_dim = dim

    def forward(self, features: Tensor) -> Tensor:
        return features + self.fc2(F.relu(self.fc1(self.norm(features))))

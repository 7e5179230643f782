"""Heads on top of an encoder's features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Stage-1 projection: Linear(in, hidden) - ReLU - Linear(hidden, out), then L2 normalisation.

    (B, in_dim) -> (B, out_dim) with unit rows; the contrastive loss is computed on these, while
    stage 2 and the baseline use the encoder's features before this head.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
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

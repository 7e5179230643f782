"""Encoders (backbones) and heads.

``build_backbone(name, in_channels, pretrained)`` returns an ``nn.Module`` with ``feature_dim``
whose forward maps (B, C, H, W) to (B, feature_dim).
"""

from asymcl.models.backbones import (
    BACKBONES,
    ResNet,
    SmallCNN,
    build_backbone,
    cifar_resnet18,
    load_state_dict_file,
    load_weights_strict,
    resnet18,
    resnet50,
)
from asymcl.models.heads import LinearClassifier, ProjectionHead

__all__ = [
    "BACKBONES",
    "LinearClassifier",
    "ProjectionHead",
    "ResNet",
    "SmallCNN",
    "build_backbone",
    "cifar_resnet18",
    "load_state_dict_file",
    "load_weights_strict",
    "resnet18",
    "resnet50",
]

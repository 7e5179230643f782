"""Encoders (backbones), heads and the fine-tuning split.

``build_backbone(name, in_channels, pretrained, input_size)`` returns an ``nn.Module`` with
``feature_dim`` whose forward maps (B, C, H, W) to (B, feature_dim); ``apply_finetune(encoder,
"all"|"frozen"|"last:K")`` splits it into a frozen and a trainable part; ``set_feature_layers``
makes it return pooled outputs of several named units; ``Adapter`` is the trainable block between
encoder and heads.
"""

from asymcl.models.backbones import (
    BACKBONES,
    BUNDLED_WEIGHTS,
    DEFAULT_MIN_INPUT,
    ConcatBackbone,
    ResNet,
    SmallCNN,
    backbone_name,
    build_backbone,
    check_backbone_name,
    check_input_size,
    check_joined_weights,
    check_pretrained,
    cifar_resnet18,
    default_input_size,
    has_bundled_weights,
    lite_members,
    load_state_dict_file,
    load_weights_strict,
    resnet18,
    resnet50,
)
from asymcl.models.efficientnet_lite import VARIANTS as _VARIANTS
from asymcl.models.efficientnet_lite import EfficientNetLite, bundled_weights_path
from asymcl.models.finetune import (
    FINETUNE_MODES,
    FinetuneParts,
    FrozenPart,
    apply_finetune,
    parse_finetune,
)
from asymcl.models.heads import Adapter, GlobalAvgPool, LinearClassifier, ProjectionHead
from asymcl.models.multilayer import (
    FeatureTaps,
    backbone_unit_names,
    check_encoder_options,
    set_feature_layers,
    unit_names,
)

#: The EfficientNet-Lite backbone names (they take ``input_size`` and normalise inside the model).
LITE_VARIANTS = tuple(_VARIANTS)

__all__ = [
    "Adapter",
    "BACKBONES",
    "BUNDLED_WEIGHTS",
    "ConcatBackbone",
    "DEFAULT_MIN_INPUT",
    "EfficientNetLite",
    "FINETUNE_MODES",
    "FeatureTaps",
    "FinetuneParts",
    "FrozenPart",
    "GlobalAvgPool",
    "LITE_VARIANTS",
    "LinearClassifier",
    "ProjectionHead",
    "ResNet",
    "SmallCNN",
    "apply_finetune",
    "backbone_name",
    "backbone_unit_names",
    "build_backbone",
    "bundled_weights_path",
    "check_backbone_name",
    "check_encoder_options",
    "check_input_size",
    "check_joined_weights",
    "check_pretrained",
    "cifar_resnet18",
    "default_input_size",
    "has_bundled_weights",
    "lite_members",
    "load_state_dict_file",
    "load_weights_strict",
    "parse_finetune",
    "resnet18",
    "resnet50",
    "set_feature_layers",
    "unit_names",
]

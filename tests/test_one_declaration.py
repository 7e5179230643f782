"""Issue 24 part 3: one declaration per fact. The run config's data section and DataSpec are one
declaration with one set of rules; cross-field rules run on the frozen, typed config; the stages
share their optimisation fields; the backbone checks are the model layer's; old run directories
still load and keep their names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from asymcl.data import DataSpec, build_splits
from asymcl.data.spec import DATASETS, DataFields
from asymcl.errors import ConfigError, DataError
from asymcl.training.config import (
    SCHEMA,
    DataConfig,
    OptimisationConfig,
    RunConfig,
    Stage1Config,
    Stage2Config,
    resolve_config,
)
from asymcl.training.run_data import data_spec


def test_the_data_fields_are_declared_once():
    for spec_field in dataclasses.fields(DataFields):
        config_field = DataConfig.__dataclass_fields__[spec_field.name]
        data_field = DataSpec.__dataclass_fields__[spec_field.name]
        assert config_field.metadata is data_field.metadata is spec_field.metadata
        assert SCHEMA[f"data.{spec_field.name}"] == (
            spec_field.default,
            spec_field.metadata["check"],
            spec_field.metadata["help"],
        )
    # The two caches have two names: data.cache is the feature cache, DataSpec's the decoded images'.
    assert "cache" in DataConfig.__dataclass_fields__ and "cache" not in DataSpec.__dataclass_fields__
    assert "decoded_cache" in DataSpec.__dataclass_fields__ and "data.decoded_cache" not in SCHEMA


def _config_error(overrides: list[str]) -> str | None:
    try:
        resolve_config(None, overrides)
    except ConfigError as exc:
        return str(exc)
    return None


def _spec_error(kwargs: dict) -> str | None:
    try:
        DataSpec(**kwargs).validate()
    except DataError as exc:
        return str(exc)
    return None


# Values one entry point used to accept and the other refuse (or check differently).
@pytest.mark.parametrize(
    "overrides,kwargs,refused",
    [
        (["data.classes=[zero, six]"], {"classes": ["zero", "six"]}, False),  # names: DataSpec only, before
        (["data.classes=-1,2"], {"classes": "-1,2"}, True),
        (["data.val_fraction=0"], {"val_fraction": 0}, False),  # DataSpec only, before
        (["data.test_fraction=0"], {"test_fraction": 0.0}, False),
        (["data.val_fraction=1.0"], {"val_fraction": 1.0}, True),
        (["data.image_size=[24, 32]"], {"image_size": (24, 32)}, False),  # a pair: DataSpec only, before
        (["data.image_size=2"], {"image_size": 2}, True),  # DataSpec took any positive size
        (["data.root=/some/folder"], {"root": "/some/folder"}, True),  # digits reads no root: the config took it
        (["data.dataset=npz"], {"dataset": "npz"}, True),
        (["data.dataset=mnist"], {"dataset": "mnist"}, True),
        (["data.imbalance=binary:10", "data.classes=0,1,2"], {"imbalance": "binary:10", "classes": [0, 1, 2]}, True),
    ],
)
def test_both_entry_points_give_the_same_answer(overrides, kwargs, refused):
    from_config, from_spec = _config_error(overrides), _spec_error(kwargs)
    assert (from_config is not None, from_spec is not None) == (refused, refused)
    if refused:  # one wording: the config names its keys with the section
        assert re.sub(r"data\.", "", from_config) == from_spec


def test_the_config_takes_class_names_and_a_spec_built_from_it_selects_them(tmp_path):
    path = tmp_path / "named.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x=rng.integers(0, 255, (60, 8, 8), dtype=np.uint8),
        y=np.repeat(np.arange(3), 20),
        classes=np.array(["cat", "dog", "owl"]),
    )
    config = resolve_config(None, ["data.dataset=npz", f"data.root={path}", "data.classes=owl,cat"])
    assert config.data.classes == ["owl", "cat"]
    splits = build_splits(data_spec(config))
    assert splits.classes == ["owl", "cat"]
    assert splits.classes == build_splits(DataSpec(dataset="npz", root=path, classes="owl,cat")).classes


def test_val_fraction_zero_needs_a_validation_set_from_elsewhere():
    config = resolve_config(None, ["data.val_fraction=0"])
    with pytest.raises(DataError, match="val_fraction=0 carves none; set val_fraction > 0 or val_per_class"):
        build_splits(data_spec(config))
    splits = build_splits(data_spec(resolve_config(None, ["data.val_fraction=0", "data.val_per_class=5"])))
    assert set(splits.splits["val"].class_counts()) == {5}


def test_the_config_is_frozen_and_its_rules_run_on_the_typed_objects():
    from asymcl.training.config_rules import apply_rules

    config = resolve_config(None, ["schedule=joint"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data.val_fraction = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "other"  # type: ignore[misc]
    assert isinstance(config, RunConfig) and config.joint.weight == 1.0  # filled by a rule
    assert config.stage2.loss == "logit_adjusted"
    assert apply_rules(config) == config  # a resolved config passes its own rules unchanged
    unfilled = dataclasses.replace(config, joint=dataclasses.replace(config.joint, weight=None))
    assert apply_rules(unfilled).joint.weight == 1.0


def test_the_stages_share_their_optimisation_fields():
    shared = {f.name for f in dataclasses.fields(OptimisationConfig)}
    assert shared == {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "scheduler"}
    for stage in (Stage1Config, Stage2Config):
        assert issubclass(stage, OptimisationConfig)
        for name in ("optimizer", "scheduler", "lr", "weight_decay", "epochs"):
            assert (
                stage.__dataclass_fields__[name].metadata["check"]
                is OptimisationConfig.__dataclass_fields__[name].metadata["check"]
            )
    # Same keys and defaults as before the base existed.
    assert (SCHEMA["stage1.batch_size"][0], SCHEMA["stage1.lr"][0], SCHEMA["stage1.weight_decay"][0]) == (
        128,
        2e-3,
        1e-4,
    )
    assert (SCHEMA["stage2.batch_size"][0], SCHEMA["stage2.lr"][0], SCHEMA["stage2.weight_decay"][0]) == (64, 1e-2, 0.0)
    with pytest.raises(ConfigError, match="stage1.batch_size must be >= 2"):
        resolve_config(None, ["stage1.batch_size=1"])
    assert resolve_config(None, ["stage2.batch_size=1"]).stage2.batch_size == 1


@pytest.mark.parametrize(
    "overrides,build",
    [
        (["model.backbone=resnet18", "model.pretrained=imagenet"], {"name": "resnet18", "pretrained": "imagenet"}),
        (["model.pretrained=/no/weights.pth"], {"name": "small_cnn", "pretrained": "/no/weights.pth"}),
        (["model.input_size=64"], {"name": "small_cnn", "input_size": (64, 64)}),
        (
            ["model.backbone=efficientnet_lite2+efficientnet_lite0", "model.pretrained=pyproject.toml"],
            {"name": "efficientnet_lite2+efficientnet_lite0", "pretrained": "pyproject.toml"},
        ),
    ],
)
def test_the_backbone_checks_are_the_model_layers(overrides, build):
    """The config (before anything runs) and build_backbone ask the same rule: the same line."""
    from asymcl.models import build_backbone

    with pytest.raises(ConfigError) as from_config:
        resolve_config(None, overrides)
    with pytest.raises(ConfigError) as from_build:
        build_backbone(in_channels=1, **build)
    assert str(from_config.value) == str(from_build.value)


def test_the_finetune_rules_are_one():
    """last:K beyond the blocks: the config (unit names from the meta device) and apply_finetune
    (the built encoder) ask one rule; only how they name the backbone differs."""
    from asymcl.models import apply_finetune, build_backbone

    with pytest.raises(ConfigError) as from_config:
        resolve_config(None, ["model.backbone=efficientnet_lite0", "model.finetune=last:99"])
    with pytest.raises(ConfigError) as from_build:
        apply_finetune(build_backbone("efficientnet_lite0", 3), "last:99")
    assert str(from_config.value).replace("efficientnet_lite0", "EfficientNetLite") == str(from_build.value)


def test_the_unknown_backbone_line_is_one():
    from asymcl.models import build_backbone

    with pytest.raises(ConfigError) as from_config:
        resolve_config(None, ["model.backbone=vgg"])
    with pytest.raises(ConfigError) as from_build:
        build_backbone("vgg", 1)
    assert str(from_config.value).startswith(str(from_build.value))  # the config adds the help text


# config.yaml as asymcl wrote it before the data fields were shared (every key, nested).
_OLD_CONFIG_YAML = """\
method: fcl
seed: 0
schedule: two_stage
data:
  dataset: digits
  root: null
  imbalance: binary:10
  classes:
  - 0
  - 6
  val_fraction: 0.25
  test_fraction: 0.25
  val_per_class: null
  csv_path_column: null
  csv_label_column: null
  image_size: null
  augment: auto
  in_memory: true
  num_workers: 0
  cache: auto
  cache_dir: null
  cache_views: 4
  cache_seed: 0
  cache_precision: auto
model: {backbone: small_cnn, pretrained: null, input_size: null, finetune: all, feature_layers: null,
  adapter: null, proj_hidden_dim: 512, proj_dim: 128}
loss: {gamma: 1.0, eta: 0.0, temperature: 0.1, normalization: batch, memory_size: 0}
stage1: {epochs: 30, batch_size: 128, optimizer: adamw, lr: 0.002, weight_decay: 0.0001, scheduler: cosine,
  sampler: class_balanced}
stage2: {epochs: 30, batch_size: 64, optimizer: adamw, lr: 0.01, weight_decay: 0.0, scheduler: cosine, loss: ce,
  focal_gamma: 2.0, logit_tau: 1.0, sampler: random, augment: false}
joint: {weight: null}
probe: {c: 1.0, max_iter: 2000}
eval: {tta_views: 0}
trainer: {accelerator: cpu, devices: 1, strategy: auto, precision: 32-true, deterministic: true,
  channels_last: false, progress_bar: true, num_threads: null, save_last: true}
"""


def test_an_old_run_directory_still_loads_resumes_and_keeps_its_name(tmp_path: Path):
    import yaml

    from asymcl.training.run_dir import check_run_dir, default_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(_OLD_CONFIG_YAML)
    old = yaml.safe_load(_OLD_CONFIG_YAML)
    config = resolve_config(
        None,
        [
            "method=fcl",
            "data.classes=0,6",
            "data.imbalance=binary:10",
            "stage1.sampler=class_balanced",
            "data.val_fraction=0.25",
        ],
    )
    # every key, value and spelling as it was written; keys added since hold their defaults
    added = {
        "eval": {**old["eval"], "tta_augment": "train", "embeddings": None},
        "data": {**old["data"], "cache_engine": "auto"},
        "model": {**old["model"], "finetune_lr_scale": 1.0, "finetune_bn": "train"},
    }
    assert config.to_dict() == {**old, **added}
    assert check_run_dir(config, run_dir) is None  # the same run: it resumes
    # The directory name is a hash of the config: the one the run was written under (asymcl 0.1.0).
    assert default_run_dir(config).endswith("fcl-digits-c1a09f9f")
    # An 0.1.0 config.yaml, without the keys added since, loads too.
    oldest = {k: v for k, v in old.items() if k not in ("schedule", "joint", "probe", "eval")}
    assert resolve_config(oldest) == config


def test_predict_formats_come_from_the_dataset_entries():
    from asymcl.training.predict import DEFAULT_FORMAT, formats

    assert formats() == [DEFAULT_FORMAT, *(name for name, info in DATASETS.items() if info.submission)]
    assert "isic2018" in formats()

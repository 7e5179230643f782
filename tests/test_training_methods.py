"""The method registry is the one place a method is described: config, sweeps, reports and the
pipeline all follow an entry, and a new entry needs nothing else."""

from __future__ import annotations

import pickle

import pytest
import torch

from asymcl.errors import ConfigError
from asymcl.losses import AsymmetricFocalContrastiveLoss, SupConLoss
from asymcl.training import methods
from asymcl.training.config import SCHEMA, LossConfig, RunConfig, resolve_config


def test_every_entry_is_consistent_with_the_config():
    loss_keys = {key.split(".", 1)[1] for key in SCHEMA if key.startswith("loss.")}
    for name, method in methods.REGISTRY.items():
        assert method.name == name and method.display
        assert method.stages in (methods.TWO_STAGE, methods.BASELINE, methods.PROBE)
        assert set(method.fixed) <= loss_keys and set(method.free) <= set(methods.TUNABLE)
        # a fair comparison tunes only real config keys, and a contrastive method its own loss keys
        assert set(method.search_space) <= set(SCHEMA)
        assert {f"loss.{name}" for name in method.free} <= set(method.search_space)
        assert not set(method.fixed) & set(method.free)
        assert method.contrastive == (method.stages == methods.TWO_STAGE)
    assert methods.PROPOSED in methods.REGISTRY
    assert len({m.display for m in methods.REGISTRY.values()}) == len(methods.REGISTRY)


@pytest.mark.parametrize("name", ["supcon", "cl", "fcl", "acl", "afcl"])
def test_loss_factory_builds_the_configured_loss(name):
    config = resolve_config(None, [f"method={name}", "loss.temperature=0.2"])
    loss = config.method_spec.build_loss(config.loss)
    assert isinstance(loss, SupConLoss if name == "supcon" else AsymmetricFocalContrastiveLoss)
    # The module computes exactly afcl with the config's values (fixed ones included).
    views = torch.nn.functional.normalize(torch.randn(8, 2, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 2, 0, 1, 2])
    from asymcl.losses import afcl_loss

    expected = afcl_loss(
        views,
        labels,
        gamma=config.loss.gamma,
        eta=config.loss.eta,
        temperature=0.2,
        normalization=config.loss.normalization,
    )
    torch.testing.assert_close(loss(views, labels), expected)


def test_ce_has_no_contrastive_loss():
    with pytest.raises(ValueError, match="no contrastive loss"):
        methods.get_method("ce").build_loss(LossConfig())
    with pytest.raises(ConfigError, match="unknown method 'nope'.*probe, ce, la, supcon"):
        methods.get_method("nope")


def test_a_new_method_is_one_entry(monkeypatch):
    """Config validation, sweeps and reports pick up a registry entry without other edits."""
    entry = methods.Method(
        "hcl",
        "HCL",
        methods.TWO_STAGE,
        "test-only",
        methods.REGISTRY["afcl"].loss_factory,
        {"eta": 0.0, "normalization": "pairs"},
        ("gamma",),
    )
    monkeypatch.setitem(methods.REGISTRY, "hcl", entry)
    config = resolve_config(None, ["method=hcl", "loss.gamma=3"])
    assert (config.loss.gamma, config.loss.eta, config.loss.normalization) == (3.0, 0.0, "pairs")
    assert config.stages == ("stage1", "stage2")
    with pytest.raises(ConfigError, match="loss.eta=2.0 contradicts method hcl"):
        resolve_config(None, ["method=hcl", "loss.eta=2"])

    from asymcl.experiments.runs import METHOD_PARAMS, METHODS
    from asymcl.experiments.selection import method_order
    from asymcl.experiments.sweep import expand, parse_spec
    from asymcl.training.methods import display

    assert "hcl" in METHODS and METHOD_PARAMS["hcl"] == {"loss.gamma"} and display("hcl") == "HCL"
    assert method_order("hcl") < method_order("zzz")
    spec = parse_spec({"grid": {"method": ["hcl"], "loss.gamma": [1.0], "loss.eta": [0.0, 50.0]}})
    points = expand(spec)
    assert [p.name for p in points] == ["hcl_g1"] and dict(points[0].overrides)["loss.eta"] == 0.0


def test_typed_config_reads_as_attributes_and_as_mapping_and_round_trips():
    config = resolve_config(None, ["method=fcl", "data.classes=0,6", "data.imbalance=binary:10"])
    assert isinstance(config, RunConfig)
    assert config.loss.eta == config["loss"]["eta"] == 0.0 and config.data.classes == [0, 6]
    assert resolve_config(config.to_dict()) == config == resolve_config(config)
    assert pickle.loads(pickle.dumps(config)) == config
    with pytest.raises(KeyError):
        config["loss"]["gama"]


def test_pipeline_classes_pickle(tmp_path):
    """ddp_spawn pickles the trainer's datamodule and callbacks: they must live at module level."""
    from asymcl.training.callbacks import HistoryCallback
    from asymcl.training.run_data import RunData, SplitsDataModule
    from asymcl.training.run_dir import MetricsRecorder

    config = resolve_config(None, ["data.imbalance=exp:10"])
    data = RunData(config)
    module = pickle.loads(pickle.dumps(SplitsDataModule(data, config, "stage2")))
    assert (module.batch_size, module.seed) == (config.stage2.batch_size, config.seed * 100 + 2)
    recorder = MetricsRecorder(tmp_path, {"history": {}, "best": {}})
    callback = pickle.loads(pickle.dumps(HistoryCallback("stage1", recorder)))
    callback.on_record("stage1", [{"epoch": 0}], {"epoch": 0, "val_ua": 0.5})
    assert (tmp_path / "metrics.json").is_file()

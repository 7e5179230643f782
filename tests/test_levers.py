"""The LA baseline, the joint schedule and the stage-1 samplers: config rules, formulas, tiny real runs."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from asymcl.data import MPerClassBatchSampler
from asymcl.errors import ConfigError, DataError
from asymcl.losses import AsymmetricFocalContrastiveLoss
from asymcl.training.config import resolve_config
from asymcl.training.data_module import make_loader
from asymcl.training.modules import ClassificationLoss
from asymcl.training.pipeline import run
from data_fixtures import tiny_config as tiny

torch.set_num_threads(1)


# -- config rules ----------------------------------------------------------------------------------


def test_la_fixes_logit_adjusted_ce_and_old_ce_runs_stay_valid():
    assert resolve_config({"method": "la"}).stage2.loss == "logit_adjusted"
    assert resolve_config({"method": "la"}).stages == ("baseline",)
    # Menon et al.'s recipe: natural sampling (a balanced sampler would cancel the adjustment).
    assert resolve_config({"method": "la", "stage2.sampler": "class_balanced"}).stage2.sampler == "random"
    with pytest.raises(ConfigError, match="contradicts method la"):
        resolve_config({"method": "la", "stage2.loss": "focal"})
    # How LA was run before it was a method: still a valid config (old run directories resume).
    old = resolve_config({"method": "ce", "stage2.loss": "logit_adjusted"})
    assert old.method == "ce" and old.stage2.loss == "logit_adjusted"
    assert resolve_config(old.to_dict()).to_dict() == old.to_dict()


def test_joint_schedule_config_rules():
    config = resolve_config({"method": "fcl", "schedule": "joint"})
    assert config.stages == ("joint",) and config.joint.weight == 1.0 and config.stage2.loss == "logit_adjusted"
    assert resolve_config(config.to_dict()).to_dict() == config.to_dict()
    assert resolve_config({"method": "afcl"}).joint.weight is None
    with pytest.raises(ConfigError, match="schedule=joint needs a contrastive loss"):
        resolve_config({"method": "ce", "schedule": "joint"})
    with pytest.raises(ConfigError, match="joint.weight is only used with schedule=joint"):
        resolve_config({"method": "afcl", "joint.weight": 0.5})
    with pytest.raises(ConfigError, match="contradicts schedule=joint"):
        resolve_config({"method": "afcl", "schedule": "joint", "stage2.loss": "focal"})
    with pytest.raises(ConfigError, match="stage1.sampler=m_per_class has no effect with method la"):
        resolve_config({"method": "la", "stage1.sampler": "m_per_class"})
    with pytest.raises(ConfigError, match="stage1.sampler"):
        resolve_config({"method": "afcl", "stage1.sampler": "balanced"})


# -- formulas --------------------------------------------------------------------------------------


def test_logit_adjustment_shift_matches_its_formula():
    counts = torch.tensor([500, 50, 5])
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    tau = 1.5
    loss = ClassificationLoss("logit_adjusted", counts, tau=tau)(logits, labels)
    prior = np.array([500, 50, 5]) / 555
    z = logits.double().numpy() + tau * np.log(prior)
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    expected = -log_softmax[np.arange(7), labels.numpy()].mean()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # The shift moves the rare classes' logits down the most: the loss is higher on rare labels.
    assert loss.item() > F.cross_entropy(logits, labels).item()


def test_joint_loss_is_the_weighted_sum_of_its_parts():
    from asymcl.training.joint import JointModule

    config = resolve_config(
        tiny(
            "afcl",
            schedule="joint",
            **{"joint.weight": 0.3, "loss.gamma": 2.0, "loss.eta": 7.0, "stage2.logit_tau": 0.5},
        )
    )
    counts = torch.tensor([40, 10, 3])
    torch.manual_seed(0)
    module = JointModule(config, 3, 1, (8, 8), "none", class_counts=counts)
    views = torch.rand(12, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 2, 0, 1])
    total, classification, contrastive = module.loss_parts(views, labels)

    features = module.encoder(views)
    z = torch.stack(module.head(features).split(6), dim=1)
    expected_con = AsymmetricFocalContrastiveLoss(gamma=2.0, eta=7.0, temperature=0.1)(z, labels)
    shift = 0.5 * torch.log(counts.double() / counts.sum()).float()
    expected_cls = F.cross_entropy(module.classifier(features) + shift, torch.cat([labels, labels]))
    assert contrastive.item() == pytest.approx(expected_con.item(), rel=1e-5)
    assert classification.item() == pytest.approx(expected_cls.item(), rel=1e-5)
    assert total.item() == pytest.approx(expected_cls.item() + 0.3 * expected_con.item(), rel=1e-5)
    total.backward()  # one graph: the encoder gets gradients from both terms
    assert module.encoder.backbone is not None
    assert all(p.grad is not None for p in module.classifier.parameters())
    assert all(p.grad is not None for p in module.head.parameters())


# -- the m-per-class sampler -----------------------------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_m_per_class_batches_hold_m_of_each_class_on_every_rank(world_size):
    labels = np.array([0] * 300 + [1] * 40 + [2] * 3)  # class 2 rarer than m: drawn with replacement
    m = 5
    seen = []
    for rank in range(world_size):
        sampler = MPerClassBatchSampler(labels, m, seed=7, rank=rank, world_size=world_size)
        sampler.set_epoch(2)
        batches = list(sampler)
        assert len(batches) == len(sampler) == max(1, 343 // 15 // world_size)
        for batch in batches:
            assert Counter(labels[batch].tolist()) == {0: m, 1: m, 2: m}
            assert len(set(i for i in batch if labels[i] != 2)) == 2 * m  # common classes: no repeats
        again = MPerClassBatchSampler(labels, m, seed=7, rank=rank, world_size=world_size)
        again.set_epoch(2)
        assert list(again) == batches  # deterministic per (seed, epoch)
        again.set_epoch(3)
        assert list(again) != batches
        seen.append(batches)
    if world_size > 1:
        assert seen[0] != seen[1]  # the ranks get different batches of the same epoch


def test_m_per_class_through_the_loader_and_bad_m():
    from asymcl.data.datasets import ArrayImageDataset

    labels = np.array([0] * 50 + [1] * 6 + [2] * 2)
    images = np.zeros((58, 4, 4, 1), dtype=np.uint8)
    dataset = ArrayImageDataset(images, labels, ["a", "b", "c"])
    for rank in range(2):
        loader = make_loader(dataset, 12, train=True, seed=1, sampler="m_per_class", rank=rank, world_size=2)
        for _, batch_labels in loader:
            assert Counter(batch_labels.tolist()) == {0: 4, 1: 4, 2: 4}
    with pytest.raises(DataError, match="m >= 1"):
        MPerClassBatchSampler(labels, 0)


# -- tiny real runs --------------------------------------------------------------------------------


def test_la_run_end_to_end(tmp_path):
    metrics = run(tiny("la"), tmp_path / "la")
    assert metrics["status"] == "complete" and (tmp_path / "la" / "checkpoints" / "baseline" / "best.ckpt").is_file()
    assert yaml.safe_load((tmp_path / "la" / "config.yaml").read_text())["stage2"]["loss"] == "logit_adjusted"


def test_joint_run_end_to_end_and_resumes_as_complete(tmp_path):
    out = tmp_path / "joint"
    metrics = run(tiny("afcl", schedule="joint", **{"stage1.epochs": 2, "stage1.sampler": "m_per_class"}), out)
    assert metrics["status"] == "complete"
    assert list(metrics["history"]) == ["joint"] and len(metrics["history"]["joint"]) == 2
    assert (out / "checkpoints" / "joint" / "best.ckpt").is_file()
    assert 0.0 <= metrics["final"]["test"]["ua"] <= 1.0
    from asymcl.training.predict import RunModel

    assert RunModel(out).module.stage == "joint"  # predict loads the joint model
    again = run(tiny("afcl", schedule="joint", **{"stage1.epochs": 2, "stage1.sampler": "m_per_class"}), out)
    assert again["final"] == json.loads((out / "metrics.json").read_text())["final"]


@pytest.mark.parametrize("sampler", ["class_balanced", "m_per_class"])
def test_stage1_sampler_runs_end_to_end(tmp_path, sampler):
    metrics = run(tiny("acl", **{"stage1.sampler": sampler}), tmp_path / sampler)
    assert metrics["status"] == "complete" and metrics["stages_complete"] == ["stage1", "stage2"]


def test_joint_logit_adjustment_uses_the_prior_of_its_batches():
    from asymcl.training.pipeline import RunData, build_module

    natural = resolve_config(tiny("afcl", schedule="joint"))
    data = RunData(natural)
    shift = build_module("joint", natural, data).classification.log_prior_shift
    counts = data.class_counts.double()
    assert torch.allclose(shift, torch.log(counts / counts.sum()).float())
    balanced = resolve_config(tiny("afcl", schedule="joint", **{"stage1.sampler": "m_per_class"}))
    shift = build_module("joint", balanced, data).classification.log_prior_shift
    assert torch.allclose(shift, torch.full_like(shift, -np.log(3)))  # uniform: LA-CE is plain CE


def test_a_grid_over_method_and_levers_runs_each_baseline_once():
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

    spec = parse_spec(
        {
            "name": "levers",
            "base": {"stage1.epochs": 1},
            "grid": {
                "method": ["ce", "la", "afcl"],
                "schedule": ["two_stage", "joint"],
                "stage1.sampler": ["random", "m_per_class"],
                "seed": [0],
            },
        }
    )
    points = expand(spec)
    names = sorted(point.name for point in points)
    assert [n for n in names if not n.startswith("afcl")] == ["ce_s0", "la_s0"]
    assert len([n for n in names if n.startswith("afcl")]) == 4
    configs = resolve_points(spec, points, default_resolver())  # every point is a valid config
    assert {(c["method"], c["schedule"], c["stage1"]["sampler"]) for c in configs.values()} >= {
        ("la", "two_stage", "random"),
        ("afcl", "joint", "m_per_class"),
    }

"""``model.finetune_lr_scale``: the backbone blocks that train get ``s * lr``, everything else the
stage's ``lr``; one SGD step moves a trained block by exactly ``s`` times what it moves at s = 1."""

import pytest
import torch

from asymcl.errors import ConfigError
from asymcl.training.config import resolve_config, run_identity
from finetune_fixtures import finetune_config, optimizer_step, train_mode_module

torch.set_num_threads(1)


def _config(method: str, finetune: str, scale: float | None, **extra) -> dict:
    return {**finetune_config(method, finetune, finetune_lr_scale=scale), **extra}


def _module(stage: str, raw: dict):
    # float64: a step's delta is read as after - before, which float32 would round to ~1e-7
    return train_mode_module(stage, raw, torch.float64)


_step = optimizer_step


@pytest.mark.parametrize(
    "stage, method, finetune", [("stage1", "afcl", "last:1"), ("baseline", "ce", "last:2"), ("baseline", "la", "all")]
)
def test_trained_blocks_move_scale_times_as_far(stage, method, finetune):
    scale = 0.1
    plain = _step(_module(stage, _config(method, finetune, None)))
    scaled_module = _module(stage, _config(method, finetune, scale))
    scaled = _step(scaled_module)
    trained = {f"encoder.backbone.{n}" for n, p in scaled_module.encoder.backbone.named_parameters() if p.requires_grad}
    assert trained, "the finetune mode trains some backbone block"
    moved_blocks = moved_rest = 0
    for name, delta in plain.items():
        if name in trained:
            torch.testing.assert_close(scaled[name], scale * delta, rtol=1e-9, atol=1e-15)
            moved_blocks += int(delta.abs().sum() > 0)
        else:
            torch.testing.assert_close(scaled[name], delta, rtol=0, atol=0)
            moved_rest += int(delta.abs().sum() > 0)
    assert moved_blocks and moved_rest  # both groups really stepped


def test_one_group_at_the_default_two_with_a_scale():
    module = _module("stage1", _config("cl", "last:1", None))
    (group,) = module.configure_optimizers().param_groups
    assert group["lr"] == pytest.approx(0.05)
    module = _module("stage1", _config("cl", "last:1", 0.25))
    rest, blocks = module.configure_optimizers().param_groups
    assert (rest["lr"], blocks["lr"]) == (pytest.approx(0.05), pytest.approx(0.0125))
    backbone = {id(p) for p in module.encoder.backbone.parameters()}
    assert all(id(p) in backbone for p in blocks["params"])
    assert not any(id(p) in backbone for p in rest["params"])
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert {id(p) for p in rest["params"] + blocks["params"]} == trainable


def test_the_cosine_schedule_keeps_the_ratio():
    module = _module("stage1", _config("cl", "last:1", 0.1, **{"stage1.scheduler": "cosine", "stage1.epochs": 4}))
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
        rest, blocks = (group["lr"] for group in optimizer.param_groups)
        assert blocks == pytest.approx(0.1 * rest)


def test_frozen_with_a_scale_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"model.finetune=frozen trains none") as info:
        resolve_config(_config("cl", "frozen", 0.1))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"model.finetune_lr_scale"):
        resolve_config(_config("cl", "last:1", 0.0))
    resolve_config(_config("cl", "frozen", 1.0))  # the default says nothing and is allowed


def test_the_default_leaves_run_identity_as_it_was():
    default = resolve_config(_config("cl", "last:1", None))
    assert "model.finetune_lr_scale" not in run_identity(default)
    scaled = resolve_config(_config("cl", "last:1", 0.1))
    assert run_identity(scaled)["model.finetune_lr_scale"] == pytest.approx(0.1)

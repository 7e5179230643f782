"""``model.finetune_bn``: ``frozen`` keeps the BatchNorm statistics of the blocks that train (eval
mode whatever ``.train()`` says) while their scale and shift still train; ``train`` is the plain
behaviour, whose running statistics follow the training batches."""

import copy
import io

import pytest
import torch
from torch import nn

from asymcl.errors import ConfigError
from asymcl.models.finetune import StatsFrozenBatchNorm2d, apply_finetune
from asymcl.training.config import resolve_config, run_identity
from finetune_fixtures import finetune_config, optimizer_step, train_mode_module

torch.set_num_threads(1)


def _config(finetune: str = "last:1", bn: str | None = None, method: str = "ce") -> dict:
    return finetune_config(method, finetune, finetune_bn=bn)


def _stats_and_params_after_a_step(bn: str | None, stage: str = "baseline", method: str = "ce"):
    module = train_mode_module(stage, _config(bn=bn, method=method))
    trained_norms = [
        m for m in module.encoder.parts.trainable.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
    ]
    assert trained_norms, "small_cnn's last block has a BatchNorm"
    before = [copy.deepcopy(m.state_dict()) for m in trained_norms]
    optimizer_step(module)
    return module, trained_norms, before


@pytest.mark.parametrize("stage, method", [("baseline", "ce"), ("stage1", "afcl")])
def test_frozen_statistics_stay_while_scale_and_shift_train(stage, method):
    module, norms, before = _stats_and_params_after_a_step("frozen", stage, method)
    assert all(type(m) is StatsFrozenBatchNorm2d and not m.training for m in norms)
    for norm, old in zip(norms, before, strict=True):
        new = norm.state_dict()
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(new[key], old[key], rtol=0, atol=0)
        assert not torch.equal(new["weight"], old["weight"]) or not torch.equal(new["bias"], old["bias"])
    # The frozen prefix is untouched either way, and the module as a whole still says it trains.
    assert module.training


def test_the_default_updates_the_statistics_as_before():
    _, norms, before = _stats_and_params_after_a_step(None)
    assert all(type(m) is nn.BatchNorm2d and m.training for m in norms)
    moved = [not torch.equal(norm.running_mean, old["running_mean"]) for norm, old in zip(norms, before, strict=True)]
    assert any(moved)


def test_frozen_statistics_normalise_alike_in_train_and_eval_mode():
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    block = nn.Sequential(nn.Conv2d(3, 4, 1), norm, nn.ReLU())
    encoder = _TwoUnits(block)
    parts = apply_finetune(encoder, "last:1", "frozen")
    x = torch.randn(5, 3, 6, 6)
    parts.trainable.train()
    trained = parts.trainable(parts.frozen(x))
    parts.trainable.eval()
    torch.testing.assert_close(trained, parts.trainable(parts.frozen(x)), rtol=0, atol=0)


class _TwoUnits(nn.Module):
    """The smallest encoder with a unit list: a frozen conv, then ``block``, then pooling."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.block = block
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = 4

    def layers(self):
        return nn.Identity(), [self.stem, self.block], self.pool

    def forward(self, x):
        return self.pool(self.block(self.stem(x)))


def test_the_swap_keeps_checkpoint_keys_pickles_and_is_undone_by_train():
    encoder = _TwoUnits(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)))
    keys = list(encoder.state_dict())
    apply_finetune(encoder, "last:1", "frozen")
    assert type(encoder.block[1]) is StatsFrozenBatchNorm2d
    assert list(encoder.state_dict()) == keys
    buffer = io.BytesIO()
    torch.save(encoder, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.block[1]) is StatsFrozenBatchNorm2d and not loaded.train().block[1].training
    assert type(copy.deepcopy(encoder).block[1]) is StatsFrozenBatchNorm2d
    apply_finetune(encoder, "last:1", "train")  # a second call with another choice starts from scratch
    assert type(encoder.block[1]) is nn.BatchNorm2d and encoder.train().block[1].training


def test_other_norms_in_the_trained_part_are_refused_by_name():
    encoder = _TwoUnits(nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(4, track_running_stats=True)))
    with pytest.raises(ConfigError, match="InstanceNorm2d"):
        apply_finetune(encoder, "last:1", "frozen")


def test_bad_values_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"model.finetune=frozen trains none") as info:
        resolve_config(_config("frozen", "frozen"))
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"model.finetune_bn"):
        resolve_config(_config("last:1", "fixed"))
    resolve_config(_config("frozen", "train"))  # the default says nothing and is allowed


def test_the_default_leaves_run_identity_as_it_was():
    assert "model.finetune_bn" not in run_identity(resolve_config(_config()))
    assert run_identity(resolve_config(_config(bn="frozen")))["model.finetune_bn"] == "frozen"

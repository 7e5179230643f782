"""``loss.memory_size``: stage 1's labelled memory queue (issue 14) in the config, the pipeline,
its checkpoints and resume. The queue itself is tested in test_losses_memory.py."""

import json

import lightning.pytorch as pl
import pytest
import torch

from asymcl.errors import ConfigError
from asymcl.losses import AsymmetricFocalContrastiveLoss, ContrastiveMemory, SupConLoss
from asymcl.training.checkpoints import load_checkpoint
from asymcl.training.config import resolve_config
from asymcl.training.pipeline import run
from data_fixtures import tiny_config

torch.set_num_threads(1)

QUEUE_KEYS = {"criterion.queue_features", "criterion.queue_labels", "criterion.queue_filled", "criterion.queue_pointer"}


def tiny(method="afcl", **overrides):
    return tiny_config(method, **{"stage1.epochs": 2, "stage1.batch_size": 16, "loss.memory_size": 40, **overrides})


class Crash(pl.Callback):
    def __init__(self, epoch, batch):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (module.stage, trainer.current_epoch, batch_idx) == ("stage1", self.epoch, self.batch):
            raise RuntimeError("simulated crash")


def test_memory_size_is_a_config_key_off_by_default():
    assert resolve_config(None).loss.memory_size == 0
    config = resolve_config(None, ["method=supcon", "loss.memory_size=64"])
    assert config.loss.memory_size == 64 and config.to_dict()["loss"]["memory_size"] == 64
    plain = resolve_config(None, ["method=supcon"])
    assert type(plain.method_spec.build_loss(plain.loss)) is SupConLoss
    wrapped = config.method_spec.build_loss(config.loss)
    assert isinstance(wrapped, ContrastiveMemory) and wrapped.memory_size == 64
    assert type(wrapped.loss) is SupConLoss and wrapped.loss.temperature == config.loss.temperature
    afcl = resolve_config(None, ["method=afcl", "loss.memory_size=8", "loss.eta=7"])
    inner = afcl.method_spec.build_loss(afcl.loss).loss
    assert type(inner) is AsymmetricFocalContrastiveLoss and inner.eta == 7.0


@pytest.mark.parametrize(
    "overrides, error",
    [
        (
            ["method=ce", "loss.memory_size=128"],
            r"^loss.memory_size has no effect with method ce \(no contrastive loss\); choose a method among supcon",
        ),
        (["loss.memory_size=-1"], r"^loss.memory_size must be >= 0; got -1"),
        (["loss.memory_size=2.5"], r"^loss.memory_size must be an integer; got 2.5"),
        (["loss.memory_size=true"], r"^loss.memory_size must be an integer"),
        (["loss.memory_sise=4"], r"did you mean loss.memory_size"),
    ],
)
def test_memory_size_config_errors(overrides, error):
    with pytest.raises(ConfigError, match=error) as info:
        resolve_config(None, overrides)
    assert "\n" not in str(info.value)


def test_ce_accepts_memory_size_zero():
    assert resolve_config(None, ["method=ce", "loss.memory_size=0"]).loss.memory_size == 0


def test_run_with_memory_keeps_the_queue_in_stage1_checkpoints_only(tmp_path):
    out = tmp_path / "mem"
    metrics = run(tiny(), out)
    assert metrics["status"] == "complete"
    plain = run(tiny(**{"loss.memory_size": 0}), tmp_path / "plain")
    # Epoch 0's first batch meets an empty queue; later batches meet the queue: the loss differs.
    assert metrics["history"]["stage1"][0]["train_loss"] != plain["history"]["stage1"][0]["train_loss"]

    train_rows = 2 * sum(metrics["counts"]["train"].values())  # two views per image, every epoch
    for name in ("last", "best"):
        state = load_checkpoint(out / f"checkpoints/stage1/{name}.ckpt")["state_dict"]
        assert QUEUE_KEYS <= set(state)
        queue, labels = state["criterion.queue_features"], state["criterion.queue_labels"]
        assert queue.shape == (40, 16) and labels.shape == (40,)
        assert int(state["criterion.queue_filled"]) == 40 < train_rows
        torch.testing.assert_close(queue.norm(dim=1), torch.ones(40))  # rows as the loss saw them
        assert set(labels.tolist()) <= {0, 1, 2}
    assert not set(load_checkpoint(tmp_path / "plain/checkpoints/stage1/last.ckpt")["state_dict"]) & QUEUE_KEYS
    stage2 = load_checkpoint(out / "checkpoints/stage2/last.ckpt")["state_dict"]
    assert not any(k.startswith("criterion.queue") for k in stage2)
    # Stage 2's encoder is stage 1's best encoder, loaded by prefix; nothing else came across.
    stage1 = load_checkpoint(out / "checkpoints/stage1/best.ckpt")["state_dict"]
    for key in (k for k in stage1 if k.startswith("encoder.")):
        assert torch.equal(stage1[key], stage2[key]), key


def test_resumed_stage1_with_memory_equals_uninterrupted_run(tmp_path):
    config = tiny(**{"stage1.epochs": 3})
    reference = run(config, tmp_path / "a")
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):  # inside stage 1's third epoch
        run(config, out, callbacks=[Crash(epoch=2, batch=1)])
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    interrupted = load_checkpoint(out / "checkpoints/stage1/last.ckpt")
    assert interrupted["epoch"] == 1 and int(interrupted["state_dict"]["criterion.queue_filled"]) == 40
    resumed = run(config, out)
    # Epoch 2 restarts from last.ckpt: with an empty or different queue its loss would differ.
    assert resumed["history"] == reference["history"]
    assert resumed["best"] == reference["best"]
    assert resumed["final"] == reference["final"]
    for name in ("last", "best"):
        a = load_checkpoint(tmp_path / f"a/checkpoints/stage1/{name}.ckpt")["state_dict"]
        b = load_checkpoint(out / f"checkpoints/stage1/{name}.ckpt")["state_dict"]
        for key in QUEUE_KEYS:
            assert torch.equal(a[key], b[key]), (name, key)


def test_pending_loss_input_errors_are_raised_at_every_training_epoch_end(tmp_path, monkeypatch):
    # On CUDA the loss defers its NaN/inf error (losses/_deferred.py); the modules surface it at
    # each epoch's end. On CPU the call is a no-op, so count the calls.
    from asymcl.training import modules

    calls = []
    monkeypatch.setattr(modules, "raise_pending_input_errors", lambda: calls.append(1))
    run(tiny(**{"stage1.epochs": 2, "stage2.epochs": 1, "loss.memory_size": 0}), tmp_path / "run")
    assert len(calls) == 3  # stage 1: 2 epochs, stage 2: 1 epoch

"""Slim checkpoints (issue 25): frozen weights from a file are kept as a reference with their
sha256, stage 2 refers to stage 1's encoder, best.ckpt is weights-only; resume, predict and old
checkpoints work as before, and missing or other weights are one clear error."""

import errno
import io

import numpy as np
import pytest
import torch

from asymcl.errors import AsymclError, CheckpointError
from asymcl.models import SmallCNN
from asymcl.training.checkpoints import REFERENCES, _read, load_checkpoint
from asymcl.training.pipeline import run
from asymcl.training.predict import RunModel
from test_training import Crash

torch.set_num_threads(1)


@pytest.fixture
def weights_file(tmp_path):
    torch.manual_seed(7)
    model = SmallCNN(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "weights" / "small_cnn.pth"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    return path


def frozen_config(tmp_path, weights_file, **overrides):
    config = {
        "method": "afcl",
        "data.classes": [0, 1, 2],
        "data.imbalance": "exp:4",
        "model.pretrained": str(weights_file),
        "model.finetune": "frozen",
        "model.adapter": 32,
        "model.proj_hidden_dim": 32,
        "model.proj_dim": 16,
        "stage1.epochs": 3,
        "stage1.batch_size": 32,
        "stage2.epochs": 2,
        "stage2.batch_size": 32,
        "trainer.progress_bar": False,
        "data.cache_dir": str(tmp_path / "cache"),
    }
    return {**config, **overrides}


def _probabilities(run_dir):
    model = RunModel(run_dir)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)).mul(255).to(torch.uint8).numpy()
    return model.probabilities(images)


def _as_old_format(path):
    """Rewrite a checkpoint as asymcl wrote it before issue 25: every tensor in it, no references."""
    full = load_checkpoint(path)
    buffer = io.BytesIO()
    torch.save(full, buffer)
    path.write_bytes(buffer.getvalue())


def test_slim_checkpoints_hold_what_trains_and_resume_and_predict_identically(tmp_path, weights_file):
    config = frozen_config(tmp_path, weights_file)
    reference = run(config, tmp_path / "a")
    stage1 = _read(tmp_path / "a/checkpoints/stage1/best.ckpt")
    backbone_params = {f"encoder.backbone.{n}" for n, _ in SmallCNN(1).named_parameters()}
    assert not backbone_params & set(stage1["state_dict"])  # stored by reference ...
    assert any(k.startswith("encoder.backbone.") and "running_mean" in k for k in stage1["state_dict"])  # ... BN kept
    (entry,) = stage1[REFERENCES]
    assert entry["source"]["kind"] == "backbone" and entry["source"]["pretrained"] == str(weights_file)
    assert "optimizer_states" not in stage1  # best.ckpt: weights only
    stage2 = _read(tmp_path / "a/checkpoints/stage2/best.ckpt")
    assert set(stage2["state_dict"]) == {"classifier.fc.weight", "classifier.fc.bias"}
    assert stage2[REFERENCES][0]["source"] == {
        "kind": "checkpoint",
        "path": "../stage1/best.ckpt",
        "prefix": "encoder.",
    }
    # A finished stage's last.ckpt keeps its weights, not the optimizer state.
    assert "optimizer_states" not in _read(tmp_path / "a/checkpoints/stage1/last.ckpt")
    # Restored on load: the full encoder, equal to the weights file's frozen part.
    restored = load_checkpoint(tmp_path / "a/checkpoints/stage2/best.ckpt")["state_dict"]
    initial = torch.load(weights_file)
    for name, value in initial.items():
        assert torch.equal(restored[f"encoder.backbone.{name}"], value), name

    # Resumed from a slim last.ckpt (mid-stage: optimizer state in it) -> the same run.
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, out, callbacks=[Crash("stage1", epoch=1, batch=1)])
    interrupted = _read(out / "checkpoints/stage1/last.ckpt")
    assert "optimizer_states" in interrupted and REFERENCES in interrupted
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, out, callbacks=[Crash("stage2", epoch=1, batch=0)])
    resumed = run(config, out)
    assert resumed["final"] == reference["final"] and resumed["history"] == reference["history"]
    np.testing.assert_array_equal(_probabilities(out), _probabilities(tmp_path / "a"))


def test_old_format_checkpoints_still_load_and_predict(tmp_path, weights_file):
    config = frozen_config(tmp_path, weights_file, method="ce", **{"stage1.epochs": 2})
    out = tmp_path / "run"
    run(config, out)
    expected = _probabilities(out)
    full_size = slim_size = 0
    for name in ("best.ckpt", "last.ckpt"):
        path = out / "checkpoints/baseline" / name
        slim_size += path.stat().st_size
        _as_old_format(path)
        full_size += path.stat().st_size
        assert REFERENCES not in _read(path)
    assert slim_size < full_size
    np.testing.assert_array_equal(_probabilities(out), expected)


def test_missing_or_other_frozen_weights_are_one_clear_error(tmp_path, weights_file):
    out = tmp_path / "run"
    run(frozen_config(tmp_path, weights_file, method="ce", **{"stage1.epochs": 1}), out)
    state = torch.load(weights_file)
    weights_file.unlink()
    with pytest.raises(CheckpointError, match=r"best.ckpt stores the frozen small_cnn weights .*is not a file"):
        load_checkpoint(out / "checkpoints/baseline/best.ckpt")
    with pytest.raises(AsymclError, match=str(weights_file)):  # predict/export: the config names it first
        RunModel(out)
    state["features.0.weight"] = state["features.0.weight"] + 1
    torch.save(state, weights_file)
    with pytest.raises(CheckpointError, match=r"best.ckpt was trained on the frozen small_cnn weights .*sha256"):
        RunModel(out)


def test_stage2_needs_stage1s_best_checkpoint(tmp_path, weights_file):
    out = tmp_path / "run"
    run(frozen_config(tmp_path, weights_file, **{"stage1.epochs": 1, "stage2.epochs": 1}), out)
    (out / "checkpoints/stage1/best.ckpt").unlink()
    with pytest.raises(CheckpointError, match=r"stage1/best.ckpt is missing"):
        RunModel(out)


def test_save_last_false_keeps_best_only_and_restarts_an_interrupted_stage(tmp_path, weights_file):
    config = frozen_config(tmp_path, weights_file, **{"trainer.save_last": False})
    reference = run(frozen_config(tmp_path, weights_file), tmp_path / "a")
    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, out, callbacks=[Crash("stage2", epoch=1, batch=0)])
    assert not list(out.rglob("last.ckpt"))
    resumed = run(config, out)  # stage 1 kept, stage 2 from its first epoch: the same numbers
    assert resumed["final"] == reference["final"]
    assert not list(out.rglob("last.ckpt"))

    # Switched off in the middle of a stage: the earlier attempt's last.ckpt is not resumed from
    # (the stage restarts) and is removed when the stage finishes.
    out = tmp_path / "c"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(frozen_config(tmp_path, weights_file), out, callbacks=[Crash("stage1", epoch=2, batch=0)])
    assert (out / "checkpoints/stage1/last.ckpt").is_file()
    assert run(config, out)["final"] == reference["final"]
    assert not list(out.rglob("last.ckpt"))


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, weights_file, monkeypatch):
    import asymcl.training.checkpoints as checkpoints

    config = frozen_config(tmp_path, weights_file, method="ce")
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, out, callbacks=[Crash("baseline", epoch=1, batch=0)])
    last = out / "checkpoints/baseline/last.ckpt"
    before = last.read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "atomic_write_bytes", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*No space left on device; free space"):
        run(config, out)
    assert last.read_bytes() == before
    monkeypatch.undo()
    assert run(config, out)["status"] == "complete"

"""End-to-end runs of the pipeline on tiny digits subsets (a few optimisation steps each)."""

import csv
import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from asymcl.errors import CheckpointError, ConfigError, DataError
from asymcl.training.checkpoints import load_checkpoint, load_module_weights
from asymcl.training.pipeline import run
from data_fixtures import tiny_config as tiny

torch.set_num_threads(1)


class Crash(pl.Callback):
    """Raise ``error`` at the start of batch ``batch`` of epoch ``epoch`` of ``stage``."""

    def __init__(self, stage, epoch, batch, error=None):
        self.stage, self.epoch, self.batch = stage, epoch, batch
        self.error = error or RuntimeError("simulated crash")

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if (module.stage, trainer.current_epoch, batch_idx) == (self.stage, self.epoch, self.batch):
            raise self.error


def test_two_stage_run_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    metrics = run(tiny("afcl", **{"stage1.epochs": 2}), out)
    for name in ("config.yaml", "versions.json", "metrics.json", "predictions.csv", "embeddings.npz"):
        assert (out / name).is_file(), name
    for stage in ("stage1", "stage2"):
        assert (out / "checkpoints" / stage / "last.ckpt").is_file()
        assert (out / "checkpoints" / stage / "best.ckpt").is_file()
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    versions = json.loads((out / "versions.json").read_text())  # the machine the run's times come from
    assert versions["cpu"] and versions["cores"] >= 1 and isinstance(versions["cpu_bf16"], bool)
    assert on_disk["status"] == "complete" and on_disk["classes"] == ["0", "1", "2"]
    assert [e["epoch"] for e in on_disk["history"]["stage1"]] == [0, 1]
    assert on_disk["best"]["stage1"]["val_ua"] == max(e["val_ua"] for e in on_disk["history"]["stage1"])
    for split in ("val", "test", "test_imbalanced"):
        final = on_disk["final"][split]
        assert set(final) == {"wa", "ua", "macro_f1", "per_class_recall", "confusion_matrix"}
        cm = np.asarray(final["confusion_matrix"])
        assert cm.shape == (3, 3)
        assert final["wa"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-6)
        recalls = np.diag(cm) / cm.sum(axis=1)
        assert final["per_class_recall"] == pytest.approx(recalls.tolist(), abs=1e-6)
        assert final["ua"] == pytest.approx(recalls.mean(), abs=1e-6)
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    counts = on_disk["counts"]
    assert len(rows) == sum(counts["test"].values()) + sum(counts["test_imbalanced"].values())
    assert list(rows[0]) == ["split", "index", "label", "pred", "prob_0", "prob_1", "prob_2", "image"]
    assert sum(float(rows[0][f"prob_{c}"]) for c in "012") == pytest.approx(1.0, abs=1e-4)
    test_rows = [r for r in rows if r["split"] == "test"]
    wa = np.mean([r["label"] == r["pred"] for r in test_rows])
    assert wa == pytest.approx(on_disk["final"]["test"]["wa"], abs=1e-6)
    embeddings = np.load(out / "embeddings.npz")
    assert embeddings["test_features"].shape == (len(test_rows), 128)  # small_cnn features
    assert embeddings["test_labels"].tolist() == [int(r["label"]) for r in test_rows]


def test_eval_embeddings_keeps_a_seeded_sample_or_none_and_changes_no_number(tmp_path):
    full = run(tiny("ce"), tmp_path / "all")
    sample = run(tiny("ce", **{"eval.embeddings": 7}), tmp_path / "sample")
    none = run(tiny("ce", **{"eval.embeddings": 0}), tmp_path / "none")
    assert full["final"] == sample["final"] == none["final"]
    assert not (tmp_path / "none" / "embeddings.npz").exists()
    assert (tmp_path / "none" / "predictions.csv").read_bytes() == (tmp_path / "all" / "predictions.csv").read_bytes()
    every, kept = np.load(tmp_path / "all" / "embeddings.npz"), np.load(tmp_path / "sample" / "embeddings.npz")
    for split in ("test", "test_imbalanced"):
        assert len(kept[f"{split}_ids"]) == 7
        rows = [every[f"{split}_ids"].tolist().index(i) for i in kept[f"{split}_ids"].tolist()]
        assert rows == sorted(rows)  # the same images, in the split's order, with their own rows
        for name in ("features", "labels", "preds"):
            np.testing.assert_array_equal(kept[f"{split}_{name}"], every[f"{split}_{name}"][rows])
    # An output choice, not a result: a finished run is found again whatever it says.
    again = run(tiny("ce", **{"eval.embeddings": 0}), tmp_path / "all")
    assert again == full
    with pytest.raises(ConfigError, match="eval.embeddings"):
        run(tiny("ce", **{"eval.embeddings": -1}), tmp_path / "bad")


@pytest.mark.parametrize("method", ["supcon", "cl", "fcl", "acl"])
def test_each_contrastive_loss_trains(tmp_path, method):
    metrics = run(tiny(method), tmp_path / method)
    assert metrics["status"] == "complete"
    loss = metrics["history"]["stage1"][0]["train_loss"]
    assert np.isfinite(loss) and loss > 0
    assert 0 <= metrics["final"]["test"]["ua"] <= 1


def test_stage2_freezes_the_encoder_and_its_batch_norm(tmp_path):
    out = tmp_path / "run"
    run(tiny("afcl", **{"stage2.epochs": 2, "stage2.loss": "logit_adjusted", "stage2.augment": True}), out)
    stage1 = load_checkpoint(out / "checkpoints/stage1/best.ckpt")["state_dict"]
    stage2 = load_checkpoint(out / "checkpoints/stage2/last.ckpt")["state_dict"]
    encoder_keys = [k for k in stage1 if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder_keys)
    for key in encoder_keys:
        assert torch.equal(stage1[key], stage2[key]), key
    assert "classifier.fc.weight" in stage2 and "head.net.0.weight" not in stage2


def test_ce_baseline_with_focal_loss_and_class_balanced_sampler(tmp_path):
    out = tmp_path / "ce"
    metrics = run(tiny("ce", **{"stage2.loss": "focal", "stage2.sampler": "class_balanced"}), out)
    assert (out / "checkpoints/baseline/best.ckpt").is_file()
    assert not (out / "checkpoints/stage1").exists()
    assert list(metrics["history"]) == ["baseline"]
    assert metrics["status"] == "complete"


def test_resume_after_interrupt_equals_uninterrupted_run_and_is_deterministic(tmp_path):
    config = tiny("afcl", **{"stage1.epochs": 3, "stage2.epochs": 2, "stage1.batch_size": 16})
    reference = run(config, tmp_path / "a")
    assert run(config, tmp_path / "c") == reference  # same seed, same machine: identical

    out = tmp_path / "b"
    with pytest.raises(RuntimeError, match="simulated crash"):  # inside stage 1's second epoch
        run(config, out, callbacks=[Crash("stage1", epoch=1, batch=2)])
    assert (out / "checkpoints/stage1/last.ckpt").is_file()
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    with pytest.raises(KeyboardInterrupt):  # Ctrl+C inside stage 2
        run(config, out, callbacks=[Crash("stage2", epoch=1, batch=0, error=KeyboardInterrupt())])
    resumed = run(config, out)
    assert resumed["final"] == reference["final"]
    assert resumed["history"] == reference["history"]
    assert resumed["best"] == reference["best"]


def test_finished_run_is_not_redone_and_other_config_is_refused(tmp_path):
    out = tmp_path / "run"
    first = run(tiny("cl"), out)
    best = out / "checkpoints/stage2/best.ckpt"
    stamp = best.stat().st_mtime_ns
    assert run(tiny("cl"), out) == first
    assert best.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="different config.*loss.temperature"):
        run(tiny("cl", **{"loss.temperature": 0.5}), out)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        run(tiny("cl"), tmp_path / "junk")


def test_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path):
    out = tmp_path / "run"
    config = tiny("afcl", **{"stage1.epochs": 2})
    with pytest.raises(RuntimeError):
        run(config, out, callbacks=[Crash("stage1", epoch=1, batch=1)])
    last = out / "checkpoints/stage1/last.ckpt"
    last.write_bytes(last.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointError, match="last.ckpt cannot be read"):
        run(config, out)

    other = tmp_path / "other"
    run(tiny("ce", **{"data.classes": [0, 1, 2, 3], "data.imbalance": None}), other)
    from asymcl.training.predict import RunModel

    done = tmp_path / "done"
    run(tiny("ce"), done)
    model = RunModel(done)
    with pytest.raises(CheckpointError, match="do not fit this model.*classifier.fc.weight"):
        load_module_weights(model.module, other / "checkpoints/baseline/best.ckpt")


def test_predict_matches_the_runs_own_test_predictions(tmp_path):
    from PIL import Image

    from asymcl.data import DataSpec, build_splits
    from asymcl.training.predict import predict

    out = tmp_path / "run"
    config = tiny("ce")
    run(config, out)
    test = build_splits(DataSpec(classes=[0, 1, 2], imbalance="exp:4", val_fraction=0.2, seed=0))["test"]
    images, labels = test.load_all()
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(images[i, 0].numpy()).save(folder / f"img{i}.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "rgb_other_size.jpg")
    text = predict(out, folder, tmp_path / "pred.csv")
    rows = list(csv.DictReader((tmp_path / "pred.csv").open()))
    assert text == (tmp_path / "pred.csv").read_text()
    assert len(rows) == 7
    expected = {int(r["index"]): r for r in csv.DictReader((out / "predictions.csv").open()) if r["split"] == "test"}
    for row in rows:
        assert sum(float(row[f"prob_{c}"]) for c in "012") == pytest.approx(1.0, abs=1e-4)
        if row["path"].endswith(".png"):
            index = int(row["path"].rsplit("img", 1)[1][:-4])
            assert row["pred"] == expected[index]["pred"]
            assert float(row["prob_0"]) == pytest.approx(float(expected[index]["prob_0"]), abs=1e-4)
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="broken.png"):
        predict(out, folder)
    with pytest.raises(DataError, match="neither an image file nor a folder"):
        predict(out, tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a run directory"):
        predict(tmp_path, folder)


@pytest.mark.parametrize(
    "overrides,error",
    [
        ({"data.classes": [0, 99]}, DataError),  # a data error
        ({"trainer.accelerator": "mps"}, ConfigError),  # a device Lightning cannot find (never on Linux)
    ],
)
def test_user_errors_before_training_leave_no_run_directory(tmp_path, overrides, error):
    # Otherwise the half-made directory would refuse the corrected command as "another config".
    out = tmp_path / "run"
    with pytest.raises(error):
        run(tiny(**overrides), out)
    assert not out.exists()
    metrics = run(tiny(), out)
    assert metrics["status"] == "complete"


def test_final_metrics_do_not_sync_across_processes():
    # Under DDP only rank 0 evaluates at the end; a metric that syncs on compute would wait forever
    # for the other ranks.
    from asymcl.training.modules import metric_collection

    for metric in metric_collection(3, sync_on_compute=False).values():
        assert metric.sync_on_compute is False
    for metric in metric_collection(3).values():
        assert metric.sync_on_compute is True


def test_last_checkpoint_is_the_latest_epoch_not_the_best(tmp_path):
    # Lightning's save_last=True rewrites last.ckpt only when the best improves; a resume must
    # start from the latest epoch, not redo every epoch since the best one.
    out = tmp_path / "run"
    metrics = run(tiny("ce", **{"stage1.epochs": 4}), out)
    last = load_checkpoint(out / "checkpoints" / "baseline" / "last.ckpt")
    best = load_checkpoint(out / "checkpoints" / "baseline" / "best.ckpt")
    assert last["epoch"] == 3 and best["epoch"] < 3  # the case Lightning got wrong
    assert best["epoch"] == metrics["best"]["baseline"]["epoch"]


def test_resume_may_change_display_options_only(tmp_path):
    from asymcl.training.config import resolve_config
    from asymcl.training.run_dir import default_run_dir

    out = tmp_path / "run"
    first = run(tiny("ce"), out)
    again = run(tiny("ce", **{"trainer.progress_bar": True, "trainer.num_threads": 1}), out)
    assert again == first  # finished: returned, not redone nor refused
    assert default_run_dir(resolve_config(tiny("ce"))) == default_run_dir(
        resolve_config(tiny("ce", **{"trainer.progress_bar": True}))
    )
    with pytest.raises(ConfigError, match="different config"):
        run(tiny("ce", **{"stage2.lr": 0.5}), out)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, "runs/afcl-digits-3ee2ee45"),
        ({"method": "ce", "data.imbalance": "exp:10"}, "runs/ce-digits-2ec67328"),
        ({"method": "fcl", "loss.gamma": 2, "stage1.epochs": 3}, "runs/fcl-digits-26a0dcc2"),
    ],
)
def test_default_run_dir_is_the_one_asymcl_0_1_wrote(overrides, expected):
    """Keys added after 0.1.0 hold their defaults here: the directory an old command wrote is
    found again (expected names computed with asymcl 0.1.0, commit f726922)."""
    from asymcl.training.config import resolve_config
    from asymcl.training.run_dir import default_run_dir

    assert default_run_dir(resolve_config(None, overrides)) == expected


def test_channels_last_trains_to_the_same_result(tmp_path):
    """trainer.channels_last changes the memory layout only: on the CPU the run's numbers match."""
    plain = run(tiny("afcl"), tmp_path / "plain")
    last = run(tiny("afcl", **{"trainer.channels_last": True}), tmp_path / "channels_last")
    for split in plain["final"]:
        assert last["final"][split]["ua"] == pytest.approx(plain["final"][split]["ua"], abs=0.02)


@pytest.mark.parametrize(
    ("env", "main"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"RANK": "3", "LOCAL_RANK": "0"}, False),  # torchrun, second machine's first process
        ({"LOCAL_RANK": "1"}, False),  # Lightning's re-launched second process
        ({"SLURM_PROCID": "2"}, False),  # an srun task
        ({"LOCAL_RANK": "0", "SLURM_PROCID": "2"}, True),  # SLURM that Lightning's launcher runs under
    ],
)
def test_one_rank_rule_the_one_lightning_uses(monkeypatch, env, main):
    from lightning.fabric.utilities.rank_zero import _get_rank

    from asymcl.training.run_dir import RANK_VARIABLES, is_main_process

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_main_process() is main
    assert ((_get_rank() or 0) == 0) is main  # the process whose loggers Lightning keeps

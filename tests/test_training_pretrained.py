"""Pretrained encoders in the pipeline: model.finetune (which weights train), the adapter, training
from the feature cache (reuse, repair, errors), and predict/export of a cached run on raw images."""

import csv
import io
import json

import numpy as np
import pytest
import torch

from asymcl.data import build_splits, feature_cache
from asymcl.errors import ConfigError, DataError
from asymcl.models import SmallCNN
from asymcl.training.checkpoints import load_checkpoint
from asymcl.training.config import config_differences, resolve_config
from asymcl.training.pipeline import data_spec, run
from asymcl.training.predict import predict
from test_training_predict_consistency import _noisy_jpeg_folder

torch.set_num_threads(1)

TINY = {
    "data.dataset": "digits",
    "data.classes": [0, 1, 2],
    "stage1.epochs": 1,
    "stage1.batch_size": 64,
    "stage2.epochs": 1,
    "stage2.batch_size": 64,
    "trainer.progress_bar": False,
}


@pytest.fixture
def weights_file(tmp_path):
    """A small_cnn weight file with non-trivial BatchNorm statistics, as model.pretrained."""
    torch.manual_seed(7)
    model = SmallCNN(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "small_cnn.pth"
    torch.save(model.state_dict(), path)
    return path


def _final_state(run_dir, stage):
    state = load_checkpoint(run_dir / "checkpoints" / stage / "best.ckpt")["state_dict"]
    return {k[len("encoder.backbone.") :]: v for k, v in state.items() if k.startswith("encoder.backbone.")}, state


def _block(name: str) -> int:
    """small_cnn's units are its three conv blocks: features.0-3, 4-7, 8-10."""
    index = int(name.split(".")[1])
    return 1 if index < 4 else 2 if index < 8 else 3


@pytest.mark.parametrize(
    "finetune, cache, moved",
    [
        ("all", "auto", {1, 2, 3}),
        ("frozen", "auto", set()),
        ("last:1", "auto", {3}),
        ("last:2", "off", {2, 3}),
    ],
)
def test_finetune_trains_exactly_its_parameters(tmp_path, weights_file, finetune, cache, moved):
    config = {
        **TINY,
        "method": "ce",
        "model.pretrained": str(weights_file),
        "model.finetune": finetune,
        "data.cache": cache,
        "data.cache_dir": str(tmp_path / "cache"),
    }
    run(config, tmp_path / "run")
    trained, state = _final_state(tmp_path / "run", "baseline")
    initial = torch.load(weights_file)
    assert set(trained) == set(initial)
    for name, value in initial.items():
        changed = not torch.equal(trained[name], value)
        if name.endswith("num_batches_tracked"):
            continue
        # weights and BatchNorm statistics alike: a frozen block's never move
        assert changed == (_block(name) in moved), name
    # the adapter (on by default unless finetune=all) trains end to end in the baseline
    has_adapter = any(k.startswith("encoder.adapter.") for k in state)
    assert has_adapter == (finetune != "all")
    if has_adapter:
        assert state["encoder.adapter.fc2.weight"].abs().sum() > 0  # zero at initialisation


def test_cache_is_shared_by_runs_and_reused(tmp_path, weights_file, monkeypatch, capfd):
    cache_dir = tmp_path / "cache"
    base = {**TINY, "model.finetune": "frozen", "data.cache_dir": str(cache_dir), "model.pretrained": str(weights_file)}
    first = run({**base, "method": "ce"}, tmp_path / "ce")
    entries = sorted(p.name for p in cache_dir.iterdir())
    shards = sorted(p.name for p in cache_dir.rglob("shard-*.npz"))
    assert len(entries) == 2  # the training views and the clean val/test features
    assert first["input"] == {"channels": 1, "height": 8, "width": 8}  # the raw images predict feeds

    def no_extraction(*args, **kwargs):
        raise AssertionError("the second run recomputed cached features")

    monkeypatch.setattr(feature_cache, "_compute", no_extraction)
    capfd.readouterr()
    second = run(
        {
            **base,
            "method": "afcl",
            "loss.gamma": 1.0,
            "loss.eta": 10.0,
            "trainer.progress_bar": True,
            "stage1.epochs": 3,
            "stage2.epochs": 15,
        },
        tmp_path / "afcl",
    )
    err = capfd.readouterr().err
    assert "0 computed" in err and str(cache_dir) in err and "MB on disk" in err  # location and size shown
    assert sorted(p.name for p in cache_dir.rglob("shard-*.npz")) == shards
    # cached-feature training end to end: both stages trained, a real classifier
    assert second["status"] == "complete" and second["stages_complete"] == ["stage1", "stage2"]
    assert second["final"]["test"]["ua"] > 0.6
    # another run seed: other splits, the same cache entries (the cache seed is its own)
    monkeypatch.undo()
    run({**base, "method": "ce", "seed": 1}, tmp_path / "ce1")
    assert sorted(p.name for p in cache_dir.iterdir()) == entries
    # a moved cache is not another config
    moved = resolve_config({**base, "method": "ce", "data.cache_dir": str(tmp_path / "elsewhere")})
    assert config_differences(moved, resolve_config({**base, "method": "ce"})) == []


def test_truncated_shard_and_full_disk_are_repaired_by_a_rerun(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    config = {**TINY, "method": "ce", "model.finetune": "frozen", "data.cache_dir": str(cache_dir)}
    real_write = feature_cache._write_shard

    def full_disk(directory, *args, **kwargs):
        raise DataError(f"cannot write the feature cache in {directory}: No space left on device (the disk is full)")

    monkeypatch.setattr(feature_cache, "_write_shard", full_disk)
    with pytest.raises(DataError, match="disk is full"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing half-written: no run directory
    assert not list(cache_dir.rglob("shard-*.npz"))
    monkeypatch.setattr(feature_cache, "_write_shard", real_write)
    reference = run(config, tmp_path / "run")

    shard = max(cache_dir.rglob("shard-*.npz"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    again = run(config, tmp_path / "rerun")
    assert again["final"]["test"] == reference["final"]["test"]  # recomputed: the same numbers
    assert shard.name in {p.name for p in cache_dir.rglob("shard-*.npz")}


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model.finetune": "some"}, "model.finetune must be all, frozen or last:K"),
        ({"model.finetune": "last:0"}, "model.finetune must be all, frozen or last:K"),
        ({"model.backbone": "wide_resnet"}, "model.backbone must be one of"),
        ({"model.pretrained": "imagenet"}, "backbone small_cnn has no bundled ImageNet weights"),
        ({"model.input_size": 128}, "model.input_size is an EfficientNet-Lite option"),
        ({"data.cache": "yes"}, "data.cache must be one of auto, off"),
        ({"data.cache_views": 1}, "data.cache_views must be >= 2"),
    ],
)
def test_bad_pretrained_options_are_one_line_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        resolve_config({**TINY, **overrides})
    assert "\n" not in str(info.value)


def test_last_k_beyond_the_blocks_fails_before_the_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="has 3 blocks"):
        run({**TINY, "method": "ce", "model.finetune": "last:4"}, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "model",
    [
        {"model.finetune": "last:1"},
        # two ImageNet networks side by side, frozen: the cache holds their concatenated features
        {
            "model.backbone": "efficientnet_lite1+efficientnet_lite0",
            "model.pretrained": "imagenet",
            "model.finetune": "frozen",
            "model.input_size": 32,
        },
    ],
    ids=["small_cnn-last1", "lite1+lite0-frozen"],
)
def test_predict_and_export_of_a_cached_run_match_its_predictions(tmp_path, model):
    root = _noisy_jpeg_folder(tmp_path / "images")
    config = resolve_config(
        None,
        {
            "method": "afcl",
            "data.dataset": "folder",
            "data.root": str(root),
            "data.image_size": 16,
            **model,
            "data.cache_dir": str(tmp_path / "cache"),
            "data.cache_views": 2,
            "stage1.epochs": 1,
            "stage1.batch_size": 16,
            "stage2.epochs": 2,
            "stage2.batch_size": 16,
            "trainer.progress_bar": False,
        },
    )
    run_dir = tmp_path / "run"
    run(config, run_dir)
    test_split = build_splits(data_spec(config)).splits["test"]
    by_path = {row["path"]: row for row in csv.DictReader(io.StringIO(predict(run_dir, root)))}
    saved = [row for row in csv.DictReader((run_dir / "predictions.csv").open()) if row["split"] == "test"]
    assert len(saved) == len(test_split) > 0
    names = [f"prob_{c}" for c in test_split.classes]
    ours = np.array([[float(by_path[test_split.paths[int(row["index"])]][n]) for n in names] for row in saved])
    theirs = np.array([[float(row[n]) for n in names] for row in saved])
    # the run read float16-stored cached features, predict computes them in float32
    np.testing.assert_allclose(ours, theirs, atol=5e-3)

    from asymcl.training.export import export_run
    from asymcl.training.predict import load_image

    images = np.stack([load_image(test_split.paths[int(row["index"])], 3, (16, 16)) for row in saved])
    exported = torch.jit.load(str(export_run(run_dir, "torchscript")))
    with torch.no_grad():
        probs = exported(torch.as_tensor(images)).numpy()
    np.testing.assert_allclose(probs, theirs, atol=5e-3)


def test_joint_schedule_and_la_train_from_the_cache(tmp_path, weights_file):
    """The levers work on cached features too: joint (two cached views per image) and la."""
    base = {
        **TINY,
        "model.finetune": "frozen",
        "data.cache_dir": str(tmp_path / "cache"),
        "model.pretrained": str(weights_file),
        "stage1.epochs": 10,
    }
    # Random conv features of 322 images learn slowly: 10 epochs, and a bar well above chance (1/3).
    joint = run(
        {**base, "method": "afcl", "schedule": "joint", "loss.gamma": 1.0, "loss.eta": 10.0}, tmp_path / "joint"
    )
    assert joint["stages_complete"] == ["joint"] and joint["final"]["test"]["ua"] > 0.5
    la = run({**base, "method": "la"}, tmp_path / "la")
    assert la["stages_complete"] == ["baseline"] and la["final"]["test"]["ua"] > 0.5


def test_sweep_workers_build_the_cache_first_then_share_the_grid(tmp_path, weights_file, monkeypatch):
    """--workers 2: the parent builds every seed's feature caches before any worker starts (so no
    worker extracts on half the cores while the other waits on the lock), then two processes share
    the grid: every run finishes once, none is trained twice, and the child really ran."""
    import yaml

    from asymcl.cli import main
    from asymcl.experiments.parallel import WORKER_SPEC, threads_per_worker
    from asymcl.experiments.runs import is_complete

    cache_dir = tmp_path / "cache"
    base = {
        **TINY,
        "model.backbone": "small_cnn",
        "model.pretrained": str(weights_file),
        "model.finetune": "frozen",
        "model.adapter": 16,
        "data.cache_dir": str(cache_dir),
        "data.cache_views": 2,
    }
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "tiny", "base": base, "grid": {"method": ["ce", "cl", "supcon"], "seed": [0, 1]}})
    )
    out = tmp_path / "runs"
    order = []
    real = feature_cache._compute

    def recording(*args, **kwargs):
        order.append("extract")
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "_compute", recording)
    from asymcl.experiments import parallel

    spawn = parallel.spawn_workers
    monkeypatch.setattr(parallel, "spawn_workers", lambda *a, **k: (order.append("spawn"), spawn(*a, **k))[1])
    assert main(["sweep", "--config", str(spec), "--out", str(out), "--workers", "2"]) == 0
    assert order[0] == "extract" and order[-1] == "spawn"  # both seeds' caches before the workers
    names = [f"{m}_s{s}" for m in ("ce", "cl", "supcon") for s in (0, 1)]
    assert all(is_complete(out / name) for name in names)
    manifest = json.loads((out / "sweep.json").read_text())
    assert any(
        "--worker-label" in entry["command"] or WORKER_SPEC in entry["command"] for entry in manifest["commands"]
    )  # the child worker started and ran the sweep
    order.clear()  # a finished sweep again: nothing to extract, no worker process started
    assert main(["sweep", "--config", str(spec), "--out", str(out), "--workers", "2"]) == 0
    assert order == []
    assert threads_per_worker(2, cores=2) == 1 and threads_per_worker(4, cores=2) == 1
    assert threads_per_worker(2, cores=16) == 8
    assert main(["sweep", "--config", str(spec), "--out", str(out), "--workers", "0"]) == 2
    assert main(["sweep", "--config", str(spec), "--out", str(out), "--workers", "2", "--optuna", "2"]) == 2


def test_stage2_reads_encoder_outputs_from_a_table_that_follows_the_weights(tmp_path):
    """Stage 2 computes the frozen encoder's outputs of the cached clean features once per split;
    they equal the per-batch computation, and a weight written into the encoder rebuilds them."""
    from asymcl.data.feature_cache import FeatureCache
    from asymcl.training.modules import LinearProbeModule

    config = resolve_config(None, {**TINY, "method": "afcl", "model.finetune": "frozen", "model.adapter": 16})
    module = LinearProbeModule(config, 3, 1, (8, 8), "none", torch.ones(3))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.encoder.adapter.parameters():
            p.normal_()
    dim = module.encoder.feature_dim
    caches = {
        split: FeatureCache(tmp_path, {}, torch.randn(n, dim).half(), torch.zeros(n, 0, dim).half())
        for split, n in (("train", 50), ("val", 20))
    }
    module.use_feature_caches(caches)
    rows = torch.tensor([3, 0, 49, 3])
    direct = module.encoder.from_frozen(caches["train"].clean_features(rows))
    close = dict(atol=1e-4, rtol=1e-4)  # another batch size, another summation order
    torch.testing.assert_close(module.encode(rows, "train"), direct, **close)
    torch.testing.assert_close(
        module.encode(torch.tensor([19]), "val"),
        module.encoder.from_frozen(caches["val"].clean_features([19])),
        **close,
    )
    module.encoder.adapter.load_state_dict({k: v + 1 for k, v in module.encoder.adapter.state_dict().items()})
    torch.testing.assert_close(
        module.encode(rows, "train"), module.encoder.from_frozen(caches["train"].clean_features(rows)), **close
    )
    assert not torch.allclose(module.encode(rows, "train"), direct)

"""The cheaper run path of issue 22 computes the same run: a run that reads its feature cache from
this process's memory equals one that reads it from disk, and a seed's training entry that takes
its clean features from another seed's entry holds the same numbers as one that computed them."""

from collections import OrderedDict

import numpy as np
import torch

from asymcl.data import ArrayImageDataset, cache_store
from asymcl.data.feature_cache import build_feature_cache
from asymcl.models import SmallCNN, apply_finetune, build_backbone
from asymcl.training.pipeline import run

torch.set_num_threads(1)

TINY = {
    "data.dataset": "digits",
    "data.classes": [0, 1, 2],
    "stage1.epochs": 2,
    "stage1.batch_size": 16,
    "stage2.epochs": 2,
    "stage2.batch_size": 32,
    "trainer.progress_bar": False,
    "method": "afcl",
    "loss.gamma": 1.0,
    "loss.eta": 10.0,
    "model.finetune": "frozen",
    "model.adapter": 16,
    "data.cache_views": 2,
}


def _outputs(run_dir):
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    embeddings = np.load(run_dir / "embeddings.npz")
    return (
        {key: metrics[key] for key in ("final", "history", "best")},
        (run_dir / "predictions.csv").read_bytes(),
        {name: embeddings[name] for name in embeddings.files},
    )


def test_a_run_from_shards_held_in_memory_equals_one_read_from_disk(tmp_path, monkeypatch):
    torch.manual_seed(7)
    weights = tmp_path / "small_cnn.pth"
    torch.save(SmallCNN(1).state_dict(), weights)
    config = {**TINY, "model.pretrained": str(weights), "data.cache_dir": str(tmp_path / "cache")}
    run(config, tmp_path / "extracting")  # builds the entries (nothing is read from disk)

    reads = []
    real = cache_store.read_shard
    monkeypatch.setattr(cache_store, "read_shard", lambda *a: (reads.append(a[0]), real(*a))[1])
    monkeypatch.setattr(cache_store, "_MEMO", OrderedDict())  # a fresh process
    run(config, tmp_path / "from-disk")
    assert reads  # every shard read and checked once
    reads.clear()
    run(config, tmp_path / "from-memory")
    assert not reads  # a sweep worker's next run: nothing read again

    disk, memory, first = (_outputs(tmp_path / name) for name in ("from-disk", "from-memory", "extracting"))
    for other in (memory, first):
        assert other[0] == disk[0]  # final metrics, per-epoch history, chosen epochs
        assert other[1] == disk[1]  # predictions.csv byte for byte
        assert other[2].keys() == disk[2].keys()
        for name, array in disk[2].items():
            np.testing.assert_array_equal(other[2][name], array)


def test_a_replaced_shard_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_store, "_MEMO", OrderedDict())
    path = cache_store.write_shard(tmp_path, "k", ["a"], np.ones((1, 4), np.float16), np.ones((1, 2, 4), np.float16))
    first = cache_store.read_shard_memo(path, "k")
    assert cache_store.read_shard_memo(path, "k") is first and not first["clean"].flags.writeable
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[:-3] + b"xyz")  # the same name, other (damaged) bytes: a new file
    assert cache_store.read_shard_memo(path, "k") is None


def _dataset(n=12):
    rng = np.random.default_rng(0)
    return ArrayImageDataset(rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8), rng.integers(0, 2, n), ["a", "b"])


def _frozen():
    torch.manual_seed(0)
    frozen, _ = apply_finetune(build_backbone("small_cnn", 1), "frozen")
    frozen.images = 0

    def count(module, args):
        module.images += args[0].shape[0]

    frozen.register_forward_pre_hook(count)
    return frozen


def test_a_seed_s_views_entry_takes_the_clean_features_of_another_seed(tmp_path):
    dataset = _dataset()
    # engine torch: the hook counts the passes through the torch module
    kwargs = dict(augmentation="grey28", views=3, precision="fp32", engine="torch", log=lambda m: None)
    seed0 = build_feature_cache(dataset.subset(range(8)), _frozen(), seed=0, cache_dir=tmp_path, **kwargs)
    lines = []
    frozen = _frozen()
    seed1 = build_feature_cache(dataset, frozen, seed=1, cache_dir=tmp_path, **{**kwargs, "log": lines.append})
    # images 0-7: their 3 views only; images 8-11: clean + 3 views
    assert frozen.images == 8 * 3 + 4 * 4
    assert any("8 of these images' clean features taken from" in line for line in lines)
    assert torch.equal(seed1.clean[:8], seed0.clean)
    alone_frozen = _frozen()
    alone = build_feature_cache(dataset, alone_frozen, seed=1, cache_dir=tmp_path / "alone", **kwargs)
    assert alone_frozen.images == 12 * 4
    assert torch.equal(seed1.views, alone.views)  # the views are computed in the same batches
    # the clean features: equal up to the float16 rounding of a different batch composition
    torch.testing.assert_close(seed1.clean.float(), alone.clean.float(), rtol=2e-3, atol=2e-3)
    assert seed1.key != seed0.key and seed1.path != seed0.path  # still an entry of its own key
    frozen.images = 0
    again = build_feature_cache(dataset, frozen, seed=1, cache_dir=tmp_path, **kwargs)
    assert frozen.images == 0 and torch.equal(again.views, seed1.views)

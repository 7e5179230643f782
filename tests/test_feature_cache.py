"""The on-disk feature cache: reuse, invalidation, integrity, concurrency, equality with the encoder."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asymcl.data import ArrayImageDataset, FileImageDataset
from asymcl.data import feature_cache as fc
from asymcl.data.augment import build_augmentation
from asymcl.data.feature_cache import build_feature_cache, image_fingerprints, render_views
from asymcl.errors import DataError
from asymcl.models import apply_finetune, build_backbone

torch.set_num_threads(1)
SRC = str(Path(fc.__file__).resolve().parents[2])


def _count_images(module):
    """Count the images ``module`` is run on in ``module.images`` (a hook: the repr, part of the
    cache key, stays that of the module)."""
    module.images = 0

    def hook(mod, args):
        mod.images += args[0].shape[0]

    module.register_forward_pre_hook(hook)
    return module


def _dataset(n=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 1), dtype=np.uint8)
    return ArrayImageDataset(images, rng.integers(0, 2, n), ["a", "b"])


def _frozen(seed=0):
    torch.manual_seed(seed)
    frozen, _ = apply_finetune(build_backbone("small_cnn", 1), "frozen")
    return _count_images(frozen)


def _build(dataset, frozen, tmp_path, **overrides):
    # engine torch: these tests count the passes through the torch module (tests/test_cache_engine.py
    # checks that onnxruntime computes the same numbers)
    kwargs = dict(
        augmentation="grey28", views=3, seed=0, cache_dir=tmp_path, precision="fp32", engine="torch", log=lambda m: None
    )
    kwargs.update(overrides)
    return build_feature_cache(dataset, frozen, **kwargs)


def test_second_build_and_any_subset_reuse_the_cache(tmp_path):
    dataset, frozen = _dataset(), _frozen()
    first = _build(dataset, frozen, tmp_path)
    assert frozen.images == 10 * 4  # clean + 3 views per image
    assert first.clean.shape == (10, 128) and first.views.shape == (10, 3, 128)
    second = _build(dataset, frozen, tmp_path)
    subset = _build(dataset.subset([7, 2, 5]), frozen, tmp_path)
    assert frozen.images == 40  # nothing recomputed
    assert torch.equal(second.views, first.views)
    assert torch.equal(subset.clean, first.clean[[7, 2, 5]])
    assert torch.equal(subset.views, first.views[[7, 2, 5]])
    # a larger dataset computes only its new images
    bigger = ArrayImageDataset(np.concatenate([dataset.images, _dataset(4, seed=1).images]), np.zeros(14), ["a"])
    grown = _build(bigger, frozen, tmp_path)
    assert frozen.images == 40 + 4 * 4
    assert torch.equal(grown.clean[:10], first.clean)


def test_a_clean_only_entry_takes_clean_features_from_an_entry_with_views(tmp_path):
    """Validation/test entries (no views) reuse the clean features a training entry (with views)
    already computed for the same images and encoder; other encoders' entries are not used."""
    dataset, frozen = _dataset(12), _frozen()
    train = _build(dataset.subset(list(range(8))), frozen, tmp_path)
    assert frozen.images == 8 * 4
    lines = []
    val = _build(dataset.subset(list(range(4, 12))), frozen, tmp_path, views=0, augmentation="none", log=lines.append)
    assert frozen.images == 8 * 4 + 4  # images 4-7 taken from the training entry, 8-11 computed
    assert any("taken from" in line for line in lines)
    assert torch.equal(val.clean[:4], train.clean[4:8])
    fresh = _build(dataset.subset(list(range(4, 12))), _frozen(), tmp_path / "alone", views=0, augmentation="none")
    torch.testing.assert_close(val.clean.float(), fresh.clean.float(), rtol=2e-3, atol=2e-3)
    # the borrowed rows are this entry's own now: read again, nothing is computed or borrowed
    lines.clear()
    _build(dataset.subset(list(range(4, 12))), frozen, tmp_path, views=0, augmentation="none", log=lines.append)
    assert frozen.images == 8 * 4 + 4 and not any("taken from" in line for line in lines)
    # another encoder's entry lends nothing
    other = _frozen(seed=1)
    _build(dataset.subset(list(range(4, 8))), other, tmp_path, views=0, augmentation="none")
    assert other.images == 4


@pytest.mark.parametrize(
    "change",
    [{"seed": 1}, {"views": 2}, {"augmentation": "none"}, {"precision": "bf16"}, {"extra_key": {"backbone": "x"}}],
)
def test_a_changed_key_recomputes(tmp_path, change):
    dataset, frozen = _dataset(), _frozen()
    base = _build(dataset, frozen, tmp_path)
    count = frozen.images
    other = _build(dataset, frozen, tmp_path, **change)
    assert frozen.images > count
    assert other.path != base.path


def test_changed_weights_or_image_files_recompute(tmp_path):
    dataset, frozen = _dataset(), _frozen()
    _build(dataset, frozen, tmp_path)
    with torch.no_grad():
        next(frozen.parameters()).add_(0.01)
    count = frozen.images
    _build(dataset, frozen, tmp_path)
    assert frozen.images == count + 40
    # file datasets: a rewritten file is a new image, the others are reused
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(dataset.images[i, :, :, 0]).save(paths[-1])
    files = FileImageDataset(paths, np.zeros(4), ["a"], 1, (16, 16), cache=False)
    _build(files, frozen, tmp_path)
    count = frozen.images
    # a touched file, or the whole folder copied elsewhere with new modification times, is the
    # same image: nothing is recomputed
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    copied = tmp_path / "copy"
    copied.mkdir()
    for path in paths:
        (copied / os.path.basename(path)).write_bytes(open(path, "rb").read())
    moved = FileImageDataset(
        [str(copied / os.path.basename(p)) for p in paths], np.zeros(4), ["a"], 1, (16, 16), cache=False
    )
    assert image_fingerprints(moved) == image_fingerprints(files)
    _build(files, frozen, tmp_path)
    _build(moved, frozen, tmp_path)
    assert frozen.images == count
    # a rewritten file is a new image, the others are reused
    Image.fromarray(255 - dataset.images[1, :, :, 0]).save(paths[1])
    _build(files, frozen, tmp_path)
    assert frozen.images == count + 4  # one image x (clean + 3 views)
    os.unlink(paths[2])
    with pytest.raises(DataError, match="cannot read image file"):
        image_fingerprints(files)


def test_cached_features_equal_the_frozen_encoder_on_the_same_views(tmp_path):
    dataset = _dataset(6)
    encoder = build_backbone("efficientnet_lite0", 1, "imagenet", input_size=(32, 32))
    frozen, _ = apply_finetune(encoder, "last:3")  # a feature map, to cover (C, h, w) entries too
    cache = _build(dataset, frozen, tmp_path, views=2)
    images = torch.stack([dataset[i][0] for i in range(6)])
    augment = build_augmentation("grey28", (16, 16), 1)
    rendered = render_views(images, image_fingerprints(dataset), augment, 2, seed=0)
    with torch.no_grad():
        direct = frozen(rendered.flatten(0, 1)).view(6, 3, *cache.feature_shape)
    assert not torch.equal(rendered[:, 1], rendered[:, 2])  # the views differ
    torch.testing.assert_close(cache.clean.float(), direct[:, 0], rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(cache.views.float(), direct[:, 1:], rtol=2e-3, atol=2e-3)
    bf16 = _build(dataset, frozen, tmp_path, views=2, precision="bf16")
    assert (bf16.views.float() - direct[:, 1:]).abs().max() < 0.05 * direct.abs().max()


def test_views_in_bf16_leave_the_clean_features_in_fp32(tmp_path):
    # The pipeline extracts views in bf16 (speed) and clean images in fp32 (what predict computes).
    dataset, frozen = _dataset(6), _frozen()
    exact = _build(dataset, frozen, tmp_path, views=2)
    mixed = _build(dataset, frozen, tmp_path, views=2, view_precision="bf16")
    assert mixed.path != exact.path and mixed.key["view_precision"] == "bf16"
    assert torch.equal(mixed.clean, exact.clean)
    assert not torch.equal(mixed.views, exact.views)
    assert (mixed.views.float() - exact.views.float()).abs().max() < 0.05 * exact.views.float().abs().max()
    # the same precision twice is the plain key: entries written before view_precision existed stay valid
    same = _build(dataset, frozen, tmp_path, views=2, view_precision="fp32")
    assert same.path == exact.path and "view_precision" not in same.key


def test_one_file_reached_through_two_paths_is_one_image(tmp_path):
    dataset, frozen = _dataset(3), _frozen()
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(dataset.images[i, :, :, 0]).save(folder / f"{i}.png")
    (tmp_path / "link").symlink_to(folder)
    (tmp_path / "work").mkdir()
    direct = [str(folder / f"{i}.png") for i in range(3)]
    roundabout = [str(tmp_path / "work" / ".." / "link" / f"{i}.png") for i in range(3)]
    _build(FileImageDataset(direct, np.zeros(3), ["a"], 1, (16, 16), cache=False), frozen, tmp_path / "c")
    count = frozen.images
    _build(FileImageDataset(roundabout, np.zeros(3), ["a"], 1, (16, 16), cache=False), frozen, tmp_path / "c")
    assert frozen.images == count


def test_two_views_are_distinct_and_seeded_per_epoch(tmp_path):
    cache = _build(_dataset(), _frozen(), tmp_path)
    pairs = cache.view_pairs(epoch=0, seed=0)
    assert (pairs[:, 0] != pairs[:, 1]).all() and pairs.max() < 3
    assert torch.equal(pairs, cache.view_pairs(0, 0))
    assert not torch.equal(cache.view_pairs(1, 0), pairs)
    a, b = cache.two_views([3, 4], epoch=0, seed=0)
    assert torch.equal(a, cache.views[[3, 4], pairs[[3, 4], 0]].float())
    assert torch.equal(b, cache.views[[3, 4], pairs[[3, 4], 1]].float())
    with pytest.raises(DataError, match="at least 2 cached views"):
        _build(_dataset(), _frozen(), tmp_path, views=1).view_pairs(0, 0)


def test_truncated_or_foreign_shard_is_detected_and_rebuilt(tmp_path):
    dataset, frozen = _dataset(), _frozen()
    messages = []
    first = _build(dataset, frozen, tmp_path)
    (shard,) = first.path.glob("shard-*.npz")
    shard.write_bytes(shard.read_bytes()[:-100])
    again = _build(dataset, frozen, tmp_path, log=messages.append)
    assert any("truncated, damaged or from another key" in m for m in messages)
    assert frozen.images == 80
    torch.testing.assert_close(again.views, first.views)
    # a valid shard of another key copied into this entry is refused too
    other = _build(dataset, frozen, tmp_path, seed=5)
    for old in first.path.glob("shard-*.npz"):
        old.unlink()
    for foreign in other.path.glob("shard-*.npz"):
        (first.path / foreign.name).write_bytes(foreign.read_bytes())
    messages.clear()
    _build(dataset, frozen, tmp_path, log=messages.append)
    assert any("from another key" in m for m in messages)


def test_full_disk_leaves_nothing_and_a_rerun_repairs(tmp_path, monkeypatch):
    dataset, frozen = _dataset(), _frozen()
    real_savez = np.savez

    def disk_full(handle, **arrays):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fc.np, "savez", disk_full)
    with pytest.raises(DataError, match="disk is full.*data.cache_dir"):
        _build(dataset, frozen, tmp_path)
    entry = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in entry.iterdir() if p.name.startswith((".tmp", "shard"))] == []
    monkeypatch.setattr(fc.np, "savez", real_savez)
    assert _build(dataset, frozen, tmp_path).clean.shape == (10, 128)


def _child(tmp_path, body: str) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        sys.path.insert(0, {SRC!r})
        torch.set_num_threads(1)
        from asymcl.data import ArrayImageDataset
        from asymcl.data import feature_cache as fc
        from asymcl.models import apply_finetune, build_backbone
        rng = np.random.default_rng(0)
        ds = ArrayImageDataset(rng.integers(0, 256, (10, 16, 16, 1), dtype=np.uint8), rng.integers(0, 2, 10), ["a", "b"])
        torch.manual_seed(0)
        frozen, _ = apply_finetune(build_backbone("small_cnn", 1), "frozen")
    """) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_writer_leaves_a_cache_the_next_run_repairs(tmp_path):
    child = _child(
        tmp_path,
        f"""
        def stuck(handle, **arrays):
            handle.write(b"half a shard")
            handle.flush()
            import time; time.sleep(600)
        fc.np.savez = stuck
        fc.build_feature_cache(ds, frozen, augmentation="grey28", views=3, seed=0, cache_dir={str(tmp_path)!r}, precision="fp32")
    """,
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob("*/.tmp-*.npz")):
        assert child.poll() is None, child.stdout.read()
        assert time.time() < deadline
        time.sleep(0.1)
    child.kill()
    child.wait()
    assert list(tmp_path.glob("*/.tmp-*.npz"))  # the killed writer's leftover
    frozen = _frozen()
    cache = _build(_dataset(), frozen, tmp_path)
    assert frozen.images == 40 and cache.clean.shape == (10, 128)
    assert not list(tmp_path.glob("*/.tmp-*"))
    assert len(list(cache.path.glob("shard-*.npz"))) == 1


def test_two_processes_building_at_once_compute_once(tmp_path):
    body = f"""
        cache = fc.build_feature_cache(ds, frozen, augmentation="grey28", views=3, seed=0, cache_dir={str(tmp_path)!r}, precision="fp32")
        print("SUM", float(cache.views.float().sum()))
    """
    children = [_child(tmp_path, body), _child(tmp_path, body)]
    outputs = [c.communicate(timeout=300)[0] for c in children]
    assert all(c.returncode == 0 for c in children), outputs
    assert sum("(10 computed, 0 reused)" in out for out in outputs) == 1
    assert sum("(0 computed, 10 reused)" in out for out in outputs) == 1
    sums = {line for out in outputs for line in out.splitlines() if line.startswith("SUM")}
    assert len(sums) == 1
    assert len(list(tmp_path.glob("*/shard-*.npz"))) == 1


def test_an_interrupted_build_keeps_its_finished_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(fc, "SHARD_IMAGES", 4)
    dataset, frozen = _dataset(), _frozen()
    real = fc._compute
    calls = []

    def fail_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fc, "_compute", fail_third)
    with pytest.raises(KeyboardInterrupt):
        _build(dataset, frozen, tmp_path)
    monkeypatch.setattr(fc, "_compute", real)
    done = frozen.images
    cache = _build(dataset, frozen, tmp_path)
    assert done == 8 * 4 and frozen.images == done + 2 * 4  # only the last 2 images are new
    assert len(list(cache.path.glob("shard-*.npz"))) == 3
    # what each attempt extracted and cost is on record, the interrupted one included
    from asymcl.data.cache_store import read_extractions

    first, second = read_extractions(cache.path)
    assert (first["images"], first["of"], second["images"], second["of"]) == (8, 10, 2, 2)
    assert first["engine"] == second["engine"] == "torch" and first["seconds"] > 0


def test_bad_arguments_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="views must be >= 0"):
        _build(_dataset(), _frozen(), tmp_path, views=-1)
    with pytest.raises(DataError, match="precision must be auto, bf16 or fp32"):
        _build(_dataset(), _frozen(), tmp_path, precision="fp8")


def test_without_a_bar_each_finished_shard_prints_how_far_it_is(tmp_path, monkeypatch):
    # A sweep's extraction runs with progress bars off; it can take many minutes, so it says where it is.
    monkeypatch.setattr(fc, "SHARD_IMAGES", 4)
    lines = []
    _build(_dataset(), _frozen(), tmp_path, progress=False, log=lines.append)
    progress = [line for line in lines if "s left" in line]
    assert [line.split(" images")[0] for line in progress] == ["feature cache: 4/10", "feature cache: 8/10"]
    assert any("extracted 10 images x 4" in line for line in lines)

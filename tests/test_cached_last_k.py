"""model.finetune=last:K from the feature cache: the training step on cached maps gives the loss and
gradients of the same blocks run on the live backbone, for the same images and views."""

import lightning.pytorch as pl
import pytest
import torch

from asymcl.data.augment import build_augmentation
from asymcl.data.feature_cache import image_fingerprints, render_views
from asymcl.training.config import resolve_config
from asymcl.training.methods import stage_seed
from asymcl.training.modules import augmentation_preset
from asymcl.training.pipeline import RunData, _check_cache_matches, attach_feature_caches, build_module

torch.set_num_threads(1)


def _grads(module):
    return {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage, method, k", [("baseline", "ce", 1), ("baseline", "la", 3), ("stage1", "afcl", 2)])
def test_last_k_on_cached_maps_equals_the_live_backbone(tmp_path, stage, method, k):
    config = resolve_config(
        {
            "method": method,
            "data.dataset": "digits",
            "data.classes": [0, 1],
            "data.augment": "grey28",
            "model.backbone": "efficientnet_lite0",
            "model.pretrained": "imagenet",
            "model.input_size": 48,
            "model.finetune": f"last:{k}",
            "data.cache_dir": str(tmp_path),
            "data.cache_views": 3,
            "data.cache_precision": "fp32",
            # torch extracts, as the live path computes: the comparison below is exact up to one
            # float16 step of a few maps (tests/test_cache_engine.py checks onnxruntime's maps)
            "data.cache_engine": "torch",
            # the baselines' classifier reads one cached view per image (not the clean features)
            "stage2.augment": True,
            "trainer.progress_bar": False,
        }
    )
    data = RunData(config)
    attach_feature_caches(config, data, verbose=False)
    # seeded as the pipeline seeds a stage, so the module's frozen weights are the cached ones
    pl.seed_everything(stage_seed(config.seed, stage), verbose=False)
    module = build_module(stage, config, data)
    _check_cache_matches(module, data)
    cache, train = data.feature_caches["train"], data.splits["train"]
    module.train()

    rows = torch.arange(12)
    labels = torch.as_tensor(train.targets[:12])
    torch.manual_seed(11)  # drop-connect in the trainable blocks draws from it
    cached_loss = module.training_step((rows, labels), 0)
    cached_loss.backward()
    cached_grads = _grads(module)
    module.zero_grad(set_to_none=True)

    # Live: the same views rendered from the images, through the whole backbone.
    images = torch.stack([train[i][0] for i in rows.tolist()])
    fingerprints = [image_fingerprints(train)[i] for i in rows.tolist()]
    augment = build_augmentation(
        augmentation_preset(config, data.dataset_name, data.channels), data.image_hw, data.channels
    )
    rendered = render_views(images, fingerprints, augment, 3, config.data.cache_seed)
    pairs = cache.view_pairs(0, module._view_seed())[rows]
    first = rendered[torch.arange(12), 1 + pairs[:, 0]]
    second = rendered[torch.arange(12), 1 + pairs[:, 1]]

    def live(first, second, round_maps):
        """Loss and gradients with the views run through the backbone here; ``round_maps``: the
        frozen prefix's output rounded to float16, as the cache stores it."""
        module.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        views = first if stage == "baseline" else torch.cat([first, second])
        encoder = module.encoder
        if round_maps:
            features = encoder.from_frozen(encoder.frozen_input()(views).half().float())
        else:
            features = encoder(views)
        if stage == "baseline":
            loss = module.criterion(module.classifier(features), labels)
        else:
            z = module.head(features)
            loss = module.criterion(torch.stack(z.split(12), dim=1), labels)
        loss.backward()
        return loss.detach(), _grads(module)

    def relative(grads, reference, names):
        """||g - g_ref|| / ||g_ref|| over the parameters ``names`` together."""
        diff = torch.cat([(grads[n] - reference[n]).flatten() for n in names])
        return float(diff.norm() / torch.cat([reference[n].flatten() for n in names]).norm())

    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(cached_grads) == trainable
    assert any(n.startswith("encoder.backbone.") for n in trainable)  # the last K blocks train
    # 1. The cache path (view choice, indexing, blocks in training mode, drop-connect) is the live
    # path, given the float16 storage of the maps: equal up to float32 rounding, which may move a
    # stored value by one float16 step (extraction runs other batches, channels-last).
    loss, grads = live(first, second, round_maps=True)
    assert float(cached_loss.detach()) == pytest.approx(float(loss), rel=1e-5)
    assert relative(cached_grads, grads, trainable) < 1e-2
    # Tensor by tensor, where the gradient is not ~0 by construction (a bias before a batch norm).
    largest = max(float(grads[n].norm()) for n in trainable)
    for name in (n for n in trainable if float(grads[n].norm()) > 1e-2 * largest):
        assert relative(cached_grads, grads, [name]) < 3e-2, name
    # 2. Against the whole backbone in float32: float16 storage (relative 5e-4 on the maps) moves
    # the gradient by a few percent at most (batch-norm statistics of 12 images, ReLU6 kinks).
    loss, grads = live(first, second, round_maps=False)
    assert float(cached_loss.detach()) == pytest.approx(float(loss), rel=2e-3)
    assert relative(cached_grads, grads, trainable) < 3e-2
    # 3. Not vacuous: the clean images in place of the first views give another gradient.
    _, other = live(rendered[:, 0], second, round_maps=True)
    assert relative(other, grads, trainable) > 0.2


def test_a_cache_that_would_not_fit_the_disk_fails_before_extraction(tmp_path, monkeypatch, capfd):
    from collections import namedtuple

    from asymcl.data import DataSpec, build_splits, cache_store, feature_cache
    from asymcl.errors import DataError
    from asymcl.models import apply_finetune, build_backbone

    split = build_splits(DataSpec(dataset="digits", classes=[0, 1])).splits["val"]
    frozen, _ = apply_finetune(build_backbone("small_cnn", 1), "last:1")  # maps (64, 2, 2) of 8x8 digits
    usage = namedtuple("usage", "total used free")
    need = len(split) * (3 * 64 * 2 * 2 * 2 + 160) + 1024  # float16, clean + 2 views; fingerprints
    monkeypatch.setattr(cache_store.shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, need - 1))
    extracted = []
    monkeypatch.setattr(feature_cache, "_compute", lambda *a, **k: extracted.append(1))
    with pytest.raises(
        DataError,
        match=rf"{len(split)} images x 3 outputs of shape \(64, 2, 2\) need about "
        r".* GB in .*, but only .* GB are free; free space, set data.cache_dir",
    ) as info:
        feature_cache.build_feature_cache(split, frozen, augmentation="grey28", views=2, seed=0, cache_dir=tmp_path)
    assert "\n" not in str(info.value) and not extracted and not list(tmp_path.glob("*/shard-*"))
    monkeypatch.setattr(cache_store.shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, need))
    monkeypatch.undo()
    cache = feature_cache.build_feature_cache(split, frozen, augmentation="grey28", views=2, seed=0, cache_dir=tmp_path)
    assert f"about {need / 2**20:.0f} MB" in capfd.readouterr().err
    # the estimate is the shards' size up to the archive's own bytes
    assert sum(p.stat().st_size for p in cache.path.glob("shard-*")) == pytest.approx(need, rel=0.01)

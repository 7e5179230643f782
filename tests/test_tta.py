"""Test-time augmentation: eval.tta_views in a run equals `asymcl predict --tta` on the same image
files and seed, from the feature cache (cached val/test views) and without it (views rendered live);
with data.cache_seed null each run seed draws its own views, as its training views are."""

import csv
import json

import numpy as np
import pytest
import torch

from asymcl.cli import main
from asymcl.data import build_splits
from asymcl.errors import DataError
from asymcl.training.config import resolve_config
from asymcl.training.encoder import build_encoder, build_feature_caches, views_seed
from asymcl.training.modules import augmentation_preset
from asymcl.training.pipeline import RunData, data_spec, run, split_metrics
from asymcl.training.predict import RunModel, predict
from asymcl.training.tta import split_tta_probabilities
from test_training_predict_consistency import _noisy_jpeg_folder

torch.set_num_threads(1)


def _probabilities(text, classes):
    """{image path: probabilities} from predict's CSV text."""
    return {
        row["path"]: np.array([float(row[f"prob_{c}"]) for c in classes]) for row in csv.DictReader(text.splitlines())
    }


@pytest.mark.parametrize(
    "model, atol",
    [
        # cached: the run reads float16-stored views, predict computes them in float32
        ({"model.finetune": "last:1", "data.cache_views": 2}, 5e-3),
        ({"model.finetune": "all", "data.cache": "off"}, 1e-5),  # live views on both sides
        # data.cache_seed null: the views are seeded by the run's seed, on both sides
        ({"model.finetune": "last:1", "data.cache_views": 2, "data.cache_seed": None, "seed": 3}, 5e-3),
        ({"model.finetune": "all", "data.cache": "off", "data.cache_seed": None, "seed": 3}, 1e-5),
        # fixed flips and turns instead of drawn views, cached and live
        ({"model.finetune": "last:1", "data.cache_views": 2, "eval.tta_augment": "dihedral"}, 5e-3),
        ({"model.finetune": "all", "data.cache": "off", "eval.tta_augment": "dihedral"}, 1e-5),
    ],
    ids=["cached-last1", "live", "cached-last1-per-seed", "live-per-seed", "cached-dihedral", "live-dihedral"],
)
def test_tta_in_the_run_equals_predict_tta_on_the_same_images(tmp_path, model, atol, capsys):
    root = _noisy_jpeg_folder(tmp_path / "images")
    config = resolve_config(
        None,
        {
            "method": "ce",
            "data.dataset": "folder",
            "data.root": str(root),
            "data.image_size": 16,
            "data.cache_dir": str(tmp_path / "cache"),
            "data.cache_seed": 5,
            **model,
            "eval.tta_views": 3,
            "stage1.epochs": 2,
            "stage1.batch_size": 16,
            "trainer.progress_bar": False,
        },
    )
    run_dir = tmp_path / "run"
    metrics = run(config, run_dir)
    assert set(metrics["final_single_view"]) == set(metrics["final"]) == {"val", "test"}
    test_split = build_splits(data_spec(config)).splits["test"]
    classes = test_split.classes

    assert (
        main(["predict", "--run", str(run_dir), "--images", str(root), "--tta", "--out", str(tmp_path / "tta.csv")])
        == 0
    )
    with_tta = _probabilities((tmp_path / "tta.csv").read_text(), classes)
    single = _probabilities(predict(run_dir, root), classes)
    saved = [row for row in csv.DictReader((run_dir / "predictions.csv").open()) if row["split"] == "test"]
    theirs = np.array([[float(row[f"prob_{c}"]) for c in classes] for row in saved])
    paths = [test_split.paths[int(row["index"])] for row in saved]
    ours = np.stack([with_tta[p] for p in paths])
    np.testing.assert_allclose(ours, theirs, atol=atol)  # predictions.csv holds the TTA probabilities
    assert not np.allclose(np.stack([single[p] for p in paths]), theirs, atol=1e-4)  # and the views matter
    labels = np.array([int(row["label"]) for row in saved])
    recorded = json.loads((run_dir / "metrics.json").read_text())
    for key, probs in (("final", ours), ("final_single_view", np.stack([single[p] for p in paths]))):
        again = split_metrics(probs, labels, len(classes))
        assert again["ua"] == pytest.approx(recorded[key]["test"]["ua"])
        assert again["wa"] == pytest.approx(recorded[key]["test"]["wa"])

    # --tta N with N = the run's views is the same
    assert predict(run_dir, root, tta=3) == (tmp_path / "tta.csv").read_text()


def test_predict_tta_without_a_number_needs_a_run_with_views(tmp_path):
    root = _noisy_jpeg_folder(tmp_path / "images", per_class=6)
    config = {
        "method": "ce",
        "data.dataset": "folder",
        "data.root": str(root),
        "data.image_size": 16,
        "stage1.epochs": 1,
        "stage1.batch_size": 16,
        "trainer.progress_bar": False,
    }
    run(config, tmp_path / "run")
    with pytest.raises(DataError, match="eval.tta_views, which is 0"):
        predict(tmp_path / "run", root, tta=-1)
    assert predict(tmp_path / "run", root / "cat" / "cat00.jpg", tta=2).count("\n") == 2  # header, one image


def test_per_seed_views_give_every_seed_its_own_tta_views(tmp_path):
    """data.cache_seed null: the val/test TTA views are drawn per run seed (views_seed), rendered
    live (the run's evaluation without the cache, and predict --tta) and cached (drawn and keyed
    by it); a cache_seed shares one draw between the seeds."""
    root = _noisy_jpeg_folder(tmp_path / "images", per_class=6)
    base = {
        "method": "ce",
        "data.dataset": "folder",
        "data.root": str(root),
        "data.image_size": 16,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.cache_seed": None,
        "eval.tta_views": 2,
        "stage1.epochs": 1,
        "stage1.batch_size": 16,
        "trainer.progress_bar": False,
    }
    run_dir = tmp_path / "run"
    run({**base, "data.cache": "off", "seed": 1}, run_dir)
    model = RunModel(run_dir)  # one final model, evaluated on the views of several seeds
    data = RunData(model.config)  # and one split (the seed also draws the split): only the views differ

    def config(changes=None):
        return resolve_config(model.config, changes or {})

    # The run's evaluation, views rendered live: one final model, so only the views differ.
    own = split_tta_probabilities(model.module, config(), data, "test")
    other = split_tta_probabilities(model.module, config({"seed": 2}), data, "test")
    assert not np.allclose(own, other, atol=1e-4)
    shared = [
        split_tta_probabilities(model.module, config({"seed": s, "data.cache_seed": 5}), data, "test") for s in (1, 2)
    ]
    np.testing.assert_array_equal(shared[0], shared[1])
    assert not np.allclose(own, shared[0], atol=1e-4)  # and null is not one more fixed draw

    # predict --tta draws the run's own views (its seed), so it gives the run's TTA probabilities.
    test_split = data.splits["test"]
    tta = _probabilities(predict(run_dir, root, tta=-1), data.classes)
    np.testing.assert_allclose(np.stack([tta[p] for p in test_split.paths]), own, atol=1e-5)

    # Cached val/test views (finetune last:1): drawn by, and keyed by, the run's views seed.
    def tta_cache(changes=None):
        cached = config({"model.finetune": "last:1", "data.cache": "auto", **(changes or {})})
        preset = augmentation_preset(cached, data.dataset_name, data.channels)
        torch.manual_seed(0)  # the same (random) frozen weights for every seed: only the views differ
        cache = build_feature_caches(cached, data, preset, report_reuse=False)["test"]  # the same images
        assert cache.key["seed"] == views_seed(cached) and cache.num_views == 2
        return cache

    first, second = tta_cache(), tta_cache({"seed": 2})
    assert (first.key["seed"], second.key["seed"]) == (1, 2) and first.path != second.path
    assert not torch.allclose(first.views.float(), second.views.float())
    torch.testing.assert_close(first.clean, second.clean)  # the clean features do not depend on the seed
    assert tta_cache({"data.cache_seed": 5}).path == tta_cache({"seed": 2, "data.cache_seed": 5}).path


def test_dihedral_views_are_the_images_flips_and_turns_shared_by_every_seed(tmp_path):
    """eval.tta_augment=dihedral: the cached val/test views are the image's symmetries, computed
    once (key seed 0) for every run seed, whatever data.cache_seed says."""
    root = _noisy_jpeg_folder(tmp_path / "images", per_class=6)
    base = {
        "method": "ce",
        "data.dataset": "folder",
        "data.root": str(root),
        "data.image_size": 16,
        "data.cache_dir": str(tmp_path / "cache"),
        "data.cache_seed": None,
        "model.finetune": "last:1",
        "data.cache_views": 2,
        "eval.tta_views": 7,
        "eval.tta_augment": "dihedral",
    }
    caches = []
    for seed in (1, 2):
        config = resolve_config({**base, "seed": seed})
        data = RunData(config)
        torch.manual_seed(0)  # the same (random) frozen weights for both seeds
        preset = augmentation_preset(config, data.dataset_name, data.channels)
        caches.append(build_feature_caches(config, data, preset, report_reuse=False))
    first, second = (c["val"] for c in caches)
    assert first.key["seed"] == second.key["seed"] == 0 and first.key["augmentation"] == "dihedral"
    assert first.path == second.path and first.num_views == 7
    assert caches[0]["train"].path != caches[1]["train"].path  # the training views stay per seed
    # view 3 of an image is its half turn: the frozen part's output on the turned image
    torch.manual_seed(0)
    encoder = build_encoder(resolve_config({**base, "seed": 1}), 3, (16, 16))
    split = RunData(resolve_config({**base, "seed": 1})).splits["val"]
    image = split[0][0][None]
    with torch.inference_mode():
        turned = encoder.frozen_input().eval()(image.flip([2, 3]))
    torch.testing.assert_close(first.views[0, 2].float(), turned[0], rtol=2e-3, atol=2e-3)

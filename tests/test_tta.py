"""Test-time augmentation: eval.tta_views in a run equals `asymcl predict --tta` on the same image
files and seed, from the feature cache (cached val/test views) and without it (views rendered live)."""

import csv
import json

import numpy as np
import pytest
import torch

from asymcl.cli import main
from asymcl.data import build_splits
from asymcl.errors import DataError
from asymcl.training.config import resolve_config
from asymcl.training.pipeline import data_spec, run, split_metrics
from asymcl.training.predict import predict
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
    ],
    ids=["cached-last1", "live"],
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
            **model,
            "data.cache_dir": str(tmp_path / "cache"),
            "data.cache_seed": 5,
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

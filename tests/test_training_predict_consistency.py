"""`asymcl predict` on the files of a run's test split gives the run's own predictions.csv."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from asymcl.data import build_splits
from asymcl.training.config import resolve_config
from asymcl.training.pipeline import data_spec, run
from asymcl.training.predict import predict

torch.set_num_threads(1)


def _noisy_jpeg_folder(root, classes=("cat", "dog", "owl"), per_class=14, side=40):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            # Class-dependent mean plus noise: JPEG decoding and resizing really matter here.
            pixels = np.clip(rng.normal(60 + 60 * k, 40, size=(side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{i:02d}.jpg", quality=85)
    return root


def test_predict_matches_the_runs_own_test_predictions(tmp_path):
    root = _noisy_jpeg_folder(tmp_path / "images")
    config = resolve_config(
        None,
        {
            "method": "ce",
            "data.dataset": "folder",
            "data.root": str(root),
            "data.image_size": 16,
            "data.augment": "none",
            "stage1.epochs": 1,
            "stage1.batch_size": 16,
            "trainer.progress_bar": False,
        },
    )
    run_dir = tmp_path / "run"
    run(config, run_dir)

    test_split = build_splits(data_spec(config)).splits["test"]
    ours = list(csv.DictReader(io.StringIO(predict(run_dir, root))))
    by_path = {row["path"]: row for row in ours}
    saved = [row for row in csv.DictReader((run_dir / "predictions.csv").open()) if row["split"] == "test"]
    assert len(saved) == len(test_split) > 0
    by_image = {row["image"]: row for row in ours}
    for row in saved:
        path = test_split.paths[int(row["index"])]
        mine = by_path[path]
        # Both name the image by its path under the folder root: the files join on `image` alone.
        assert by_image[row["image"]] is mine
        assert row["image"] == Path(path).relative_to(root).as_posix()
        for name in test_split.classes:
            assert float(mine[f"prob_{name}"]) == pytest.approx(float(row[f"prob_{name}"]), abs=1e-5)
        assert int(mine["pred"]) == int(row["pred"])

    # The run folder without its data (copied to a laptop; here the data folder is moved away):
    # the run still reads and predicts the same, from the moved images.
    from asymcl import TrainResult

    moved = root.rename(tmp_path / "moved-images")
    finished = TrainResult.load(run_dir)
    assert finished.config.data.root == str(root)
    assert finished.test.ua == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["final"]["test"]["ua"])
    again = {row["image"]: row for row in csv.DictReader(io.StringIO(predict(run_dir, moved)))}
    assert {name: row["pred"] for name, row in again.items()} == {name: row["pred"] for name, row in by_image.items()}


def test_a_missing_data_root_or_weights_file_is_refused_unless_only_reading(tmp_path):
    from asymcl.errors import ConfigError

    keys = {"data.dataset": "folder", "data.root": str(tmp_path / "gone")}
    with pytest.raises(ConfigError, match="data.root .*gone does not exist"):
        resolve_config(None, keys)
    assert resolve_config(None, keys, files_must_exist=False).data.root == str(tmp_path / "gone")
    weights = {"model.pretrained": str(tmp_path / "gone.pth")}
    with pytest.raises(ConfigError, match="model.pretrained .*gone.pth is not a file"):
        resolve_config(None, weights)
    assert resolve_config(None, weights, files_must_exist=False).model.pretrained == str(tmp_path / "gone.pth")
    # The other rules still hold when reading: only the files' existence is left out.
    with pytest.raises(ConfigError, match="one weights file cannot hold several networks"):
        resolve_config(
            None, {"model.backbone": "efficientnet_lite0+efficientnet_lite2", **weights}, files_must_exist=False
        )

"""What a tiny real run leaves for its user: named predictions, the ISIC 2018 submission, Lightning's
CSV and TensorBoard curves, one progress line per epoch off a terminal, untouched warning filters."""

import csv
import io
import json
import re
import warnings

import numpy as np
import pytest
import torch

from asymcl.cli import main
from asymcl.data import build_splits
from asymcl.data.isic import ISIC_CLASSES
from asymcl.training.config import resolve_config
from asymcl.training.pipeline import ISIC_SUBMISSION, data_spec, run
from asymcl.training.predict import predict
from data_fixtures import make_isic
from test_training import Crash

torch.set_num_threads(1)


def _rows(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.fixture(scope="module")
def isic_run(tmp_path_factory):
    """A ce run on a tiny ISIC 2018 layout with its official test set."""
    base = tmp_path_factory.mktemp("isic")
    written = make_isic(base / "data")
    config = resolve_config(
        None,
        {
            "method": "ce",
            "data.dataset": "isic2018",
            "data.root": str(base / "data"),
            "data.image_size": 16,
            "data.imbalance": "exp:3",
            "data.augment": "none",
            "stage1.epochs": 1,
            "stage1.batch_size": 8,
            "trainer.progress_bar": False,
        },
    )
    run(config, base / "run")
    return base / "run", base / "data", written, config


def test_isic_predictions_name_the_image_and_the_submission_matches_them(isic_run):
    run_dir, _, written, config = isic_run
    splits = build_splits(data_spec(config))
    rows = _rows(run_dir / "predictions.csv")
    assert list(rows[0])[-1] == "image" and list(rows[0])[:4] == ["split", "index", "label", "pred"]
    for split in ("test", "test_imbalanced"):
        mine = [r for r in rows if r["split"] == split]
        assert [r["image"] for r in mine] == list(splits[split].ids)
    test_rows = [r for r in rows if r["split"] == "test"]

    submission = run_dir / ISIC_SUBMISSION
    text = submission.read_text()
    assert text.splitlines()[0] == ",".join(["image", *ISIC_CLASSES])
    scored = _rows(submission)
    # Every official test image once, in the ground truth's order (not the imbalanced cut).
    assert [r["image"] for r in scored] == [image for image, _ in written["Test"]]
    assert len(scored) == len(test_rows) > len([r for r in rows if r["split"] == "test_imbalanced"])
    for sub, pred in zip(scored, test_rows, strict=True):
        assert sub["image"] == pred["image"]
        probs = [float(sub[c]) for c in ISIC_CLASSES]
        assert probs == [float(pred[f"prob_{c}"]) for c in ISIC_CLASSES]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    embeddings = np.load(run_dir / "embeddings.npz")
    assert embeddings["test_ids"].tolist() == [r["image"] for r in test_rows]


def test_predict_isic2018_format_on_the_test_folder_gives_the_runs_submission(isic_run, tmp_path):
    run_dir, data, _, _ = isic_run
    out = tmp_path / "sub.csv"
    folder = data / "ISIC2018_Task3_Test_Input"
    assert (
        main(["predict", "--run", str(run_dir), "--images", str(folder), "--format", "isic2018", "--out", str(out)])
        == 0
    )
    ours = {r["image"]: r for r in _rows(out)}
    saved = _rows(run_dir / ISIC_SUBMISSION)
    assert out.read_text().splitlines()[0] == (run_dir / ISIC_SUBMISSION).read_text().splitlines()[0]
    assert sorted(ours) == sorted(r["image"] for r in saved)
    for row in saved:
        for name in ISIC_CLASSES:
            assert float(ours[row["image"]][name]) == pytest.approx(float(row[name]), abs=1e-5)

    # The default format names each file by its path under --images.
    default = list(csv.DictReader(io.StringIO(predict(run_dir, folder))))
    assert list(default[0])[:3] == ["path", "pred", "pred_class"] and list(default[0])[-1] == "image"
    assert sorted(r["image"] for r in default) == sorted(f"{r['image']}.jpg" for r in saved)


def test_no_submission_without_all_classes_and_predict_refuses_the_format(tmp_path, capsys):
    make_isic(tmp_path / "data")
    config = resolve_config(
        None,
        {
            "method": "ce",
            "data.dataset": "isic2018",
            "data.root": str(tmp_path / "data"),
            "data.classes": "1,0",
            "data.image_size": 8,
            "stage1.epochs": 1,
            "trainer.progress_bar": False,
        },
    )
    run(config, tmp_path / "run")
    assert (tmp_path / "run" / "predictions.csv").is_file()
    assert not (tmp_path / "run" / ISIC_SUBMISSION).exists()
    code = main(
        [
            "predict",
            "--run",
            str(tmp_path / "run"),
            "--images",
            str(tmp_path / "data" / "ISIC2018_Task3_Test_Input"),
            "--format",
            "isic2018",
        ]
    )
    assert code == 2
    assert "needs probabilities for all of MEL,NV,BCC" in capsys.readouterr().err
    assert (
        main(["predict", "--run", str(tmp_path / "run"), "--images", str(tmp_path / "data"), "--format", "kaggle"]) == 2
    )
    assert "unknown predictions format 'kaggle'; choose one of asymcl, isic2018" in capsys.readouterr().err


def test_off_a_terminal_one_line_per_epoch_curves_in_csv_and_tensorboard(tmp_path, capfd):
    config = {
        "method": "ce",
        "data.classes": [0, 1, 2],
        "data.imbalance": "exp:4",
        "stage1.epochs": 3,
        "stage1.batch_size": 32,
        "trainer.progress_bar": True,
    }
    filters = list(warnings.filters)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, out, callbacks=[Crash("baseline", 2, 0)])
    metrics = run(config, out)  # resumes at epoch 2
    assert warnings.filters == filters  # every filter the run sets is local to it

    err = capfd.readouterr().err
    assert "\r" not in err  # no bar redraws: pytest's capture is not a terminal
    lines = re.findall(
        r"^\[asymcl\] baseline epoch (\d)/3  train_loss \d+\.\d{4}  val UA (\d+\.\d\d)%  "
        r"WA \d+\.\d\d%  \d+\.\ds$",
        err,
        flags=re.M,
    )
    # Epochs 1-2 in the first attempt, the re-run epoch 3 in the second: one line each.
    assert [int(epoch) for epoch, _ in lines] == [1, 2, 3]
    history = metrics["history"]["baseline"]
    assert [float(ua) for _, ua in lines] == pytest.approx([e["val_ua"] * 100 for e in history], abs=0.006)

    # Lightning's CSV logger: one version per attempt, earlier curves kept.
    csv_root = out / "logs" / "csv" / "baseline"
    assert sorted(p.name for p in csv_root.iterdir()) == ["version_0", "version_1"]
    val = {}
    for version in ("version_0", "version_1"):
        for row in _rows(csv_root / version / "metrics.csv"):
            if row["val/ua"]:
                val[int(row["epoch"])] = float(row["val/ua"])
    assert val == pytest.approx({e["epoch"]: e["val_ua"] for e in history}, abs=1e-6)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = {}
    for version in ("version_0", "version_1"):
        events = EventAccumulator(str(out / "logs" / "tensorboard" / "baseline" / version))
        events.Reload()
        assert "train/loss" in events.Tags()["scalars"]
        tb.update({i: e.value for i, e in enumerate(events.Scalars("val/ua"), start=len(tb))})
    assert list(tb.values()) == pytest.approx([e["val_ua"] for e in history], abs=1e-6)
    assert json.loads((out / "metrics.json").read_text())["status"] == "complete"


def test_progress_bar_false_prints_nothing_per_epoch(tmp_path, capfd):
    run({"method": "ce", "data.classes": [0, 1], "stage1.epochs": 2, "trainer.progress_bar": False}, tmp_path / "run")
    assert "epoch" not in capfd.readouterr().err


def test_without_tensorboard_only_the_csv_logger(tmp_path, monkeypatch):
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from asymcl.training.pipeline import stage_loggers

    assert [type(x) for x in stage_loggers(tmp_path, "stage1")] == [CSVLogger, TensorBoardLogger]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    loggers = stage_loggers(tmp_path, "stage1")
    assert [type(x) for x in loggers] == [CSVLogger]
    assert loggers[0].log_dir == str(tmp_path / "logs" / "csv" / "stage1" / "version_0")

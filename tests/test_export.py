"""`asymcl export`: the ONNX and TorchScript files reproduce the run's own test predictions."""

import csv
import warnings

import numpy as np
import pytest
import torch

from asymcl.cli import main
from asymcl.data import build_splits
from asymcl.training.config import resolve_config
from asymcl.training.pipeline import data_spec, run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny real two-stage run on long-tailed digits."""
    config = resolve_config(
        None,
        {
            "method": "supcon",
            "data.imbalance": "exp:5",
            "stage1.epochs": 1,
            "stage2.epochs": 1,
            "stage1.batch_size": 64,
            "trainer.progress_bar": False,
        },
    )
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run(config, run_dir)
    test = build_splits(data_spec(config)).splits["test"]
    images, labels = test.load_all()
    saved = [row for row in csv.DictReader((run_dir / "predictions.csv").open()) if row["split"] == "test"]
    classes = test.classes
    probs = np.array([[float(row[f"prob_{c}"]) for c in classes] for row in saved])
    preds = np.array([int(row["pred"]) for row in saved])
    return run_dir, images.numpy(), probs, preds


def test_onnx_file_gives_the_runs_own_predictions(finished_run, tmp_path):
    import onnxruntime as ort  # in the test extra: never skipped

    run_dir, images, probs, preds = finished_run
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert images.dtype == np.uint8
    got = session.run(None, {"images": images})[0]
    assert got.shape == probs.shape
    np.testing.assert_allclose(got, probs, atol=1e-4)
    assert (got.argmax(1) == preds).all()
    # The batch axis is dynamic: one image alone gives the same row.
    one = session.run(None, {"images": images[3:4]})[0]
    np.testing.assert_allclose(one[0], got[3], atol=1e-5)


def test_torchscript_file_gives_the_runs_own_predictions(finished_run, tmp_path):
    run_dir, images, probs, preds = finished_run
    assert main(["export", str(run_dir), "--format", "torchscript"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load, deprecated in 2.13
        model = torch.jit.load(str(run_dir / "model.pt"))
    got = model(torch.as_tensor(images)).numpy()
    np.testing.assert_allclose(got, probs, atol=1e-4)
    assert (got.argmax(1) == preds).all()


def test_export_errors_are_one_line(finished_run, tmp_path, capsys):
    run_dir, *_ = finished_run
    assert main(["export", str(run_dir), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite'; choose one of onnx, torchscript" in capsys.readouterr().err

    assert main(["export", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err

    import shutil

    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    text = (unfinished / "metrics.json").read_text().replace('"status": "complete"', '"status": "running"')
    (unfinished / "metrics.json").write_text(text)
    assert main(["export", str(unfinished)]) == 2
    assert "has not finished" in capsys.readouterr().err

    no_stage2 = tmp_path / "no_stage2"
    shutil.copytree(run_dir, no_stage2)
    shutil.rmtree(no_stage2 / "checkpoints" / "stage2")
    assert main(["export", str(no_stage2)]) == 2
    err = capsys.readouterr().err
    assert "no trained stage2 model" in err and err.count("\n") == 1
    assert not list(tmp_path.glob("**/.model*.tmp"))

import csv

import numpy as np
import torch

from asymcl.cli import main

torch.set_num_threads(1)

TINY = [
    "--set",
    "data.classes=[0,1]",
    "--set",
    "stage1.epochs=1",
    "--set",
    "stage2.epochs=1",
    "--set",
    "trainer.progress_bar=false",
    "--set",
    "model.proj_hidden_dim=16",
]


def test_train_then_predict_then_rerun(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"run directory: {out}" in printed and "test" in printed and "UA" in printed
    assert (out / "metrics.json").is_file()
    from PIL import Image

    image = tmp_path / "seven.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(image)
    assert main(["predict", "--run", str(out), "--images", str(image), "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 1 and rows[0]["pred_class"] in ("0", "1")
    assert main(["train", *TINY, "--out", str(out)]) == 0  # finished: returns at once


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["train", "--set", "loss.gama=1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asymcl: error: unknown config key 'loss.gama'") and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing is created before the config is valid
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert main(["predict", "--run", str(tmp_path), "--images", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_demo_prints_a_table_of_the_three_methods(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--quiet"]) == 0
    table = capsys.readouterr().out
    for method in ("ce", "supcon", "afcl"):
        assert method in table and (tmp_path / method / "metrics.json").is_file()
    assert "UA" in table and "WA" in table and str(tmp_path / "afcl") in table

"""Two-process DDP on CPU (gloo) through the real CLI: the path a multi-GPU user takes."""

import json
import subprocess
import sys


def test_train_with_two_ddp_processes_completes_and_reports_once(tmp_path):
    out = tmp_path / "ddp-run"
    command = [sys.executable, "-m", "asymcl", "train", "--out", str(out),
               "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp",
               "--set", "stage1.epochs=1", "--set", "stage2.epochs=1",
               "--set", "trainer.progress_bar=false", "--set", "trainer.num_threads=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run directory:") == 1  # only rank 0 reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    for split in ("val", "test"):
        assert 0.0 <= metrics["final"][split]["ua"] <= 1.0
    assert (out / "checkpoints" / "stage2" / "best.ckpt").is_file()


def test_train_with_ddp_spawn_completes_and_keeps_the_history(tmp_path):
    """ddp_spawn pickles the datamodule and callbacks into new processes and hands the weights back
    through the checkpoint IO; the stage histories, recorded in the spawned rank 0, must survive."""
    out = tmp_path / "spawn-run"
    command = [sys.executable, "-m", "asymcl", "train", "--out", str(out),
               "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp_spawn",
               "--set", "stage1.epochs=2", "--set", "stage2.epochs=1",
               "--set", "trainer.progress_bar=false", "--set", "trainer.num_threads=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["stages_complete"] == ["stage1", "stage2"]
    assert [len(metrics["history"][s]) for s in ("stage1", "stage2")] == [2, 1]
    assert 0.0 <= metrics["final"]["test"]["ua"] <= 1.0

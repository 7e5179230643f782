"""Two-process DDP on CPU (gloo) through the real CLI: the path a multi-GPU user takes."""

import json
import subprocess
import sys


def test_train_with_two_ddp_processes_completes_and_reports_once(tmp_path):
    out = tmp_path / "ddp-run"
    command = [
        sys.executable,
        "-m",
        "asymcl",
        "train",
        "--out",
        str(out),
        "--set",
        "trainer.devices=2",
        "--set",
        "trainer.strategy=ddp",
        "--set",
        "stage1.epochs=1",
        "--set",
        "stage2.epochs=1",
        "--set",
        "trainer.progress_bar=false",
        "--set",
        "trainer.num_threads=1",
    ]
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
    command = [
        sys.executable,
        "-m",
        "asymcl",
        "train",
        "--out",
        str(out),
        "--set",
        "trainer.devices=2",
        "--set",
        "trainer.strategy=ddp_spawn",
        "--set",
        "stage1.epochs=2",
        "--set",
        "stage2.epochs=1",
        "--set",
        "trainer.progress_bar=false",
        "--set",
        "trainer.num_threads=1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["stages_complete"] == ["stage1", "stage2"]
    assert [len(metrics["history"][s]) for s in ("stage1", "stage2")] == [2, 1]
    assert 0.0 <= metrics["final"]["test"]["ua"] <= 1.0


_PER_RANK_SCRIPT = """
import json, sys
from collections import Counter
import lightning.pytorch as pl
from asymcl.training.pipeline import run

class RecordLabels(pl.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        counts = Counter(batch[1].tolist())
        with open(f"{sys.argv[1]}.rank{trainer.global_rank}", "a") as handle:
            handle.write(json.dumps({str(k): v for k, v in sorted(counts.items())}) + "\\n")

if __name__ == "__main__":
    run({"method": "afcl", "schedule": "joint", "stage1.sampler": "m_per_class", "stage1.batch_size": 12,
         "stage1.epochs": 2, "data.classes": [0, 1, 2], "data.imbalance": "exp:10",
         "model.proj_hidden_dim": 16, "model.proj_dim": 8, "trainer.devices": 2, "trainer.strategy": "ddp",
         "trainer.progress_bar": False, "trainer.num_threads": 1}, sys.argv[1], callbacks=[RecordLabels()])
"""


def test_joint_m_per_class_under_ddp_gives_every_rank_m_of_each_class(tmp_path):
    """The joint schedule with m-per-class batches on two DDP processes: each rank's every batch
    holds stage1.batch_size // classes = 4 images of each class (rare ones drawn with replacement)."""
    script = tmp_path / "per_rank.py"
    script.write_text(_PER_RANK_SCRIPT)
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["stages_complete"] == ["joint"]
    for rank in (0, 1):
        lines = (tmp_path / f"run.rank{rank}").read_text().splitlines()
        assert len(lines) >= 2  # at least one batch per epoch on each rank
        assert all(json.loads(line) == {"0": 4, "1": 4, "2": 4} for line in lines)

"""benchmarks/gpu/run.sh in its smoke mode (CPU, tiny sizes): the GPU session's one script must not
fail there for a reason a CPU run shows (a renamed flag, a missing import, a broken pack step)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from data_fixtures import make_fashion_mnist, make_isic

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "run.sh"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_smoke_run_records_every_step_and_packs_the_figures(tmp_path):
    out = tmp_path / "out"
    make_fashion_mnist(tmp_path / "data" / "fashion-mnist")
    make_isic(tmp_path / "data" / "isic2018")
    env = {
        **os.environ,
        "GPU_SMOKE": "1",
        "GPU_STEPS": "losses isic fmnist nonsense",
        "PYTHON": sys.executable,
        "GPU_WHEELS": str(tmp_path / "no-wheels"),
        "GPU_DATA": str(tmp_path / "data"),
        "GPU_PROFILE": "quick",
        "PYTHONPATH": str(REPO / "src"),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    # "nonsense" is an unknown step: recorded as a failure, the others still ran.
    assert result.returncode == 1, result.stdout + result.stderr
    steps = {s["step"]: s for s in json.loads((out / "steps.json").read_text())}
    assert steps["losses"]["status"] == "ok" and steps["loss-blocks"]["status"] == "ok", steps
    assert steps["isic"]["status"] == "ok" and steps["fmnist"]["status"] == "ok", steps  # the --dry-run hook
    assert steps["nonsense"]["status"] == "UNKNOWN STEP"
    assert sorted(p.name for p in out.iterdir()) == ["losses.md", "results.tar.gz", "steps.json", "summary.md"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        losses = json.load(tar.extractfile("./losses.json"))
        isic_log = tar.extractfile("./logs/isic.out").read().decode()
    assert {"./logs/losses.err", "./loss-blocks.json", "./summary.md"} <= names
    assert {r["implementation"] for r in losses["rows"]} == {"dense", "reference", "blockwise", "matmul"}
    assert all(r["median_s"] > 0 for r in losses["rows"])
    assert "isic2018" in isic_log and "runs into" in isic_log  # the sweep file the profile would run
    assert "| losses | ok |" in (out / "summary.md").read_text()
    assert not list(tmp_path.glob("asymcl-gpu.*"))  # the work folder is removed


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_a_step_over_its_limit_is_recorded_and_the_next_still_runs(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "GPU_SMOKE": "1",
        "GPU_STEPS": "losses isic",
        "PYTHON": sys.executable,
        "T_LOSSES": "1",
        "GPU_WHEELS": str(tmp_path / "none"),
        "GPU_DATA": str(tmp_path / "data"),
        "GPU_PROFILE": "no-such-profile",
        "PYTHONPATH": str(REPO / "src"),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    steps = {s["step"]: s for s in json.loads((out / "steps.json").read_text())}
    assert steps["losses"]["status"] == "TIMED OUT"
    assert steps["isic"]["status"].startswith("FAILED") and "no profile 'no-such-profile'" in steps["isic"]["note"]


def test_pack_isic_reencodes_to_the_budget_and_keeps_the_layout(tmp_path):
    make_isic(tmp_path / "isic")
    dst = tmp_path / "packed"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu" / "pack_isic.py"),
            str(tmp_path / "isic"),
            str(dst),
            "--budget-mib",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((dst / "PACKING.json").read_text())
    source = sorted(p.relative_to(tmp_path / "isic") for p in (tmp_path / "isic").rglob("*") if p.is_file())
    packed = sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file() and p.name != "PACKING.json")
    assert packed == source and report["images"] == sum(p.suffix == ".jpg" for p in source)
    assert report["jpeg_quality"] == 95 and report["psnr_db_median"] > 30  # tiny images: the first quality fits
    too_small = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu" / "pack_isic.py"),
            str(tmp_path / "isic"),
            str(tmp_path / "p2"),
            "--budget-mib",
            "0.001",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert too_small.returncode != 0 and "does not fit" in too_small.stderr

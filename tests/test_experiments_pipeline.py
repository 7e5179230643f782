"""Sweep + report over real (tiny) pipeline runs on the digits dataset: the numbers in the report
are the numbers in the run files, and an interrupted sweep resumes without redoing finished runs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml

from asymcl.cli import main
from asymcl.experiments.report import build_report
from asymcl.experiments.sweep import load_spec, run_sweep
from data_fixtures import TINY_RUN as TINY

pytest.importorskip("asymcl.training.pipeline", reason="the training pipeline (issue 4) is not installed")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    spec_path = root / "tiny.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": TINY,
                "grid": {"method": ["ce", "afcl"], "loss.eta": [5.0, 30.0], "seed": [0, 1]},
            }
        )
    )
    out = root / "runs"
    spec = load_spec(spec_path)

    from asymcl.training.pipeline import run as pipeline_run

    calls = []

    def interrupting(config, run_dir):
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C before the 4th run
        calls.append(run_dir.name)
        return pipeline_run(config, run_dir)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, runner=interrupting, progress=lambda _: None)
    first = {name: os.stat(out / name / "metrics.json").st_mtime_ns for name in calls}
    # the same command again, through the CLI: only the missing runs are trained
    assert main(["sweep", "--config", str(spec_path), "--out", str(out)]) == 0
    return out, first


def test_interrupted_sweep_resumes_without_redoing_finished_runs(sweep_dir):
    out, first = sweep_dir
    names = sorted(p.name for p in out.iterdir() if (p / "metrics.json").is_file())
    assert names == ["afcl_e30_s0", "afcl_e30_s1", "afcl_e5_s0", "afcl_e5_s1", "ce_s0", "ce_s1"]
    assert len(first) == 3
    for name, mtime in first.items():
        assert os.stat(out / name / "metrics.json").st_mtime_ns == mtime
    for name in names:
        assert json.loads((out / name / "metrics.json").read_text())["status"] == "complete"
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["commands"][-1]["command"].startswith("asymcl sweep --config")


def test_report_numbers_are_the_run_files_numbers(sweep_dir, tmp_path):
    out, _ = sweep_dir
    result = build_report(out, tmp_path / "report", tsne_points=100, progress=lambda _: None)
    (setting,) = result.numbers
    final = {
        name: json.loads((out / name / "metrics.json").read_text())["final"]
        for name in ("ce_s0", "ce_s1", "afcl_e5_s0", "afcl_e5_s1", "afcl_e30_s0", "afcl_e30_s1")
    }
    val = {eta: np.mean([final[f"afcl_e{eta}_s{s}"]["val"]["ua"] for s in (0, 1)]) for eta in (5, 30)}
    chosen_eta = max(val, key=val.get)
    assert setting.table["afcl"].params["loss.eta"] == float(chosen_eta)
    for method, prefix in (("ce", "ce"), ("afcl", f"afcl_e{chosen_eta}")):
        for split in ("test", "test_imbalanced"):
            for metric in ("wa", "ua"):
                values = [final[f"{prefix}_s{s}"][split][metric] for s in (0, 1)]
                cell = setting.table[method].scores[f"{split}.{metric}"]
                assert cell.mean == pytest.approx(np.mean(values))
                assert cell.std == pytest.approx(np.std(values, ddof=1))
    diff = [final[f"afcl_e{chosen_eta}_s{s}"]["test"]["ua"] - final[f"ce_s{s}"]["test"]["ua"] for s in (0, 1)]
    assert setting.comparisons["ce"].differences["test.ua"].mean == pytest.approx(np.mean(diff))
    text = result.markdown.read_text()
    assert f"{np.mean([final[f'ce_s{s}']['test']['ua'] for s in (0, 1)]) * 100:.1f}" in text
    # the class names of the digits dataset label the figures; every figure kind is there
    kinds = sorted(f.name.split("_")[0] for f in result.figures)
    assert kinds == ["confusion", "curves", "heatmap", "recall", "recall-imbalanced", "tsne"]
    assert "torch" in text and "asymcl sweep --config" in text

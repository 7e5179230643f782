"""The Python API for whole runs (asymcl.train / sweep / report) on tiny digits runs: it takes the
keys of --set, returns the numbers of the run files, resumes like the CLI, and stays lazy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import asymcl
from asymcl.api import ReportSummary, SettingSummary, SplitMetrics, SweepSummary, TrainResult
from asymcl.errors import ConfigError, DataError
from data_fixtures import TINY_RUN as TINY


def _final(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())["final"]


def test_the_api_is_reached_from_the_package_without_importing_torch_first():
    code = (
        "import sys, asymcl; light = 'torch' not in sys.modules and 'asymcl.api' not in sys.modules; "
        "names = {'train', 'sweep', 'report', 'TrainResult'} <= set(dir(asymcl)); "
        "from asymcl import train; import asymcl.api; "
        "print(light, names, train is asymcl.api.train, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # asymcl.api itself imports the pipeline only when a function is called
    assert out.stdout.split() == ["True", "True", "True", "False"]
    with pytest.raises(AttributeError, match="no attribute 'compare_all'"):
        asymcl.compare_all  # noqa: B018
    for name, module in asymcl._EXPORTS.items():  # defined where the table says, never a copy
        assert name in asymcl.__all__ and getattr(asymcl, name).__module__ == module, name


def test_train_takes_set_keys_and_returns_the_run_files_numbers(tmp_path, monkeypatch):
    result = asymcl.train(TINY, out=tmp_path / "ce", overrides=["method=ce", "seed=1"])
    assert isinstance(result, TrainResult)
    assert result.run_dir == tmp_path / "ce" and result.method == "ce" and result.config.seed == 1
    final = _final(result.run_dir)
    assert set(result.metrics) == set(final) == {"val", "test", "test_imbalanced"}
    for split, values in final.items():
        assert result.metrics[split] == SplitMetrics.from_dict(values)
    assert result.test.ua == pytest.approx(np.mean(final["test"]["per_class_recall"]))
    assert len(result.test.confusion_matrix) == len(result.classes) == 10
    assert set(result.best) == set(result.history) == {"baseline"}
    epoch, val_ua = result.best["baseline"]
    assert val_ua == pytest.approx(result.history["baseline"][epoch]["val_ua"])
    # The same call again: the finished run is returned as it is, nothing is retrained.
    stamp = os.stat(result.run_dir / "metrics.json").st_mtime_ns
    again = asymcl.train(TINY, out=tmp_path / "ce", overrides={"method": "ce", "seed": 1})
    assert again == result and os.stat(result.run_dir / "metrics.json").st_mtime_ns == stamp
    # Under DDP only rank 0 writes the final metrics, so only it returns them.
    monkeypatch.setenv("RANK", "1")
    assert asymcl.train(TINY, out=tmp_path / "ce", overrides={"method": "ce", "seed": 1}) is None


def test_train_reads_a_yaml_file_of_nested_keys_and_defaults_its_directory_like_the_cli(tmp_path, monkeypatch):
    from asymcl.training.config import resolve_config
    from asymcl.training.run_dir import default_run_dir

    nested: dict = {}
    for key, value in TINY.items():
        section, _, name = key.partition(".")
        nested.setdefault(section, {})[name] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**nested, "method": "ce"}))
    monkeypatch.chdir(tmp_path)
    result = asymcl.train(path)
    expected = Path(default_run_dir(resolve_config({**TINY, "method": "ce"})))
    assert result.run_dir == expected and (tmp_path / expected / "metrics.json").is_file()
    assert result.config == resolve_config({**TINY, "method": "ce"})


def test_train_errors_are_the_clis_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'loss.gama' \(in --set\); did you mean loss.gamma"):
        asymcl.train(TINY, out=tmp_path / "x", overrides={"loss.gama": 2})
    with pytest.raises(ConfigError, match="does not exist"):
        asymcl.train(tmp_path / "missing.yaml")
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="not a finished run directory"):
        TrainResult.load(tmp_path)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("api-sweep")
    spec = {"name": "tiny", "base": TINY, "grid": {"method": ["ce", "afcl"], "loss.eta": [5.0, 30.0], "seed": [0, 1]}}
    first = asymcl.sweep(spec, out=root / "runs")
    second = asymcl.sweep(spec, out=root / "runs")
    return root, first, second


def test_sweep_runs_the_grid_once_and_a_second_call_skips_it(swept):
    root, first, second = swept
    names = ["ce_s0", "ce_s1", "afcl_e5_s0", "afcl_e5_s1", "afcl_e30_s0", "afcl_e30_s1"]
    assert isinstance(first, SweepSummary) and sorted(first.runs) == sorted(names)
    assert sorted(first.ran) == sorted(names) and first.complete and not first.failed
    assert second.ran == () and sorted(second.skipped) == sorted(names) and second.complete
    results = first.results()
    assert {name: r.run_dir for name, r in results.items()} == first.runs
    assert results["afcl_e30_s1"].config.loss.eta == 30.0 and results["afcl_e30_s1"].config.seed == 1
    commands = [entry["command"] for entry in json.loads((root / "runs" / "sweep.json").read_text())["commands"]]
    assert len(commands) == 2 and commands[0].startswith("asymcl.sweep({'name': 'tiny'")


def test_report_names_the_best_method_on_validation_and_the_table_is_the_run_files(swept, tmp_path):
    root, sweep_result, _ = swept
    summary = asymcl.report(sweep_result, out=tmp_path / "report", tsne_points=50)
    assert isinstance(summary, ReportSummary) and summary.markdown.is_file() and summary.figures
    (setting,) = summary.settings
    final = {name: _final(path) for name, path in sweep_result.runs.items()}

    def mean(prefix, split, metric):
        return np.mean([final[f"{prefix}_s{s}"][split][metric] for s in (0, 1)])

    eta = max((5, 30), key=lambda e: mean(f"afcl_e{e}", "val", "ua"))
    assert setting.rows["afcl"].params["loss.eta"] == float(eta)
    prefixes = {"ce": "ce", "afcl": f"afcl_e{eta}"}
    for row, prefix in prefixes.items():
        assert setting.rows[row].scores["test.ua"].mean == pytest.approx(mean(prefix, "test", "ua"))
        assert setting.rows[row].scores["val.ua"].n == 2
    assert summary.best_method == max(prefixes, key=lambda row: mean(prefixes[row], "val", "ua"))
    assert setting.rows["afcl"].display == "AFCL" and "claim" in setting.paper_claim
    assert "asymcl.report(" in summary.markdown.read_text()


def test_best_method_of_a_report_with_several_settings_asks_for_the_setting():
    settings = tuple(SettingSummary(label, {}, None, "") for label in ("digits, exp:5", "digits, exp:10"))
    summary = ReportSummary(Path("r"), Path("r.md"), Path("r.html"), Path("r.json"), (), settings)
    with pytest.raises(ValueError, match=r"2 settings \(digits, exp:5, digits, exp:10\)"):
        _ = summary.best_method


def test_compare_plans_runs_and_reports_the_fair_comparison(tmp_path):
    from asymcl.errors import ConfigError
    from data_fixtures import make_class_folder

    folder = make_class_folder(tmp_path / "images", {"cat": 20, "dog": 10, "fox": 8})
    data = {
        "data.dataset": "folder",
        "data.root": str(folder),
        "data.image_size": 12,
        "stage1.epochs": 1,
        "stage2.epochs": 1,
    }
    plan = asymcl.compare(data, out=tmp_path / "cmp", methods=["la", "afcl"], settings=1, seeds=2, dry_run=True)
    assert plan.runs == 4 and plan.sweep is None and plan.report is None and not (tmp_path / "cmp").exists()
    with pytest.raises(ConfigError, match="pass --yes"):
        asymcl.compare(data, out=tmp_path / "cmp", methods=["la", "afcl"], settings=1, seeds=40, budget="40s")
    done = asymcl.compare(data, out=tmp_path / "cmp", methods=["la", "afcl"], settings=1, seeds=2, budget="1h")
    assert done.sweep.complete and len(done.sweep.runs) == 4
    assert done.best_method in ("la", "afcl") and done.report.markdown.is_file()
    assert (done.out_dir / "report" / "runs.csv").is_file()

"""Sweeps: the grid rule, resume after an interrupt, bad sweep files, the Optuna study, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from asymcl.cli import main
from asymcl.errors import ConfigError
from asymcl.experiments.study import run_study
from asymcl.experiments.sweep import expand, load_spec, parse_spec, run_sweep
from asymcl.training.config import flatten


class RecordingRunner:
    """Stands in for pipeline.run in the bookkeeping tests: writes the run files, records calls.

    Validation UA is a known function of gamma/eta so that the study has something to maximise.
    """

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at

    def __call__(self, config: dict, out_dir: Path) -> dict:
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(Path(out_dir).name)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config))
        loss = config["loss"]
        ua = 0.5 + 0.01 * (loss["gamma"] or 0) + 0.001 * (loss["eta"] or 0) + 0.001 * config["seed"]
        split = {"wa": ua, "ua": ua, "macro_f1": ua, "per_class_recall": [ua, ua], "confusion_matrix": [[1, 0], [0, 1]]}
        metrics = {"status": "complete", "final": {"val": split, "test": split}, "history": {}, "best": {}}
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


def _write(tmp_path: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


GRID = {
    "method": ["ce", "supcon", "fcl", "acl", "afcl"],
    "loss.gamma": [0.0, 2.0],
    "loss.eta": [0.0, 50.0],
    "seed": [0, 1],
}


def test_grid_varies_gamma_eta_only_for_methods_that_use_them():
    spec = parse_spec({"base": {"stage1.epochs": 1}, "grid": GRID})
    points = {p.name: p.overrides for p in expand(spec)}
    # ce 2 seeds, supcon 2, fcl 2 gammas x 2, acl 2 etas x 2, afcl 2 x 2 x 2
    assert len(points) == 2 + 2 + 4 + 4 + 8
    assert points["ce_s0"] == {"method": "ce", "seed": 0}
    assert points["supcon_s1"] == {"method": "supcon", "seed": 1, "loss.gamma": 0.0, "loss.eta": 0.0}
    assert points["fcl_g2_s0"]["loss.eta"] == 0.0 and points["fcl_g2_s0"]["loss.gamma"] == 2.0
    assert points["acl_e50_s0"]["loss.gamma"] == 0.0
    assert "afcl_g2_e50_s1" in points


def test_run_names_are_stable_and_readable():
    spec = parse_spec(
        {
            "grid": {
                "data.imbalance": ["exp:10", "exp:100"],
                "method": ["afcl"],
                "loss.eta": [1.5],
                "stage1.lr": [0.001],
                "seed": [3],
            }
        }
    )
    names = [p.name for p in expand(spec)]
    assert names == ["exp10__afcl_e1.5_stage1.lr=0.001_s3", "exp100__afcl_e1.5_stage1.lr=0.001_s3"]


def test_sweep_runs_every_point_resumes_after_interrupt_and_skips_finished(tmp_path):
    spec = parse_spec(
        {
            "name": "t",
            "base": {"stage1.epochs": 1},
            "grid": {"method": ["ce", "afcl"], "loss.gamma": [0.0, 1.0], "seed": [0, 1]},
        }
    )
    all_names = {p.name for p in expand(spec)}
    assert len(all_names) == 6
    interrupted = RecordingRunner(interrupt_at=3)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, runner=interrupted, progress=lines.append, command="asymcl sweep x")
    assert len(interrupted.calls) == 3
    assert any("0/6 done, 6 left, ETA after the first run" in line for line in lines)
    # Both CE runs timed, only AFCL left: named, not priced like CE.
    assert any("2/6 done, 4 left, ETA after a first run of afcl;" in line for line in lines)

    resumed = RecordingRunner()
    lines.clear()
    result = run_sweep(spec, tmp_path, runner=resumed, progress=lines.append, command="asymcl sweep x")
    assert sorted(resumed.calls) == sorted(all_names - set(interrupted.calls))  # nothing redone
    assert sorted(result.skipped) == sorted(interrupted.calls) and result.complete
    assert any("3/6 runs already finished" in line for line in lines)
    assert any("4/6 done, 2 left, ETA 0m00s; running" in line for line in lines)  # AFCL timed now

    again = RecordingRunner()
    assert run_sweep(spec, tmp_path, runner=again, progress=lines.append).complete
    assert again.calls == []
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert [c["command"] for c in manifest["commands"]][:2] == ["asymcl sweep x", "asymcl sweep x"]
    assert set(manifest["runs"]) == all_names
    # the config each run got is the resolved one, with the method rule applied
    ce_config = flatten(yaml.safe_load((tmp_path / "ce_s0" / "config.yaml").read_text()))
    assert ce_config["method"] == "ce" and ce_config["loss.gamma"] is None and ce_config["stage1.epochs"] == 1


def test_a_failing_run_is_recorded_and_the_rest_still_run(tmp_path):
    spec = parse_spec({"grid": {"method": ["ce"], "seed": [0, 1, 2]}})
    runner = RecordingRunner()

    def flaky(config, out_dir):
        if config["seed"] == 1:
            raise RuntimeError("disk full")
        return runner(config, out_dir)

    result = run_sweep(spec, tmp_path, runner=flaky, progress=lambda _: None)
    assert result.failed == {"ce_s1": "RuntimeError: disk full"} and not result.complete
    assert sorted(runner.calls) == ["ce_s0", "ce_s2"]
    assert "disk full" in (tmp_path / "failures.log").read_text()


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {}}, "'grid' is empty"),
        ({"base": {"stage1.epochs": 1}}, "missing 'grid'"),
        ({"grid": {"loss.gama": [1.0]}}, "unknown config key 'loss.gama'; did you mean 'loss.gamma'"),
        ({"grid": {"method": ["afcl", "focal"]}}, "unknown method 'focal'"),
        ({"grid": {"loss.gamma": 2.0}}, "'loss.gamma': expected a list"),
        ({"grid": {"seed": []}}, "'seed': the list is empty"),
        ({"grid": {"loss.eta": ["high"]}}, "loss.eta"),
        ({"grid": {"seed": [0.5]}}, "seed must be an integer"),
        ({"grid": {"trainer.devices": ["auto", {"a": 1}]}}, "expected a number, string, boolean or list"),
        ({"grid": {"seed": [0]}, "bsae": {}}, "unknown top-level key 'bsae'; did you mean 'base'"),
        ({"grid": {"seed": [0]}, "base": {"stage1.epochs": "two"}}, "stage1.epochs"),
        ({"grid": {"seed": [0, 0]}}, "repeated values"),
        (
            {"grid": {"seed": [0]}, "search": {"loss.eta": {"low": 0, "high": 10, "log": True}}},
            "log scale needs low > 0",
        ),
    ],
)
def test_bad_sweep_files_name_the_key_before_anything_runs(tmp_path, spec, message):
    runner = RecordingRunner()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        run_sweep(load_spec(_write(tmp_path, spec)), tmp_path / "out", runner=runner, progress=lambda _: None)
    assert runner.calls == [] and not (tmp_path / "out").exists()


def test_impossible_values_are_caught_by_the_resolver_before_the_first_run(tmp_path):
    # gamma -1 passes the type check but not the config's own validation: no run may start.
    runner = RecordingRunner()
    spec = parse_spec({"grid": {"method": ["afcl"], "loss.gamma": [1.0, -1.0]}})
    with pytest.raises(ConfigError, match=r"afcl_g-1.*loss.gamma"):
        run_sweep(spec, tmp_path, runner=runner, progress=lambda _: None)
    assert runner.calls == []


def test_cli_reports_a_bad_sweep_file_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, {"grid": {"loss.temprature": [0.1]}})
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "loss.temprature" in err and "loss.temperature" in err
    assert main(["sweep", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_dry_run_lists_the_runs(tmp_path, capsys):
    path = _write(tmp_path, {"grid": GRID})
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "afcl_g2_e50_s1" in out and "20 runs" in out and not (tmp_path / "o").exists()


def test_optuna_study_maximises_validation_ua_and_resumes(tmp_path):
    import optuna

    spec = parse_spec(
        {
            "name": "s",
            "base": {"stage1.epochs": 1},
            "grid": {"method": ["afcl", "ce"], "seed": [0, 1]},
            "search": {"loss.gamma": {"low": 0, "high": 4}, "loss.eta": {"low": 1, "high": 100, "log": True}},
        }
    )
    runner = RecordingRunner()
    result = run_study(spec, tmp_path, 3, runner=runner, progress=lambda _: None, command="asymcl sweep --optuna 3")
    assert result.storage == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"
    (name,) = result.studies  # ce uses neither gamma nor eta: no study for it
    assert name == "s:afcl"
    study = optuna.load_study(study_name=name, storage=result.storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3 and len(runner.calls) == 6  # 3 trials x 2 seeds
    best = result.studies[name]
    # the objective is the mean validation UA over the seeds of the trial's runs (from the run files)
    expected = (
        sum(json.loads((tmp_path / r / "metrics.json").read_text())["final"]["val"]["ua"] for r in best["runs"]) / 2
    )
    assert best["val_ua"] == pytest.approx(expected)
    assert all(r.startswith("afcl_g") and "_e" in r for r in best["runs"])
    # running the same command again does not add trials beyond the budget
    again = RecordingRunner()
    run_study(spec, tmp_path, 3, runner=again, progress=lambda _: None)
    assert again.calls == []
    with pytest.raises(ConfigError, match="--storage"):
        run_study(spec, tmp_path, 1, storage="nosuchdb://x", runner=again, progress=lambda _: None)


def test_values_of_any_type_the_config_accepts_pass(tmp_path):
    # trainer.devices takes "auto" or a count; data.classes a list: the sweep must not second-guess.
    spec = parse_spec(
        {
            "base": {"trainer.devices": "auto", "data.classes": [0, 6]},
            "grid": {"trainer.devices": ["auto", 1], "seed": [0]},
        }
    )
    from asymcl.experiments.sweep import default_resolver, resolve_points

    configs = resolve_points(spec, expand(spec), default_resolver())
    assert sorted(str(c["trainer"]["devices"]) for c in configs.values()) == ["1", "auto"]


def test_eta_is_not_inflated_by_a_one_time_extraction():
    # The first run of a sweep from a feature cache extracts it once (here 2,400 s); the others take 20 s.
    from asymcl.experiments.workers import _estimate

    class Point:
        def __init__(self, method):
            self.overrides = {"method": method}

    durations = [2400.0, 20.0, 20.0]
    by_method = {"ce": [2400.0, 20.0], "afcl": [20.0]}
    assert _estimate([Point("ce"), Point("afcl"), Point("afcl")], by_method, durations) == (60.0, [])


class _Point:
    def __init__(self, method):
        self.overrides = {} if method is None else {"method": method}


def test_eta_names_the_methods_it_has_not_timed_instead_of_pricing_them_like_the_probe():
    # A levers arm runs the probe and CE first (seconds each), then two-stage runs that take
    # minutes: pricing those at the probe's median printed "8 min" for an arm that took 45.
    from asymcl.experiments.workers import _estimate, _eta_text

    by_method = {"probe": [10.0, 12.0], "ce": [60.0]}
    durations = [10.0, 12.0, 60.0]
    left = [_Point("probe"), _Point("ce"), _Point("afcl"), _Point("cl"), _Point("afcl")]
    assert _estimate(left, by_method, durations) == (70.0, ["afcl", "cl"])
    assert _eta_text(left, by_method, durations, workers=2) == "ETA 0m35s + the runs of afcl, cl (not timed yet)"
    assert _eta_text(left[:2], by_method, durations, workers=1) == "ETA 1m10s"
    assert _eta_text(left, {}, [], workers=1) == "ETA after the first run"
    # Only untimed methods left: no "ETA 0m00s + ...".
    assert _eta_text(left[2:], by_method, durations, workers=2) == "ETA after a first run of afcl, cl"


def test_eta_of_a_grid_without_a_method_key_uses_every_run_so_far():
    from asymcl.experiments.workers import _estimate

    assert _estimate([_Point(None), _Point(None)], {None: [30.0, 50.0]}, [30.0, 50.0]) == (60.0, [])

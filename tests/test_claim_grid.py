"""The paper's claim across a grid (issue 22): the analysis on synthetic run tables with a known
effect, checked against scipy (intervals), statsmodels (power) and Holm by hand."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from asymcl.cli import main
from asymcl.experiments.claim_grid import analyse, imbalance_ratio
from asymcl.experiments.runs import load_runs
from test_report_claims import write


def _grid(root, effect: dict[str, float], seeds: int = 6):
    """Two rhos x two batch sizes; AFCL's true gain over CL is ``effect[profile]``; FCL and ACL tie CL."""
    for profile, gain in effect.items():
        for batch in (32, 512):
            for seed in range(seeds):
                for method, bonus in (("cl", 0.0), ("fcl", 0.0), ("acl", 0.0), ("afcl", gain)):
                    write(
                        root / "tuned",
                        f"{profile.replace(':', '')}_b{batch}_{method}",
                        method,
                        seed,
                        bonus + 0.003 * ((seed * 7 + batch) % 5),
                        **{"data.imbalance": profile, "stage1.batch_size": batch},
                    )


def test_intervals_power_and_holm_of_the_grid(tmp_path):
    from scipy import stats
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.power import TTestPower

    _grid(tmp_path, {"binary:10": 0.0, "binary:100": 0.08})
    runs = load_runs(tmp_path)
    rows = analyse(runs, tmp_path)
    assert len(rows) == 2 * 2 * 3 * 2  # cells x comparisons x metrics
    for row in rows:
        assert row["arm"] == "tuned"
        cell = [
            r
            for r in runs
            if r.config["data.imbalance"] == row["data.imbalance"]
            and r.config["stage1.batch_size"] == row["stage1.batch_size"]
        ]
        first = {r.seed: r.split_metric(row["split"], row["metric"]) for r in cell if r.method == row["first"]}
        second = {r.seed: r.split_metric(row["split"], row["metric"]) for r in cell if r.method == row["second"]}
        seeds = sorted(first)
        a, b = [first[s] for s in seeds], [second[s] for s in seeds]
        interval = stats.ttest_rel(a, b).confidence_interval(0.95)
        if np.std(np.subtract(a, b)) > 0:
            assert (row["low"], row["high"]) == pytest.approx((interval.low, interval.high))
            effect = TTestPower().solve_power(nobs=len(seeds), alpha=0.05, power=0.8, alternative="two-sided")
            assert row["mdd"] == pytest.approx(effect * np.std(np.subtract(a, b), ddof=1))
    finite = [r for r in rows if not np.isnan(r["p"])]
    assert [r["p_holm"] for r in finite] == pytest.approx(
        list(multipletests([r["p"] for r in finite], method="holm")[1])
    )
    # the known effect: AFCL beats CL at rho 100 on UA in both batch sizes, not at rho 10
    for row in rows:
        if row["first"] == "afcl" and row["second"] == "cl" and row["metric"] == "ua":
            expected = "first better" if row["rho"] == 100 else "not separable"
            assert row["verdict"] == expected, row


def test_claim_cli_writes_table_figure_and_runs_csv(tmp_path, capsys):
    _grid(tmp_path / "grid", {"binary:10": 0.0, "binary:50": 0.03}, seeds=3)
    assert main(["claim", str(tmp_path / "grid"), "--out", str(tmp_path / "claim")]) == 0
    table = list(csv.DictReader((tmp_path / "claim" / "claim.csv").open()))
    assert {r["comparison"] for r in table} == {"AFCL - CL", "AFCL - FCL", "ACL - CL"}
    assert (tmp_path / "claim" / "claim.png").stat().st_size > 1000
    text = (tmp_path / "claim" / "claim.md").read_text()
    assert "MDD" in text and "a verdict Holm-adjusted over all 24 comparisons of the grid" in text
    payload = json.loads((tmp_path / "claim" / "claim.json").read_text())
    # rebuilt from runs.csv alone: the same rows
    assert main(["claim", str(tmp_path / "claim" / "runs.csv"), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "claim.json").read_text())
    assert again["rows"] == payload["rows"] and {r["arm"] for r in again["rows"]} == {"tuned"}


def test_imbalance_ratio():
    assert imbalance_ratio("exp:100") == 100 and imbalance_ratio("exp:100:1000") == 100
    assert imbalance_ratio(None) == 1 and imbalance_ratio("binary:50") == 50
    assert imbalance_ratio("cap:10") == 10 and imbalance_ratio("cap:72.05") == 72.05


def test_the_claim_grid_arms(tmp_path):
    from asymcl.experiments.claim_presets import claim_specs
    from asymcl.experiments.sweep import expand, parse_spec

    (tmp_path / "fm").mkdir()
    specs = claim_specs(tmp_path / "fm", "pretrained", seeds=2, budget=2, rhos=(1, 100), batches=(32, 512))
    assert set(specs) == {"tuned", "authors", "eta-scaled-b32", "eta-scaled-b512"}
    tuned = specs["tuned"]
    assert {len(v) for v in tuned["settings"].values()} == {2}  # the same budget for every method
    assert tuned["grid"]["data.imbalance"] == ["exp:1:1000", "exp:100:1000"]
    assert tuned["base"]["data.cache_seed"] is None and tuned["base"]["data.val_per_class"] == 200
    assert len(expand(parse_spec(tuned))) == 5 * 2 * 2 * 2 * 2
    assert specs["authors"]["settings"]["afcl"][0]["loss.gamma"] == 10.0
    assert specs["authors"]["settings"]["afcl"][0]["loss.eta"] == 300.0
    small, large = specs["eta-scaled-b32"], specs["eta-scaled-b512"]
    for a, b in zip(small["settings"]["afcl"], large["settings"]["afcl"], strict=True):
        assert b["loss.eta"] == pytest.approx(16 * a["loss.eta"], rel=1e-3)  # eta follows N
    assert small["base"]["stage1.batch_size"] == 32


def test_the_cli_offers_exactly_the_claim_grids_profiles():
    from asymcl.experiments.claim_presets import GRIDS
    from asymcl.experiments.preset_names import CLAIM_PROFILES

    assert tuple(GRIDS) == CLAIM_PROFILES


def test_ua_on_the_balanced_split_and_wa_on_the_imbalanced_one(tmp_path):
    """On a balanced test set WA equals UA; the paper's WA claim is about imbalanced data."""
    _grid(tmp_path, {"binary:100": 0.08}, seeds=3)
    runs = load_runs(tmp_path)
    rows = analyse(runs, tmp_path)
    assert {(r["metric"], r["split"]) for r in rows} == {("ua", "test"), ("wa", "test_imbalanced")}
    for row in rows:
        cell = [r for r in runs if r.config["stage1.batch_size"] == row["stage1.batch_size"]]
        first = {r.seed: r.split_metric(row["split"], row["metric"]) for r in cell if r.method == row["first"]}
        second = {r.seed: r.split_metric(row["split"], row["metric"]) for r in cell if r.method == row["second"]}
        assert row["mean"] == pytest.approx(np.mean([first[s] - second[s] for s in sorted(first)]))
    for run in runs:  # a grid whose runs have only the balanced split compares WA there
        metrics = json.loads((run.path / "metrics.json").read_text())
        del metrics["final"]["test_imbalanced"]
        (run.path / "metrics.json").write_text(json.dumps(metrics))
    rows = analyse(load_runs(tmp_path), tmp_path)
    assert {(r["metric"], r["split"]) for r in rows} == {("ua", "test"), ("wa", "test")}


def test_two_seeds_get_no_verdict_even_when_their_differences_coincide(tmp_path):
    """With 2 seeds a paired t test has 1 degree of freedom: equal differences would give p near 0."""
    for seed in range(2):
        for method, bonus in (("cl", 0.0), ("fcl", 0.0), ("acl", 0.0), ("afcl", 0.05)):
            write(tmp_path / "tuned", f"b512_{method}", method, seed, bonus, **{"stage1.batch_size": 512})
    rows = analyse(load_runs(tmp_path), tmp_path)
    afcl = [r for r in rows if r["first"] == "afcl" and r["second"] == "cl" and r["metric"] == "ua"]
    assert afcl and afcl[0]["n"] == 2 and afcl[0]["p"] < 0.05  # the raw test would call it
    assert {r["verdict"] for r in rows} == {"too few seeds"}
    assert main(["claim", str(tmp_path), "--out", str(tmp_path / "claim")]) == 0
    text = (tmp_path / "claim" / "claim.md").read_text()
    assert (
        "a verdict, Holm-adjusted over the grid, for each cell with 3 seeds (no cell has them yet)." in text
        and " 0 comparisons" not in text
    )


def test_runs_of_settings_the_sweep_file_no_longer_gives_are_left_out(tmp_path):
    """A comparison folder keeps the runs of an earlier draw of settings when its sweep file is drawn
    anew; a CL run at another temperature that validation would prefer must not become CL's row."""
    import yaml

    grid = tmp_path / "grid"
    _grid(grid, {"binary:100": 0.08}, seeds=4)
    settings = {
        method: [{"loss": {"temperature": 0.1, **({"gamma": gamma} if gamma else {}), **({"eta": eta} if eta else {})}}]
        for method, (gamma, eta) in {"cl": (0, 0), "fcl": (2.0, 0), "acl": (0, 50.0), "afcl": (2.0, 50.0)}.items()
    }
    (grid / "tuned" / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "t", "grid": {"seed": [0]}, "settings": settings})
    )
    for seed in range(4):  # the old draw's CL: 20 points better on validation and test alike
        write(
            grid / "tuned",
            "old_b32_cl_t0.3",
            "cl",
            seed,
            0.2,
            **{"data.imbalance": "binary:100", "stage1.batch_size": 32, "loss.temperature": 0.3},
        )
    assert main(["claim", str(grid), "--out", str(tmp_path / "claim")]) == 0
    rows = json.loads((tmp_path / "claim" / "claim.json").read_text())["rows"]
    for run in (grid / "tuned").glob("old_*"):
        shutil.rmtree(run)
    assert main(["claim", str(grid), "--out", str(tmp_path / "without")]) == 0
    assert rows == json.loads((tmp_path / "without" / "claim.json").read_text())["rows"]
    assert all(row["settings"]["cl"].get("loss.temperature", 0.1) == 0.1 for row in rows if row["second"] == "cl")
    text = (tmp_path / "claim" / "claim.md").read_text()
    assert "4 finished run(s) under tuned have a setting that the folder's sweep.yaml no longer gives" in text
    assert (tmp_path / "claim" / "runs.csv").read_text() == (tmp_path / "without" / "runs.csv").read_text()

"""The claim grid run in parts (issue 22): runs another arm already has are copied, not trained;
finished runs travel in a small archive; a later part runs only the seeds it is given."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import yaml

from asymcl.cli import main
from asymcl.errors import ConfigError, DataError
from asymcl.experiments import claim_presets, sweep
from asymcl.experiments.run_archive import pack_runs, unpack_runs
from asymcl.experiments.runs import is_complete, load_runs
from test_experiments_report import _confusion, _split_metrics, write_run

SMALL = {"rhos": (1, 100), "batches": (32, 512), "seeds": 3, "budget": 2}


@pytest.fixture
def small_grid(monkeypatch, tmp_path):
    """The pretrained grid at 2 rhos x 2 batches x 3 seeds, and a runner that records what it trains."""
    monkeypatch.setitem(claim_presets.GRIDS, "pretrained", {**claim_presets.GRIDS["pretrained"], **SMALL})
    trained: list[str] = []

    def fake_run(config, run_dir):
        # What the pipeline leaves that the claim reads: the resolved config and complete metrics.
        trained.append(json.dumps(config, sort_keys=True, default=str))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        rng = np.random.default_rng(len(trained))
        bonus = 0.05 if config["method"] == "afcl" else 0.0
        final = {
            split: _split_metrics(_confusion([0.8, 0.5 + bonus + 0.01 * config["seed"]], [100, 100], rng))
            for split in ("val", "test", "test_imbalanced")
        }
        (run_dir / "metrics.json").write_text(json.dumps({"status": "complete", "final": final, "history": {}}))
        return {}

    monkeypatch.setattr(sweep, "default_runner", lambda: fake_run)
    data = tmp_path / "fm"
    data.mkdir()
    return data, trained


def _unique_runs(data, seeds):
    specs = claim_presets.claim_specs(data, "pretrained")
    total = sum(len(sweep.expand(sweep.parse_spec(raw))) for raw in specs.values())
    per_seed = (total - len(claim_presets.duplicate_runs(specs))) // SMALL["seeds"]
    return per_seed * len(seeds)


def test_duplicates_are_exactly_the_runs_eta_does_not_reach(small_grid):
    data, _ = small_grid
    specs = claim_presets.claim_specs(data, "pretrained")
    duplicates = claim_presets.duplicate_runs(specs)
    configs = {
        arm: sweep.resolve_points(spec, sweep.expand(spec), sweep.default_resolver())
        for arm, spec in ((arm, sweep.parse_spec(raw)) for arm, raw in specs.items())
    }
    methods = {(arm, configs[arm][name]["method"]) for arm, name in duplicates}
    # CL (no eta, no gamma) in the authors' arm; CL and FCL (no eta) in the eta-scaled arms.
    assert methods == {("authors", "cl"), ("eta-scaled-b32", "cl"), ("eta-scaled-b32", "fcl")} | {
        ("eta-scaled-b512", "cl"),
        ("eta-scaled-b512", "fcl"),
    }
    cells = len(SMALL["rhos"]) * SMALL["seeds"]
    assert len(duplicates) == cells * 2 + 2 * (2 * cells * SMALL["budget"])  # authors: CL at 2 batches
    for (arm, name), (source_arm, source) in duplicates.items():
        assert source_arm == "tuned"
        assert configs[arm][name] == configs[source_arm][source]


def test_the_grid_in_two_parts_trains_every_run_once(small_grid, tmp_path):
    data, trained = small_grid
    out, archive = tmp_path / "grid", tmp_path / "claim-runs.tar.xz"
    claim_presets.run_claim_grid(data, out, only_seeds=[0], archive=archive)
    assert len(trained) == _unique_runs(data, [0])
    copied = sorted(out.glob("*/*/duplicate_of.json"))
    assert copied and all(is_complete(p.parent) for p in copied)
    source = copied[0].parent / json.loads(copied[0].read_text())["run"]
    assert (copied[0].parent / "metrics.json").read_bytes() == source.resolve().joinpath("metrics.json").read_bytes()
    assert all(r.seed == 0 for r in load_runs(out))

    # The next part on a fresh machine: only the archive survives.
    import shutil

    shutil.rmtree(out)
    claim_presets.run_claim_grid(data, out, only_seeds=[1, 2], archive=archive)
    assert len(trained) == _unique_runs(data, [0, 1, 2])
    assert len(set(trained)) == len(trained)  # no run trained twice
    runs = load_runs(out)
    assert sorted({r.seed for r in runs}) == [0, 1, 2]
    assert len(runs) == 5 * 2 * 2 * 2 * 3 + 4 * 2 * 2 * 3 + 2 * (4 * 2 * 2 * 3)  # every arm complete
    for arm in ("tuned", "authors"):
        spec = yaml.safe_load((out / arm / "sweep.yaml").read_text())
        assert spec["grid"]["seed"] == [0, 1, 2]  # the sweep file names the whole grid
    import csv

    rows = list(csv.DictReader(io.StringIO((out / "claim" / "claim.csv").read_text())))
    assert {row["arm"] for row in rows} == {"tuned", "authors", "eta-scaled-b32", "eta-scaled-b512"}
    assert {row["n"] for row in rows} == {"3"}  # both parts' seeds in every cell


def test_only_seeds_outside_the_grid_is_one_clear_error(small_grid, tmp_path):
    data, trained = small_grid
    with pytest.raises(ConfigError, match=r"seeds are 0\.\.2; choose among them \(7 is not one\)"):
        claim_presets.run_claim_grid(data, tmp_path / "g", only_seeds=[0, 7])
    assert trained == []


def test_cli_seed_ranges_and_a_bad_one(small_grid, tmp_path, capsys):
    data, trained = small_grid
    out = tmp_path / "g"
    assert main(["claim-grid", "--data", str(data), "--only-seeds", "1-2", "--arms", "tuned", "--out", str(out)]) == 0
    assert {r.seed for r in load_runs(out)} == {1, 2}
    assert main(["claim-grid", "--data", str(data), "--only-seeds", "one", "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "--only-seeds 'one': expected seeds such as 0,1 or 0-3" in err and "Traceback" not in err


def test_cli_one_cell_of_the_grid_keeps_the_grids_run_names(small_grid, tmp_path, capsys):
    """--rhos/--batches pick cells: the runs trained are exactly the full grid's runs of that cell."""
    data, trained = small_grid
    out = tmp_path / "g"
    cell = ["--rhos", "100", "--batches", "512", "--arms", "tuned", "--only-seeds", "0"]
    assert main(["claim-grid", "--data", str(data), *cell, "--out", str(out)]) == 0
    names = {run.path.name for run in load_runs(out)}
    full = claim_presets.claim_specs(data, "pretrained")["tuned"]
    expected = {
        point.name
        for point in sweep.expand(sweep.parse_spec(full))
        if point.name.startswith("exp100n1000_") and "batch_size=512" in point.name and point.name.endswith("_s0")
    }
    assert names == expected and len(names) == len(trained) == 5 * SMALL["budget"]
    written = yaml.safe_load((out / "tuned" / "sweep.yaml").read_text())
    assert written["grid"]["data.imbalance"] == ["exp:100:1000"] and written["grid"]["stage1.batch_size"] == [512]
    for bad, message in (
        (["--rhos", "ten"], "--rhos 'ten': expected values such as 1,100 or 5,natural"),
        (["--batches", "32,big"], "--batches '32,big': expected values such as 32,512"),
        (["--rhos", "natural"], "the claim grid pretrained has no natural pool"),
    ):
        assert main(["claim-grid", "--data", str(data), *bad, "--out", str(tmp_path / "bad")]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def _runs(root):
    for seed in range(2):
        write_run(root / "arm", f"afcl_s{seed}", method="afcl", seed=seed, gamma=1.0, eta=1.0)
    write_run(root / "arm", "cl_s0", method="cl", seed=0, status="running")
    (root / "arm" / "sweep.yaml").write_text("name: arm\n")


def test_pack_keeps_only_finished_runs_records_and_is_deterministic(tmp_path):
    _runs(tmp_path / "runs")
    assert pack_runs(tmp_path / "runs", tmp_path / "a.tar.xz") == 2
    pack_runs(tmp_path / "runs", tmp_path / "b.tar.xz")
    assert (tmp_path / "a.tar.xz").read_bytes() == (tmp_path / "b.tar.xz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.xz") as tar:
        names = sorted(tar.getnames())
    assert names == [
        "arm/afcl_s0/config.yaml",
        "arm/afcl_s0/metrics.json",
        "arm/afcl_s0/versions.json",
        "arm/afcl_s1/config.yaml",
        "arm/afcl_s1/metrics.json",
        "arm/afcl_s1/versions.json",
        "arm/sweep.yaml",
    ]  # no predictions, embeddings or unfinished runs


def test_unpack_restores_what_the_analysis_reads_and_overwrites_nothing(tmp_path):
    _runs(tmp_path / "runs")
    pack_runs(tmp_path / "runs", tmp_path / "a.tar.xz")
    before = {r.path.name: r.split_metric("test", "ua") for r in load_runs(tmp_path / "runs") if r.seed is not None}
    target = tmp_path / "restored"
    (target / "arm" / "afcl_s1").mkdir(parents=True)
    (target / "arm" / "afcl_s1" / "config.yaml").write_text("mine: true\n")
    assert unpack_runs(tmp_path / "a.tar.xz", target) == (1, 1)
    assert (target / "arm" / "afcl_s1" / "config.yaml").read_text() == "mine: true\n"
    [run] = load_runs(target)
    assert run.split_metric("test", "ua") == before["afcl_s0"]
    assert unpack_runs(tmp_path / "a.tar.xz", target) == (0, 2)


@pytest.mark.parametrize("name", ["../evil/config.yaml", "/etc/config.yaml", "arm/run/best.ckpt"])
def test_unpack_refuses_what_pack_never_writes(tmp_path, name):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    (tmp_path / "bad.tar.xz").write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match="is not a run record"):
        unpack_runs(tmp_path / "bad.tar.xz", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_unpack_of_a_broken_or_missing_archive(tmp_path):
    _runs(tmp_path / "runs")
    pack_runs(tmp_path / "runs", tmp_path / "a.tar.xz")
    (tmp_path / "cut.tar.xz").write_bytes((tmp_path / "a.tar.xz").read_bytes()[:100])
    with pytest.raises(DataError, match="cannot be read as a tar archive of runs"):
        unpack_runs(tmp_path / "cut.tar.xz", tmp_path / "out")
    with pytest.raises(DataError, match="no such archive"):
        unpack_runs(tmp_path / "missing.tar.xz", tmp_path / "out")

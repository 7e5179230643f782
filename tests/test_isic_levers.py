"""Issue 23's lever ablation (``asymcl levers``): the arms and their configs, the pruning, the
selection rule, a whole ablation on synthetic runs (a fake runner, no network), the dry run."""

from __future__ import annotations

import copy
import json
import math
import time

import numpy as np
import pytest
import yaml

from asymcl.errors import ConfigError
from asymcl.experiments import levers, levers_disk, sweep
from asymcl.experiments.claim_presets import LEAN_OUTPUTS
from asymcl.experiments.levers import ARMS, BASE, COMBINED, LAST_K_REFERENCE, arm, combine, kept, lever_specs
from asymcl.experiments.reproduce import PRESET_METHODS, preset_spec
from asymcl.experiments.stats import PairedDifference
from asymcl.training.config import flatten
from data_fixtures import make_isic
from levers_fakes import install_fake_levers


@pytest.fixture
def isic(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCL_CACHE_DIR", str(tmp_path / "cache"))  # never the user's cache
    root = tmp_path / "isic"
    make_isic(root, train_per_class=(8, 12, 6, 6, 8, 6, 6))
    return root


def _configs(raw):
    spec = sweep.parse_spec(copy.deepcopy(raw))
    return {
        name: flatten(config)
        for name, config in sweep.resolve_points(spec, sweep.expand(spec), sweep.default_resolver()).items()
    }


def test_each_arm_differs_from_its_reference_only_in_its_lever_keys(isic):
    specs = lever_specs(isic)
    configs = {name: _configs(raw) for name, raw in specs.items()}
    for spec in ARMS:
        if spec.reference is None:
            continue
        mine, theirs = configs[spec.name], configs[spec.reference]
        assert set(mine) == set(theirs)  # the same runs: methods x seeds
        for run, config in mine.items():
            changed = {key for key in config if config[key] != theirs[run].get(key)}
            # the lever's keys, less one the arm keeps at the reference's value (lite0-260: the size)
            assert changed and changed == {k for k, v in spec.keys.items() if theirs[run][k] != v}, (spec.name, run)


def test_every_arm_has_every_method_the_same_budget_and_the_presets_base(isic):
    specs = lever_specs(isic)
    preset = preset_spec("isic2018", isic, "pretrained", budget=1)
    assert preset["base"].items() <= specs[BASE]["base"].items()  # reproduce's recipe, as it is
    assert {**preset["base"], **LEAN_OUTPUTS} == specs[BASE]["base"]
    for name, raw in specs.items():
        assert tuple(raw["settings"]) == PRESET_METHODS["pretrained"], name
        assert all(len(settings) == 1 for settings in raw["settings"].values())
        assert raw["settings"] == specs[BASE]["settings"]  # the same setting of each method in every arm
        assert raw["grid"] == {"seed": [0, 1, 2]}
        assert len(sweep.expand(sweep.parse_spec(copy.deepcopy(raw)))) == 8 * 3
    narrowed = lever_specs(isic, ["ce", "afcl"])
    assert all(list(raw["settings"]) == ["ce", "afcl"] for raw in narrowed.values())


def test_last_k_arms_use_one_encoder_with_their_own_frozen_reference(isic):
    from asymcl.training.config import resolve_config

    specs = lever_specs(isic)
    reference = specs[LAST_K_REFERENCE]["base"]
    assert reference["model.backbone"] == "efficientnet_lite0" and reference["model.finetune"] == "frozen"
    for k in (1, 2, 3):
        assert arm(f"last{k}").reference == LAST_K_REFERENCE
        assert specs[f"last{k}"]["base"] == {**reference, "model.finetune": f"last:{k}"}
    # why: the base's + backbone refuses last:K, before anything is built
    with pytest.raises(ConfigError, match=r"last:K cuts the blocks of one network"):
        resolve_config({**specs[BASE]["base"], "method": "afcl", "model.finetune": "last:1"})


def test_the_size_and_encoder_arms_are_pruned_by_the_extraction_budget():
    encoders = [spec for spec in ARMS if spec.lever == "encoder"]
    assert sorted(levers.PRUNED) == ["lite2-lite0-300"]  # 38 min estimated, over 30
    assert len(encoders) == 3 * 3 - 1 - 1  # every size x encoder, less the base and the pruned one
    for spec in encoders:
        minutes = levers.extraction_estimate_min(spec.keys["model.backbone"], spec.keys["data.image_size"])
        assert minutes <= levers.EXTRACTION_BUDGET_MIN
    assert levers.BASE_ENCODER not in {(s.keys["model.backbone"], s.keys["data.image_size"]) for s in encoders}
    assert math.isclose(levers.extraction_estimate_min(*levers.BASE_ENCODER), 28.78)


def _gain(mean, half=0.01, n=3):
    return PairedDifference(mean, mean - half, mean + half, n, 0.95)


def test_the_rule_keeps_a_clear_gain_and_drops_a_loss_or_an_interval_across_zero():
    assert kept(_gain(0.02)) and not kept(_gain(-0.02)) and not kept(_gain(0.005))
    assert not kept(PairedDifference(0.05, float("nan"), float("nan"), 1, 0.95))  # one seed: no interval
    gains = {"tta": _gain(0.03), "layers": _gain(-0.02), "lite0-260": _gain(0.02), "lite2-224": _gain(0.04, 0.05)}
    assert combine(gains, {}) == ["lite0-260", "tta"]
    # of two kept values of one lever, the larger gain
    assert combine({**gains, "lite0-300": _gain(0.025)}, {}) == ["lite0-300", "tta"]


def test_last_k_against_a_kept_encoder_is_settled_by_the_gain_over_base():
    gains = {"last2": _gain(0.05), "last1": _gain(0.02), "lite0-260": _gain(0.02), "tta": _gain(0.02)}
    # last2 is 5 points over lite0-224, which is 4 under base: +1 over base, less than lite0-260's +2
    over_base = {"last2": _gain(0.01), "lite0-260": _gain(0.02)}
    assert combine(gains, over_base) == ["lite0-260", "tta"]
    over_base = {"last2": _gain(0.03), "lite0-260": _gain(0.02)}
    assert combine(gains, over_base) == ["last2", "tta"]
    assert levers.combined_overrides(["last2", "tta"]) == {
        "model.backbone": "efficientnet_lite0",
        "data.image_size": 224,
        "model.finetune": "last:2",
        "eval.tta_views": 4,
    }
    assert levers.same_as({}) == BASE and levers.same_as(levers.arm_overrides("tta")) == "tta"


# -- a whole ablation on synthetic runs ---------------------------------------------------------------

# What the fake runner gives each lever on validation, per seed (test: 5 points lower): tta and
# Lite0 at 260 px win on every seed, the multi-layer features lose, the rest move both ways.
WINS = {"tta": (0.03, 0.032, 0.034), "lite0-260": (0.02, 0.021, 0.022), "layers": (-0.02, -0.022, -0.024)}
NOISE = (0.01, -0.01, 0.004)


def _effect(config):
    model, size, seed = config["model"], config["data"]["image_size"], config["seed"]
    effect = 0.0
    if config["eval"]["tta_views"]:
        effect += WINS["tta"][seed]
    if model["feature_layers"]:
        effect += WINS["layers"][seed]
    if (model["backbone"], size) == ("efficientnet_lite0", 260):
        effect += WINS["lite0-260"][seed]
    elif (model["backbone"], size) != levers.BASE_ENCODER or model["finetune"] != "frozen":
        effect += NOISE[seed]
    return effect


@pytest.fixture
def fake_ablation(monkeypatch, isic):
    trained, extracted = install_fake_levers(monkeypatch, _effect)
    return isic, trained, extracted


def test_the_ablation_keeps_the_winners_and_runs_them_together(fake_ablation, tmp_path):
    from asymcl.experiments.levers_run import run_levers

    data, trained, extracted = fake_ablation
    out = tmp_path / "levers"
    result = run_levers(data, out, methods=["ce", "afcl"], progress=lambda line: None)
    assert result["failed"] == 0
    assert len(trained) == (len(ARMS) + 1) * 2 * 3  # every arm, then the combination
    assert trained[-6:] == [COMBINED] * 6
    chosen = json.loads((out / "levers" / "levers.json").read_text())
    assert chosen["chosen"] == ["lite0-260", "tta"] and chosen["recipe_arm"] == COMBINED
    assert chosen["combined_overrides"] == {
        "model.backbone": "efficientnet_lite0",
        "data.image_size": 260,
        "eval.tta_views": 4,
    }
    rows = {row["arm"]: row for row in _csv(out / "levers" / "levers.csv")}
    assert rows["tta"]["kept"] == "yes" and rows["layers"]["kept"] == "no" and rows["last1"]["kept"] == "no"
    assert float(rows["tta"]["gain"]) == pytest.approx(0.032) and float(rows["tta"]["gain_low"]) > 0
    assert float(rows["layers"]["gain_high"]) < 0
    assert rows[COMBINED]["test_use"] == "the recipe's result"
    assert {rows[name]["test_use"] for name in rows if name != COMBINED} == {"not used for selection"}
    assert float(rows[COMBINED]["val_ua"]) == pytest.approx(0.61 + 0.021 + 0.032)
    # each arm measured its own extraction: one new entry (a shard of 1,000 bytes, key.json, its record)
    cost = json.loads((out / "tta" / "levers-cost.json").read_text())
    entry = tmp_path / "cache" / "features" / "entry-tta"
    on_disk = sum(path.stat().st_size for path in entry.iterdir() if path.is_file())
    assert cost["extracted_bytes"] == cost["cache_bytes"] == on_disk > 1000 and cost["extraction_s"] >= 0
    assert cost["extraction_engines"] == ["fp32 on onnxruntime (cpu)"]
    assert cost["training_s"] > 0
    from asymcl.training.run_dir import cpu_info

    assert len(cost["cpus"]) == 1 and cost["cpus"][0].startswith(cpu_info()["cpu"])
    assert len(cost["load_average_at_start"]) == 3
    assert f"Timed on: {cost['cpus'][0]}" in (out / "levers" / "levers.md").read_text()
    assert "Extracted with: fp32 on onnxruntime (cpu)" in (out / "levers" / "levers.md").read_text()
    assert (out / "levers" / "levers.md").read_text().count("| encoder |") == 7
    assert len(_csv(out / "levers" / "runs.csv")) == (len(ARMS) + 1) * 6 * 2  # val and test rows

    # run again: nothing trains or extracts, the table is the same
    before = (out / "levers" / "levers.csv").read_text()
    trained.clear()
    run_levers(data, out, methods=["ce", "afcl"], progress=lambda line: None)
    assert trained == [] and (out / "levers" / "levers.csv").read_text() == before


def test_an_arm_stopped_before_its_end_keeps_what_it_cost_and_a_resume_adds_up(fake_ablation, tmp_path, monkeypatch):
    """The cost file is written as the arm goes (at every progress line), not only when it ends: a
    session that ends mid-arm loses none of the extraction and at most one run's training time."""
    from asymcl.experiments.levers_run import run_levers

    data, trained, _ = fake_ablation
    out = tmp_path / "levers"
    fake_run = sweep.default_runner()

    def slow_then_stopped(config, run_dir):
        if len(trained) == 2:
            raise KeyboardInterrupt  # the third run: the session ends
        time.sleep(0.2)
        return fake_run(config, run_dir)

    monkeypatch.setattr(sweep, "default_runner", lambda: slow_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        run_levers(data, out, methods=["ce"], arms=["tta"], progress=lambda line: None)
    stopped = json.loads((out / "tta" / "levers-cost.json").read_text())
    assert len(trained) == 2 and stopped["training_s"] >= 0.4 and stopped["extracted_bytes"] > 1000
    assert stopped["extraction_engines"] == ["fp32 on onnxruntime (cpu)"]

    monkeypatch.setattr(sweep, "default_runner", lambda: fake_run)
    run_levers(data, out, methods=["ce"], arms=["tta"], progress=lambda line: None)
    resumed = json.loads((out / "tta" / "levers-cost.json").read_text())
    assert len(trained) == 3  # only the third run was left
    assert resumed["training_s"] > stopped["training_s"]  # the two invocations add up
    # the resume extracted nothing new (the fake writes one entry per arm, already there)
    assert resumed["extracted_bytes"] >= stopped["extracted_bytes"]
    assert resumed["extraction_engines"] == ["fp32 on onnxruntime (cpu)"] and len(resumed["cpus"]) == 1


def test_the_combination_waits_for_the_whole_ablation(fake_ablation, tmp_path):
    from asymcl.experiments.levers_run import run_levers

    data, trained, _ = fake_ablation
    out = tmp_path / "levers"
    run_levers(data, out, methods=["ce"], arms=["base", "tta"], progress=lambda line: None)
    assert sorted(set(trained)) == ["base", "tta"] and not (out / COMBINED).exists()
    rows = {row["arm"]: row for row in _csv(out / "levers" / "levers.csv")}
    assert set(rows) == {"base", "tta"} and rows["tta"]["kept"] == "yes"
    assert "not finished" in (out / "levers" / "levers.md").read_text()
    with pytest.raises(
        ConfigError, match=r"the combination is chosen on the finished ablation; arm\(s\) tta-dihedral, layers"
    ):
        run_levers(data, out, methods=["ce"], arms=[COMBINED], progress=lambda line: None)


def test_more_seeds_narrow_an_arms_gain_and_pair_the_seeds_both_arms_have(isic, tmp_path, monkeypatch):
    """``--seeds 6`` on two arms: their gain is paired over 6 seeds, an arm run at 3 keeps its 3, and
    fewer seeds than the rule's 3 is refused before anything runs."""
    from asymcl.experiments.levers_run import run_levers

    layers = (0.05, -0.01, 0.02, 0.03, 0.025, 0.035)  # 3 seeds: [-0.05, +0.09]; 6: [+0.004, +0.046]
    trained, _ = install_fake_levers(monkeypatch, lambda c: layers[c["seed"]] if c["model"]["feature_layers"] else 0.0)
    out = tmp_path / "levers"
    run_levers(isic, out, methods=["ce", "afcl"], arms=["base", "layers", "tta"], progress=lambda line: None)
    rows = {row["arm"]: row for row in _csv(out / "levers" / "levers.csv")}
    assert rows["layers"]["seeds"] == "3" and rows["layers"]["kept"] == "no"
    run_levers(isic, out, methods=["ce", "afcl"], arms=["base", "layers"], seeds=6, progress=lambda line: None)
    assert len(trained) == 3 * 2 * 3 + 2 * 2 * 3  # seeds 3-5 of base and layers only
    rows = {row["arm"]: row for row in _csv(out / "levers" / "levers.csv")}
    assert rows["layers"]["seeds"] == "6" and rows["tta"]["seeds"] == "3"
    assert float(rows["layers"]["gain"]) == pytest.approx(np.mean(layers))
    assert float(rows["layers"]["gain_low"]) > 0 and rows["layers"]["kept"] == "yes"
    assert float(rows["tta"]["gain"]) == pytest.approx(0.0)  # paired over the 3 seeds tta has
    assert yaml.safe_load((out / "layers" / "sweep.yaml").read_text())["grid"]["seed"] == list(range(6))
    with pytest.raises(ConfigError, match="--seeds 2: the lever rule pairs at least 3 seeds per arm"):
        run_levers(isic, out, methods=["ce"], arms=["base"], seeds=2, progress=lambda line: None)
    assert len(trained) == 30


def test_the_archive_carries_the_runs_and_the_costs_to_another_machine(fake_ablation, tmp_path):
    from asymcl.experiments.levers_run import run_levers

    data, trained, _ = fake_ablation
    first, second, archive = tmp_path / "one", tmp_path / "two", tmp_path / "levers-runs.tar.xz"
    run_levers(data, first, methods=["ce"], arms=["base", "tta"], archive=archive, progress=lambda line: None)
    trained.clear()
    run_levers(data, second, methods=["ce"], arms=["base", "tta", "layers"], archive=archive, progress=print)
    assert sorted(set(trained)) == ["layers"]  # base and tta came back finished
    assert (second / "tta" / "levers-cost.json").read_bytes() == (first / "tta" / "levers-cost.json").read_bytes()
    rows = {row["arm"]: row for row in _csv(second / "levers" / "levers.csv")}
    carried = json.loads((first / "tta" / "levers-cost.json").read_text())["cache_bytes"]
    assert set(rows) == {"base", "tta", "layers"} and float(rows["tta"]["cache_bytes"]) == carried > 1000


def _csv(path):
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- the command ---------------------------------------------------------------------------------------


def test_the_dry_run_prints_every_arm_its_runs_and_disk(isic, tmp_path, capsys):
    from asymcl.cli import main

    out = tmp_path / "l"
    assert main(["levers", "--data", str(isic), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for spec in ARMS:
        assert f"# arm {spec.name} (" in printed and f"name: levers-{spec.name}\n" in printed
    assert printed.count(": 24 runs into ") == len(ARMS) == 20
    assert "# pruned before any run: lite2-lite0-300 (estimated extraction 38 min" in printed
    assert f"# 480 runs in 20 arms, then {COMBINED}: 24 runs" in printed
    assert "feature caches about" in printed and not out.exists()
    assert main(["levers", "--data", str(isic), "--arms", "tta,last2", "--methods", "ce,la", "--dry-run"]) == 0
    assert "# 12 runs in 2 arms; feature caches" in capsys.readouterr().out


def test_the_disk_estimate_is_the_caches_own(isic):
    from asymcl.data.cache_store import estimate_bytes

    specs = lever_specs(isic, ["ce"])
    n_train, n_eval = levers_disk.image_counts(specs[BASE]["base"], "ce")
    disk = levers_disk.disk_estimates({name: specs[name] for name in ("base", "tta", "last1")})
    pair = estimate_bytes((2560,), n_train, 4) + estimate_bytes((2560,), n_eval, 0)
    assert disk["base"] == (pair, pair)
    # tta: the base's training entry again, and val/test with 4 views of their own
    assert disk["tta"][1] == estimate_bytes((2560,), n_eval, 4)
    assert disk["last1"][0] == estimate_bytes((320, 7, 7), n_train, 4) + estimate_bytes((320, 7, 7), n_eval, 0)


def test_a_bad_arm_name_is_one_line(isic, tmp_path, capsys):
    from asymcl.cli import main

    assert main(["levers", "--data", str(isic), "--arms", "tta,last9", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert (
        "unknown arm 'last9' for --preset isic2018 (allowed: base, tta, tta-dihedral, layers, lite0-224, last1, last2, last3, "
        "last1-lr0.1, last2-lr0.1, last3-lr0.1, last1-bn-frozen, last2-bn-frozen, last3-bn-frozen, lite0-260" in err
    )
    assert err.endswith(", combined)")


def test_runs_of_a_setting_the_arm_no_longer_gives_are_left_out_and_said(fake_ablation, tmp_path):
    """An arm's sweep file rewritten with another setting for a method (a changed preset default)
    leaves that method's old runs on disk; the rule must not pair them, and the table says so."""
    from asymcl.experiments.levers_run import run_levers
    from asymcl.experiments.levers_table import arm_runs, write_table

    data, _, _ = fake_ablation
    out = tmp_path / "levers"
    run_levers(data, out, methods=["ce", "afcl"], arms=["base", "tta"], progress=lambda line: None)
    assert len(arm_runs(out, "tta", ["ce", "afcl"])) == 6
    sweep_file = out / "tta" / "sweep.yaml"
    raw = yaml.safe_load(sweep_file.read_text())
    raw["settings"]["ce"][0]["stage1.lr"] = 0.5  # the runs on disk have the old value
    sweep_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert {run.method for run in arm_runs(out, "tta", ["ce", "afcl"])} == {"afcl"}
    write_table(out, ["ce", "afcl"], "isic2018")
    rows = {row["arm"]: row for row in _csv(out / "levers" / "levers.csv")}
    assert rows["tta"]["seeds"] in ("0", "")  # every method on a seed, or no seed: ce has none left
    assert "3 finished run(s) under tta have a setting" in (out / "levers" / "levers.md").read_text()

"""Fair comparisons (issue 21): equal budgets by construction, the probe baseline, Holm-adjusted
verdicts, runs.csv, a balanced validation set, and ``asymcl compare`` end to end."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from asymcl.cli import main
from asymcl.errors import ConfigError, DataError
from asymcl.experiments import fair
from asymcl.experiments.reproduce import PRESET_METHODS, PRESETS, PROFILES, preset_budget, preset_spec
from asymcl.experiments.stats import holm, min_detectable_difference, paired_difference
from asymcl.experiments.sweep import expand, parse_spec
from asymcl.training import methods
from data_fixtures import make_class_folder

# ---------------------------------------------------------------------------------------------
# The budget rule


def _settings_per_method(raw: dict) -> dict[str, int]:
    points = expand(parse_spec(raw))
    seen: dict[str, set] = {}
    for point in points:
        values = {k: v for k, v in point.overrides.items() if k != "seed" and not k.startswith("data.")}
        seen.setdefault(values["method"], set()).add(json.dumps(values, sort_keys=True))
    return {method: len(items) for method, items in seen.items()}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_gives_every_method_the_same_number_of_settings(preset, profile, tmp_path):
    from data_fixtures import make_isic

    data = tmp_path / "data"
    if preset == "isic2018":
        make_isic(data)
    else:
        data.mkdir()
    try:
        raw = preset_spec(preset, data, profile)
    except ConfigError as exc:  # a profile without this preset says so
        assert "has presets" in str(exc)
        return
    counts = _settings_per_method(raw)
    assert set(counts) == set(PRESET_METHODS[profile])
    assert set(counts.values()) == {preset_budget(preset, profile)}, counts


def test_settings_come_from_each_methods_own_space_default_first():
    base = {"stage1.lr": 1e-3}
    for name in ("probe", "ce", "la", "cl", "afcl"):
        drawn = fair.method_settings(name, 4, base)
        space = fair.method_space(name, base)
        assert drawn[0] == {key: values[0] for key, values in space.items()}  # the default first
        assert len({json.dumps(s, sort_keys=True) for s in drawn}) == 4  # distinct
        assert all(set(s) == set(space) and all(s[k] in space[k] for k in s) for s in drawn)
        assert drawn == fair.method_settings(name, 4, base)  # the same in every comparison
    assert fair.method_space("ce", base)["stage1.lr"] == (1e-3, 3.333e-4, 3e-3)  # relative to the base lr
    assert {"stage1.lr", "stage1.weight_decay", "stage2.logit_tau"} <= set(fair.method_space("la", base))
    with pytest.raises(ConfigError, match="fewer than the budget of 100000 per method"):
        fair.method_settings("cl", 100000, base)


def _space_size(method: str, base: dict) -> int:
    return math.prod(len(values) for values in fair.method_space(method, base).values())


@pytest.mark.parametrize("budget", [2, 3, 5])
def test_methods_draw_the_same_value_of_every_key_they_share(budget):
    """The paired draw: the i-th setting of two methods agrees on every key both tune, so no loss
    can win a comparison by the temperature or learning rate it alone happened to draw."""
    base = {"stage1.lr": 1e-3}
    names = [m for m in methods.REGISTRY if _space_size(m, base) >= budget]
    drawn = {m: fair.method_settings(m, budget, base) for m in names}
    spaces = {m: fair.method_space(m, base) for m in names}
    pairs = 0
    for a, b in itertools.combinations(names, 2):
        shared = [k for k in spaces[a] if spaces[b].get(k) == spaces[a][k]]
        pairs += bool(shared)
        # up to the longest key of either: past it a repeat is replaced (the module docstring)
        paired = min(budget, *(max(len(v) for v in spaces[m].values()) for m in (a, b)))
        for i in range(paired):
            assert {k: drawn[a][i][k] for k in shared} == {k: drawn[b][i][k] for k in shared}, (a, b, i)
    assert pairs >= 10  # the contrastive losses share temperature and lr; CE and LA lr and weight decay
    # nested: FCL's, ACL's and AFCL's i-th settings are CL's i-th plus their own terms
    for i in range(budget):
        for method in ("supcon", "fcl", "acl", "afcl"):
            assert {k: drawn[method][i][k] for k in drawn["cl"][i]} == drawn["cl"][i]
        assert drawn["afcl"][i]["loss.gamma"] == drawn["fcl"][i]["loss.gamma"]
        assert drawn["afcl"][i]["loss.eta"] == drawn["acl"][i]["loss.eta"]
    # and the second setting is not the default again in any key (each key's draw spreads its values)
    assert all(drawn["afcl"][1][k] != drawn["afcl"][0][k] for k in drawn["afcl"][0])


@pytest.mark.parametrize("method", ["probe", "ce", "la", "cl", "fcl"])
def test_the_draw_spreads_each_key_and_grows_into_the_whole_space(method):
    base = {"stage1.lr": 1e-3}
    space = fair.method_space(method, base)
    size = _space_size(method, base)
    previous: list = []
    for budget in range(1, size + 1):
        drawn = fair.method_settings(method, budget, base)
        assert drawn[: len(previous)] == previous  # a larger budget keeps the smaller one's settings
        assert len({json.dumps(s, sort_keys=True) for s in drawn}) == budget
        for key, values in space.items():
            if budget <= len(values):  # Latin: no value of a key repeats before all have come
                assert len({s[key] for s in drawn}) == budget, (key, budget)
        previous = drawn
    every = {json.dumps(s, sort_keys=True) for s in previous}
    assert every == {
        json.dumps(dict(zip(space, combo, strict=True)), sort_keys=True) for combo in itertools.product(*space.values())
    }


def test_end_to_end_baselines_train_as_many_epochs_as_both_stages():
    settings = fair.fair_settings(["ce", "afcl", "probe"], 1, {"stage1.epochs": 7, "stage2.epochs": 5})
    assert settings["ce"][0]["stage1.epochs"] == 12
    assert "stage1.epochs" not in settings["afcl"][0] and "stage1.epochs" not in settings["probe"][0]


@pytest.mark.parametrize("lever", [{"schedule": "joint"}, {"stage1.sampler": "m_per_class"}, {"loss.memory_size": 64}])
def test_a_one_sided_lever_is_refused(lever):
    with pytest.raises(ConfigError, match="applies to the contrastive methods only"):
        fair.fair_settings(["ce", "afcl"], 1, lever)


def test_a_registered_method_inherits_the_rule(monkeypatch):
    monkeypatch.setitem(
        methods.REGISTRY,
        "mine",
        methods.Method(
            "mine",
            "Mine",
            methods.TWO_STAGE,
            "test",
            methods.REGISTRY["afcl"].loss_factory,
            {},
            ("gamma",),
            search_space={"loss.gamma": (1.0, 3.0, 5.0)},
        ),
    )
    settings = fair.fair_settings(["ce", "mine"], 3, {})
    assert len(settings["mine"]) == len(settings["ce"]) == 3


# ---------------------------------------------------------------------------------------------
# Statistics


def test_paired_p_value_is_scipys_and_holm_matches_a_hand_computed_case():
    from scipy import stats

    a, b = [0.61, 0.64, 0.60, 0.66], [0.58, 0.60, 0.61, 0.59]
    assert paired_difference(a, b).p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    # by hand: sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(0.06, 1 * 0.04) = 0.06
    reject, adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    assert reject == [True, False, False, False]
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[3])
    from statsmodels.stats.multitest import multipletests

    p = [0.001, 0.2, 0.012, 0.03, 0.04]
    assert holm(p)[1] == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_minimum_detectable_difference_has_the_stated_power():
    from scipy import stats

    sd, n = 0.02, 10
    mdd = min_detectable_difference(sd, n)
    # power of the two-sided paired t test at that true difference, from the noncentral t by hand
    df, critical = n - 1, stats.t.ppf(0.975, n - 1)
    nc = mdd / sd * np.sqrt(n)
    power = 1 - stats.nct.cdf(critical, df, nc) + stats.nct.cdf(-critical, df, nc)
    assert power == pytest.approx(0.8, abs=1e-4)
    assert min_detectable_difference(sd, 1) != min_detectable_difference(sd, 1)  # NaN: no test with one pair


# ---------------------------------------------------------------------------------------------
# The report: Holm family, budget line, runs.csv round trip


def _fake_runs(root: Path):
    from test_report_claims import write

    gains = {
        "afcl": [0.10, 0.11, 0.12, 0.10],
        "cl": [0.0] * 4,
        "fcl": [0.01, -0.01, 0.0, 0.02],
        "ce": [0.0] * 4,
        "la": [0.02, 0.0, 0.01, 0.03],
    }
    for method, values in gains.items():
        for seed, bonus in enumerate(values):
            write(root, method, method, seed, bonus + 0.001 * seed)


def test_report_holm_adjusts_the_family_and_runs_csv_rebuilds_it(tmp_path):
    from asymcl.experiments.report import build_report

    _fake_runs(tmp_path / "runs")
    first = build_report(tmp_path / "runs", tmp_path / "report", tsne_points=20, command="x", progress=lambda _: None)
    payload = json.loads(first.json.read_text())
    [numbers] = payload["settings"]
    # UA on the balanced test split, WA on the one cut to the training profile (claims.claim_key)
    keys = ("test.ua", "test_imbalanced.wa")
    family = [numbers["comparisons"][m][k] for m in numbers["comparisons"] for k in keys]
    family += [e[k] for e in numbers["best_vs_baselines"] for k in keys]
    assert payload["family_size"] == len(family) == 2 * (4 + 2)
    reject, adjusted = holm([d["p"] for d in family])
    assert [d["p_holm"] for d in family] == pytest.approx(adjusted)
    assert [d["holm_significant"] for d in family] == reject
    text = first.markdown.read_text()
    assert f"Holm-adjusted at 5% over the report's family of {len(family)} comparisons" in text
    assert "Budget: 1 validation-scored setting(s) per method" in text

    rows = list(csv.DictReader((tmp_path / "report" / "runs.csv").open()))
    assert len(rows) == 20 * 3 and {r["split"] for r in rows} == {"val", "test", "test_imbalanced"}
    assert {r["method"] for r in rows} == {"afcl", "cl", "fcl", "ce", "la"}
    # the numbers of the report, from runs.csv alone
    again = build_report(tmp_path / "report" / "runs.csv", tmp_path / "again", command="x", progress=lambda _: None)
    rebuilt = json.loads(again.json.read_text())
    assert rebuilt["settings"] == payload["settings"] and rebuilt["family_size"] == payload["family_size"]
    assert again.figures == []
    with pytest.raises(DataError, match="not an asymcl runs.csv"):
        (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
        build_report(tmp_path / "bad.csv", tmp_path / "bad", command="x", progress=lambda _: None)


def test_an_unequal_budget_is_named_in_the_report(tmp_path):
    from asymcl.experiments.report import build_report
    from test_report_claims import write

    for seed in range(2):
        write(tmp_path, "ce", "ce", seed, 0.0)
        for eta in (10.0, 50.0):
            run = write(tmp_path, f"afcl_e{eta:g}", "afcl", seed, 0.01)
            config = (run / "config.yaml").read_text().replace("eta: 50.0", f"eta: {eta}")
            (run / "config.yaml").write_text(config)
    result = build_report(tmp_path, tmp_path / "report", command="x", progress=lambda _: None)
    assert "Unequal budgets: validation-scored settings per row were CE 1, AFCL 2" in result.markdown.read_text()


# ---------------------------------------------------------------------------------------------
# Balanced validation


def test_val_per_class_holds_out_a_balanced_set_before_the_profile(tmp_path):
    from asymcl.data import DataSpec, build_splits
    from data_fixtures import make_fashion_mnist

    root = make_fashion_mnist(tmp_path / "fm", train_per_class=40, test_per_class=10)
    splits = build_splits(DataSpec(dataset="fashion-mnist", root=root, imbalance="exp:10", val_per_class=5, seed=3))
    counts = splits.counts()
    assert set(counts["val"].values()) == {5}
    train = list(counts["train"].values())
    assert train[0] / train[-1] == pytest.approx(10, rel=0.2)  # the profile on what is left
    ids = set(splits["val"].ids) & set(splits["train"].ids)
    assert not ids  # no image on both sides
    with pytest.raises(DataError, match="too few to hold out a balanced validation set of 1000 per class"):
        build_splits(DataSpec(dataset="fashion-mnist", root=root, val_per_class=1000))


def test_val_per_class_keeps_lesions_on_one_side(tmp_path):
    from asymcl.data import DataSpec, build_splits
    from data_fixtures import make_isic

    lesion_of = make_isic(tmp_path / "isic", train_per_class=(8, 10, 6, 6, 6, 6, 6))["lesion_of"]
    splits = build_splits(DataSpec(dataset="isic2018", root=tmp_path / "isic", val_per_class=2, seed=0))
    assert min(splits.counts()["val"].values()) >= 2
    assert any("grouped by lesion" in note for note in splits.notes)
    lesions = {split: {lesion_of[image] for image in splits[split].ids} for split in ("train", "val")}
    assert not lesions["train"] & lesions["val"]


# ---------------------------------------------------------------------------------------------
# The probe


def test_probe_equals_scikit_learn_called_by_hand(tmp_path):
    """The probe's run: its predictions on test equal LogisticRegression(class_weight="balanced")
    fitted by hand on the same encoder's standardised training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from asymcl.models import build_backbone
    from asymcl.training.config import resolve_config
    from asymcl.training.pipeline import build_module, evaluate, run
    from asymcl.training.run_data import RunData

    torch.manual_seed(0)
    weights = tmp_path / "cnn.pt"
    torch.save(build_backbone("small_cnn", 1).state_dict(), weights)
    config = resolve_config(
        {
            "method": "probe",
            "data.dataset": "digits",
            "data.imbalance": "exp:5",
            "model.pretrained": str(weights),
            "probe.c": 0.3,
            "trainer.progress_bar": False,
        }
    )
    metrics = run(config, tmp_path / "run")
    assert metrics["status"] == "complete" and metrics["best"]["probe"]["epoch"] == 0

    data = RunData(config)
    module = build_module("probe", config, data)  # the pretrained encoder, classifier untrained
    train, test = evaluate(module, data, "train"), evaluate(module, data, "test")
    scaler = StandardScaler().fit(train["features"].astype(np.float64))
    by_hand = LogisticRegression(C=0.3, class_weight="balanced", max_iter=2000).fit(
        scaler.transform(train["features"].astype(np.float64)), train["labels"]
    )
    expected = by_hand.predict_proba(scaler.transform(test["features"].astype(np.float64)))
    rows = [r for r in csv.DictReader((tmp_path / "run" / "predictions.csv").open()) if r["split"] == "test"]
    probs = np.array([[float(r[f"prob_{c}"]) for c in metrics["classes"]] for r in rows])
    np.testing.assert_allclose(probs, expected, atol=2e-4)
    assert (probs.argmax(1) == by_hand.predict(scaler.transform(test["features"].astype(np.float64)))).mean() > 0.99
    # it exports like any method: the folded classifier on the same encoder
    assert main(["export", str(tmp_path / "run"), "--format", "torchscript", "--out", str(tmp_path / "model.pt")]) == 0


def test_a_frozen_probe_stores_its_classifier_and_a_reference_to_the_weights(tmp_path):
    from asymcl.models import build_backbone
    from asymcl.training.checkpoints import REFERENCES, _read
    from asymcl.training.pipeline import run

    torch.manual_seed(0)
    weights = tmp_path / "cnn.pt"
    torch.save(build_backbone("small_cnn", 1).state_dict(), weights)
    config = {
        "method": "probe",
        "data.dataset": "digits",
        "model.pretrained": str(weights),
        "model.finetune": "frozen",
        "data.cache_dir": str(tmp_path / "cache"),
        "data.cache_views": 2,
        "trainer.progress_bar": False,
    }
    metrics = run(config, tmp_path / "run")
    raw = _read(tmp_path / "run" / "checkpoints" / "probe" / "best.ckpt")
    assert raw[REFERENCES] and not any(
        k.startswith("encoder.backbone.") and "weight" in k and "bn" not in k for k in raw["state_dict"] if "conv" in k
    )
    # loading puts the referenced weights back, checked against their digest
    from asymcl.training.checkpoints import load_checkpoint

    full = load_checkpoint(tmp_path / "run" / "checkpoints" / "probe" / "best.ckpt")["state_dict"]
    original = torch.load(weights)
    for key, tensor in original.items():
        torch.testing.assert_close(full[f"encoder.backbone.{key}"], tensor)
    assert metrics["final"]["test"]["ua"] > 0.5


def test_folded_weights_binary_gives_the_same_probabilities():
    from sklearn.linear_model import LogisticRegression

    from asymcl.training.probe import folded_weights

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)) * [1, 5, 0.1, 2] + [0, 3, -1, 0]
    y = (x[:, 0] + 0.2 * x[:, 1] > 0.5).astype(int)
    mean, scale = x.mean(0), x.std(0)
    clf = LogisticRegression().fit((x - mean) / scale, y)
    weight, bias = folded_weights(clf.coef_, clf.intercept_, mean, scale, clf.classes_, 2)
    logits = x @ weight.T + bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs, clf.predict_proba((x - mean) / scale), atol=1e-10)
    with pytest.raises(DataError, match="every class needs training images"):
        folded_weights(clf.coef_, clf.intercept_, mean, scale, clf.classes_, 3)


# ---------------------------------------------------------------------------------------------
# asymcl compare


@pytest.fixture()
def folder(tmp_path):
    return make_class_folder(tmp_path / "images", {"cat": 24, "dog": 10, "fox": 8})


def _compare_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "compare",
        "--set",
        "data.dataset=folder",
        "--set",
        f"data.root={folder}",
        "--set",
        "data.image_size=12",
        "--set",
        "stage1.epochs=1",
        "--set",
        "stage2.epochs=1",
        "--methods",
        "la,afcl",
        "--settings",
        "2",
        "--seeds",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def test_compare_on_a_folder_end_to_end_and_resumes(folder, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(_compare_args(folder, out, "--dry-run")) == 0
    listing = capsys.readouterr().out
    assert "# 8 runs (2 methods x 2 settings x 2 seeds; 8 to run): 3 classes" in listing
    assert not out.exists()  # a dry run writes nothing
    assert main(_compare_args(folder, out, "--budget", "1h")) == 0
    report = (out / "report" / "report.md").read_text()
    assert "Budget: 2 validation-scored setting(s) per method, the same for every row" in report
    assert "| AFCL |" in report and "| LA |" in report and "Holm-adjusted" in report
    assert "Validation images per class" in report
    rows = list(csv.DictReader((out / "report" / "runs.csv").open()))
    assert len({r["run"] for r in rows}) == 8
    la = [json.loads(r["config"]) for r in rows if r["method"] == "la"]
    assert {c["stage1.epochs"] for c in la} == {2}  # as many epochs as the two stages together
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    assert main(_compare_args(folder, out, "--budget", "1h")) == 0  # resumes: nothing left to train
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")} == before and len(before) == 8


def test_compare_refuses_bad_input_before_training(folder, tmp_path, capsys):
    one = make_class_folder(tmp_path / "one", {"cat": 10})
    (tmp_path / "empty").mkdir()
    cases = [
        (["compare", "--set", "data.dataset=folder", "--set", f"data.root={one}"], "a comparison needs at least two"),
        (
            ["compare", "--set", "data.dataset=folder", "--set", f"data.root={tmp_path / 'empty'}"],
            "no class sub-folders",
        ),
        (_compare_args(folder, tmp_path / "o1", "--budget", "1s"), "too small for one run per method"),
        (_compare_args(folder, tmp_path / "o2", "--budget", "20s", "--seeds", "9"), "pass --yes to run it anyway"),
        (_compare_args(folder, tmp_path / "o3", "--budget", "soon"), "give a duration such as 30m"),
        (_compare_args(folder, tmp_path / "o4", "--set", "method=ce"), "use --methods and --seeds"),
        (_compare_args(folder, tmp_path / "o5", "--set", "schedule=joint"), "applies to the contrastive methods only"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))
    from asymcl.experiments.compare import _check_splits

    with pytest.raises(DataError, match="validation split has no image of fox"):
        _check_splits({"train": {"cat": 5, "fox": 2}, "val": {"cat": 2, "fox": 0}}, "x")


def test_parse_duration():
    from asymcl.experiments.compare import parse_duration

    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("45") == 2700 and parse_duration(10) == 600


def test_cache_seed_null_gives_each_run_seed_its_own_views():
    from asymcl.training.config import resolve_config
    from asymcl.training.encoder import views_seed

    assert views_seed(resolve_config({"seed": 3, "data.cache_seed": None})) == 3
    assert views_seed(resolve_config({"seed": 3})) == 0  # the default: one draw shared by a sweep's seeds


def test_the_report_says_when_seeds_share_one_draw_of_views(tmp_path):
    from asymcl.experiments.report import build_report
    from test_report_claims import write

    for seed in range(2):
        for method in ("ce", "afcl"):
            write(tmp_path, method, method, seed, 0.01 if method == "afcl" else 0.0, **{"model.finetune": "frozen"})
    result = build_report(tmp_path, tmp_path / "report", command="x", progress=lambda _: None)
    assert "Every seed trained on one draw of cached augmented views (data.cache_seed=0)" in result.markdown.read_text()


def test_compare_names_its_default_folder_after_the_data():
    from asymcl.experiments.compare import default_out
    from asymcl.training.config import SCHEMA

    assert default_out(["data.root=/x/my_lesions.csv"], "quick").name == "compare-my_lesions-quick"
    assert default_out({"data.dataset": "fashion-mnist"}, "pretrained").name == "compare-fashion-mnist-pretrained"
    assert default_out([], "quick").name == f"compare-{SCHEMA['data.dataset'][0]}-quick"  # the config's default

"""``asymcl levers --preset``: the ISIC 2018 ablation stays exactly what it was (a run of it is in
progress: its run folders, sweep files and disk plan must not move), and the same ablation on
``reproduce fmnist-lt --profile pretrained``'s recipe."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import yaml

from asymcl.experiments import levers, levers_disk, parallel
from asymcl.experiments.claim_presets import LEAN_OUTPUTS
from asymcl.experiments.levers import BASE, COMBINED, arm, lever_specs
from asymcl.experiments.preset_names import LEVERS_PRESETS
from asymcl.experiments.reproduce import PRESET_METHODS, preset_spec
from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points
from asymcl.training.config import flatten
from data_fixtures import make_fashion_mnist, make_isic
from levers_fakes import install_fake_levers

# Computed on the code before `--preset` existed: the sha256 of every arm's sweep file as
# `asymcl levers` writes it (yaml, keys in order) with the data folder written DATA, in the order the
# arms run; the number of runs and the sha256 of their sorted names; the sha256 of the dry run's
# output (every arm's line with its disk estimate, its sweep file, the pruned arm, the total; the
# data and out folders written DATA and OUT) and of the plan it returns (runs and disk bytes per
# arm). A change here renames, retrains or re-plans runs of the ablation in progress.
# tta-dihedral was added later (the tta lever's second value), then the three -lr0.1 arms (the
# finetune lever's slow-block values), then the three -bn-frozen arms (its frozen-statistics
# values): each is pinned from its own commit, the runs before each addition are still the old
# code's, and the dry run differs from the one before only by the added arms' lines and the total.
ISIC_ARM_PINS = {
    "base": "6b431dfb326492a423009aa6522ac99d2352e09443946616336ba781af57be64",
    "tta": "708934d6aab3d40d68c409f4cd6745f78f134346cbb174b3772aa353bd4f1bb3",
    "tta-dihedral": "fd385932a40b5f0350675c9486cba81429371850792fedb44b19a12157b6152a",
    "layers": "97dc0b7a9285450a4491f096ce1b78d4c79db7acd5fd5fb7d4484a4584bf90b1",
    "lite0-224": "3401a570e7f8dff115b812e87ac4472139e9c757cee14c901e2be46bdf903418",
    "last1": "658ab8d6c8b9a1f7f0687753a7acf07c6271fb56aa69f6cb152aa957151fc5dc",
    "last2": "1b275bc41ca1e487d1456fa6a090eb19905c029b7b229ca01ba6e64c2cd13f09",
    "last3": "c82dad4ecf7f99d3ba1c865cc90cf9e35fded393dd7f584aacedda6968fef368",
    "last1-lr0.1": "aab30e20c9d221c629a8676800d4045950e5afaa154d1634af0e0a6b081bde8a",
    "last2-lr0.1": "41b52956acc8771ec16621857d434d1ab2d0600a2be7394afb32e7fa1fc4a73e",
    "last3-lr0.1": "1316730fc01403db1866ce05a2d8b830423c3efa53fcdd1b0060f4bcbcab7d01",
    "last1-bn-frozen": "98b2cc24c2d34d37e0f29c1581c5024817af78e857c12f1f47ed5a05c982dfce",
    "last2-bn-frozen": "970f9742cf72f6a2f8e184e365b59dc5bbb8b08f73412ffa3350626985cb761d",
    "last3-bn-frozen": "3daff44fa2f4f2b763ada3cf6368550d70dff3cab3f86f9242cf849114cbdf47",
    "lite0-260": "82b2d484ac81aa34ae41abdcdbb9ae30b6f2c1316ed09c6ee1f2438bbba63ecf",
    "lite2-224": "8e5b09b85027ea5a443dd5760d326a11fe1969ed1eeb9d49b3af1ea4a4bd8dfe",
    "lite0-300": "e286dba8eb8950d4f1b0c2ffb77ffe0683f1d7548c71e61b56a93bc341e93083",
    "lite2-lite0-224": "d56891a26b2f214667971b0718af14a79ecfccdd9893eabb71f5c64a5ea34db6",
    "lite2-260": "63f87ef386270a75bce0d7567a4b5067e0eb5a69d04d3b52f6dbb5302ef12a54",
    "lite2-300": "3b26caf1484dd6a87f79dcea716cb0580bde8ca67c13d2f2d01d5fa7a688f43b",
}
ISIC_RUN_PINS = (312, "a1b0b12925f55ffbd0a9788ed4b0d5d4bcd77283f808fa6041c0fcdf6108b9ed")  # without tta-dihedral
ISIC_DIHEDRAL_RUN_PINS = (336, "8aa68dd6f1b6f149dcfa5aa9d128191cd550d136ed688d8e0320725e5541b345")
ISIC_SLOW_RUN_PINS = (408, "b48562513784731efb9762b80737bd6cf89c419be3f87b6686db1f82df2115e1")
ISIC_ALL_RUN_PINS = (480, "0ea08ac0784bcee1e48f54e1498b961ec60a20af4367a257d13883bf00806da0")
ISIC_DRY_RUN_PINS = (  # with tta-dihedral, the -lr0.1 and the -bn-frozen arms
    "16aa2f25955e0e2dab3ac4b0068f4fa8031fdd6e0f69e363335956b47d549280",
    "3ec8d5238929b2c1eed311a93bd1f7d4698f3f78396d53d638049ed63191cecf",
)
SLOW_ARMS = ("last1-lr0.1", "last2-lr0.1", "last3-lr0.1")
FROZEN_BN_ARMS = ("last1-bn-frozen", "last2-bn-frozen", "last3-bn-frozen")


@pytest.fixture
def isic(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCL_CACHE_DIR", str(tmp_path / "cache"))  # never the user's cache
    root = tmp_path / "isic"
    make_isic(root, train_per_class=(8, 12, 6, 6, 8, 6, 6))  # as tests/test_isic_levers.py's
    return root


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_isic_ablation_is_unchanged(isic):
    specs = lever_specs(isic)
    assert list(specs) == list(ISIC_ARM_PINS)
    for name, raw in specs.items():
        assert _digest(yaml.safe_dump(raw, sort_keys=False).replace(str(isic), "DATA")) == ISIC_ARM_PINS[name], name
    names = {a: sorted(p.name for p in expand(parse_spec(copy.deepcopy(raw)))) for a, raw in specs.items()}
    added = ("tta-dihedral", *SLOW_ARMS, *FROZEN_BN_ARMS)
    old = sorted(f"{a}/{n}" for a, runs in names.items() if a not in added for n in runs)
    dihedral = sorted(f"{a}/{n}" for a, runs in names.items() if a not in added[1:] for n in runs)
    slow = sorted(f"{a}/{n}" for a, runs in names.items() if a not in FROZEN_BN_ARMS for n in runs)
    every = sorted(f"{a}/{n}" for a, runs in names.items() for n in runs)
    assert (len(old), _digest("\n".join(old))) == ISIC_RUN_PINS
    assert (len(dihedral), _digest("\n".join(dihedral))) == ISIC_DIHEDRAL_RUN_PINS
    assert (len(slow), _digest("\n".join(slow))) == ISIC_SLOW_RUN_PINS
    assert (len(every), _digest("\n".join(every))) == ISIC_ALL_RUN_PINS


def test_the_isic_dry_run_and_its_disk_plan_are_unchanged(isic, tmp_path, capsys):
    from asymcl.experiments.levers_run import run_levers

    out = tmp_path / "out"
    plan = run_levers(isic, out, dry_run=True)
    printed = capsys.readouterr().out.replace(str(isic), "DATA").replace(str(out), "OUT")
    assert (_digest(printed), _digest(json.dumps(plan, sort_keys=True))) == ISIC_DRY_RUN_PINS, printed


def test_the_presets_are_the_names_the_command_offers():
    from asymcl.cli import build_parser

    parser = build_parser()
    options = {a.dest: a for a in parser._subparsers._group_actions[0].choices["levers"]._actions}
    assert options["preset"].choices is LEVERS_PRESETS and options["preset"].default == "isic2018"
    assert tuple(levers.PRESETS) == LEVERS_PRESETS and levers.DEFAULT_PRESET == "isic2018"
    assert levers.PRESETS["isic2018"].arms is levers.ARMS  # the ISIC arms under their old name
    # tta and layers are one definition, the same arm in both presets
    assert arm("tta", "fmnist-lt") is arm("tta") and arm("layers", "fmnist-lt") is arm("layers")


# -- Fashion-MNIST-LT ----------------------------------------------------------------------------------


@pytest.fixture
def fmnist(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCL_CACHE_DIR", str(tmp_path / "cache"))  # never the user's cache
    # 210 per class: the preset's 200 validation images per class, and 10 for exp:100 (10 ... 1)
    return make_fashion_mnist(tmp_path / "fm", train_per_class=210, test_per_class=6)


FMNIST = "fmnist-lt"
FMNIST_ARMS = (
    "base",
    "tta",
    "tta-hflip",
    "layers",
    "last1",
    "last2",
    "last3",
    "last1-lr0.1",
    "last2-lr0.1",
    "last3-lr0.1",
    "last1-bn-frozen",
    "last2-bn-frozen",
    "last3-bn-frozen",
)


def _configs(raw):
    spec = parse_spec(copy.deepcopy(raw))
    return {name: flatten(config) for name, config in resolve_points(spec, expand(spec), default_resolver()).items()}


def test_the_fmnist_arms_change_only_their_lever_keys_and_every_method_has_the_same_budget(fmnist):
    specs = lever_specs(fmnist, preset=FMNIST)
    assert list(specs) == list(FMNIST_ARMS)  # no size or encoder arms
    assert not levers.PRESETS[FMNIST].pruned
    preset = preset_spec(FMNIST, fmnist, "pretrained", budget=1)
    assert specs[BASE]["base"] == {**preset["base"], **LEAN_OUTPUTS}  # reproduce's recipe, as it is
    assert specs[BASE]["base"]["data.cache_seed"] is None  # each seed its own views
    configs = {name: _configs(raw) for name, raw in specs.items()}
    for spec in levers.PRESETS[FMNIST].arms:
        raw = specs[spec.name]
        assert tuple(raw["settings"]) == PRESET_METHODS["pretrained"], spec.name
        assert raw["settings"] == specs[BASE]["settings"] and raw["grid"] == {"seed": [0, 1, 2]}
        assert all(len(settings) == 1 for settings in raw["settings"].values())
        assert len(configs[spec.name]) == 8 * 3
        if spec.reference is None:
            continue
        assert spec.reference == BASE  # the base is one Lite0 already: last:K needs no reference arm
        mine, theirs = configs[spec.name], configs[spec.reference]
        assert set(mine) == set(theirs)
        for run, config in mine.items():
            changed = {key for key in config if config[key] != theirs[run].get(key)}
            assert changed == set(spec.keys), (spec.name, run)
    assert arm("last2", FMNIST).keys == {"model.finetune": "last:2"}
    assert arm("last2-lr0.1", FMNIST).keys == {"model.finetune": "last:2", "model.finetune_lr_scale": 0.1}
    assert arm("last3-bn-frozen", FMNIST).keys == {"model.finetune": "last:3", "model.finetune_bn": "frozen"}
    assert arm("last1-bn-frozen").reference == "lite0-224" and arm("last1-bn-frozen").lever == "finetune"


def test_the_fmnist_layer_taps_are_lite0_stage_ends_at_128_px(fmnist):
    from asymcl.training.config import resolve_config

    specs = lever_specs(fmnist, ["ce"], preset=FMNIST)
    layers = resolve_config({**specs["layers"]["base"], "method": "ce", "seed": 0})
    # block10: 112 channels (stride 16), block14: 192 (stride 32), head: 1,280
    assert levers_disk.cache_shape(layers, (1, 28, 28)) == (112 + 192 + 1280,)
    last1 = resolve_config({**specs["last1"]["base"], "method": "ce", "seed": 0})
    assert levers_disk.cache_shape(last1, (1, 28, 28)) == (320, 4, 4)  # block15's map at 128 px


def test_each_fmnist_seed_extracts_its_own_views(fmnist, isic, monkeypatch):
    from asymcl.training import pipeline
    from asymcl.training.config import resolve_config
    from asymcl.training.encoder import views_seed

    built = []
    monkeypatch.setattr(pipeline, "prepare_feature_caches", lambda config: built.append(config))
    for data, preset, draws in ((fmnist, FMNIST, {0, 1, 2}), (isic, "isic2018", {0})):
        built.clear()
        raw = lever_specs(data, ["ce", "afcl"], preset=preset)["base"]
        spec = parse_spec(copy.deepcopy(raw))
        assert parallel.warm_feature_caches(resolve_points(spec, expand(spec), default_resolver()), print) == 3
        assert sorted(config["seed"] for config in built) == [0, 1, 2]  # one build per seed's split
        assert {views_seed(resolve_config(config)) for config in built} == draws


def test_the_fmnist_disk_estimate_counts_each_seeds_entries(fmnist):
    from asymcl.data.cache_store import estimate_bytes

    specs = lever_specs(fmnist, ["ce"], preset=FMNIST)
    n_train, n_eval = levers_disk.image_counts(specs[BASE]["base"], "ce")
    # each seed's own entries: 26 training images (exp:100 on the 10 per class left: 10, 5, 3, 2, 1 x 6),
    # 2,000 validation and 60 test images (test_imbalanced is a subset of them; val and test ids both
    # count from 0, in their own IDX files)
    assert (n_train, n_eval) == (3 * 26, 3 * (2000 + 60))
    disk = levers_disk.disk_estimates({name: specs[name] for name in ("base", "tta")})
    assert disk["base"][0] == estimate_bytes((1280,), n_train, 4) + estimate_bytes((1280,), n_eval, 0)
    assert disk["tta"][1] == estimate_bytes((1280,), n_eval, 4)


# What the fake runner gives each fmnist lever on validation, per seed: tta and last2 win on every
# seed, the multi-layer features lose, the mirror view, last1, last3, the slow-block and frozen-statistics arms move
# both ways.
FM_WINS = {"tta": (0.02, 0.022, 0.024), "last:2": (0.03, 0.031, 0.032), "layers": (-0.01, -0.012, -0.014)}
NOISE = (0.01, -0.01, 0.004)


def _fm_effect(config):
    model, seed = config["model"], config["seed"]
    effect = 0.0
    if config["eval"]["tta_augment"] == "dihedral":
        effect += NOISE[seed]
    elif config["eval"]["tta_views"]:
        effect += FM_WINS["tta"][seed]
    if model["feature_layers"]:
        effect += FM_WINS["layers"][seed]
    if model["finetune"] == "last:2" and model["finetune_lr_scale"] == 1.0 and model["finetune_bn"] == "train":
        effect += FM_WINS["last:2"][seed]
    elif model["finetune"] != "frozen":
        effect += NOISE[seed]
    return effect


def test_a_whole_fmnist_ablation_keeps_the_winners_and_runs_them_together(fmnist, monkeypatch, tmp_path):
    from asymcl.experiments.levers_run import run_levers

    trained, extracted = install_fake_levers(monkeypatch, _fm_effect)
    out = tmp_path / "levers"
    result = run_levers(fmnist, out, preset=FMNIST, methods=["ce", "afcl"], progress=lambda line: None)
    assert result["failed"] == 0
    assert len(trained) == (13 + 1) * 2 * 3 and trained[-6:] == [COMBINED] * 6
    assert extracted == [f"levers {name}" for name in (*FMNIST_ARMS, COMBINED)]
    chosen = json.loads((out / "levers" / "levers.json").read_text())
    assert chosen["preset"] == FMNIST and chosen["dataset"] == "Fashion-MNIST-LT"
    assert chosen["chosen"] == ["last2", "tta"] and chosen["recipe_arm"] == COMBINED
    assert chosen["combined_overrides"] == {"model.finetune": "last:2", "eval.tta_views": 4}
    assert chosen["test_wa_split"] == "test_imbalanced"
    sweep_file = yaml.safe_load((out / COMBINED / "sweep.yaml").read_text())
    assert sweep_file["base"]["data.imbalance"] == "exp:100" and sweep_file["base"]["model.finetune"] == "last:2"
    rows = {row["arm"]: row for row in _csv(out / "levers" / "levers.csv")}
    assert [rows[n]["kept"] for n in FMNIST_ARMS[1:]] == [
        "yes",
        "no",
        "no",
        "no",
        "yes",
        "no",
        "no",
        "no",
        "no",
        "no",
        "no",
        "no",
    ]
    assert rows["last2"]["reference"] == BASE and float(rows["last2"]["gain"]) == pytest.approx(0.031)
    assert float(rows[COMBINED]["val_ua"]) == pytest.approx(0.61 + 0.022 + 0.031)
    assert float(rows[COMBINED]["test_wa"]) == pytest.approx(0.61 + 0.022 + 0.031 + 0.2)  # on test_imbalanced
    assert rows[COMBINED]["test_use"] == "the recipe's result"
    text = (out / "levers" / "levers.md").read_text()
    assert text.startswith("# Fashion-MNIST-LT lever ablation (issue 23)\n")
    assert "`asymcl levers --preset fmnist-lt`" in text and "its own draw of cached views" in text
    assert "Test WA is on `test_imbalanced`" in text and "| encoder |" not in text


def _csv(path):
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# -- the command ---------------------------------------------------------------------------------------


def test_the_fmnist_dry_run_prints_every_arm_its_runs_and_disk(fmnist, tmp_path, capsys):
    from asymcl.cli import main

    out = tmp_path / "l"
    assert main(["levers", "--preset", FMNIST, "--data", str(fmnist), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for name in FMNIST_ARMS:
        line = next(line for line in printed.splitlines() if line.startswith(f"# arm {name} ("))
        assert f": 24 runs into {out / name}; feature caches about " in line and " MB (" in line
        assert f"name: levers-{name}\n" in printed
    assert "last1 (finetune; against base;" in printed and "pruned" not in printed
    assert f"# 312 runs in 13 arms, then {COMBINED}: 24 runs" in printed and "feature caches about" in printed
    assert not out.exists() and not (tmp_path / "cache").exists()  # a dry run writes nothing


def test_the_default_out_folder_is_the_presets(fmnist, tmp_path, monkeypatch, capsys):
    from asymcl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["levers", "--preset", FMNIST, "--data", str(fmnist), "--arms", "tta", "--dry-run"]) == 0
    assert "runs into runs/levers-fmnist-lt/tta;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("preset", "folder", "expected"),
    [
        (FMNIST, "isic", "--preset fmnist-lt reads the Fashion-MNIST folder with the four official IDX files; "),
        ("isic2018", "fm", "--preset isic2018 reads the ISIC 2018 Task 3 folder in its official layout"),
    ],
)
def test_the_other_datasets_folder_is_one_line_naming_the_expected_one(fmnist, isic, capsys, preset, folder, expected):
    from asymcl.cli import main

    data = {"isic": isic, "fm": fmnist}[folder]
    assert main(["levers", "--preset", preset, "--data", str(data), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--data {data}: {expected}" in err and "Traceback" not in err


def test_an_arm_the_preset_does_not_have_is_one_line_listing_its_arms(fmnist, capsys):
    from asymcl.cli import main

    assert main(["levers", "--preset", FMNIST, "--data", str(fmnist), "--arms", "lite2-260", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "unknown arm 'lite2-260' for --preset fmnist-lt (allowed: base, tta, tta-hflip, layers, last1, last2, last3, "
        "last1-lr0.1, last2-lr0.1, last3-lr0.1, last1-bn-frozen, last2-bn-frozen, last3-bn-frozen, combined)"
    )
    assert err.count("\n") == 0

"""The claim grid's presets (issue 22): the Fashion-MNIST grids stay exactly what they are (runs
already trained keep their config and folder name)."""

from __future__ import annotations

import copy
import hashlib

import pytest
import yaml

from asymcl.experiments.claim_presets import claim_specs
from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

# The sha256 of every arm's sweep file as `claim-grid` writes it (yaml, keys in order) with the data
# folder written DATA, and of the sorted run names. A change here renames or retrains runs that a
# grid in progress already has. Last changed on purpose by the paired draw of settings
# (asymcl.experiments.fair): every method's default setting and the authors' arm kept their names
# (1,300 of the pretrained grid's 2,200 runs, 520 of the quick grid's 880); the second settings are new.
FMNIST_PINS = {
    "pretrained": (
        "077ca4f3b20b395e7c8bb1e8c0e739119ee68bf03752081a22012108cd1ba307",
        2200,
        "ff39678987480b08fbb957de8d7b4211f0268c163a1afbeb55f38cfb1a05dce1",
    ),
    "quick": (
        "e0e5fedcbecb54ec5c9ab0e1bf932fdf8f99d447c53d9a1dc87e2da1483c7e81",
        880,
        "103625fc8d18a50684a03b289907d16001fb38c8a33627d44320b08cb30a7c9b",
    ),
}


@pytest.mark.parametrize("profile", sorted(FMNIST_PINS))
def test_the_fashion_mnist_grids_are_unchanged(tmp_path, profile):
    data = tmp_path / "fm"
    data.mkdir()
    specs = claim_specs(data, profile)
    text = "".join(f"# {arm}\n" + yaml.safe_dump(raw, sort_keys=False) for arm, raw in specs.items())
    names = sorted(f"{arm}/{p.name}" for arm, raw in specs.items() for p in expand(parse_spec(copy.deepcopy(raw))))
    spec_digest, count, names_digest = FMNIST_PINS[profile]
    assert hashlib.sha256(text.replace(str(data), "DATA").encode()).hexdigest() == spec_digest
    assert len(names) == count
    assert hashlib.sha256("\n".join(names).encode()).hexdigest() == names_digest


def test_a_few_fashion_mnist_runs_by_name(tmp_path):
    """Readable pins beside the digests: a run's folder name and what it trains on."""
    data = tmp_path / "fm"
    data.mkdir()
    specs = claim_specs(data, "pretrained")
    expected = {
        "authors": "exp100n1000__acl_e300_t0.1_stage1.batch_size=32_stage1.lr=0.001_s0",
        "eta-scaled-b32": "exp10n1000__fcl_g0.5_t0.07_stage1.lr=0.0003333_s0",
        "eta-scaled-b512": "exp200n1000__fcl_g1_t0.1_stage1.lr=0.001_s0",
        "tuned": "exp1n1000__afcl_g0.5_e50_t0.07_stage1.batch_size=512_stage1.lr=0.0003333_s0",
    }
    for arm, name in expected.items():
        spec = parse_spec(copy.deepcopy(specs[arm]))
        config = resolve_points(spec, expand(spec), default_resolver())[name]
        assert config["data"]["dataset"] == "fashion-mnist" and config["data"]["root"] == str(data)
        assert config["data"]["val_per_class"] == 200 and config["data"]["cache_seed"] is None
        assert config["data"]["imbalance"] == f"exp:{name.split('n1000')[0][3:]}:1000"


# A fake ISIC 2018 folder: the ground truth alone is what the grid reads (its natural ratio).
FAKE_ISIC = {"MEL": 6, "NV": 31, "BCC": 4, "AKIEC": 3, "BKL": 5, "DF": 3, "VASC": 3}  # 31 / 3 = 10.33...


@pytest.fixture
def isic(tmp_path):
    from asymcl.data.isic import ISIC_CLASSES

    root = tmp_path / "isic"
    (root / "ISIC2018_Task3_Training_Input").mkdir(parents=True)
    lines = ["image," + ",".join(ISIC_CLASSES)]
    for name, n in FAKE_ISIC.items():
        row = ",".join("1.0" if c == name else "0.0" for c in ISIC_CLASSES)
        lines += [f"ISIC_{name}_{i:03d},{row}" for i in range(n)]
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def test_the_isic_grid(isic):
    from asymcl.data.imbalance import parse_imbalance
    from asymcl.data.isic import training_counts
    from asymcl.experiments.claim_grid import imbalance_ratio

    specs = claim_specs(isic, "isic-pretrained")
    assert set(specs) == {"tuned", "authors", "eta-scaled-b32", "eta-scaled-b512"}
    tuned = specs["tuned"]
    # cap:1..20, and the natural pool at its own ratio 31 / 3 rounded up (not 1.0, not an arbitrary cap)
    assert tuned["grid"]["data.imbalance"] == ["cap:1", "cap:5", "cap:10", "cap:20", "cap:10.34"]
    counts = training_counts(isic)
    assert list(parse_imbalance("cap:10.34").counts(counts)) == counts  # the whole pool
    assert [imbalance_ratio(p) for p in tuned["grid"]["data.imbalance"]] == [1, 5, 10, 20, 10.34]
    assert tuned["grid"]["stage1.batch_size"] == [32, 512] and tuned["grid"]["seed"] == list(range(10))
    base = tuned["base"]
    # reproduce isic2018 --profile pretrained's data and encoder; its validation (a lesion-grouped
    # share of the pool, no val_per_class) and its one shared draw of views (no data.cache_seed: null)
    assert base["data.dataset"] == "isic2018" and base["data.root"] == str(isic)
    assert base["data.image_size"] == 260 and base["data.augment"] == "dermoscopy_lite"
    assert base["model.backbone"] == "efficientnet_lite2+efficientnet_lite0"
    assert "data.val_per_class" not in base and "data.cache_seed" not in base
    assert {len(v) for v in tuned["settings"].values()} == {2}
    afcl = specs["authors"]["settings"]["afcl"][0]
    assert afcl["loss.gamma"] == 10.0 and afcl["loss.eta"] == 300.0
    runs = {arm: len(expand(parse_spec(copy.deepcopy(raw)))) for arm, raw in specs.items()}
    assert runs == {"tuned": 1000, "authors": 400, "eta-scaled-b32": 400, "eta-scaled-b512": 400}


def test_the_isic_grids_copies_are_exactly_cl_and_fcl(isic):
    from asymcl.experiments.claim_presets import duplicate_runs

    specs = claim_specs(isic, "isic-pretrained", seeds=2, rhos=(1, "natural"))
    duplicates = duplicate_runs(specs)
    configs = {
        arm: resolve_points(spec, expand(spec), default_resolver())
        for arm, spec in ((arm, parse_spec(copy.deepcopy(raw))) for arm, raw in specs.items())
    }
    methods = {(arm, configs[arm][name]["method"]) for arm, name in duplicates}
    assert methods == {("authors", "cl")} | {(f"eta-scaled-b{b}", m) for b in (32, 512) for m in ("cl", "fcl")}
    cells = 2 * 2  # rhos x seeds
    assert len(duplicates) == cells * 2 + 2 * (2 * cells * 2)  # authors: CL at 2 batches; 2 settings each
    assert all(source_arm == "tuned" for source_arm, _ in duplicates.values())


def test_the_isic_grid_dry_run_through_the_cli(isic, tmp_path, capsys):
    from asymcl.cli import main

    args = ["claim-grid", "--data", str(isic), "--profile", "isic-pretrained", "--seeds", "2", "--dry-run"]
    assert main([*args, "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "name: claim-isic-pretrained-tuned" in out and "- cap:10.34" in out
    # 5 rhos x 2 seeds: tuned 5 methods x 2 settings x 2 batches, authors 4 x 2, eta-scaled 4 x 2 each
    assert "# 440 runs in 4 arms, 340 of them trained" in out
    assert not (tmp_path / "g").exists()


def test_the_claim_grid_names_the_folder_each_dataset_needs(isic, tmp_path):
    from asymcl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"expected the ISIC 2018 Task 3 folder in its official layout"):
        claim_specs(tmp_path / "missing", "isic-pretrained")
    with pytest.raises(
        ConfigError, match=r"--data .*: expected the ISIC 2018 Task 3 folder .*GroundTruth.csv are missing"
    ):
        claim_specs(tmp_path, "isic-pretrained")  # a folder, but not ISIC's
    with pytest.raises(ConfigError, match=r"expected the Fashion-MNIST folder with the four official IDX files"):
        claim_specs(tmp_path / "missing", "pretrained")
    with pytest.raises(ConfigError, match="no natural pool"):
        claim_specs(isic, "pretrained", rhos=(1, "natural"))


def test_natural_ratio_is_rounded_up_so_that_the_cap_keeps_the_pool():
    from asymcl.data.imbalance import parse_imbalance
    from asymcl.experiments.claim_presets import natural_ratio

    full = [1113, 6705, 514, 327, 1099, 115, 142]  # ISIC 2018's full training set: 58.30...
    partial = [491, 4323, 264, 183, 583, 60, 80]  # the shared partial copy: exactly 72.05
    assert natural_ratio(full) == 58.31 and natural_ratio(partial) == 72.05
    for pool in (full, partial):
        assert list(parse_imbalance(f"cap:{natural_ratio(pool):g}").counts(pool)) == pool

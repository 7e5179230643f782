"""``asymcl levers --preset``: the ISIC 2018 ablation stays exactly what it was (a run of it is in
progress: its run folders, sweep files and disk plan must not move), and the same ablation on
``reproduce fmnist-lt --profile pretrained``'s recipe."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import yaml

from asymcl.experiments.levers import lever_specs
from asymcl.experiments.sweep import expand, parse_spec
from data_fixtures import make_isic

# Computed on the code before `--preset` existed: the sha256 of every arm's sweep file as
# `asymcl levers` writes it (yaml, keys in order) with the data folder written DATA, in the order the
# arms run; the number of runs and the sha256 of their sorted names; the sha256 of the dry run's
# output (every arm's line with its disk estimate, its sweep file, the pruned arm, the total; the
# data and out folders written DATA and OUT) and of the plan it returns (runs and disk bytes per
# arm). A change here renames, retrains or re-plans runs of the ablation in progress.
ISIC_ARM_PINS = {
    "base": "6b431dfb326492a423009aa6522ac99d2352e09443946616336ba781af57be64",
    "tta": "708934d6aab3d40d68c409f4cd6745f78f134346cbb174b3772aa353bd4f1bb3",
    "layers": "97dc0b7a9285450a4491f096ce1b78d4c79db7acd5fd5fb7d4484a4584bf90b1",
    "lite0-224": "3401a570e7f8dff115b812e87ac4472139e9c757cee14c901e2be46bdf903418",
    "last1": "658ab8d6c8b9a1f7f0687753a7acf07c6271fb56aa69f6cb152aa957151fc5dc",
    "last2": "1b275bc41ca1e487d1456fa6a090eb19905c029b7b229ca01ba6e64c2cd13f09",
    "last3": "c82dad4ecf7f99d3ba1c865cc90cf9e35fded393dd7f584aacedda6968fef368",
    "lite0-260": "82b2d484ac81aa34ae41abdcdbb9ae30b6f2c1316ed09c6ee1f2438bbba63ecf",
    "lite2-224": "8e5b09b85027ea5a443dd5760d326a11fe1969ed1eeb9d49b3af1ea4a4bd8dfe",
    "lite0-300": "e286dba8eb8950d4f1b0c2ffb77ffe0683f1d7548c71e61b56a93bc341e93083",
    "lite2-lite0-224": "d56891a26b2f214667971b0718af14a79ecfccdd9893eabb71f5c64a5ea34db6",
    "lite2-260": "63f87ef386270a75bce0d7567a4b5067e0eb5a69d04d3b52f6dbb5302ef12a54",
    "lite2-300": "3b26caf1484dd6a87f79dcea716cb0580bde8ca67c13d2f2d01d5fa7a688f43b",
}
ISIC_RUN_PINS = (312, "a1b0b12925f55ffbd0a9788ed4b0d5d4bcd77283f808fa6041c0fcdf6108b9ed")
ISIC_DRY_RUN_PINS = (
    "ce5b4d1e0b86deaa9423a33a47dacfeeffdba98d84e318fa92894aae39dbdb95",
    "5c4ae2128a446610bd3c67f2c82a5f1e9efbf5076325528a9c321071087919ba",
)


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
    names = sorted(f"{a}/{p.name}" for a, raw in specs.items() for p in expand(parse_spec(copy.deepcopy(raw))))
    assert (len(names), _digest("\n".join(names))) == ISIC_RUN_PINS


def test_the_isic_dry_run_and_its_disk_plan_are_unchanged(isic, tmp_path, capsys):
    from asymcl.experiments.levers_run import run_levers

    out = tmp_path / "out"
    plan = run_levers(isic, out, dry_run=True)
    printed = capsys.readouterr().out.replace(str(isic), "DATA").replace(str(out), "OUT")
    assert (_digest(printed), _digest(json.dumps(plan, sort_keys=True))) == ISIC_DRY_RUN_PINS, printed

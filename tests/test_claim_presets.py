"""The claim grid's presets (issue 22): the Fashion-MNIST grids stay exactly what they were (runs
already trained keep their config and folder name)."""

from __future__ import annotations

import copy
import hashlib

import pytest
import yaml

from asymcl.experiments.claim_presets import claim_specs
from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

# Computed on main before the grids were generalised to other datasets: the sha256 of every arm's
# sweep file as `claim-grid` writes it (yaml, keys in order) with the data folder written DATA, and of
# the sorted run names. A change here renames or retrains runs that a grid in progress already has.
FMNIST_PINS = {
    "pretrained": (
        "9de3d911389d3bcce6151d340c5befcfe8aa9afe0a516bae0c71f9d9013401a3",
        2200,
        "3fd0d2c87353f22248714fe8655695d5ee25b7723dab48614e4c0443900a6091",
    ),
    "quick": (
        "78cd079179cb98e2fe0f43f7b7b745998079fc31e673ebaec3b614b01bcee489",
        880,
        "a704ede39bd45c6ca879d87a1c2d1daa32c13e5bced89d1ba5242811396f19a4",
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
        "eta-scaled-b32": "exp10n1000__fcl_g2_t0.1_stage1.lr=0.003_s0",
        "eta-scaled-b512": "exp200n1000__fcl_g1_t0.1_stage1.lr=0.001_s0",
        "tuned": "exp1n1000__afcl_g0.5_e300_t0.3_stage1.batch_size=512_stage1.lr=0.001_s0",
    }
    for arm, name in expected.items():
        spec = parse_spec(copy.deepcopy(specs[arm]))
        config = resolve_points(spec, expand(spec), default_resolver())[name]
        assert config["data"]["dataset"] == "fashion-mnist" and config["data"]["root"] == str(data)
        assert config["data"]["val_per_class"] == 200 and config["data"]["cache_seed"] is None
        assert config["data"]["imbalance"] == f"exp:{name.split('n1000')[0][3:]}:1000"

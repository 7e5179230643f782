"""The report's rows per method and lever, the paper's-claim sentence and the best recipe vs LA,
on constructed run directories (the layout of docs/architecture.md, Layer 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from asymcl.experiments.report import build_report
from asymcl.experiments.runs import load_runs, row_display, row_key
from asymcl.experiments.selection import group_settings, select, setting_numbers
from test_experiments_report import _confusion, _split_metrics, write_run

LOSS = {"supcon": (0.0, 0.0), "cl": (0.0, 0.0), "fcl": (2.0, 0.0), "acl": (0.0, 50.0), "afcl": (2.0, 50.0)}


def write(root, name, method, seed, bonus, **extra):
    gamma, eta = LOSS.get(method, (None, None))
    run = write_run(
        root, f"{name}_s{seed}", method=method, seed=seed, gamma=gamma, eta=eta, test_bonus=bonus, val_bonus=bonus
    )
    config = yaml.safe_load((run / "config.yaml").read_text())
    for key, value in extra.items():
        section, _, field = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[field] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def set_imbalanced_test(run, metrics):
    """Replace the run's test split cut to the training profile (``test_imbalanced``) by ``metrics``."""
    stored = json.loads((run / "metrics.json").read_text())
    stored["final"]["test_imbalanced"] = metrics
    (run / "metrics.json").write_text(json.dumps(stored))


def mirror_balanced_test(run):
    """The imbalanced test split equal to the balanced one, so that all four claim intervals move together."""
    set_imbalanced_test(run, json.loads((run / "metrics.json").read_text())["final"]["test"])


def numbers_for(root):
    [setting] = group_settings(load_runs(root))
    select(setting)
    return setting, setting_numbers(setting)


# AFCL's gain per seed over CL and FCL (both at 0): wins by ~10 points, loses by ~10, or ties
# (+3, -3, 0: the interval contains 0).
CASES = {"wins": [0.10, 0.11, 0.12], "loses": [-0.10, -0.11, -0.12], "ties": [0.03, -0.03, 0.0]}
VERDICTS = {"wins": "held", "loses": "did not hold", "ties": "could not be told apart"}


@pytest.mark.parametrize("case", list(CASES))
def test_paper_claim_sentence(tmp_path, case):
    for seed, gain in enumerate(CASES[case]):
        for method in ("cl", "fcl", "afcl"):
            mirror_balanced_test(write(tmp_path, method, method, seed, gain if method == "afcl" else 0.0))
    _, numbers = numbers_for(tmp_path)
    claim = numbers.paper_claim
    assert claim.verdict == VERDICTS[case], claim.sentence
    assert claim.split == "test"
    assert claim.sentence.startswith(
        "The paper's claim (AFCL > CL and AFCL > FCL, on WA and on UA) on UA on the test (balanced) set and on "
        f"WA on the test (imbalanced) set {VERDICTS[case]}"
    )
    for opponent in ("cl", "fcl"):
        d = numbers.comparisons[opponent].differences["test.ua"]
        assert (d.low > 0) == (case == "wins") and (d.high < 0) == (case == "loses")


def test_the_claims_wa_is_read_on_the_imbalanced_test_split(tmp_path):
    """On the balanced test set WA equals UA; the paper's WA claim is about imbalanced data. AFCL wins
    on the balanced test split on both metrics but loses WA on the split cut to the training profile:
    the claim did not hold, and the family holds the imbalanced split's WA, not the balanced one's."""
    from asymcl.experiments.claims import family_entries

    rng = np.random.default_rng(0)
    for seed in range(3):
        for method in ("cl", "fcl", "afcl"):
            run = write(tmp_path, method, method, seed, 0.11 + 0.01 * seed if method == "afcl" else 0.0)
            head = 0.8 if method == "afcl" else 0.9  # the majority class: most of the imbalanced WA
            set_imbalanced_test(run, _split_metrics(_confusion([head, 0.6], [100, 10], rng)))
    _, numbers = numbers_for(tmp_path)
    claim = numbers.paper_claim
    assert claim.verdict == "did not hold", claim.sentence
    assert "AFCL - CL on WA -9." in claim.sentence and "AFCL - FCL on WA -9." in claim.sentence
    assert "on WA on the test (imbalanced) set" in claim.sentence
    entries = dict(family_entries(numbers))
    assert entries[f"{numbers.label}: AFCL - CL WA"] is numbers.comparisons["cl"].differences["test_imbalanced.wa"]
    assert entries[f"{numbers.label}: AFCL - CL UA"] is numbers.comparisons["cl"].differences["test.ua"]
    assert numbers.comparisons["cl"].differences["test.wa"].mean > 0.05  # the balanced WA, left out
    from asymcl.experiments.claims import adjust_family
    from asymcl.experiments.render import comparison_table

    adjust_family([numbers])
    rows = {(row[0], row[1]): row[5] for row in comparison_table(numbers).rows}
    assert rows[("CL", "test (balanced)")].endswith(", –")  # its UA's Holm p only
    assert rows[("CL", "test (imbalanced)")].startswith("–, ")  # its WA's Holm p only


def test_without_an_imbalanced_test_split_wa_is_read_on_the_main_one():
    from asymcl.experiments.claims import claim_key

    assert claim_key({"test.wa": None, "test.ua": None}, "test", "wa") == "test.wa"
    assert claim_key({"test.wa": None, "test_imbalanced.wa": None}, "test", "wa") == "test_imbalanced.wa"
    assert claim_key({"test.ua": None, "test_imbalanced.ua": None}, "test", "ua") == "test.ua"


def test_paper_claim_without_cl_or_with_one_seed_is_not_tested(tmp_path):
    write(tmp_path, "fcl", "fcl", 0, 0.0)
    write(tmp_path, "afcl", "afcl", 0, 0.1)
    _, numbers = numbers_for(tmp_path)
    assert numbers.paper_claim.verdict == "not tested"
    assert "no CL runs" in numbers.paper_claim.sentence
    write(tmp_path, "cl", "cl", 0, 0.0)
    _, numbers = numbers_for(tmp_path)
    assert "fewer than 2 paired seeds" in numbers.paper_claim.sentence


def test_rows_keep_levers_and_old_logit_adjusted_ce_apart(tmp_path):
    for seed in range(3):
        write(tmp_path, "ce", "ce", seed, 0.0)
        write(tmp_path, "ce_la", "ce", seed, 0.02, **{"stage2.loss": "logit_adjusted"})  # an old LA run
        write(tmp_path, "afcl", "afcl", seed, 0.04, schedule="two_stage")
        write(tmp_path, "afcl_joint", "afcl", seed, 0.08, schedule="joint", **{"joint.weight": 1.0})
        write(tmp_path, "afcl_mpc", "afcl", seed, 0.06, **{"stage1.sampler": "m_per_class"})
        write(tmp_path, "cl", "cl", seed, 0.0)
        write(tmp_path, "fcl", "fcl", seed, 0.0)
    setting, numbers = numbers_for(tmp_path)
    assert list(numbers.table) == ["ce", "la", "cl", "fcl", "afcl", "afcl+joint", "afcl+s1mpc"]
    assert all(len(numbers.table[row].seeds) == 3 for row in numbers.table)
    assert set(numbers.comparisons) == {"ce", "la", "cl", "fcl", "afcl+joint", "afcl+s1mpc"}
    assert row_display("afcl+joint+s1mpc") == "AFCL (joint, S1 m-per-class)"
    assert row_key({"method": "ce", "stage2.loss": "logit_adjusted"}) == "la"
    best = next(e for e in numbers.best_vs_baselines if e.baseline == "la")
    assert best.row == "afcl+joint"  # highest validation UA among the contrastive rows
    la = {r.seed: r.split_metric("test", "ua") for r in setting.chosen["la"].runs}
    joint = {r.seed: r.split_metric("test", "ua") for r in setting.chosen["afcl+joint"].runs}
    assert best.differences["test.ua"].mean == pytest.approx(sum(joint[s] - la[s] for s in la) / 3)
    result = build_report(tmp_path, tmp_path / "report", tsne_points=20, command="x", progress=lambda _: None)
    text = result.markdown.read_text()
    for label in (
        "| LA |",
        "| AFCL (joint) |",
        "| AFCL (S1 m-per-class) |",
        "The paper's claim",
        "Best contrastive recipe on validation UA: AFCL (joint); against LA on test (balanced) UA",
    ):
        assert label in text, label


def test_a_run_written_before_a_key_existed_groups_with_newer_runs(tmp_path):
    # A sweep resumed after an upgrade: seed 0's config.yaml lacks keys added since (here
    # loss.memory_size), seeds 1 and 2 write them at their defaults. One row of three seeds, not
    # two rows; and a key whose old meaning is not its default reads as what the run did.
    from asymcl.training.config import LEGACY_VALUES, SCHEMA

    for seed in range(3):
        extra = {} if seed == 0 else {"loss.memory_size": SCHEMA["loss.memory_size"][0]}
        write(tmp_path, "fcl", "fcl", seed, 0.0, **extra)
    setting, _ = numbers_for(tmp_path)
    [candidate] = setting.candidates["fcl"]
    assert len(candidate.runs) == 3 and candidate.params == {"loss.gamma": 2.0, "loss.temperature": 0.1}
    old = next(run for run in candidate.runs if run.config["seed"] == 0)
    assert old.config["data.cache_precision"] == LEGACY_VALUES["data.cache_precision"] == "fp32"


def test_the_report_leaves_out_runs_of_settings_its_sweep_file_no_longer_gives(tmp_path):
    """After a comparison's settings are drawn anew, the old draw's runs in the folder would give
    CL a second validation-scored setting that AFCL never had."""
    folder = tmp_path / "cmp"
    settings = {"cl": [{"loss.temperature": 0.1}], "afcl": [{"loss.gamma": 2.0, "loss.eta": 50.0}]}
    folder.mkdir()
    (folder / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "cmp", "grid": {"seed": [0, 1, 2]}, "settings": settings})
    )
    for seed in range(3):
        write(folder, "cl", "cl", seed, 0.0)
        write(folder, "afcl", "afcl", seed, 0.05)
        write(folder, "cl_old", "cl", seed, 0.2, **{"loss.temperature": 0.3})
    result = build_report(folder, tmp_path / "report", tsne_points=20, command="x", progress=lambda _: None)
    text = result.markdown.read_text()
    assert "6 finished runs" in text
    assert "3 finished run(s) under cmp have a setting that the folder's sweep.yaml no longer gives" in text
    assert "Budget: 1 validation-scored setting(s) per method, the same for every row" in text

"""``cap:RHO``: a naturally imbalanced pool with its heads subsampled to max/min <= RHO (issue 22's
ISIC rho axis). Counts by hand on ISIC 2018's training pool, properties over random pools, the seeded
exact subset, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcl.data import DataSpec, build_splits, parse_imbalance
from asymcl.data.imbalance import PROFILE_KINDS, PROFILE_SYNTAX
from asymcl.errors import ConfigError, DataError
from data_fixtures import row_ids, write_row_id_npz

# ISIC 2018 Task 3's full training set, largest class first (method.md section 3).
ISIC = [6705, 1113, 1099, 514, 327, 142, 115]


@pytest.mark.parametrize(
    "profile,counts",
    [
        ("cap:10", [1150, 1113, 1099, 514, 327, 142, 115]),  # only NV is over 10 x 115
        ("cap:5", [575, 575, 575, 514, 327, 142, 115]),
        ("cap:1", [115] * 7),
        ("cap:100", ISIC),  # above the pool's own 58.3: the pool itself
        ("cap:58.31", ISIC),  # 6705 / 115 = 58.304..., rounded up: the pool itself
        ("cap:58.3", [6704, *ISIC[1:]]),  # floor(58.3 x 115) = 6704
    ],
)
def test_cap_counts_by_hand(profile, counts):
    assert list(parse_imbalance(profile).counts(ISIC)) == counts


def test_cap_keeps_the_natural_order():
    # ISIC's own column order (MEL, NV, BCC, AKIEC, BKL, DF, VASC): the head is not moved to the front.
    natural = [1113, 6705, 514, 327, 1099, 115, 142]
    assert list(parse_imbalance("cap:10").counts(natural)) == [1113, 1150, 514, 327, 1099, 115, 142]


@settings(max_examples=200, deadline=None)
@given(
    pool=st.lists(st.integers(1, 20_000), min_size=2, max_size=12),
    rho=st.floats(1, 500, allow_nan=False, allow_infinity=False),
)
def test_cap_properties(pool, rho):
    counts = parse_imbalance(f"cap:{rho!r}").counts(pool)
    pool_array = np.asarray(pool)
    assert np.all(counts >= 1) and np.all(counts <= pool_array)
    assert counts.max() <= rho * counts.min() * (1 + 1e-12)
    # The tails keep every image: a class at or under the cap is untouched, the smallest above all.
    assert counts.min() == pool_array.min()
    untouched = pool_array <= np.floor(rho * pool_array.min())
    assert np.array_equal(counts[untouched], pool_array[untouched])
    # The heads are cut to one value, and never below a class that was smaller.
    assert len(set(counts[~untouched].tolist())) <= 1
    assert all(counts[i] <= counts[j] for i in range(len(pool)) for j in range(len(pool)) if pool[i] <= pool[j])
    if rho >= pool_array.max() / pool_array.min():
        assert np.array_equal(counts, pool_array)


@pytest.mark.parametrize(
    "text,message",
    [
        ("cap:0.5", r"ratio 0.5 in 'cap:0.5' must be a finite number >= 1"),
        ("cap:abc", r"ratio 'abc' in 'cap:abc' is not a number"),
        ("cap:inf", "finite"),
        ("cap:10:500", r"cap takes no NMAX .* write cap:10"),
        ("zipf:3", "KIND one of exp, step, binary, cap"),
    ],
)
def test_bad_cap_profiles(text, message):
    with pytest.raises(DataError, match=message):
        parse_imbalance(text)


def test_a_bad_cap_in_a_run_config_is_a_config_error():
    from asymcl.training.config import resolve_config

    with pytest.raises(ConfigError, match=r"data.imbalance.*'cap:abc' is not a number"):
        resolve_config({"data": {"imbalance": "cap:abc"}})
    assert resolve_config({"data": {"imbalance": "cap:10"}}).data.imbalance == "cap:10"


def test_the_grammar_is_declared_once():
    from asymcl.data.spec import DataFields

    help_text = DataFields.__dataclass_fields__["imbalance"].metadata["help"]
    assert PROFILE_SYNTAX in help_text and all(f"{kind}:RHO" in PROFILE_SYNTAX for kind in PROFILE_KINDS)


@pytest.fixture
def natural_npz(tmp_path):
    """5 classes at a natural imbalance: 40, 120, 25, 8, 20 training and 10, 30, 6, 2, 5 test images."""
    train_y = np.repeat(np.arange(5), [40, 120, 25, 8, 20])
    test_y = np.repeat(np.arange(5), [10, 30, 6, 2, 5])
    return write_row_id_npz(tmp_path / "natural.npz", train_y, test_y)


def _ids(dataset):
    return sorted(row_ids(dataset).tolist())


def test_cap_is_a_seeded_exact_subset(natural_npz):
    def splits(seed):
        return build_splits(DataSpec(dataset="npz", root=natural_npz, imbalance="cap:3", seed=seed, val_fraction=0.2))

    first, again, other = splits(0), splits(0), splits(1)
    pool = first.splits["train"].class_counts() + first.splits["val"].class_counts()
    assert list(pool) == [24, 24, 24, 8, 20]  # cap 3 x 8; the two smallest classes keep everything
    # the test set capped the same way, at 3 x its own smallest class (2)
    assert list(first.splits["test_imbalanced"].class_counts()) == [6, 6, 6, 2, 5]
    assert _ids(first.splits["train"]) == _ids(again.splits["train"])
    assert _ids(first.splits["train"]) + _ids(first.splits["val"]) != _ids(other.splits["train"]) + _ids(
        other.splits["val"]
    )
    assert any("imbalance cap:3 on the training pool: 24, 24, 24, 8, 20" in note for note in first.notes)

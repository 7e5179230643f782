"""Imbalance profiles (exact counts), class selection, seeded determinism, the balanced sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymcl.data import ClassBalancedSampler, DataSpec, ImbalanceProfile, build_splits, parse_imbalance
from asymcl.errors import DataError
from data_fixtures import row_ids, write_row_id_npz


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMCL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def balanced_npz(tmp_path):
    """10 classes, 100 training and 30 test images each; each image's pixels hold its row id."""
    rng = np.random.default_rng(0)
    train_y = rng.permutation(np.repeat(np.arange(10), 100))
    test_y = rng.permutation(np.repeat(np.arange(10), 30))
    return write_row_id_npz(tmp_path / "balanced.npz", train_y, test_y)


def _train_plus_val(splits):
    return splits.splits["train"].class_counts() + splits.splits["val"].class_counts()


def test_exp_profile_exact_counts(balanced_npz):
    splits = build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="exp:10", seed=0, val_fraction=0.1))
    # n_c = floor(100 * 10 ** (-c / 9)), worked out by hand
    assert list(_train_plus_val(splits)) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    # the test set cut to the same profile with n_max = 30
    assert list(splits.splits["test_imbalanced"].class_counts()) == [30, 23, 17, 13, 10, 8, 6, 5, 3, 3]
    assert list(splits.splits["test"].class_counts()) == [30] * 10
    # validation keeps the training proportions (10 %, at least one per class)
    assert list(splits.splits["val"].class_counts()) == [10, 8, 6, 5, 4, 3, 2, 2, 1, 1]


def test_exp_profile_with_nmax_and_too_large_nmax(balanced_npz):
    splits = build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="exp:10:50"))
    assert list(_train_plus_val(splits)) == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    with pytest.raises(DataError, match="asks for 101 images of class 'c0' \\(position 0\\) but the pool has only 100"):
        build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="exp:10:101"))
    # the class is named in the user's order, not the source's
    with pytest.raises(DataError, match="asks for 101 images of class 'c6' \\(position 0\\)"):
        build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="binary:10:101", classes=[6, 0]))


def test_step_profile(balanced_npz):
    splits = build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="step:10"))
    assert list(_train_plus_val(splits)) == [100] * 5 + [10] * 5
    odd = build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="step:4", classes=[4, 2, 9, 0, 1]))
    # the first ceil(5/2) = 3 classes are the majority
    assert list(_train_plus_val(odd)) == [100, 100, 100, 25, 25]


def test_binary_profile_class_order_and_names(balanced_npz):
    splits = build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="binary:50", classes=[6, 0]))
    assert splits.classes == ["c6", "c0"]
    assert list(_train_plus_val(splits)) == [100, 2]
    assert list(splits.splits["test_imbalanced"].class_counts()) == [30, 1]  # floor(30/50) -> at least 1
    # labels are remapped to 0..K-1 in the given order: every label-0 image came from class 6
    original_y = np.load(balanced_npz)["y"]
    rows = row_ids(splits.splits["train"])
    assert np.all(original_y[rows] == np.array([6, 0])[splits.splits["train"].targets])
    with pytest.raises(DataError, match="needs exactly two classes"):
        build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance="binary:50"))


def test_class_names_accepted(balanced_npz):
    splits = build_splits(DataSpec(dataset="npz", root=balanced_npz, classes=["c3", "c1"]))
    assert splits.classes == ["c3", "c1"]
    assert "test_imbalanced" not in splits.splits


def test_largest_feasible_nmax_on_an_imbalanced_pool():
    profile = parse_imbalance("exp:4")
    assert list(profile.counts([10, 50, 50])) == [10, 5, 2]
    assert list(profile.counts([50, 10, 50])) == [20, 10, 5]
    assert list(parse_imbalance("step:3").counts([7, 7, 1, 5])) == [3, 3, 1, 1]
    # exact floors where floating point would lose one: 6000 * 100 ** -1 = 60
    assert list(parse_imbalance("binary:100").counts([6000, 6000])) == [6000, 60]
    assert list(parse_imbalance("exp:100").counts([6000] * 10))[-1] == 60


@pytest.mark.parametrize(
    "text,message",
    [
        ("exp:0.5", "ratio 0.5 .* must be a finite number >= 1"),
        ("exp:-3", "ratio -3"),
        ("exp:abc", "ratio 'abc' .* is not a number"),
        ("zipf:10", "KIND one of exp, step, binary"),
        ("exp", "KIND:RHO"),
        ("exp:10:0", "NMAX 0"),
        ("exp:inf", "finite"),
    ],
)
def test_bad_profiles(text, message):
    with pytest.raises(DataError, match=message):
        parse_imbalance(text)


@pytest.mark.parametrize(
    "classes,message",
    [
        ([0, 10], "class id 10 is out of range: this dataset has 10 classes"),
        ([-1, 2], "classes must be a non-empty list of class ids >= 0 or class names"),
        ([1, 1], "classes must not repeat a class"),
        (["nope"], "class 'nope' is not known"),
    ],
)
def test_bad_classes(balanced_npz, classes, message):
    with pytest.raises(DataError, match=message):
        build_splits(DataSpec(dataset="npz", root=balanced_npz, classes=classes))


def test_bad_spec_values():
    with pytest.raises(DataError, match="val_fraction must be < 1; got 1.5"):
        build_splits(DataSpec(val_fraction=1.5))
    with pytest.raises(DataError, match="dataset must be one of digits, .*; got 'mnist'"):
        build_splits(DataSpec(dataset="mnist"))
    with pytest.raises(DataError, match="needs a root"):
        build_splits(DataSpec(dataset="npz"))


def test_seed_fixes_every_split(balanced_npz):
    def ids(seed, imbalance="exp:10"):
        splits = build_splits(DataSpec(dataset="npz", root=balanced_npz, imbalance=imbalance, seed=seed))
        return {name: tuple(row_ids(ds)) for name, ds in splits.splits.items()}

    first, again, other = ids(0), ids(0), ids(1)
    assert first == again
    assert first["train"] != other["train"] and first["test_imbalanced"] != other["test_imbalanced"]
    assert first["test"] == other["test"]  # the official test set does not depend on the seed
    # no image in two splits
    assert not set(first["train"]) & set(first["val"])
    # digits: the carved test split depends on the seed only, not on the imbalance
    digits = lambda imb: _row_ids_digits(build_splits(DataSpec(imbalance=imb, seed=3)))  # noqa: E731
    assert digits(None) == digits("exp:10")


def _row_ids_digits(splits):
    images, labels = splits.splits["test"].load_all()
    return (images.flatten(1).numpy().tobytes(), labels.numpy().tobytes())


# ----------------------------------------------------------------------------- sampler


def test_sampler_balanced_in_expectation():
    targets = np.array([0] * 900 + [1] * 90 + [2] * 10)
    sampler = ClassBalancedSampler(targets, num_samples=30_000, seed=0)
    drawn = targets[np.fromiter(iter(sampler), dtype=np.int64)]
    counts = np.bincount(drawn, minlength=3)
    # binomial(30000, 1/3): std ~ 82; 5 std either side
    assert np.all(np.abs(counts - 10_000) < 410), counts
    assert len(sampler) == 30_000


def test_sampler_epochs_and_seeds():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    sampler = ClassBalancedSampler(targets, seed=5)
    epoch0 = list(sampler)
    assert epoch0 == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(ClassBalancedSampler(targets, seed=6)) != epoch0


@pytest.mark.parametrize("num_replicas,num_samples", [(2, 60), (3, 60), (2, 61), (3, 61)])
def test_sampler_ranks_take_disjoint_shares_of_one_draw(num_replicas, num_samples):
    targets = np.array([0] * 50 + [1] * 7 + [2] * 3)
    single = ClassBalancedSampler(targets, num_samples=num_samples, seed=2, num_replicas=1, rank=0)
    ranks = [
        ClassBalancedSampler(targets, num_samples=num_samples, seed=2, num_replicas=num_replicas, rank=r)
        for r in range(num_replicas)
    ]
    for s in ranks + [single]:
        s.set_epoch(4)
    shares = [list(s) for s in ranks]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == len(ranks[0])
    total = ranks[0].total_size
    global_draw = ranks[0].global_draw()
    # rank r holds positions r, r + R, ...: interleaving the shares gives back the global draw
    interleaved = np.empty(total, dtype=np.int64)
    for r, share in enumerate(shares):
        interleaved[r::num_replicas] = share
    assert np.array_equal(interleaved, global_draw)
    # and it is the same draw a single process makes: the ranks together sample like one process
    # (when the ranks cannot split num_samples evenly, the draw goes on for the < R extra
    # padding positions that keep every rank's share the same length)
    assert total - num_samples < num_replicas
    assert np.array_equal(global_draw[:num_samples], single.global_draw())
    if total == num_samples:
        assert sorted(np.concatenate(shares).tolist()) == sorted(list(single))


def test_sampler_reads_torch_distributed(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        sampler = ClassBalancedSampler(np.array([0, 1, 1, 1]), seed=0)
        assert (sampler.num_replicas, sampler.rank) == (1, 0)
    finally:
        dist.destroy_process_group()


def test_sampler_with_dataloader_and_bad_input():
    splits = build_splits(DataSpec(imbalance="exp:10", seed=0))
    train = splits.splits["train"]
    sampler = ClassBalancedSampler(train, seed=0)
    loader = torch.utils.data.DataLoader(train, batch_size=64, sampler=sampler)
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 8, 8)
    with pytest.raises(DataError, match="rank 2 is not in range"):
        ClassBalancedSampler([0, 1], num_replicas=2, rank=2)
    with pytest.raises(DataError, match="at least one sample"):
        ClassBalancedSampler([])


def test_profile_str_roundtrip():
    assert str(parse_imbalance("EXP:100")) == "exp:100"
    assert parse_imbalance("binary:2.5:40") == ImbalanceProfile("binary", 2.5, 40)
    assert parse_imbalance(None) is None


def test_grouped_holdout_keeps_every_class_on_both_sides():
    from asymcl.data.splits import stratified_holdout

    # A long tail of lesions: class 2 has two single-image lesions, class 3 one lesion of two
    # images; StratifiedGroupKFold alone often leaves such classes out of one side.
    targets = np.array([0] * 60 + [1] * 12 + [2] * 2 + [3] * 2)
    groups = np.array([f"a{i // 2}" for i in range(60)] + [f"b{i // 3}" for i in range(12)] + ["c0", "c1", "d0", "d0"])
    for seed in range(20):
        keep, held = stratified_holdout(targets, 0.1, np.random.default_rng(seed), groups)
        assert sorted(np.concatenate([keep, held]).tolist()) == list(range(targets.size))
        assert not set(groups[keep]) & set(groups[held])  # no lesion on both sides
        assert set(targets[keep]) == {0, 1, 2, 3}  # training never loses a class
        assert {0, 1, 2} <= set(targets[held])  # every class with two or more lesions is validated
        assert 3 not in set(targets[held])  # a single lesion stays in training
    again = stratified_holdout(targets, 0.1, np.random.default_rng(5), groups)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(again, stratified_holdout(targets, 0.1, np.random.default_rng(5), groups), strict=True)
    )


def test_grouped_holdout_is_remembered_and_callers_cannot_change_it():
    """sklearn's grouped split is computed once per (labels, groups, folds, seed) in a process."""
    from asymcl.data.splits import _grouped_first_fold, stratified_holdout

    targets = np.array([0] * 40 + [1] * 20)
    groups = np.array([f"g{i // 2}" for i in range(60)])
    keep, held = stratified_holdout(targets, 0.2, np.random.default_rng(11), groups)
    hits = _grouped_first_fold.cache_info().hits
    keep[:] = -1  # a caller writing into its result must not reach the remembered one
    again_keep, again_held = stratified_holdout(targets, 0.2, np.random.default_rng(11), groups)
    assert _grouped_first_fold.cache_info().hits == hits + 1
    assert (again_keep >= 0).all() and np.array_equal(again_held, held)
    other = stratified_holdout(targets, 0.2, np.random.default_rng(12), groups)
    assert not np.array_equal(other[1], held)  # another seed, another split

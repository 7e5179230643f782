"""What to load (:class:`DataSpec`) and how it becomes train / val / test (:func:`build_splits`).

The protocol (method.md section 5), in order:

1. The source gives a training pool and, where it has them, an official validation and test set.
2. ``classes`` keeps the chosen classes and relabels them 0..K-1 in the given order.
3. A source without an official test set (digits; an npz, folder or CSV without split
   information) gets a seeded, stratified test set carved out of the pool (``test_fraction``,
   25 % by default; grouped by lesion when group ids are known).
4. The imbalance profile is applied to the training pool (a seeded subset with exact counts).
4a. ``val_per_class`` (instead of step 5): a balanced validation set of that many images per
   class is held out of the pool *before* the profile (grouped by lesion where known), as the
   ImageNet-LT and CIFAR-LT protocols do, so that model selection does not rest on the two or
   three tail images a 20 % share of an imbalanced pool leaves.
5. Without an official validation set, a seeded stratified validation split
   (``val_fraction``, 20 % by default) is carved from the imbalanced pool, grouped by lesion
   where the source knows lesion ids, so validation has the same class proportions as training.
   So ``train`` + ``val`` together have exactly the profile's counts.
6. ``test_imbalanced``: the test set cut to the same profile's proportions (n_max chosen as large
   as the test set allows; NMAX, if given, applies to the training pool only; ``cap:RHO`` caps the
   test set's own counts at RHO x its smallest class).

Every random choice draws from its own stream derived from ``seed``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from asymcl.data.datasets import ImageDataset
from asymcl.data.imbalance import ImbalanceProfile, imbalanced_indices, parse_imbalance
from asymcl.data.sources import load_source
from asymcl.data.spec import DataSpec
from asymcl.errors import DataError

# Independent random streams, one per decision, so that e.g. changing the imbalance does not
# change which images form the test set.
_STREAM_TEST = 1
_STREAM_IMBALANCE = 2
_STREAM_VAL = 3
_STREAM_TEST_IMBALANCE = 4


@dataclass
class Splits:
    """``classes``: the class names, label k is ``classes[k]``; ``splits``: name -> dataset.

    ``official``: the splits the source itself defines (e.g. ISIC 2018's test set), as opposed
    to those carved here; a challenge submission is only meaningful for an official test set.
    """

    classes: list[str]
    splits: dict[str, ImageDataset]
    spec: DataSpec | None = None
    profile: ImbalanceProfile | None = None
    notes: list[str] = field(default_factory=list)
    official: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> ImageDataset:
        return self.splits[name]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class name: count}} for every split."""
        return {
            name: {c: int(n) for c, n in zip(self.classes, ds.class_counts(), strict=True)}
            for name, ds in self.splits.items()
        }


def resolve_classes(requested: Sequence[int | str] | str | None, names: Sequence[str]) -> list[int]:
    """Class ids (or names, or ``"0,6"``) -> list of ids into ``names``; errors name the value."""
    if requested is None:
        return list(range(len(names)))
    if isinstance(requested, str):
        requested = [part.strip() for part in requested.split(",") if part.strip()]
    ids: list[int] = []
    for item in requested:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            class_id = int(item)
        elif isinstance(item, str) and item.strip().lstrip("-").isdigit() and item.strip() not in names:
            class_id = int(item.strip())
        elif isinstance(item, str) and item in names:
            class_id = list(names).index(item)
        else:
            raise DataError(
                f"class {item!r} is not known; give ids 0..{len(names) - 1} or names from {', '.join(names)}"
            )
        if not 0 <= class_id < len(names):
            raise DataError(
                f"class id {class_id} is out of range: this dataset has {len(names)} classes "
                f"(ids 0..{len(names) - 1}: {', '.join(names)})"
            )
        if class_id in ids:
            raise DataError(f"class {item!r} is given twice in classes")
        ids.append(class_id)
    if not ids:
        raise DataError("classes is empty; give at least one class id")
    return ids


def _unique_groups(groups: np.ndarray) -> np.ndarray:
    """Rows without a group id ("") become a group of their own."""
    groups = np.asarray(groups).astype(str)
    empty = groups == ""
    if empty.any():
        groups = groups.astype(object)
        groups[empty] = [f"\x00row{i}" for i in np.flatnonzero(empty)]
        groups = groups.astype(str)
    return groups


def stratified_holdout(
    targets: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, holdout) with ``fraction`` of each class held out, seeded.

    Without groups: per class, round(fraction * n_c) images are held out, at least one when the
    class has two or more and ``fraction > 0``, never all of them (sklearn's
    StratifiedShuffleSplit refuses classes of one image, which strong imbalance produces, so the
    per-class allocation is done here). With groups: the first fold of sklearn's
    StratifiedGroupKFold with round(1/fraction) folds, so no group is on both sides and the class
    proportions are kept as well as the groups allow.
    """
    n = targets.shape[0]
    if fraction <= 0 or n == 0:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    if groups is not None:
        groups = _unique_groups(groups)
        n_groups = np.unique(groups).size
        # sklearn needs n_splits <= the number of groups and <= the largest class's size.
        largest_class = int(np.bincount(targets).max())
        n_splits = min(max(2, int(round(1.0 / fraction))), n_groups, largest_class)
        if n_splits >= 2:
            random_state = int(rng.integers(2**31 - 1))
            keep, holdout = _grouped_first_fold(
                n_splits,
                random_state,
                np.ascontiguousarray(targets).tobytes(),
                str(targets.dtype),
                tuple(groups.tolist()),
            )
            return _every_class_on_both_sides(targets, groups, keep.copy(), holdout.copy(), rng)
    per_class: list[np.ndarray] = []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        if members.size < 2:
            continue
        n_hold = min(max(int(round(fraction * members.size)), 1), members.size - 1)
        per_class.append(members[:n_hold])
    holdout = np.sort(np.concatenate(per_class)) if per_class else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(n), holdout)
    return keep, holdout


# A pure function of its arguments, so remembered: a sweep runs every seed's runs in one process,
# and sklearn's StratifiedGroupKFold takes about 1.8 s on ISIC's 5,984 images (a Python loop over
# the lesions), a tenth of a short pretrained run.
@functools.lru_cache(maxsize=16)
def _grouped_first_fold(
    n_splits: int, random_state: int, targets: bytes, dtype: str, groups: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.frombuffer(targets, dtype=dtype)
    group_ids = np.array(groups)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    with warnings.catch_warnings():
        # "The least populated class has only k members": expected for minority classes.
        warnings.simplefilter("ignore", UserWarning)
        return next(splitter.split(np.zeros(labels.shape[0]), labels, group_ids))


def _every_class_on_both_sides(
    targets: np.ndarray, groups: np.ndarray, keep: np.ndarray, holdout: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Move whole groups so that every class keeps training images and, where it has two or
    more groups, also appears in the holdout.

    StratifiedGroupKFold balances proportions only on average: with strong imbalance a class of
    a few lesions can land entirely in the holdout fold (no training image at all) or not at all
    (a validation set without that class, so its recall is undefined there). The ungrouped
    branch guarantees both by construction; this repairs the grouped one, moving the smallest
    qualifying group (seeded choice among ties) so that no group is ever split.
    """
    in_holdout = np.zeros(targets.shape[0], dtype=bool)
    in_holdout[holdout] = True
    for c in np.unique(targets):
        for to_holdout in (False, True):  # first make sure training has it, then the holdout
            members = targets == c
            source = members & (in_holdout != to_holdout)
            if (members & (in_holdout == to_holdout)).any():
                continue
            candidates = np.unique(groups[source])
            if to_holdout and candidates.size < 2:
                continue  # one group: it stays in training
            sizes = np.array([np.count_nonzero(groups == g) for g in candidates])
            smallest = candidates[sizes == sizes.min()]
            moved = smallest[int(rng.integers(smallest.size))]
            in_holdout[groups == moved] = to_holdout
    return np.flatnonzero(~in_holdout), np.flatnonzero(in_holdout)


def balanced_holdout(
    targets: np.ndarray,
    per_class: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Sorted indices of ``per_class`` images of every class (seeded). With ``groups``, whole groups
    are taken in a random order until the class has ``per_class`` images (so a lesion is never on
    both sides; the class may then get a few more). A class that cannot spare ``per_class`` images
    and keep one for training is a :class:`DataError`."""
    targets = np.asarray(targets)
    held = []
    for label in range(int(targets.max()) + 1 if targets.size else 0):
        members = np.flatnonzero(targets == label)
        name = classes[label] if classes is not None else str(label)
        if members.size <= per_class:
            raise DataError(
                f"class {name} has {members.size} training image(s), too few to hold out a balanced validation set "
                f"of {per_class} per class and keep some for training; lower data.val_per_class or leave it unset "
                "(data.val_fraction)"
            )
        if groups is None:
            held.append(rng.choice(members, per_class, replace=False))
            continue
        member_groups = _unique_groups(groups[members])
        order = rng.permutation(np.unique(member_groups))
        taken, count = [], 0
        for group in order:
            if count >= per_class:
                break
            chosen = members[member_groups == group]
            taken.append(chosen)
            count += chosen.size
        chosen = np.concatenate(taken)
        if chosen.size >= members.size:
            raise DataError(
                f"class {name}: holding out {per_class} validation images by lesion leaves none for "
                "training; lower data.val_per_class"
            )
        held.append(chosen)
    return np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


def build_splits(spec: DataSpec | None = None) -> Splits:
    """Load ``spec.dataset`` and return train / val / test (and test_imbalanced) as datasets."""
    spec = spec or DataSpec()
    spec.validate()
    profile = parse_imbalance(spec.imbalance)
    source = load_source(spec)
    notes = list(source.notes)

    class_ids = resolve_classes(spec.classes, source.classes)
    pools: dict[str, ImageDataset] = {}
    groups: dict[str, np.ndarray] = {}
    for name, pool in source.pools.items():
        if spec.classes is not None:
            keep = np.flatnonzero(np.isin(pool.targets, class_ids))
            pool = pool.select_classes(class_ids)
            if name in source.groups:
                groups[name] = np.asarray(source.groups[name])[keep]
        elif name in source.groups:
            groups[name] = np.asarray(source.groups[name])
        pools[name] = pool
    classes = [source.classes[c] for c in class_ids]

    train = pools["train"]
    empty = [classes[k] for k, n in enumerate(train.class_counts()) if n == 0]
    if empty:
        raise DataError(
            f"class(es) {', '.join(empty)} have no training images in {spec.root or spec.dataset}; "
            "add images or leave them out with classes"
        )

    if "test" not in pools:
        keep, held = stratified_holdout(
            train.targets, spec.test_fraction, _rng(spec.seed, _STREAM_TEST), groups.get("train")
        )
        if held.size == 0:
            raise DataError(f"{spec.dataset} has no test split and test_fraction={spec.test_fraction} carves none")
        pools["test"] = train.subset(held)
        train = train.subset(keep)
        if "train" in groups:
            groups["train"] = groups["train"][keep]
        notes.append(
            f"test: {spec.test_fraction:g} of the pool, stratified"
            + (", grouped" if "train" in groups else "")
            + f", seed {spec.seed}"
        )

    if spec.val_per_class is not None and "val" not in pools:
        held = balanced_holdout(
            train.targets, spec.val_per_class, _rng(spec.seed, _STREAM_VAL), groups.get("train"), classes
        )
        keep = np.setdiff1d(np.arange(len(train)), held)
        pools["val"] = train.subset(held)
        train = train.subset(keep)
        if "train" in groups:
            groups["train"] = groups["train"][keep]
        notes.append(
            f"val: {spec.val_per_class} images per class held out of the pool before the profile"
            + (", grouped by lesion" if "train" in groups else "")
            + f", seed {spec.seed}"
        )

    if profile is not None:
        counts = profile.counts(train.class_counts(), classes)
        chosen = imbalanced_indices(train.targets, counts, _rng(spec.seed, _STREAM_IMBALANCE))
        train = train.subset(chosen)
        if "train" in groups:
            groups["train"] = groups["train"][chosen]
        notes.append(f"imbalance {profile} on the training pool: {', '.join(map(str, counts))}")

    if "val" not in pools:
        if spec.val_fraction == 0:  # models are chosen on validation: a run without one cannot select
            raise DataError(
                f"{spec.dataset} has no validation split and val_fraction=0 carves none; "
                "set val_fraction > 0 or val_per_class"
            )
        keep, held = stratified_holdout(
            train.targets, spec.val_fraction, _rng(spec.seed, _STREAM_VAL), groups.get("train")
        )
        pools["val"] = train.subset(held)
        train = train.subset(keep)
        notes.append(
            f"val: {spec.val_fraction:g} of the training pool, stratified"
            + (", grouped by lesion" if "train" in groups else "")
            + f", seed {spec.seed}"
        )
    pools["train"] = train

    out = {"train": pools["train"], "val": pools["val"], "test": pools["test"]}
    if profile is not None:
        test_profile = ImbalanceProfile(profile.kind, profile.ratio, None)
        test = pools["test"]
        available = test.class_counts()
        if np.any(available < 1):
            missing = [classes[k] for k in np.flatnonzero(available < 1)]
            raise DataError(f"the test set has no images of {', '.join(missing)}")
        counts = test_profile.counts(available, classes)
        chosen = imbalanced_indices(test.targets, counts, _rng(spec.seed, _STREAM_TEST_IMBALANCE))
        out["test_imbalanced"] = test.subset(chosen)
    return Splits(
        classes=classes,
        splits=out,
        spec=spec,
        profile=profile,
        notes=notes,
        official=tuple(name for name in ("train", "val", "test") if name in source.pools),
    )

"""Imbalance profiles: how many images of each class to keep, and the seeded exact subset.

A profile is written ``KIND:RHO`` or ``KIND:RHO:NMAX``:

- ``exp:RHO``: exponential long tail, n_c = floor(n_max * RHO^(-c/(K-1))) for c = 0..K-1
  (class 0 is the largest, class K-1 has n_max/RHO).
- ``step:RHO``: the first ceil(K/2) classes keep n_max, the last floor(K/2) keep floor(n_max/RHO).
- ``binary:RHO``: exactly two classes; the first keeps n_max, the second floor(n_max/RHO).

Every class keeps at least one image. Without NMAX, n_max is the largest value for which every
class has enough images in the pool (for a balanced pool such as Fashion-MNIST's 6,000 per class
that is the per-class count: n_max = 6000). With NMAX the profile is exactly that, and a class
without enough images is an error naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from asymcl.errors import DataError

PROFILE_KINDS = ("exp", "step", "binary")

# floor() of a product that should be an integer (6000 * 100**-1 = 59.999999...) must not lose one.
_FLOOR_EPS = 1e-9


@dataclass(frozen=True)
class ImbalanceProfile:
    kind: str
    ratio: float
    n_max: int | None = None

    def __str__(self) -> str:
        ratio = f"{self.ratio:g}"
        return f"{self.kind}:{ratio}" + (f":{self.n_max}" if self.n_max is not None else "")

    def fractions(self, num_classes: int) -> np.ndarray:
        """(K,) float: n_c / n_max for each class position."""
        if self.kind == "binary" and num_classes != 2:
            raise DataError(
                f"imbalance {self} needs exactly two classes, got {num_classes}: choose them with "
                "classes (e.g. --classes 0,6: the first is the majority)"
            )
        if num_classes < 2:
            raise DataError(f"imbalance {self} needs at least two classes, got {num_classes}")
        positions = np.arange(num_classes, dtype=np.float64)
        if self.kind == "exp":
            return self.ratio ** (-positions / (num_classes - 1))
        # step and binary: the first ceil(K/2) classes are the majority.
        n_majority = num_classes - num_classes // 2
        return np.where(positions < n_majority, 1.0, 1.0 / self.ratio)

    def counts(self, available: Sequence[int] | np.ndarray, names: Sequence[str] | None = None) -> np.ndarray:
        """(K,) int64: exact per-class counts for a pool with ``available[c]`` images of class c.

        ``names`` (the class names in profile order) only make the error messages name the class.
        """
        pool = np.asarray(available, dtype=np.int64)
        fractions = self.fractions(len(pool))

        def label(c: int) -> str:
            return f"class {names[c]!r} (position {c})" if names is not None else f"class position {c}"

        if self.n_max is not None:
            counts = _profile_counts(self.n_max, fractions)
            short = np.flatnonzero(counts > pool)
            if short.size:
                c = int(short[0])
                raise DataError(
                    f"imbalance {self} asks for {counts[c]} images of {label(c)} but the "
                    f"pool has only {pool[c]}; lower NMAX or leave it out"
                )
            return counts
        if np.any(pool < 1):
            c = int(np.flatnonzero(pool < 1)[0])
            raise DataError(f"{label(c)} has no images to build imbalance {self} from")
        # The largest n_max with floor(n_max * f_c) <= pool_c for every class.
        n_max = int(np.min(np.floor(pool / fractions + _FLOOR_EPS)))
        n_max = min(n_max, int(pool[0]))
        while n_max > 1 and np.any(_profile_counts(n_max, fractions) > pool):
            n_max -= 1
        return np.minimum(_profile_counts(max(n_max, 1), fractions), pool)


def _profile_counts(n_max: int, fractions: np.ndarray) -> np.ndarray:
    counts = np.floor(n_max * fractions + _FLOOR_EPS).astype(np.int64)
    return np.maximum(counts, 1)


def parse_imbalance(text: str | ImbalanceProfile | None) -> ImbalanceProfile | None:
    """``"exp:100"``, ``"step:10"``, ``"binary:50"``, optionally ``":NMAX"`` -> profile."""
    if text is None or isinstance(text, ImbalanceProfile):
        return text
    raw = str(text).strip()
    if raw == "" or raw.lower() == "none":
        return None
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0].lower() not in PROFILE_KINDS:
        raise DataError(
            f"imbalance {raw!r} is not valid: write KIND:RHO[:NMAX] with KIND one of "
            f"{', '.join(PROFILE_KINDS)} (e.g. exp:100, step:10, binary:50)"
        )
    kind = parts[0].lower()
    try:
        ratio = float(parts[1])
    except ValueError:
        raise DataError(f"imbalance ratio {parts[1]!r} in {raw!r} is not a number") from None
    if not math.isfinite(ratio) or ratio < 1:
        raise DataError(
            f"imbalance ratio {parts[1]} in {raw!r} must be a finite number >= 1 (majority count / minority count)"
        )
    n_max = None
    if len(parts) == 3:
        try:
            n_max = int(parts[2])
        except ValueError:
            raise DataError(f"NMAX {parts[2]!r} in imbalance {raw!r} is not an integer") from None
        if n_max < 1:
            raise DataError(f"NMAX {n_max} in imbalance {raw!r} must be >= 1")
    return ImbalanceProfile(kind, ratio, n_max)


def imbalanced_indices(targets: np.ndarray, counts: Sequence[int] | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a seeded subset with exactly ``counts[c]`` images of class c."""
    chosen = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(targets == c)
        if n > members.size:
            raise DataError(f"class position {c} has {members.size} images, {n} were asked for")
        chosen.append(rng.permutation(members)[: int(n)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

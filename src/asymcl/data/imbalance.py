"""Imbalance profiles: how many images of each class to keep, and the seeded exact subset.

A profile is written ``KIND:RHO`` or ``KIND:RHO:NMAX``:

- ``exp:RHO``: exponential long tail, n_c = floor(n_max * RHO^(-c/(K-1))) for c = 0..K-1
  (class 0 is the largest, class K-1 has n_max/RHO).
- ``step:RHO``: the first ceil(K/2) classes keep n_max, the last floor(K/2) keep floor(n_max/RHO).
- ``binary:RHO``: exactly two classes; the first keeps n_max, the second floor(n_max/RHO).
- ``cap:RHO`` (no NMAX): the pool's own counts m_c with the heads subsampled,
  n_c = min(m_c, floor(RHO * min_k m_k)). The smallest class keeps all its images, so
  max_c n_c / min_c n_c = min(RHO, max_c m_c / min_c m_c) up to the floor: an already imbalanced
  source (ISIC) at its natural class order with the imbalance turned down, not a shape imposed on it;
  a RHO at or above the pool's own ratio keeps the whole pool.

Every class keeps at least one image. Without NMAX, n_max is the largest value for which every
class has enough images in the pool (for a balanced pool such as Fashion-MNIST's 6,000 per class
that is the per-class count: n_max = 6000). With NMAX the profile is exactly that, and a class
without enough images is an error naming it.

:data:`PROFILE_KINDS` and :data:`PROFILE_SYNTAX` are the grammar every message and help text
quotes. numpy is imported where counts are computed, so that the grammar stays importable by the
command line's parser (``asymcl data --help``) without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asymcl.errors import DataError

if TYPE_CHECKING:
    import numpy as np

PROFILE_KINDS = ("exp", "step", "binary", "cap")
#: The kinds that are shaped from n_max (and so take ``:NMAX``); ``cap`` is shaped from the pool.
_NMAX_KINDS = ("exp", "step", "binary")
#: One example of each kind, in :data:`PROFILE_KINDS` order.
PROFILE_EXAMPLES = ("exp:100", "step:10", "binary:50", "cap:10")
#: The grammar in words, for messages and help ("exp:RHO or ... (optionally :NMAX), or cap:RHO").
PROFILE_SYNTAX = (
    " or ".join(f"{kind}:RHO" for kind in _NMAX_KINDS)
    + " (optionally :NMAX), or "
    + " or ".join(f"{kind}:RHO" for kind in PROFILE_KINDS if kind not in _NMAX_KINDS)
)

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
        """(K,) float: n_c / n_max for each class position (``cap`` has none: it follows the pool)."""
        import numpy as np

        if self.kind not in _NMAX_KINDS:
            raise DataError(f"imbalance {self} is shaped from the pool's counts, not from n_max: use counts()")
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
        import numpy as np

        pool = np.asarray(available, dtype=np.int64)

        def label(c: int) -> str:
            return f"class {names[c]!r} (position {c})" if names is not None else f"class position {c}"

        if self.kind == "cap":
            if len(pool) < 2:
                raise DataError(f"imbalance {self} needs at least two classes, got {len(pool)}")
            if np.any(pool < 1):
                c = int(np.flatnonzero(pool < 1)[0])
                raise DataError(f"{label(c)} has no images to build imbalance {self} from")
            cap = int(np.floor(self.ratio * pool.min() + _FLOOR_EPS))
            return np.minimum(pool, cap)
        fractions = self.fractions(len(pool))

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
    import numpy as np

    counts = np.floor(n_max * fractions + _FLOOR_EPS).astype(np.int64)
    return np.maximum(counts, 1)


def parse_imbalance(text: str | ImbalanceProfile | None) -> ImbalanceProfile | None:
    """``"exp:100"``, ``"step:10"``, ``"binary:50"``, optionally ``":NMAX"``, or ``"cap:10"`` -> profile."""
    if text is None or isinstance(text, ImbalanceProfile):
        return text
    raw = str(text).strip()
    if raw == "" or raw.lower() == "none":
        return None
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0].lower() not in PROFILE_KINDS:
        raise DataError(
            f"imbalance {raw!r} is not valid: write KIND:RHO[:NMAX] with KIND one of "
            f"{', '.join(PROFILE_KINDS)}, that is {PROFILE_SYNTAX} (e.g. {', '.join(PROFILE_EXAMPLES)})"
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
    if len(parts) == 3 and kind not in _NMAX_KINDS:
        raise DataError(
            f"imbalance {raw!r}: {kind} takes no NMAX (it keeps the pool's counts, each capped at RHO x the "
            f"smallest class's count); write {kind}:{parts[1]}"
        )
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
    import numpy as np

    chosen = []
    for c, n in enumerate(counts):
        members = np.flatnonzero(targets == c)
        if n > members.size:
            raise DataError(f"class position {c} has {members.size} images, {n} were asked for")
        chosen.append(rng.permutation(members)[: int(n)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)

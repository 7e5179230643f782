"""Summary statistics over seeds: mean +- standard deviation and paired t confidence intervals.

The interval is scipy's (``scipy.stats.ttest_rel(...).confidence_interval``), not re-derived here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``"85.3 +- 1.2"`` (values scaled, e.g. to percent)."""
        if self.n == 0:
            return "n/a"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean and sample standard deviation s = sqrt(sum (x - mean)^2 / (n - 1))."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return MeanStd(float("nan"), float("nan"), 0)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return MeanStd(float(array.mean()), std, int(array.size))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of paired differences d_k = a_k - b_k and its two-sided t confidence interval.

    CI = mean(d) +- t_{1 - alpha/2, n - 1} * s_d / sqrt(n); ``low``/``high`` are NaN when n < 2.
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        if self.n == 0:
            return "n/a"
        text = f"{self.mean * scale:+.{digits}f}"
        if self.n < 2:
            return text + " (1 seed, no CI)"
        return f"{text} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def paired_difference(
    first: Sequence[float], second: Sequence[float], confidence: float = 0.95
) -> PairedDifference:
    """Paired comparison of two methods measured on the same seeds (``first[k]`` pairs ``second[k]``)."""
    a = np.asarray(list(first), dtype=np.float64)
    b = np.asarray(list(second), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.size} and {b.size}")
    diff = a - b
    n = int(diff.size)
    if n == 0:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0, confidence)
    mean = float(diff.mean())
    if n < 2:
        return PairedDifference(mean, float("nan"), float("nan"), n, confidence)
    from scipy import stats

    with warnings.catch_warnings():
        # Identical differences on every seed (s_d = 0) are a legitimate outcome: the interval is
        # then the single point, and scipy's "catastrophic cancellation" warning says nothing new.
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_rel(a, b).confidence_interval(confidence)
    return PairedDifference(mean, float(interval.low), float(interval.high), n, confidence)

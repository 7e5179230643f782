"""Summary statistics over seeds: mean +- standard deviation, paired t confidence intervals, Holm's
adjustment for a family of comparisons, and the minimum detectable difference of a paired design.

The interval and p-value are scipy's (``scipy.stats.ttest_rel``), Holm's step-down adjustment and
the power calculation statsmodels' (``multipletests``, ``TTestPower``): none is re-derived here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (ddof = 1; 0.0 for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int


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
    #: two-sided p-value of the paired t test (NaN when n < 2; 1.0 when every difference is 0)
    p: float = float("nan")

    @property
    def significant(self) -> bool:
        """True when the interval excludes zero."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def paired_difference(first: Sequence[float], second: Sequence[float], confidence: float = 0.95) -> PairedDifference:
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
        result = stats.ttest_rel(a, b)
        interval = result.confidence_interval(confidence)
    p = float(result.pvalue)
    if np.isnan(p):  # s_d = 0: no evidence of any spread; a zero mean is no difference at all
        p = 1.0 if mean == 0 else 0.0
    return PairedDifference(mean, float(interval.low), float(interval.high), n, confidence, p)


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> tuple[list[bool], list[float]]:
    """Holm's step-down adjustment of a family of p-values (NaN entries are left out of the family
    and come back as (False, NaN)): ``(reject, adjusted p)`` in the input's order. Controls the
    family-wise error rate at ``alpha`` under any dependence between the comparisons."""
    from statsmodels.stats.multitest import multipletests

    values = np.asarray(list(pvalues), dtype=np.float64)
    reject = [False] * values.size
    adjusted = [float("nan")] * values.size
    finite = np.flatnonzero(~np.isnan(values))
    if finite.size:
        rejected, corrected, _, _ = multipletests(values[finite], alpha=alpha, method="holm")
        for index, r, c in zip(finite, rejected, corrected, strict=True):
            reject[int(index)] = bool(r)
            adjusted[int(index)] = float(c)
    return reject, adjusted


def min_detectable_difference(sd: float, n: int, *, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean paired difference that a two-sided paired t test on ``n`` pairs with
    difference standard deviation ``sd`` detects with probability ``power`` at level ``alpha``:
    ``d * sd``, where d is statsmodels' effect size solving the power equation."""
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    from statsmodels.stats.power import TTestPower

    effect = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(effect) * float(sd)

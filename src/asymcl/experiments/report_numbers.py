"""The report's numbers, typed: what :func:`asymcl.experiments.selection.setting_numbers` computes,
:mod:`asymcl.experiments.claims` adjusts and judges, and :mod:`asymcl.experiments.render` prints.

Every value is a fraction (0.85, not 85), unrounded. ``to_dict()`` gives the layout of
``report.json`` (a column is ``"<split>.<metric>"``, e.g. ``"test.ua"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Score:
    """One table cell: mean and sample standard deviation over ``n`` seeds (NaN when n = 0)."""

    mean: float
    std: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # every field, in declaration order: report.json's layout


@dataclass
class Difference:
    """One row minus another over the ``seeds`` both have: the mean of the paired differences, its
    two-sided 95% t interval [``low``, ``high``] (NaN when n < 2) and raw ``p``. ``p_holm`` and
    ``holm_significant`` are set by :func:`asymcl.experiments.claims.adjust_family` when the
    comparison is in the report's family (None otherwise)."""

    mean: float
    low: float
    high: float
    n: int
    seeds: list[Any]
    p: float
    p_holm: float | None = None
    holm_significant: bool | None = None

    @property
    def in_family(self) -> bool:
        return self.holm_significant is not None

    def to_dict(self) -> dict[str, Any]:
        out = {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "seeds": self.seeds, "p": self.p}
        if self.in_family:
            out.update(p_holm=self.p_holm, holm_significant=self.holm_significant)
        return out


@dataclass
class Comparison:
    """Row ``row`` minus row ``baseline``: column -> :class:`Difference`, for every test split."""

    row: str
    baseline: str
    differences: dict[str, Difference]

    def to_dict(self) -> dict[str, Any]:
        return {column: difference.to_dict() for column, difference in self.differences.items()}


@dataclass
class RecipeComparison(Comparison):
    """The contrastive row validation chose (``display``: its label) against one baseline row, with
    the main test split it is judged on."""

    display: str = ""
    split: str | None = None
    split_title: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "baseline": self.baseline,
            "display": self.display,
            "split": self.split,
            "split_title": self.split_title,
            **super().to_dict(),
        }


@dataclass(frozen=True)
class TableRow:
    """One row of a setting's table: the chosen hyperparameters (``params``), their ``seeds``, how
    many settings validation chose from, the validation images per class, and column -> score."""

    params: dict[str, Any]
    seeds: list[Any]
    n_candidates: int
    val_counts: dict[str, int] | None
    scores: dict[str, Score]

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "seeds": self.seeds,
            "n_candidates": self.n_candidates,
            "val_counts": self.val_counts,
            **{column: score.to_dict() for column, score in self.scores.items()},
        }


@dataclass(frozen=True)
class PaperClaim:
    """The verdict on the paper's claim in one setting (:func:`asymcl.experiments.claims.paper_claim`)."""

    verdict: str
    split: str | None
    title: str
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # every field, in declaration order: report.json's layout


@dataclass(frozen=True)
class CandidateScore:
    """One hyperparameter setting validation scored: its mean validation UA over ``n`` seeds."""

    params: dict[str, Any]
    val_ua: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # every field, in declaration order: report.json's layout


@dataclass
class SettingNumbers:
    """Everything the report says about one setting (dataset, imbalance, classes)."""

    label: str
    columns: list[str]
    table: dict[str, TableRow]
    #: every other row -> the proposed method minus it
    comparisons: dict[str, Comparison]
    paper_claim: PaperClaim
    best_vs_baselines: list[RecipeComparison] = field(default_factory=list)
    candidates: dict[str, list[CandidateScore]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The setting's entry of ``report.json``."""
        return {
            "label": self.label,
            "columns": self.columns,
            "table": {row: entry.to_dict() for row, entry in self.table.items()},
            "comparisons": {row: comparison.to_dict() for row, comparison in self.comparisons.items()},
            "paper_claim": self.paper_claim.to_dict(),
            "best_vs_baselines": [entry.to_dict() for entry in self.best_vs_baselines],
            "candidates": {row: [c.to_dict() for c in items] for row, items in self.candidates.items()},
        }


# How the report names a split; here because both the selection and the claim sentences use it.
_SPLIT_TITLES = {"val": "validation", "test": "test", "test_imbalanced": "test (imbalanced)"}


def split_title(split: str, has_imbalanced_test: bool = False) -> str:
    """With an imbalance profile, ``test`` is the full (balanced) official test set; without one
    (e.g. ISIC) it is the official test set as it is."""
    if split == "test" and has_imbalanced_test:
        return "test (balanced)"
    return _SPLIT_TITLES.get(split, split)


#: The test split each metric is compared on, in order of preference: UA on the balanced test set,
#: WA on the test set cut to the training profile (on a balanced test set WA equals UA; the paper's
#: WA claim is about imbalanced data), each falling back to the other split where runs lack it.
#: Read by the report's claim (:func:`asymcl.experiments.claims.claim_key`), the claim grid and the
#: lever table.
METRIC_SPLITS = {"ua": ("test", "test_imbalanced"), "wa": ("test_imbalanced", "test")}

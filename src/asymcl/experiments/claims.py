"""Report step 4b: the paper's claim, tested, and the best recipe against the baselines.

Every verdict is Holm-adjusted within the report's *family* (:func:`adjust_family`): in every
setting, on the main test split, AFCL against every other row on UA and WA, and the contrastive row
validation chose against every baseline row (probe, CE, LA) on UA and WA. The raw 95% interval is
printed beside the adjusted verdict; a comparison outside the family (another test split) is raw
and labelled so.

The paper (Vito & Stefanus 2022) claims that AFCL beats CL and FCL in WA and in UA. Per setting,
UA on the main test split (the first present: the balanced official test set under an imbalance
profile, else the official test set) and WA on the test split cut to the training profile where the
runs have one (:func:`claim_key`: on a balanced test set WA equals UA, so WA there would only
repeat UA; the paper's WA claim is about imbalanced data), else on the main split, the four paired
differences AFCL - CL and AFCL - FCL on WA and UA (mean over seeds, two-sided 95% t interval;
:mod:`asymcl.experiments.stats`) give:

* ``held``: every interval lies above 0;
* ``did not hold``: some interval lies below 0 (AFCL measurably worse on that metric);
* ``could not be told apart``: neither (some interval contains 0);
* ``not tested``: a method is missing, or fewer than 2 paired seeds.

:func:`best_contrastive_row`: the contrastive row (any method with a contrastive loss, any levers)
with the highest mean validation UA; the report compares it with ``la`` over paired seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from asymcl.experiments.report_numbers import (
    METRIC_SPLITS,
    Comparison,
    Difference,
    PaperClaim,
    RecipeComparison,
    SettingNumbers,
    TableRow,
    split_title,
)
from asymcl.experiments.runs import row_display, row_method
from asymcl.training.methods import PROPOSED, REGISTRY

CLAIM_OPPONENTS = ("cl", "fcl")
CLAIM_METRICS = ("wa", "ua")
CLAIM_TEXT = "AFCL > CL and AFCL > FCL, on WA and on UA"
#: Where the runs have it, WA is read on this split (the test set cut to the training profile).
IMBALANCED_TEST = METRIC_SPLITS["wa"][0]


def claim_key(differences: Mapping[str, Difference], main: str, metric: str) -> str:
    """The ``split.metric`` key a claim metric is judged on: the first split of
    :data:`~asymcl.experiments.report_numbers.METRIC_SPLITS` that ``differences`` has (WA on
    :data:`IMBALANCED_TEST`, UA on the balanced test split), else the ``main`` test split."""
    for split in METRIC_SPLITS[metric]:
        if f"{split}.{metric}" in differences:
            return f"{split}.{metric}"
    return f"{main}.{metric}"


def _fmt(d: Difference) -> str:
    text = f"{d.mean * 100:+.1f} [{d.low * 100:+.1f}, {d.high * 100:+.1f}]"
    if d.p_holm is not None:
        text += f", Holm p = {d.p_holm:.3g}"
    return text


def significant(d: Difference) -> bool:
    """The family's adjusted verdict when the comparison is in it, else the raw interval's."""
    if d.n < 2:
        return False
    if d.holm_significant is not None:
        return bool(d.holm_significant)
    return bool(d.low > 0 or d.high < 0)


def _holm_note(entries: Mapping[tuple[str, str], Difference]) -> str:
    return " after Holm's adjustment" if any(d.in_family for d in entries.values()) else " (raw 95% interval)"


def family_entries(numbers: SettingNumbers) -> list[tuple[str, Difference]]:
    """(label, difference) of every comparison of one setting that is in the report's family."""
    main = numbers.paper_claim.split
    if main is None:
        return []
    out = []
    for method, comparison in numbers.comparisons.items():
        for metric in CLAIM_METRICS:
            out.append(
                (
                    f"{numbers.label}: AFCL - {row_display(method)} {metric.upper()}",
                    comparison.differences[claim_key(comparison.differences, main, metric)],
                )
            )
    for entry in numbers.best_vs_baselines:
        for metric in CLAIM_METRICS:
            out.append(
                (
                    f"{numbers.label}: {entry.display} - {row_display(entry.baseline)} {metric.upper()}",
                    entry.differences[claim_key(entry.differences, main, metric)],
                )
            )
    return out


def adjust_family(all_numbers: Sequence[SettingNumbers], alpha: float = 0.05) -> int:
    """Holm-adjust every family comparison of the report in place (``p_holm``, ``holm_significant``)
    and redo the claim sentences with the adjusted verdicts. Returns the family's size."""
    from asymcl.experiments.stats import holm

    members = [
        entry for numbers in all_numbers for _, entry in family_entries(numbers) if entry.n >= 2 and entry.p is not None
    ]
    reject, adjusted = holm([entry.p for entry in members], alpha)
    for entry, r, a in zip(members, reject, adjusted, strict=True):
        entry.p_holm, entry.holm_significant = a, r
    for numbers in all_numbers:
        claim = numbers.paper_claim
        numbers.paper_claim = paper_claim(numbers.table, numbers.comparisons, claim.split, claim.title)
    return len(members)


def paper_claim(
    table: Mapping[str, TableRow], comparisons: Mapping[str, Comparison], split: str | None, title: str = ""
) -> PaperClaim:
    """The verdict for one setting (see the module docstring): ``split`` is the main test split,
    ``title`` how the report names it."""
    if split is None:
        return PaperClaim(
            "not tested", None, title, f"The paper's claim ({CLAIM_TEXT}) could not be tested: no test split."
        )
    head = f"The paper's claim ({CLAIM_TEXT}) on the {title or split} set"
    missing = [m.upper() for m in (PROPOSED, *CLAIM_OPPONENTS) if m not in table]
    if missing:
        return PaperClaim("not tested", split, title, f"{head} could not be tested: no {' or '.join(missing)} runs.")
    keys = {
        (opponent, metric): claim_key(comparisons[opponent].differences, split, metric)
        for opponent in CLAIM_OPPONENTS
        for metric in CLAIM_METRICS
    }
    entries = {key: comparisons[key[0]].differences[name] for key, name in keys.items()}
    if any(name.startswith(f"{IMBALANCED_TEST}.") for name in keys.values()):
        head = (
            f"The paper's claim ({CLAIM_TEXT}) on UA on the {title or split} set and on WA on the "
            f"{split_title(IMBALANCED_TEST)} set"
        )
    if any(d.n < 2 for d in entries.values()):
        return PaperClaim("not tested", split, title, f"{head} could not be tested: fewer than 2 paired seeds.")

    def listed(keys) -> str:
        return "; ".join(f"AFCL - {o.upper()} on {m.upper()} {_fmt(entries[(o, m)])}" for o, m in keys)

    worse = [key for key, d in entries.items() if significant(d) and d.mean < 0]
    unclear = [key for key, d in entries.items() if not significant(d)]
    if worse:
        verdict, detail = "did not hold", f"AFCL was measurably worse ({listed(worse)})"
    elif unclear:
        verdict, detail = "could not be told apart", f"not significant{_holm_note(entries)} for {listed(unclear)}"
    else:
        verdict, detail = "held", f"all four paired differences are above 0{_holm_note(entries)} ({listed(entries)})"
    return PaperClaim(verdict, split, title, f"{head} {verdict}: {detail}.")


def best_contrastive_row(table: Mapping[str, TableRow]) -> str | None:
    """The row of a contrastive method (any levers) with the highest mean validation UA."""
    rows = [
        row
        for row in table
        if REGISTRY.get(row_method(row)) is not None
        and REGISTRY[row_method(row)].contrastive
        and table[row].scores["val.ua"].n
    ]
    return max(rows, key=lambda row: table[row].scores["val.ua"].mean) if rows else None


def best_recipe_sentence(entry: RecipeComparison | None, split: str | None, title: str = "") -> str | None:
    """One sentence: the contrastive row validation chose against one baseline on ``split`` UA."""
    if entry is None or split is None:
        return None
    d = entry.differences[f"{split}.ua"]
    name = row_display(entry.baseline)
    head = f"Best contrastive recipe on validation UA: {entry.display}; against {name} on {title or split} UA"
    if d.n < 2:
        return f"{head} {d.mean * 100:+.1f} points (fewer than 2 paired seeds, no interval)."
    verdict = "not separable"
    if significant(d):
        verdict = "better" if d.mean > 0 else "worse"
    holm = f", Holm p = {d.p_holm:.3g}" if d.p_holm is not None else ""
    interval = f"{d.mean * 100:+.1f} [{d.low * 100:+.1f}, {d.high * 100:+.1f}]"
    return f"{head}: {interval} points{holm} ({verdict})."

"""Report step 4b: the paper's claim, tested, and the best recipe against a baseline.

The paper (Vito & Stefanus 2022) claims that AFCL beats CL and FCL in WA and in UA. Per setting,
on the main test split (the first present: the balanced official test set under an imbalance
profile, else the official test set), the four paired differences AFCL - CL and AFCL - FCL on WA
and UA (mean over seeds, two-sided 95% t interval; :mod:`asymcl.experiments.stats`) give:

* ``held``: every interval lies above 0;
* ``did not hold``: some interval lies below 0 (AFCL measurably worse on that metric);
* ``could not be told apart``: neither (some interval contains 0);
* ``not tested``: a method is missing, or fewer than 2 paired seeds.

:func:`best_contrastive_row`: the contrastive row (any method with a contrastive loss, any levers)
with the highest mean validation UA; the report compares it with ``la`` over paired seeds.
"""

from __future__ import annotations

from typing import Any

from asymcl.experiments.runs import row_display, row_method
from asymcl.training.methods import PROPOSED, REGISTRY

CLAIM_OPPONENTS = ("cl", "fcl")
CLAIM_METRICS = ("wa", "ua")
CLAIM_TEXT = "AFCL > CL and AFCL > FCL, on WA and on UA"


def _fmt(d: dict[str, Any]) -> str:
    return f"{d['mean'] * 100:+.1f} [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]"


def paper_claim(numbers: dict[str, Any], split: str | None, title: str = "") -> dict[str, Any]:
    """``{"verdict", "split", "sentence"}`` for one setting (see the module docstring): ``split``
    is the main test split, ``title`` how the report names it."""
    if split is None:
        return {"verdict": "not tested", "split": None,
                "sentence": f"The paper's claim ({CLAIM_TEXT}) could not be tested: no test split."}
    head = f"The paper's claim ({CLAIM_TEXT}) on the {title or split} set"
    missing = [m.upper() for m in (PROPOSED, *CLAIM_OPPONENTS) if m not in numbers["table"]]
    if missing:
        return {"verdict": "not tested", "split": split,
                "sentence": f"{head} could not be tested: no {' or '.join(missing)} runs."}
    entries = {(opponent, metric): numbers["comparisons"][opponent][f"{split}.{metric}"]
               for opponent in CLAIM_OPPONENTS for metric in CLAIM_METRICS}
    if any(d["n"] < 2 for d in entries.values()):
        return {"verdict": "not tested", "split": split,
                "sentence": f"{head} could not be tested: fewer than 2 paired seeds."}

    def listed(keys) -> str:
        return "; ".join(f"AFCL - {o.upper()} on {m.upper()} {_fmt(entries[(o, m)])}" for o, m in keys)

    worse = [key for key, d in entries.items() if d["high"] < 0]
    unclear = [key for key, d in entries.items() if not d["low"] > 0 and not d["high"] < 0]
    if worse:
        verdict, detail = "did not hold", f"AFCL was measurably worse ({listed(worse)})"
    elif unclear:
        verdict, detail = "could not be told apart", f"the 95% interval includes 0 for {listed(unclear)}"
    else:
        verdict, detail = "held", f"all four paired 95% intervals lie above 0 ({listed(entries)})"
    return {"verdict": verdict, "split": split, "sentence": f"{head} {verdict}: {detail}."}


def best_contrastive_row(numbers: dict[str, Any]) -> str | None:
    """The row of a contrastive method (any levers) with the highest mean validation UA."""
    table = numbers["table"]
    rows = [row for row in table if REGISTRY.get(row_method(row)) is not None
            and REGISTRY[row_method(row)].contrastive and table[row]["val.ua"]["n"]]
    return max(rows, key=lambda row: table[row]["val.ua"]["mean"]) if rows else None


def best_recipe_sentence(entry: dict[str, Any] | None, split: str | None, title: str = "") -> str | None:
    """One sentence: the best contrastive recipe against the baseline on ``split`` UA."""
    if entry is None or split is None:
        return None
    d = entry[f"{split}.ua"]
    name = row_display(entry["baseline"])
    head = f"Best contrastive recipe on validation UA: {entry['display']}; against {name} on {title or split} UA"
    if d["n"] < 2:
        return f"{head} {d['mean'] * 100:+.1f} points (fewer than 2 paired seeds, no interval)."
    verdict = "better" if d["low"] > 0 else "worse" if d["high"] < 0 else "not separable"
    return f"{head}: {_fmt(d)} points ({verdict})."

"""Report step 1-2: runs grouped into settings, and model selection on validation UA.

Per setting (dataset, imbalance, class subset) and method, runs are grouped by the hyperparameters
that differ between them (seeds excluded); the group with the highest mean validation UA is chosen.
The test splits play no part in the choice. :func:`setting_numbers` then gathers the chosen
groups' numbers (mean ± std over seeds, paired differences against the proposed method).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asymcl.data.spec import DATASETS
from asymcl.experiments.claims import best_contrastive_row, paper_claim
from asymcl.experiments.report_numbers import (
    CandidateScore,
    Comparison,
    Difference,
    RecipeComparison,
    Score,
    SettingNumbers,
    TableRow,
    split_title,
)
from asymcl.experiments.runs import LEVERS, METHOD_KEY, METHODS, TEST_SPLITS, Run, row_display, row_method
from asymcl.experiments.stats import mean_std, paired_difference
from asymcl.training.methods import PROPOSED

#: Keys that never distinguish hyperparameter settings (seeds are what we average over; paths and
#: devices do not change the method).
IGNORED_KEYS = {
    "seed",
    "data.seed",
    METHOD_KEY,
    "loss.name",
    "data.root",
    "data.in_memory",
    "data.num_workers",
    *LEVERS,
}  # the levers are part of the row (runs.row_key), not a hyperparameter to choose
IGNORED_SECTIONS = ("trainer.",)
SETTING_KEYS = ("data.dataset", "data.imbalance", "data.classes")
_SYMBOLS = {"loss.gamma": "γ", "loss.eta": "η", "loss.temperature": "τ"}
# --------------------------------------------------------------------------------------------
# Grouping and selection


def hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def method_order(row: str) -> tuple:
    """Rows in the registry's order of their method (baselines first), levers after the plain row."""
    method = row_method(row)
    return (METHODS.index(method) if method in METHODS else len(METHODS), row)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_SECTIONS)


@dataclass
class Candidate:
    """All seeds of one method at one hyperparameter setting."""

    method: str
    params: dict[str, Any]  # the distinguishing keys (loss.* the method uses + varied keys)
    runs: list[Run]

    @property
    def val_ua(self) -> float:
        scores = [run.val_ua for run in self.runs if run.val_ua is not None]
        return float(np.mean(scores)) if scores else float("nan")

    def label(self) -> str:
        return format_params(self.params)


def format_params(params: dict[str, Any]) -> str:
    if not params:
        return "–"
    parts = []
    for key, value in params.items():
        name = _SYMBOLS.get(key, key)
        parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


@dataclass
class Setting:
    """One dataset/imbalance/class subset and its runs."""

    label: str
    slug: str
    runs: list[Run]
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    chosen: dict[str, Candidate] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return sorted(self.chosen, key=method_order)

    @property
    def test_splits(self) -> list[str]:
        present = {split for run in self.runs for split in run.test_splits()}
        return [split for split in TEST_SPLITS if split in present]

    def class_names(self) -> list[str]:
        for run in self.runs:
            names = run.class_names()
            if names:
                return names
        n = len(self.runs[0].metrics.get("final", {}).get("test", {}).get("per_class_recall", []))
        return [str(i) for i in range(n)]


def _setting_label(run: Run) -> str:
    dataset = str(run.config.get("data.dataset", "?"))
    info = DATASETS.get(dataset)  # a plugin dataset's runs reported without the plugin: no entry
    if info is not None and info.labelled_by_root and run.config.get("data.root"):
        dataset += f" {Path(str(run.config['data.root'])).name}"
    # Without a profile the training set keeps the source's own class distribution.
    imbalance = run.config.get("data.imbalance") or "natural distribution"
    label = f"{dataset}, {imbalance}"
    classes = run.config.get("data.classes")
    if classes:
        label += f", classes {list(classes)}"
    return label


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def group_settings(runs: Sequence[Run]) -> list[Setting]:
    by_setting: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        by_setting[tuple(hashable(run.config.get(key)) for key in SETTING_KEYS)].append(run)
    settings = []
    for key in sorted(by_setting, key=lambda k: [_natural_key(str(v)) for v in k]):
        members = by_setting[key]
        label = _setting_label(members[0])
        settings.append(Setting(label, _slug(label), members))
    return settings


def select(setting: Setting) -> None:
    """Fill ``setting.candidates`` and ``setting.chosen`` (best mean validation UA per row: method
    plus levers)."""
    from asymcl.experiments.runs import METHOD_PARAMS

    by_method: dict[str, list[Run]] = defaultdict(list)
    for run in setting.runs:
        by_method[run.row].append(run)
    for method, runs in by_method.items():
        keys = sorted({k for run in runs for k in run.config} - {k for k in SETTING_KEYS})
        varied = [k for k in keys if not _ignored(k) and len({hashable(run.config.get(k)) for run in runs}) > 1]
        shown = [
            k
            for k in ("loss.gamma", "loss.eta", "loss.temperature")
            if k in METHOD_PARAMS.get(row_method(method), ()) or k in varied
        ]
        shown += [k for k in varied if k not in shown]
        groups: dict[tuple, list[Run]] = defaultdict(list)
        for run in runs:
            groups[tuple(hashable(run.config.get(k)) for k in shown)].append(run)
        candidates = [
            Candidate(
                method,
                {k: members[0].config.get(k) for k in shown},
                sorted(members, key=lambda r: _natural_key(str(r.seed))),
            )
            for _, members in sorted(groups.items(), key=lambda item: [_natural_key(str(v)) for v in item[0]])
        ]
        setting.candidates[method] = candidates
        scored = [c for c in candidates if not math.isnan(c.val_ua)]
        if not scored:
            continue
        # Ties go to the candidate with more seeds, then to the first in the sorted order.
        setting.chosen[method] = max(scored, key=lambda c: (c.val_ua, len(c.runs)))


# --------------------------------------------------------------------------------------------
# Numbers


def metric_values(candidate: Candidate, split: str, metric: str) -> dict[Any, float]:
    """seed -> value of ``final[split][metric]`` for the candidate's runs that have it."""
    out = {}
    for run in candidate.runs:
        value = run.split_metric(split, metric) if split != "val" or metric != "ua" else run.val_ua
        if value is not None:
            out[run.seed] = float(value)
    return out


def _paired(setting: Setting, first: str, second: str) -> dict[str, Difference]:
    """Row ``first`` minus row ``second`` over the seeds both have, per test split and metric."""
    entry = {}
    for split in setting.test_splits:
        for metric in ("ua", "wa"):
            mine = metric_values(setting.chosen[first], split, metric)
            theirs = metric_values(setting.chosen[second], split, metric)
            seeds = [s for s in mine if s in theirs]
            diff = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
            entry[f"{split}.{metric}"] = Difference(diff.mean, diff.low, diff.high, diff.n, seeds, diff.p)
    return entry


def validation_counts(runs: Sequence[Run]) -> dict[str, int] | None:
    """Validation images per class (metrics.json ``counts.val``) of the first run that records them."""
    for run in runs:
        counts = (run.metrics.get("counts") or {}).get("val")
        if counts:
            return {str(k): int(v) for k, v in counts.items()}
    return None


def is_baseline_row(row: str) -> bool:
    """A plain row of a method without a contrastive loss (probe, CE, LA)."""
    from asymcl.training.methods import REGISTRY

    method = REGISTRY.get(row)
    return method is not None and not method.contrastive


def setting_numbers(setting: Setting) -> SettingNumbers:
    """The table and the paired comparisons of one setting, unrounded (what report.json holds)."""
    columns = [("val", "ua")] + [(split, metric) for split in setting.test_splits for metric in ("wa", "ua")]
    table = {}
    for method in setting.methods:
        candidate = setting.chosen[method]
        scores = {}
        for split, metric in columns:
            stats = mean_std(list(metric_values(candidate, split, metric).values()))
            scores[f"{split}.{metric}"] = Score(stats.mean, stats.std, stats.n)
        table[method] = TableRow(
            candidate.params,
            [run.seed for run in candidate.runs],
            len(setting.candidates[method]),
            validation_counts(candidate.runs),
            scores,
        )
    comparisons = {}
    if PROPOSED in setting.chosen:
        for method in setting.methods:
            if method != PROPOSED:
                comparisons[method] = Comparison(PROPOSED, method, _paired(setting, PROPOSED, method))
    main = setting.test_splits[0] if setting.test_splits else None
    title = split_title(main, "test_imbalanced" in setting.test_splits) if main else ""
    best = best_contrastive_row(table)
    # The contrastive row validation chose, against every baseline row of the table (the probe, CE,
    # LA: the methods without a contrastive loss, plain rows only).
    best_vs_baselines = [
        RecipeComparison(
            best, baseline, _paired(setting, best, baseline), display=row_display(best), split=main, split_title=title
        )
        for baseline in setting.methods
        if best is not None and is_baseline_row(baseline)
    ]
    candidates = {
        m: [CandidateScore(c.params, c.val_ua, len(c.runs)) for c in cands] for m, cands in setting.candidates.items()
    }
    return SettingNumbers(
        setting.label,
        [f"{s}.{m}" for s, m in columns],
        table,
        comparisons,
        paper_claim(table, comparisons, main, title),
        best_vs_baselines,
        candidates,
    )

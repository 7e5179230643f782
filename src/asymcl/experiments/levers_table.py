"""The lever ablation's table (``asymcl levers``), for one preset (named in its heading and in
``levers.json``): each arm's validation UA, its paired gain against
its reference, which levers the rule of :mod:`asymcl.experiments.levers` keeps, the test numbers
(marked as not used for selection, except the combination's, which are the recipe's result) and
what each arm cost (extraction time, cache disk, training time, from ``<arm>/levers-cost.json``).

Written into ``OUT/levers/``: ``levers.md``, ``levers.csv`` (one row per arm), ``levers-methods.csv``
(per arm and method, for reading only), ``levers.json`` (the gains and the selection) and
``runs.csv`` (every run, the project's per-run record). Test WA is read on the test set cut to the
training profile where the runs have one (Fashion-MNIST-LT's ``test_imbalanced``; on its balanced
test set WA equals UA), as the claim grid reads it (:func:`asymcl.experiments.claim_grid.metric_split`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymcl.atomic import atomic_write_text
from asymcl.experiments.claim_grid import metric_split
from asymcl.experiments.levers import (
    BASE,
    COMBINED,
    DEFAULT_PRESET,
    SEEDS,
    LeverPreset,
    combine,
    combined_overrides,
    kept,
    lever_preset,
    same_as,
)
from asymcl.experiments.runs import Run, load_runs
from asymcl.experiments.stats import PairedDifference, paired_difference
from asymcl.experiments.sweep_settings import split_stale_runs, stale_sentence

COST_FILE = "levers-cost.json"
NAN = float("nan")


def _arm_runs_and_stale(out: Path, name: str, methods: Sequence[str]) -> tuple[list[Run], list[Run]]:
    folder = Path(out) / name
    if not folder.is_dir():
        return [], []
    return split_stale_runs([run for run in load_runs(folder) if run.method in methods])


def arm_runs(out: Path, name: str, methods: Sequence[str]) -> list[Run]:
    """The finished runs of the arm's methods under ``out/name``, less those whose setting the arm's
    ``sweep.yaml`` no longer gives (an arm redrawn after a change of the preset's settings keeps the
    old runs on disk; the rule must not pair them, as :func:`asymcl.experiments.report.build_report`
    does not)."""
    return _arm_runs_and_stale(out, name, methods)[0]


def _arm_names(out: Path, preset: LeverPreset) -> list[str]:
    return [spec.name for spec in preset.arms] + ([COMBINED] if (Path(out) / COMBINED).is_dir() else [])


def _load_arms(out: Path, names: Sequence[str], methods: Sequence[str]) -> dict[str, tuple[list[Run], list[Run]]]:
    """``{arm: (runs, stale runs)}``, each arm's folder read once: the table, the per-method CSV,
    the WA split and runs.csv all look at the same runs."""
    return {name: _arm_runs_and_stale(out, name, methods) for name in names}


def _value(run: Run, split: str, metric: str) -> float | None:
    if split == "val" and metric == "ua":
        return run.val_ua
    value = run.split_metric(split, metric)
    return None if value is None else float(value)


def seed_means(runs: Sequence[Run], methods: Sequence[str], split: str = "val", metric: str = "ua") -> dict[int, float]:
    """``{seed: the metric averaged over the methods}`` for the seeds on which every method finished
    (a seed missing a method would average another set of rows)."""
    values: dict[tuple[str, int], float] = {}
    for run in runs:
        value = _value(run, split, metric)
        if value is not None:
            values[(run.method, int(run.seed))] = value
    return {
        seed: float(np.mean([values[(m, seed)] for m in methods]))
        for seed in sorted({seed for _, seed in values})
        if all((m, seed) in values for m in methods)
    }


def paired(first: Mapping[int, float], second: Mapping[int, float]) -> PairedDifference:
    """``first - second`` paired over the seeds both have."""
    seeds = sorted(set(first) & set(second))
    return paired_difference([first[s] for s in seeds], [second[s] for s in seeds])


@dataclass
class Selection:
    """The rule applied to what is finished: gains, the arms kept, the combination."""

    means: dict[str, dict[int, float]]  # arm -> seed -> validation UA over the methods
    gains: dict[str, PairedDifference]  # against the arm's reference
    over_base: dict[str, PairedDifference]
    chosen: list[str]
    overrides: dict[str, Any]
    complete: bool  # every single-lever arm has every seed: the combination may run
    preset: LeverPreset

    @property
    def recipe(self) -> str:
        """The arm whose test numbers are the recipe's: an existing arm or ``combined``."""
        return same_as(self.overrides, self.preset) or COMBINED


def select_levers(
    out: Path,
    methods: Sequence[str],
    preset: str | LeverPreset = DEFAULT_PRESET,
    runs: Mapping[str, Sequence[Run]] | None = None,
) -> Selection:
    """The rule on the finished runs under ``out`` (or on ``runs``, ``{arm: runs}``, when the caller
    has read them already)."""
    arms = lever_preset(preset).arms
    if runs is None:
        runs = {spec.name: arm_runs(out, spec.name, methods) for spec in arms}
    means = {spec.name: seed_means(runs[spec.name], methods) for spec in arms}
    gains, over_base = {}, {}
    for spec in arms:
        if spec.reference and means[spec.name] and means[spec.reference]:
            gains[spec.name] = paired(means[spec.name], means[spec.reference])
        if spec.name != BASE and means[spec.name] and means[BASE]:
            over_base[spec.name] = paired(means[spec.name], means[BASE])
    complete = all(set(SEEDS) <= set(means[spec.name]) for spec in arms)
    chosen = combine(gains, over_base, preset)
    return Selection(
        means, gains, over_base, chosen, combined_overrides(chosen, preset), complete, lever_preset(preset)
    )


def read_cost(folder: Path) -> dict[str, Any]:
    path = Path(folder) / COST_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _mean(values: Mapping[int, float]) -> float:
    return float(np.mean(list(values.values()))) if values else NAN


def table_rows(
    out: Path, methods: Sequence[str], selection: Selection, runs_by_arm: Mapping[str, Sequence[Run]] | None = None
) -> list[dict[str, Any]]:
    """One row per arm that has finished runs (the combination last)."""
    names = _arm_names(out, selection.preset)
    if runs_by_arm is None:
        runs_by_arm = {name: arm_runs(out, name, methods) for name in names}
    rows = []
    for name in names:
        runs = runs_by_arm[name]
        if not runs:
            continue
        spec = selection.preset.arm(name) if name != COMBINED else None
        val = selection.means.get(name) or seed_means(runs, methods)
        gain = selection.gains.get(name) if spec else paired(val, selection.means[BASE])
        cost = read_cost(Path(out) / name)
        changes = spec.keys if spec else selection.overrides
        rows.append(
            {
                "lever": spec.lever if spec else COMBINED,
                "arm": name,
                "changes": ", ".join(f"{k}={v}" for k, v in changes.items()) or "-",
                "reference": (spec.reference if spec else BASE) or "",
                "seeds": len(val),
                "val_ua": _mean(val),
                "gain": gain.mean if gain else NAN,
                "gain_low": gain.low if gain else NAN,
                "gain_high": gain.high if gain else NAN,
                "kept": "" if not spec or not spec.reference else ("yes" if kept(gain) else "no"),
                "chosen": "yes" if name in selection.chosen else "",
                "test_ua": _mean(seed_means(runs, methods, "test", "ua")),
                "test_wa": _mean(seed_means(runs, methods, metric_split(runs, "wa"), "wa")),
                "test_use": "the recipe's result"
                if name == selection.recipe and selection.complete
                else "not used for selection",
                "extraction_s": cost.get("extraction_s", NAN),
                "cache_bytes": cost.get("cache_bytes", NAN),
                "extracted_bytes": cost.get("extracted_bytes", NAN),
                "training_s": cost.get("training_s", NAN),
                "timed_on": "; ".join(cost.get("cpus", [])),
                "extracted_with": "; ".join(cost.get("extraction_engines", [])),
                "note": spec.note if spec else "the levers kept on validation, together",
            }
        )
    return rows


def _pct(value: float, sign: str = "") -> str:
    return "–" if value is None or math.isnan(value) else f"{value * 100:{sign}.1f}"


def _minutes(seconds: float) -> str:
    return "–" if seconds is None or math.isnan(seconds) else f"{seconds / 60:.1f} min"


def _mb(size: float) -> str:
    return "–" if size is None or math.isnan(size) else f"{size / 2**20:,.0f} MB"


def write_table(out: Path, methods: Sequence[str], preset: str | LeverPreset = DEFAULT_PRESET) -> dict[str, Path]:
    """Apply the rule to the finished runs of ``preset``'s ablation under ``out`` and write ``out/levers/*``."""
    from asymcl.experiments.runs_table import write_runs_csv

    out = Path(out)
    loaded = _load_arms(out, _arm_names(out, lever_preset(preset)), methods)
    runs = {name: fresh for name, (fresh, _) in loaded.items()}
    selection = select_levers(out, methods, preset, runs)
    rows = table_rows(out, methods, selection, runs)
    wa_split = _wa_split(runs, [row["arm"] for row in rows])
    folder = out / "levers"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}" for name in ("levers.md", "levers.csv", "levers-methods.csv", "levers.json")}
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(paths["levers.csv"], text.getvalue())
    atomic_write_text(paths["levers-methods.csv"], _per_method_csv(runs, methods, [r["arm"] for r in rows]))
    atomic_write_text(
        paths["levers.json"],
        json.dumps(
            {
                "preset": selection.preset.name,
                "dataset": selection.preset.title,
                "test_wa_split": wa_split,
                "methods": list(methods),
                "seeds": sorted({seed for arm in selection.means.values() for seed in arm}),
                "complete": selection.complete,
                "gains": {k: vars(v) for k, v in selection.gains.items()},
                "gains_over_base": {k: vars(v) for k, v in selection.over_base.items()},
                "chosen": selection.chosen,
                "combined_overrides": selection.overrides,
                "recipe_arm": selection.recipe,
            },
            indent=1,
            default=str,
        ),
    )
    write_runs_csv(folder / "runs.csv", [(row["arm"], runs[row["arm"]]) for row in rows], root=out)
    stale = [run for row in rows for run in loaded[row["arm"]][1]]
    atomic_write_text(paths["levers.md"], _markdown(rows, selection, methods, wa_split, stale_sentence(stale)))
    return paths


def _per_method_csv(runs_by_arm: Mapping[str, Sequence[Run]], methods: Sequence[str], names: Sequence[str]) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["arm", "method", "seeds", "val_ua", "test_ua", "test_wa"])
    for name in names:
        runs = runs_by_arm[name]
        for method in methods:
            mine = [r for r in runs if r.method == method]
            val = seed_means(mine, [method])
            test = seed_means(mine, [method], "test", "ua")
            wa = seed_means(mine, [method], metric_split(runs, "wa"), "wa") if mine else {}
            writer.writerow([name, method, len(val), _mean(val), _mean(test), _mean(wa)])
    return text.getvalue()


def _wa_split(runs_by_arm: Mapping[str, Sequence[Run]], names: Sequence[str]) -> str | None:
    runs = [run for name in names for run in runs_by_arm[name]]
    return metric_split(runs, "wa") if runs else None


def _markdown(
    rows: Sequence[dict[str, Any]],
    selection: Selection,
    methods: Sequence[str],
    wa_split: str | None,
    stale: str = "",
) -> str:
    preset = selection.preset
    lines = [
        f"# {preset.title} lever ablation (issue 23)",
        "",
        f"Preset {preset.name}: `asymcl reproduce {preset.name} --profile pretrained`'s recipe "
        f"(`asymcl levers --preset {preset.name}`).",
        "",
        f"Methods: {', '.join(methods)}; 1 setting each (its space's default); seeds {', '.join(map(str, SEEDS))} "
        "in every arm (more where `--seeds` asked: the seeds column), "
        f"{preset.splits}. Validation UA is averaged over the methods per seed; the gain is "
        "paired over the seeds against the arm's reference (95% t interval). A lever value is kept when the "
        "interval is above 0 (asymcl.experiments.levers). Test numbers of the single arms are NOT used for "
        "selection; the combination's are the recipe's result.",
        "",
        "| lever | arm | changes | against | seeds | val UA | gain [95% CI] | kept (rule 2) | test UA | test WA "
        "| test numbers | extraction | cache disk | training |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = f"{_pct(r['gain'], '+')} [{_pct(r['gain_low'], '+')}, {_pct(r['gain_high'], '+')}]"
        kept_words = (r["kept"] or "–") + (", chosen" if r["chosen"] else "")
        lines.append(
            f"| {r['lever']} | {r['arm']} | {r['changes']} | {r['reference'] or '–'} | {r['seeds']} | "
            f"{_pct(r['val_ua'])} | {gain if r['reference'] else '–'} | {kept_words} | {_pct(r['test_ua'])} | "
            f"{_pct(r['test_wa'])} | {r['test_use']} | {_minutes(r['extraction_s'])} | {_mb(r['cache_bytes'])} | "
            f"{_minutes(r['training_s'])} |"
        )
    lines.append("")
    if not selection.complete:
        lines.append("The ablation is not finished: the combination is chosen once every arm has every seed.")
    else:
        kept_now = [name for name, gain in selection.gains.items() if kept(gain)]
        lines.append(f"Kept on validation: {', '.join(kept_now) or 'none'}.")
        lines.append(
            f"Combination: {' + '.join(selection.chosen) or 'the base recipe'}; its test numbers are "
            f"those of arm `{selection.recipe}`."
        )
    if stale:
        lines.append(stale)
    if wa_split not in (None, "test"):
        lines.append(
            f"Test WA is on `{wa_split}`, the test set cut to the training profile (on the balanced test set "
            "WA equals UA)."
        )
    lines.append(
        "Extraction: wall time of the arm's own feature-cache builds (entries an earlier arm "
        "built are reused, so it is the lever's extra cost); cache disk: the entries the arm reads."
    )
    machines = sorted({cpu for r in rows for cpu in r["timed_on"].split("; ") if cpu})
    if machines:
        lines.append(f"Timed on: {' and '.join(machines)} (`levers.csv` says which arm ran where).")
    engines = sorted({e for r in rows for e in r["extracted_with"].split("; ") if e})
    if engines:
        lines.append(f"Extracted with: {' and '.join(engines)} (`levers.csv`, column `extracted_with`, per arm).")
    return "\n".join(lines) + "\n"

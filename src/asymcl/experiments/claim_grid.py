"""The paper's claim across a grid of cells: AFCL against CL and FCL (and ACL against CL), with power.

The paper claims that AFCL beats CL and FCL on WA and UA on imbalanced data, more so as the
imbalance grows. One table of three seeds cannot answer that: a paired t interval on 2 degrees of
freedom is about 4.3 standard errors wide. :func:`analyse` takes the runs of a grid (imbalance
ratio x stage-1 batch size x arm, many seeds per cell) and, per cell:

* chooses each method's setting on validation UA (:func:`asymcl.experiments.selection.select`,
  the report's own rule);
* computes the paired differences of :data:`COMPARISONS` on UA (the balanced test split) and WA
  (the test split cut to the training profile, where the runs have it: :data:`METRIC_SPLITS`) over
  the seeds both rows have (scipy's paired t interval, :func:`asymcl.experiments.stats.paired_difference`);
* states the minimum detectable difference: the true mean difference that this many seeds, with
  the observed spread of the differences, would detect with 80% power at 5% (statsmodels);
* gives a verdict Holm-adjusted over the whole grid (every cell, comparison and metric is one
  family).

A cell is a value of each axis in :data:`AXES`; the *arm* is the folder a run sits in under the
grid's root (one sweep file per arm, e.g. ``tuned/``, ``authors/``, ``eta-scaled/``), so arms with
the same method names stay apart. ``asymcl claim RUNS_DIR`` writes ``claim.md``, ``claim.json``,
``claim.csv`` (the table), ``runs.csv`` and the figure (ΔUA and ΔWA against rho with 95%
intervals, one panel per batch size).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymcl.atomic import atomic_write_text
from asymcl.errors import DataError
from asymcl.experiments.report_numbers import METRIC_SPLITS
from asymcl.experiments.runs import Run, row_display
from asymcl.experiments.selection import Setting, metric_values, select
from asymcl.experiments.stats import holm, min_detectable_difference, paired_difference

#: (first, second) rows: the paper's claim (AFCL over CL and FCL) and the asymmetric term alone.
COMPARISONS = (("afcl", "cl"), ("afcl", "fcl"), ("acl", "cl"))
METRICS = ("ua", "wa")
#: Seeds a comparison needs for a verdict (the protocol's minimum, method.md). With 2, the paired t
#: test has 1 degree of freedom and two equal differences (one test image apart in both seeds) give
#: p near 0: the first part of the real grid had two such "separations" of 0.1 point.
MIN_SEEDS = 3
#: The grid's axes besides the arm: the imbalance profile and the stage-1 batch size.
AXES = ("data.imbalance", "stage1.batch_size")


def imbalance_ratio(profile: Any) -> float:
    """``exp:100`` -> 100.0; ``exp:100:1000`` -> 100.0; ``cap:10`` -> 10.0; no profile -> 1.0.

    No profile reads as balanced, which only a balanced source is: a grid over a naturally
    imbalanced pool writes that pool as ``cap:R`` at its own ratio R
    (:func:`asymcl.experiments.claim_presets.natural_ratio`), so its cell sits at R on the rho axis.
    """
    if not profile:
        return 1.0
    match = re.match(r"[a-z]+:([0-9.]+)", str(profile))
    if not match:
        raise DataError(f"cannot read an imbalance ratio from {profile!r}")
    return float(match.group(1))


@dataclass
class Cell:
    arm: str
    values: tuple[Any, ...]  # one per axis
    runs: list[Run]

    @property
    def rho(self) -> float:
        return imbalance_ratio(self.values[0])

    @property
    def label(self) -> str:
        parts = [f"{axis.split('.')[-1]}={value}" for axis, value in zip(AXES, self.values, strict=True)]
        return f"{self.arm}: " + ", ".join(parts) if self.arm else ", ".join(parts)


def _arm(run: Run, root: Path) -> str:
    try:
        relative = run.path.resolve().relative_to(root.resolve())
    except ValueError:
        return ""
    return str(relative.parent) if len(relative.parts) > 1 else ""


def cells(runs: Sequence[Run], root: Path) -> list[Cell]:
    grouped: dict[tuple, list[Run]] = {}
    for run in runs:
        key = (_arm(run, root), *(run.config.get(axis) for axis in AXES))
        grouped.setdefault(key, []).append(run)
    out = [Cell(key[0], key[1:], members) for key, members in grouped.items()]
    return sorted(out, key=lambda c: (c.arm, str(c.values[1]), c.rho))


def metric_split(runs: Sequence[Run], metric: str) -> str:
    """The test split ``metric`` is compared on in these runs (:data:`METRIC_SPLITS`)."""
    splits = {split for run in runs for split in run.test_splits()}
    for split in METRIC_SPLITS[metric]:
        if split in splits:
            return split
    raise DataError("the grid's runs have no test split")


def cell_rows(cell: Cell) -> list[dict[str, Any]]:
    """One row per comparison and metric of ``cell`` (unadjusted)."""
    setting = Setting(cell.label, re.sub(r"[^a-z0-9]+", "-", cell.label.lower()).strip("-"), cell.runs)
    select(setting)
    rows = []
    for first, second in COMPARISONS:
        if first not in setting.chosen or second not in setting.chosen:
            continue
        for metric in METRICS:
            split = metric_split(cell.runs, metric)
            mine = metric_values(setting.chosen[first], split, metric)
            theirs = metric_values(setting.chosen[second], split, metric)
            seeds = sorted((s for s in mine if s in theirs), key=str)
            a = [mine[s] for s in seeds]
            b = [theirs[s] for s in seeds]
            diff = paired_difference(a, b)
            sd = float(np.std(np.subtract(a, b), ddof=1)) if len(seeds) > 1 else float("nan")
            rows.append(
                {
                    "arm": cell.arm,
                    **{axis: value for axis, value in zip(AXES, cell.values, strict=True)},
                    "rho": cell.rho,
                    "comparison": f"{row_display(first)} - {row_display(second)}",
                    "first": first,
                    "second": second,
                    "metric": metric,
                    "split": split,
                    "n": diff.n,
                    "mean": diff.mean,
                    "low": diff.low,
                    "high": diff.high,
                    "p": diff.p,
                    "sd": sd,
                    "mdd": min_detectable_difference(sd, diff.n),
                    "settings": {first: setting.chosen[first].params, second: setting.chosen[second].params},
                }
            )
    return rows


def analyse(runs: Sequence[Run], root: Path) -> list[dict[str, Any]]:
    """Every cell's rows, Holm-adjusted over the whole grid (``p_holm``, ``verdict``)."""
    rows = [row for cell in cells(runs, root) for row in cell_rows(cell)]
    reject, adjusted = holm([row["p"] if row["n"] >= MIN_SEEDS else float("nan") for row in rows])
    for row, r, a in zip(rows, reject, adjusted, strict=True):
        row["p_holm"] = a
        if row["n"] < MIN_SEEDS:
            row["verdict"] = "too few seeds"
        elif r:
            row["verdict"] = "first better" if row["mean"] > 0 else "first worse"
        else:
            row["verdict"] = "not separable"
    return rows


def _pct(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:+.1f}"


def figure(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """ΔUA (top) and ΔWA (bottom) against rho, 95% intervals, one column per (arm, batch size)."""
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({(row["arm"], row["stage1.batch_size"]) for row in rows}, key=str)
    fig, axes = plt.subplots(2, len(columns), figsize=(4.2 * len(columns), 6.4), squeeze=False, sharey="row")
    comparisons = list(dict.fromkeys(row["comparison"] for row in rows))
    for j, (arm, batch) in enumerate(columns):
        for i, metric in enumerate(METRICS):
            ax = axes[i][j]
            for k, name in enumerate(comparisons):
                points = sorted(
                    (
                        r
                        for r in rows
                        if r["arm"] == arm
                        and r["stage1.batch_size"] == batch
                        and r["metric"] == metric
                        and r["comparison"] == name
                    ),
                    key=lambda r: r["rho"],
                )
                if not points:
                    continue
                x = np.array([r["rho"] for r in points]) * (1 + 0.04 * (k - 1))  # side by side on a log axis
                y = np.array([r["mean"] for r in points]) * 100
                low = y - np.array([r["low"] for r in points]) * 100
                high = np.array([r["high"] for r in points]) * 100 - y
                ax.errorbar(x, y, yerr=[np.nan_to_num(low), np.nan_to_num(high)], marker="o", capsize=3, label=name)
            ax.axhline(0, color="grey", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("imbalance ratio rho")
            ax.set_ylabel(f"Δ{metric.upper()} (points)")
            ax.set_title(f"{arm + ', ' if arm else ''}batch {batch}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    from asymcl.atomic import atomic_write_bytes

    atomic_write_bytes(path, buffer.getvalue())
    return True


_CSV_COLUMNS = (
    "arm",
    *AXES,
    "rho",
    "comparison",
    "metric",
    "split",
    "n",
    "mean",
    "low",
    "high",
    "p",
    "p_holm",
    "sd",
    "mdd",
    "verdict",
)


def write_claim(runs_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Analyse every finished run under ``runs_dir`` (or a ``runs.csv``) and write the results."""
    from asymcl.experiments.report import load_runs_or_table
    from asymcl.experiments.runs_table import write_runs_csv
    from asymcl.experiments.sweep_settings import split_stale_runs, stale_sentence

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    runs, _, from_csv = load_runs_or_table(runs_dir)
    runs, stale = split_stale_runs(runs)
    root = runs_dir.parent if from_csv else runs_dir
    rows = analyse(runs, root)
    if not rows:
        raise DataError(
            f"no cell under {runs_dir} has both rows of any of "
            + ", ".join(f"{a.upper()} - {b.upper()}" for a, b in COMPARISONS)
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = {
        "csv": out_dir / "claim.csv",
        "json": out_dir / "claim.json",
        "md": out_dir / "claim.md",
        "figure": out_dir / "claim.png",
    }
    atomic_write_text(paths["csv"], text.getvalue())
    family = sum(r["n"] >= MIN_SEEDS for r in rows)
    atomic_write_text(
        paths["json"],
        json.dumps(
            {"runs_dir": str(runs_dir), "family_size": family, "rows": rows},
            indent=1,
            default=str,
        ),
    )
    if not from_csv:
        write_runs_csv(out_dir / "runs.csv", [(c.label, c.runs) for c in cells(runs, root)], root=root)
    figure(rows, paths["figure"])
    holm = (
        f"a verdict Holm-adjusted over all {family} comparisons of the grid (a cell with fewer than {MIN_SEEDS} "
        "seeds gets no verdict)"
        if family
        else f"a verdict, Holm-adjusted over the grid, for each cell with {MIN_SEEDS} seeds (no cell has them yet)"
    )
    lines = [
        "# The paper's claim across the grid",
        "",
        f"{len(runs)} runs, {len({(r['arm'], r['data.imbalance'], r['stage1.batch_size']) for r in rows})} cells. "
        # "main": Fashion-MNIST's balanced test split, or ISIC's official test set at its natural imbalance.
        "Per cell each method's setting is chosen on validation UA; differences are paired over seeds, UA on "
        "the main test split and WA on the test split cut to the training profile where the runs have it "
        f"(the split is named beside the metric), with scipy's 95% t interval (raw) and {holm}. "
        "MDD: the true difference these seeds "
        "would detect with 80% power at 5% (paired t, statsmodels), given the observed spread."
        + (f" {stale_sentence(stale)}" if stale else ""),
        "",
        "![ΔUA and ΔWA against rho](claim.png)",
        "",
        "| arm | batch | rho | comparison | metric | seeds | Δ [95% CI] | Holm p | verdict | MDD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        interval = f"{_pct(row['mean'])} [{_pct(row['low'])}, {_pct(row['high'])}]"
        p_holm = "–" if math.isnan(row["p_holm"]) else f"{row['p_holm']:.3g}"
        mdd = "–" if math.isnan(row["mdd"]) else f"{row['mdd'] * 100:.1f}"
        lines.append(
            f"| {row['arm'] or '–'} | {row['stage1.batch_size']} | {row['rho']:g} | {row['comparison']} | "
            f"{row['metric'].upper()} ({row['split']}) | {row['n']} | {interval} | {p_holm} | {row['verdict']} | {mdd} |"
        )
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    return paths

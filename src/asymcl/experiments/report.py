"""``asymcl report``: tables, paired comparisons and figures from a directory of finished runs.

Every number comes from the run files (``metrics.json``, ``config.yaml``, ``embeddings.npz``). The
steps:

1. Runs are grouped into *settings* by dataset, imbalance and class subset.
2. Model selection, per setting and method: the runs are grouped by their hyperparameters (the
   config keys other than the seed that differ between runs, e.g. loss.gamma/loss.eta/
   loss.temperature); the group with the highest validation UA, averaged over its seeds, is chosen.
   The test splits play no part in the choice.
3. The table shows, per method at its chosen hyperparameters, mean ± sample std over seeds of the
   validation UA and of WA/UA on every test split present; the best mean of each column is bold.
4. AFCL is compared with each other method over the seeds both have: the mean of the paired
   differences and a two-sided t-based 95% confidence interval.

``report.json`` holds the same numbers unrounded, for scripts and tests.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from asymcl.errors import DataError
from asymcl.experiments.runs import METHOD_KEY, METHODS, TEST_SPLITS, Run, iter_run_dirs, load_run, run_status
from asymcl.experiments.stats import mean_std, paired_difference
from asymcl.experiments.sweep import SWEEP_MANIFEST, current_command, write_json_atomic

#: Keys that never distinguish hyperparameter settings (seeds are what we average over; paths and
#: devices do not change the method).
IGNORED_KEYS = {"seed", "data.seed", METHOD_KEY, "loss.name", "data.root", "data.in_memory", "data.num_workers"}
IGNORED_SECTIONS = ("trainer.",)
SETTING_KEYS = ("data.dataset", "data.imbalance", "data.classes")
PROPOSED = "afcl"
DISPLAY = {"ce": "CE", "supcon": "SupCon", "cl": "CL", "fcl": "FCL", "acl": "ACL", "afcl": "AFCL"}


def display(method: str) -> str:
    return DISPLAY.get(method, method)
_SYMBOLS = {"loss.gamma": "γ", "loss.eta": "η", "loss.temperature": "τ"}
_SPLIT_TITLES = {"val": "validation", "test": "test", "test_imbalanced": "test (imbalanced)"}


def split_title(split: str, has_imbalanced_test: bool = False) -> str:
    """With an imbalance profile, ``test`` is the full (balanced) official test set; without one
    (e.g. ISIC) it is the official test set as it is."""
    if split == "test" and has_imbalanced_test:
        return "test (balanced)"
    return _SPLIT_TITLES.get(split, split)


# --------------------------------------------------------------------------------------------
# Grouping and selection


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _natural_key(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _method_order(method: str) -> tuple:
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def _ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_SECTIONS)


@dataclass
class Candidate:
    """All seeds of one method at one hyperparameter setting."""

    method: str
    params: dict[str, Any]            # the distinguishing keys (loss.* the method uses + varied keys)
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
        return sorted(self.chosen, key=_method_order)

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
    if dataset in ("npz", "folder", "csv") and run.config.get("data.root"):
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
        by_setting[tuple(_hashable(run.config.get(key)) for key in SETTING_KEYS)].append(run)
    settings = []
    for key in sorted(by_setting, key=lambda k: [_natural_key(str(v)) for v in k]):
        members = by_setting[key]
        label = _setting_label(members[0])
        settings.append(Setting(label, _slug(label), members))
    return settings


def select(setting: Setting) -> None:
    """Fill ``setting.candidates`` and ``setting.chosen`` (best mean validation UA per method)."""
    from asymcl.experiments.runs import METHOD_PARAMS

    by_method: dict[str, list[Run]] = defaultdict(list)
    for run in setting.runs:
        by_method[run.method].append(run)
    for method, runs in by_method.items():
        keys = sorted({k for run in runs for k in run.config} - {k for k in SETTING_KEYS})
        varied = [k for k in keys if not _ignored(k)
                  and len({_hashable(run.config.get(k)) for run in runs}) > 1]
        shown = [k for k in ("loss.gamma", "loss.eta", "loss.temperature")
                 if k in METHOD_PARAMS.get(method, ()) or k in varied]
        shown += [k for k in varied if k not in shown]
        groups: dict[tuple, list[Run]] = defaultdict(list)
        for run in runs:
            groups[tuple(_hashable(run.config.get(k)) for k in shown)].append(run)
        candidates = [
            Candidate(method, {k: members[0].config.get(k) for k in shown},
                      sorted(members, key=lambda r: _natural_key(str(r.seed))))
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


def setting_numbers(setting: Setting) -> dict[str, Any]:
    """The table and the paired comparisons of one setting, unrounded (what report.json holds)."""
    columns = [("val", "ua")] + [(split, metric) for split in setting.test_splits for metric in ("wa", "ua")]
    table = {}
    for method in setting.methods:
        candidate = setting.chosen[method]
        row = {"params": candidate.params, "seeds": [run.seed for run in candidate.runs],
               "n_candidates": len(setting.candidates[method])}
        for split, metric in columns:
            stats = mean_std(metric_values(candidate, split, metric).values())
            row[f"{split}.{metric}"] = {"mean": stats.mean, "std": stats.std, "n": stats.n}
        table[method] = row
    comparisons = {}
    if PROPOSED in setting.chosen:
        proposed = setting.chosen[PROPOSED]
        for method in setting.methods:
            if method == PROPOSED:
                continue
            entry = {}
            for split in setting.test_splits:
                for metric in ("ua", "wa"):
                    mine = metric_values(proposed, split, metric)
                    theirs = metric_values(setting.chosen[method], split, metric)
                    seeds = [s for s in mine if s in theirs]
                    diff = paired_difference([mine[s] for s in seeds], [theirs[s] for s in seeds])
                    entry[f"{split}.{metric}"] = {"mean": diff.mean, "low": diff.low, "high": diff.high,
                                                  "n": diff.n, "seeds": seeds}
            comparisons[method] = entry
    return {"label": setting.label, "columns": [f"{s}.{m}" for s, m in columns], "table": table,
            "comparisons": comparisons,
            "candidates": {m: [{"params": c.params, "val_ua": c.val_ua, "n": len(c.runs)}
                               for c in cands] for m, cands in setting.candidates.items()}}


# --------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_class(candidate: Candidate, split: str, key: str) -> list[np.ndarray]:
    arrays = []
    for run in candidate.runs:
        value = run.metrics.get("final", {}).get(split, {}).get(key)
        if value is not None:
            arrays.append(np.asarray(value, dtype=np.float64))
    return arrays


def figure_recall(setting: Setting, split: str, path: Path) -> bool:
    plt = _pyplot()
    names = setting.class_names()
    methods = [m for m in setting.methods if _per_class(setting.chosen[m], split, "per_class_recall")]
    if not methods:
        return False
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) * max(1, len(methods) / 3) + 2), 4.6),
                           layout="constrained")
    x = np.arange(len(names))
    cmap = plt.get_cmap("tab10")
    for index, method in enumerate(methods):
        recalls = np.stack(_per_class(setting.chosen[method], split, "per_class_recall"))
        mean = recalls.mean(axis=0)
        err = recalls.std(axis=0, ddof=1) if len(recalls) > 1 else None
        ax.bar(x + (index - (len(methods) - 1) / 2) * width, mean, width, yerr=err, capsize=2,
               label=f"{display(method)} (n={len(recalls)})", color=cmap(index % 10))
    ax.set_xticks(x, names, rotation=30 if max(len(n) for n in names) > 6 else 0, ha="right" if max(len(n) for n in names) > 6 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall (mean ± std over seeds)")
    ax.set_title(f"Per-class recall, {split_title(split, 'test_imbalanced' in setting.test_splits)}\n"
                 f"{setting.label}", fontsize=10)
    fig.legend(fontsize=8, ncol=min(len(methods), 6), loc="outside lower center", frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def figure_confusion(setting: Setting, split: str, path: Path) -> bool:
    plt = _pyplot()
    names = setting.class_names()
    methods = [m for m in setting.methods if _per_class(setting.chosen[m], split, "confusion_matrix")]
    if not methods:
        return False
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    size = 1.2 + 0.42 * len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * max(3.6, size) + 1.0, rows * max(3.4, size) + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for index, (ax, method) in enumerate(zip(axes.flat, methods)):
        counts = np.sum(_per_class(setting.chosen[method], split, "confusion_matrix"), axis=0)
        totals = counts.sum(axis=1, keepdims=True)
        normalised = np.divide(counts, totals, out=np.zeros_like(counts, dtype=np.float64), where=totals > 0)
        image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        if len(names) <= 12:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if normalised[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        if index % cols == 0:
            ax.set_ylabel("true class")
        ax.set_title(f"{display(method)} ({len(setting.chosen[method].runs)} seeds summed)", fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="fraction of the true class")
    fig.suptitle(f"Confusion matrices (row-normalised), "
                 f"{split_title(split, 'test_imbalanced' in setting.test_splits)}\n{setting.label}",
                 fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def load_embeddings(run: Run, split: str = "test") -> tuple[np.ndarray, np.ndarray] | None:
    """(features (N, D), labels (N,)) of ``split`` from embeddings.npz, or None when absent.

    Accepts ``<split>_features``/``<split>_labels``, or ``features``/``labels`` with an optional
    per-row ``split`` array.
    """
    path = run.path / "embeddings.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        for feat_key, label_key in ((f"{split}_features", f"{split}_labels"),
                                    (f"{split}_embeddings", f"{split}_labels"),
                                    ("features", "labels"), ("embeddings", "labels")):
            if feat_key in keys and label_key in keys:
                features, labels = data[feat_key], data[label_key]
                if "split" in keys and feat_key in ("features", "embeddings"):
                    mask = data["split"].astype(str) == split
                    features, labels = features[mask], labels[mask]
                return np.asarray(features, dtype=np.float32), np.asarray(labels, dtype=np.int64)
    return None


def figure_tsne(setting: Setting, path: Path, max_points: int = 1000, seed: int = 0) -> bool:
    from sklearn.manifold import TSNE

    plt = _pyplot()
    names = setting.class_names()
    panels = []
    for method in setting.methods:
        for run in setting.chosen[method].runs:
            loaded = load_embeddings(run)
            if loaded is not None and len(loaded[1]) >= 5:
                panels.append((method, run, *loaded))
                break
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * 4.0), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    rng = np.random.default_rng(seed)
    for ax, (method, run, features, labels) in zip(axes.flat, panels):
        if len(labels) > max_points:
            keep = np.sort(rng.choice(len(labels), size=max_points, replace=False))
            features, labels = features[keep], labels[keep]
        perplexity = float(min(30.0, max(2.0, (len(labels) - 1) / 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
        for cls in np.unique(labels):
            mask = labels == cls
            ax.scatter(coords[mask, 0], coords[mask, 1], s=6, alpha=0.7, color=cmap(int(cls) % cmap.N),
                       label=names[cls] if cls < len(names) else str(cls))
        ax.set_title(f"{display(method)} (seed {run.seed}, {len(labels)} test points)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels_ = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="lower center", ncol=min(len(labels_), 10), markerscale=3, frameon=False)
    fig.suptitle(f"t-SNE of the encoder's features on the test set\n{setting.label}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (math.ceil(len(labels_) / 10) - 1), 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def figure_heatmap(setting: Setting, path: Path) -> bool:
    """Validation UA over gamma x eta (other hyperparameters at their chosen values), per method."""
    plt = _pyplot()
    panels = []
    for method in setting.methods:
        chosen = setting.chosen[method]
        if "loss.gamma" not in chosen.params and "loss.eta" not in chosen.params:
            continue
        others = {k: v for k, v in chosen.params.items() if k not in ("loss.gamma", "loss.eta")}
        cands = [c for c in setting.candidates[method]
                 if all(_hashable(c.params.get(k)) == _hashable(v) for k, v in others.items())]
        gammas = sorted({float(c.params.get("loss.gamma", 0) or 0) for c in cands})
        etas = sorted({float(c.params.get("loss.eta", 0) or 0) for c in cands})
        if len(gammas) * len(etas) < 2:
            continue
        panels.append((method, chosen, cands, gammas, etas))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(1.6 + 0.75 * len(p[3]) for p in panels) + 1.5,
                                                      2.2 + 0.45 * max(len(p[4]) for p in panels)),
                             squeeze=False, layout="constrained")
    values = [c.val_ua * 100 for p in panels for c in p[2] if not math.isnan(c.val_ua)]
    vmin, vmax = min(values), max(values)
    if vmax - vmin < 1e-4:
        vmin, vmax = vmin - 1, vmax + 1
    for ax, (method, chosen, cands, gammas, etas) in zip(axes.flat, panels):
        if len(cands) < 0.5 * len(gammas) * len(etas):
            # Scattered proposals (an Optuna study) fill too few cells of a grid: plot the points.
            points = [(float(c.params.get("loss.gamma", 0) or 0), float(c.params.get("loss.eta", 0) or 0),
                       c.val_ua * 100) for c in cands if not math.isnan(c.val_ua)]
            xs, ys, zs = zip(*points)
            image = ax.scatter(xs, ys, c=zs, cmap="viridis", vmin=vmin, vmax=vmax, s=40, edgecolors="k")
            ax.scatter([float(chosen.params.get("loss.gamma", 0) or 0)], [float(chosen.params.get("loss.eta", 0) or 0)],
                       marker="*", s=250, facecolors="none", edgecolors="red", label="chosen")
            if min(ys) > 0 and max(ys) / min(ys) >= 10:
                ax.set_yscale("log")
            ax.set_xlabel("γ (focusing)")
            ax.set_ylabel("η (negative weight)")
            ax.set_title(display(method), fontsize=10)
            ax.legend(fontsize=7)
            continue
        grid = np.full((len(etas), len(gammas)), np.nan)
        for c in cands:
            grid[etas.index(float(c.params.get("loss.eta", 0) or 0)),
                 gammas.index(float(c.params.get("loss.gamma", 0) or 0))] = c.val_ua * 100
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        for i in range(len(etas)):
            for j in range(len(gammas)):
                if not math.isnan(grid[i, j]):
                    is_chosen = (float(chosen.params.get("loss.eta", 0) or 0) == etas[i]
                                 and float(chosen.params.get("loss.gamma", 0) or 0) == gammas[j])
                    ax.text(j, i, f"{grid[i, j]:.1f}" + ("*" if is_chosen else ""), ha="center",
                            va="center", fontsize=8, fontweight="bold" if is_chosen else "normal",
                            color="black" if grid[i, j] > (vmin + vmax) / 2 else "white")
        ax.set_xticks(range(len(gammas)), [f"{g:g}" for g in gammas])
        ax.set_yticks(range(len(etas)), [f"{e:g}" for e in etas])
        ax.set_xlabel("γ (focusing)")
        ax.set_ylabel("η (negative weight)")
        ax.set_title(display(method), fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="validation UA, % (mean over seeds)")
    fig.suptitle(f"Validation UA (%) over γ and η (* = chosen)\n{setting.label}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def _history_series(run: Run, stage: str, key: str) -> dict[int, float]:
    out = {}
    for entry in run.metrics.get("history", {}).get(stage, []):
        if key in entry and entry[key] is not None and "epoch" in entry:
            out[int(entry["epoch"])] = float(entry[key])
    return out


def figure_curves(setting: Setting, path: Path) -> bool:
    """Per stage: the training loss and the validation UA per epoch, mean over seeds, per method."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    stages: dict[str, list[str]] = {}
    for method in setting.methods:
        for run in setting.chosen[method].runs:
            for stage, entries in run.metrics.get("history", {}).items():
                keys = stages.setdefault(stage, [])
                for entry in entries:
                    for key, value in entry.items():
                        if key != "epoch" and isinstance(value, (int, float)) and key not in keys:
                            keys.append(key)
    panels = []
    for stage, keys in stages.items():
        losses = [k for k in keys if "loss" in k and "val" not in k] or [k for k in keys if "loss" in k]
        if losses:
            panels.append((stage, losses[0]))
        if "val_ua" in keys:
            panels.append((stage, "val_ua"))
    if not panels:
        return False
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.8, rows * 3.1 + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10")
    for ax, (stage, key) in zip(axes.flat, panels):
        for index, method in enumerate(setting.methods):
            series = [_history_series(run, stage, key) for run in setting.chosen[method].runs]
            series = [s for s in series if s]
            if not series:
                continue
            epochs = sorted(set.intersection(*(set(s) for s in series)))
            if not epochs:
                continue
            mean = [np.mean([s[e] for s in series]) for e in epochs]
            # Lightning counts epochs from 0; people count from 1.
            ax.plot([e + 1 for e in epochs], mean, marker="o", markersize=3, label=display(method), color=cmap(METHODS.index(method) % 10 if method in METHODS else index))
        ax.set_title(f"{stage}: {key.replace('_', ' ')}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation UA" if key == "val_ua" else key.replace("_", " "))
        if key.endswith("ua"):
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        last_epoch = max((int(round(x)) for line in ax.get_lines() for x in line.get_xdata()), default=1)
        if last_epoch <= 12:
            ax.set_xticks(range(1, last_epoch + 1))
            ax.set_xlim(0.5, last_epoch + 0.5)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"Training curves (mean over seeds, chosen hyperparameters)\n{setting.label}", fontsize=10)

    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# Document: blocks rendered to Markdown and HTML


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)


def _md(blocks: Iterable[tuple]) -> str:
    out = []
    for kind, *payload in blocks:
        if kind.startswith("h"):
            out.append("#" * int(kind[1]) + " " + payload[0])
        elif kind == "p":
            out.append(payload[0])
        elif kind == "pre":
            out.append("```\n" + payload[0].rstrip() + "\n```")
        elif kind == "img":
            out.append(f"![{payload[1]}]({payload[0]})")
        elif kind == "table":
            table: Table = payload[0]
            lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
            for i, row in enumerate(table.rows):
                cells = [f"**{c}**" if (i, j) in table.bold else c for j, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html(blocks: Iterable[tuple], title: str) -> str:
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
           "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
           "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}</style></head><body>"]
    for kind, *payload in blocks:
        if kind.startswith("h"):
            out.append(f"<{kind}>{html.escape(payload[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(payload[0])}</p>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(payload[0])}</pre>")
        elif kind == "img":
            out.append(f"<p><img src='{html.escape(payload[0])}' alt='{html.escape(payload[1])}'></p>")
        elif kind == "table":
            table = payload[0]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
            for i, row in enumerate(table.rows):
                cells = "".join(
                    f"<td><b>{html.escape(c)}</b></td>" if (i, j) in table.bold else f"<td>{html.escape(c)}</td>"
                    for j, c in enumerate(row))
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _fmt_pct(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "n/a"
    return f"{mean * 100:.1f} ± {std * 100:.1f}"


def _column_title(column: str, columns: Sequence[str]) -> str:
    split, metric = column.split(".")
    return f"{split_title(split, any(c.startswith('test_imbalanced.') for c in columns))} {metric.upper()}"


def _results_table(numbers: dict[str, Any]) -> Table:
    header = ["method", "chosen hyperparameters", "seeds"] + [_column_title(c, numbers["columns"]) for c in numbers["columns"]]
    table = Table(header, [])
    methods = list(numbers["table"])
    for method in methods:
        row = numbers["table"][method]
        cells = [display(method), format_params(row["params"]), str(len(row["seeds"]))]
        cells += [_fmt_pct(row[c]["mean"], row[c]["std"], row[c]["n"]) for c in numbers["columns"]]
        table.rows.append(cells)
    for j, column in enumerate(numbers["columns"]):
        means = [numbers["table"][m][column]["mean"] for m in methods]
        finite = [v for v in means if not math.isnan(v)]
        if not finite:
            continue
        best = round(max(finite) * 100, 1)
        for i, value in enumerate(means):
            if not math.isnan(value) and round(value * 100, 1) == best:
                table.bold.add((i, j + 3))
    return table


def _summary_table(all_numbers: Sequence[dict[str, Any]]) -> Table | None:
    """One row per setting: each method's UA on the main test split (the first present)."""
    methods = sorted({m for numbers in all_numbers for m in numbers["table"]}, key=_method_order)
    if not methods:
        return None
    table = Table(["setting", "test split"] + [display(m) for m in methods], [])
    for numbers in all_numbers:
        tests = [c for c in numbers["columns"] if c.endswith(".ua") and not c.startswith("val.")]
        if not tests:
            continue
        column = tests[0]
        cells = [numbers["label"], _column_title(column, numbers["columns"]).rsplit(" ", 1)[0]]
        means = []
        for method in methods:
            cell = numbers["table"].get(method, {}).get(column)
            means.append(float("nan") if cell is None else cell["mean"])
            cells.append("–" if cell is None else _fmt_pct(cell["mean"], cell["std"], cell["n"]))
        table.rows.append(cells)
        finite = [m for m in means if not math.isnan(m)]
        if finite:
            best = round(max(finite) * 100, 1)
            for j, mean in enumerate(means):
                if not math.isnan(mean) and round(mean * 100, 1) == best:
                    table.bold.add((len(table.rows) - 1, j + 2))
    return table if table.rows else None


def _comparison_table(numbers: dict[str, Any]) -> Table | None:
    if not numbers["comparisons"]:
        return None
    table = Table(["AFCL vs", "split", "paired seeds", "Δ UA [95% CI]", "Δ WA [95% CI]", "on UA"], [])
    for method, entry in numbers["comparisons"].items():
        for split in [c.split(".")[0] for c in numbers["columns"] if c.endswith(".ua") and not c.startswith("val")]:
            ua, wa = entry[f"{split}.ua"], entry[f"{split}.wa"]

            def fmt(d: dict) -> str:
                if d["n"] == 0:
                    return "n/a"
                text = f"{d['mean'] * 100:+.1f}"
                return text + (f" [{d['low'] * 100:+.1f}, {d['high'] * 100:+.1f}]" if d["n"] > 1 else " (no CI)")

            if ua["n"] < 2:
                verdict = "too few seeds"
            elif ua["low"] > 0:
                verdict = "AFCL better"
            elif ua["high"] < 0:
                verdict = "AFCL worse"
            else:
                verdict = "no clear difference"
            title = split_title(split, any(c.startswith("test_imbalanced.") for c in numbers["columns"]))
            table.rows.append([display(method), title, str(ua["n"]), fmt(ua), fmt(wa), verdict])
    return table


def _versions_text(runs: Sequence[Run]) -> str:
    merged: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        for key, value in run.versions.items():
            merged[key].add(json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    if not merged:
        return "(no versions.json in the runs)"
    return "\n".join(f"{key}: {' | '.join(sorted(values))}" for key, values in sorted(merged.items()))


def _commands(root: Path, runs: Sequence[Run]) -> list[str]:
    commands = []
    for manifest in sorted(root.rglob(SWEEP_MANIFEST)):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for entry in data.get("commands", []):
            line = f"# {entry.get('started', '')} in {entry.get('cwd', '')} ({entry.get('kind', 'grid')})\n{entry.get('command', '')}"
            commands.append(line)
    return commands


@dataclass
class ReportResult:
    markdown: Path
    html: Path
    json: Path
    figures: list[Path]
    numbers: list[dict[str, Any]]


def build_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    *,
    tsne_points: int = 1000,
    command: str | None = None,
    progress=None,
) -> ReportResult:
    """Write report.md, report.html, report.json and the PNG figures for every finished run under ``runs_dir``."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    if not runs_dir.is_dir():
        raise DataError(f"runs directory {str(runs_dir)!r} does not exist")
    all_dirs = list(iter_run_dirs(runs_dir))
    unfinished = [d for d in all_dirs if run_status(d) != "complete"]
    runs = [load_run(d) for d in all_dirs if d not in unfinished]
    if not runs:
        raise DataError(
            f"no finished runs under {str(runs_dir)!r} (a run directory has config.yaml and a metrics.json "
            f"with status 'complete'; found {len(unfinished)} unfinished)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(exist_ok=True)

    settings = group_settings(runs)
    blocks: list[tuple] = [("h1", f"asymcl report: {runs_dir.name}")]
    blocks.append(("p", f"{len(runs)} finished runs under `{runs_dir}` in {len(settings)} setting(s)"
                   + (f"; {len(unfinished)} unfinished runs ignored." if unfinished else ".")))
    blocks.append(("p", "Model selection: for each setting and method, the hyperparameters (γ, η, τ and any other "
                   "swept key) with the highest validation UA, averaged over seeds, are chosen; the test splits "
                   "play no part. Numbers are percent, mean ± sample standard deviation over seeds; the best mean "
                   "of each column is bold. Paired comparisons use the seeds both methods have: mean difference "
                   "and a two-sided t-based 95% confidence interval."))
    figures: list[Path] = []
    all_numbers = []
    for setting in settings:
        select(setting)
    settings = [setting for setting in settings if setting.chosen]
    summary = _summary_table([setting_numbers(setting) for setting in settings])
    if summary is not None and len(settings) > 1:
        blocks.append(("h2", "Summary: test UA per setting (chosen hyperparameters)"))
        blocks.append(("table", summary))
    for setting in settings:
        numbers = setting_numbers(setting)
        all_numbers.append(numbers)
        blocks.append(("h2", setting.label))
        blocks.append(("table", _results_table(numbers)))
        choice_lines = []
        for method in setting.methods:
            chosen = setting.chosen[method]
            n = len(setting.candidates[method])
            if n > 1:
                choice_lines.append(f"{display(method)}: {chosen.label()} (validation UA {chosen.val_ua * 100:.1f}, "
                                    f"best of {n} settings)")
        if choice_lines:
            blocks.append(("p", "Chosen on validation UA: " + "; ".join(choice_lines) + "."))
        comparison = _comparison_table(numbers)
        if comparison is not None:
            blocks.append(("h3", "AFCL against each baseline (paired over seeds, percentage points)"))
            blocks.append(("table", comparison))
        progress(f"[report] figures for {setting.label}")
        plots = [(f"recall_{setting.slug}.png", "Per-class recall", lambda p: figure_recall(setting, "test", p)),
                 (f"confusion_{setting.slug}.png", "Confusion matrices", lambda p: figure_confusion(setting, "test", p))]
        if "test_imbalanced" in setting.test_splits:
            plots.append((f"recall-imbalanced_{setting.slug}.png", "Per-class recall on the imbalanced test set",
                          lambda p: figure_recall(setting, "test_imbalanced", p)))
        plots += [(f"heatmap_{setting.slug}.png", "Validation UA over gamma and eta", lambda p: figure_heatmap(setting, p)),
                  (f"curves_{setting.slug}.png", "Training curves", lambda p: figure_curves(setting, p)),
                  (f"tsne_{setting.slug}.png", "t-SNE of test embeddings",
                   lambda p: figure_tsne(setting, p, max_points=tsne_points))]
        for filename, title, make in plots:
            path = figures_dir / filename
            if make(path):
                figures.append(path)
                blocks.append(("h3", title))
                blocks.append(("img", f"figures/{filename}", f"{title}: {setting.label}"))

    blocks.append(("h2", "How these results were made"))
    commands = _commands(runs_dir, runs)
    blocks.append(("p", "Sweep commands recorded in the run directories:" if commands else
                   "No sweep.json found; each run can be repeated with `asymcl train --config RUN/config.yaml --out RUN`."))
    if commands:
        blocks.append(("pre", "\n".join(commands)))
    blocks.append(("p", "One run alone: `asymcl train --config RUN_DIR/config.yaml --out RUN_DIR` (the config is fully resolved)."))
    blocks.append(("p", "This report:"))
    blocks.append(("pre", command if command is not None else current_command()))
    blocks.append(("h3", "Versions"))
    blocks.append(("pre", _versions_text(runs)))

    md_path, html_path, json_path = out_dir / "report.md", out_dir / "report.html", out_dir / "report.json"
    _write_text_atomic(md_path, _md(blocks))
    _write_text_atomic(html_path, _html(blocks, f"asymcl report: {runs_dir.name}"))
    write_json_atomic(json_path, {"runs_dir": str(runs_dir), "settings": all_numbers})
    return ReportResult(md_path, html_path, json_path, figures, all_numbers)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)

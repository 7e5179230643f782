"""Report figures (matplotlib, Agg): per-class recall, confusion matrices, t-SNE, the gamma/eta
heatmap and training curves. Each ``figure_*`` returns False when the runs lack what it needs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from asymcl.experiments.report_numbers import split_title
from asymcl.experiments.runs import METHODS, Run
from asymcl.experiments.runs import row_display as display
from asymcl.experiments.selection import Candidate, Setting, hashable


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
    fig, ax = plt.subplots(
        figsize=(max(6.0, 0.9 * len(names) * max(1, len(methods) / 3) + 2), 4.6), layout="constrained"
    )
    x = np.arange(len(names))
    cmap = plt.get_cmap("tab10")
    for index, method in enumerate(methods):
        recalls = np.stack(_per_class(setting.chosen[method], split, "per_class_recall"))
        mean = recalls.mean(axis=0)
        err = recalls.std(axis=0, ddof=1) if len(recalls) > 1 else None
        ax.bar(
            x + (index - (len(methods) - 1) / 2) * width,
            mean,
            width,
            yerr=err,
            capsize=2,
            label=f"{display(method)} (n={len(recalls)})",
            color=cmap(index % 10),
        )
    ax.set_xticks(
        x,
        names,
        rotation=30 if max(len(n) for n in names) > 6 else 0,
        ha="right" if max(len(n) for n in names) > 6 else "center",
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall (mean ± std over seeds)")
    ax.set_title(
        f"Per-class recall, {split_title(split, 'test_imbalanced' in setting.test_splits)}\n{setting.label}",
        fontsize=10,
    )
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
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * max(3.6, size) + 1.0, rows * max(3.4, size) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    for index, (ax, method) in enumerate(zip(axes.flat, methods, strict=False)):
        counts = np.sum(_per_class(setting.chosen[method], split, "confusion_matrix"), axis=0)
        totals = counts.sum(axis=1, keepdims=True)
        normalised = np.divide(counts, totals, out=np.zeros_like(counts, dtype=np.float64), where=totals > 0)
        image = ax.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
        if len(names) <= 12:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(
                        j,
                        i,
                        f"{normalised[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if normalised[i, j] > 0.6 else "black",
                    )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        if index % cols == 0:
            ax.set_ylabel("true class")
        ax.set_title(f"{display(method)} ({len(setting.chosen[method].runs)} seeds summed)", fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="fraction of the true class")
    fig.suptitle(
        f"Confusion matrices (row-normalised), "
        f"{split_title(split, 'test_imbalanced' in setting.test_splits)}\n{setting.label}",
        fontsize=10,
    )
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
        for feat_key, label_key in (
            (f"{split}_features", f"{split}_labels"),
            (f"{split}_embeddings", f"{split}_labels"),
            ("features", "labels"),
            ("embeddings", "labels"),
        ):
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
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    rng = np.random.default_rng(seed)
    for ax, (method, run, features, labels) in zip(axes.flat, panels, strict=False):
        if len(labels) > max_points:
            keep = np.sort(rng.choice(len(labels), size=max_points, replace=False))
            features, labels = features[keep], labels[keep]
        perplexity = float(min(30.0, max(2.0, (len(labels) - 1) / 3)))
        coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)
        for cls in np.unique(labels):
            mask = labels == cls
            ax.scatter(
                coords[mask, 0],
                coords[mask, 1],
                s=6,
                alpha=0.7,
                color=cmap(int(cls) % cmap.N),
                label=names[cls] if cls < len(names) else str(cls),
            )
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
        cands = [
            c
            for c in setting.candidates[method]
            if all(hashable(c.params.get(k)) == hashable(v) for k, v in others.items())
        ]
        gammas = sorted({float(c.params.get("loss.gamma", 0) or 0) for c in cands})
        etas = sorted({float(c.params.get("loss.eta", 0) or 0) for c in cands})
        if len(gammas) * len(etas) < 2:
            continue
        panels.append((method, chosen, cands, gammas, etas))
    if not panels:
        return False
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(sum(1.6 + 0.75 * len(p[3]) for p in panels) + 1.5, 2.2 + 0.45 * max(len(p[4]) for p in panels)),
        squeeze=False,
        layout="constrained",
    )
    values = [c.val_ua * 100 for p in panels for c in p[2] if not math.isnan(c.val_ua)]
    vmin, vmax = min(values), max(values)
    if vmax - vmin < 1e-4:
        vmin, vmax = vmin - 1, vmax + 1
    for ax, (method, chosen, cands, gammas, etas) in zip(axes.flat, panels, strict=False):
        if len(cands) < 0.5 * len(gammas) * len(etas):
            # Scattered proposals (an Optuna study) fill too few cells of a grid: plot the points.
            points = [
                (float(c.params.get("loss.gamma", 0) or 0), float(c.params.get("loss.eta", 0) or 0), c.val_ua * 100)
                for c in cands
                if not math.isnan(c.val_ua)
            ]
            xs, ys, zs = zip(*points, strict=True)
            image = ax.scatter(xs, ys, c=zs, cmap="viridis", vmin=vmin, vmax=vmax, s=40, edgecolors="k")
            ax.scatter(
                [float(chosen.params.get("loss.gamma", 0) or 0)],
                [float(chosen.params.get("loss.eta", 0) or 0)],
                marker="*",
                s=250,
                facecolors="none",
                edgecolors="red",
                label="chosen",
            )
            if min(ys) > 0 and max(ys) / min(ys) >= 10:
                ax.set_yscale("log")
            ax.set_xlabel("γ (focusing)")
            ax.set_ylabel("η (negative weight)")
            ax.set_title(display(method), fontsize=10)
            ax.legend(fontsize=7)
            continue
        grid = np.full((len(etas), len(gammas)), np.nan)
        for c in cands:
            grid[
                etas.index(float(c.params.get("loss.eta", 0) or 0)),
                gammas.index(float(c.params.get("loss.gamma", 0) or 0)),
            ] = c.val_ua * 100
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        for i in range(len(etas)):
            for j in range(len(gammas)):
                if not math.isnan(grid[i, j]):
                    is_chosen = (
                        float(chosen.params.get("loss.eta", 0) or 0) == etas[i]
                        and float(chosen.params.get("loss.gamma", 0) or 0) == gammas[j]
                    )
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.1f}" + ("*" if is_chosen else ""),
                        ha="center",
                        va="center",
                        fontsize=8,
                        fontweight="bold" if is_chosen else "normal",
                        color="black" if grid[i, j] > (vmin + vmax) / 2 else "white",
                    )
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
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.8, rows * 3.1 + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10")
    for ax, (stage, key) in zip(axes.flat, panels, strict=False):
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
            ax.plot(
                [e + 1 for e in epochs],
                mean,
                marker="o",
                markersize=3,
                label=display(method),
                color=cmap(METHODS.index(method) % 10 if method in METHODS else index),
            )
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

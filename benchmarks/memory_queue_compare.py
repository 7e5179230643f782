"""With vs without stage 1's labelled memory queue (``loss.memory_size``, issue 14), from run files.

    python benchmarks/memory_queue_compare.py SWEEP_DIR [SWEEP_DIR ...]

Reads the finished runs of each sweep directory (docs/results/memory-queue/*.yaml) and prints, per
sweep and test split, a Markdown table per method and memory size (mean ± std over seeds: UA, WA,
the recall of the rarest class, i.e. the last of the imbalance profile's order) and the paired
difference (with queue - without, same method and seed) with its 95% t interval. The statistics
are the report's own (``asymcl.experiments.stats``). ``asymcl report`` cannot show this pairing: it
treats the memory size as a hyperparameter and keeps the one with the best validation UA per
method. Also prints each run's wall time (config.yaml written -> metrics.json complete).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from asymcl.experiments.runs import load_runs
from asymcl.experiments.stats import mean_std, paired_difference
from asymcl.training.methods import display

SPLITS = {"test": "balanced test", "test_imbalanced": "imbalanced test"}


def _values(run, split: str) -> dict[str, float]:
    final = run.metrics["final"][split]
    return {"ua": final["ua"], "wa": final["wa"], "minority": final["per_class_recall"][-1]}


def _wall_seconds(run) -> float:
    return (run.path / "metrics.json").stat().st_mtime - (run.path / "config.yaml").stat().st_mtime


def _label(arm: tuple[str, int, float]) -> str:
    method, size, eta = arm
    return f"{display(method)} | {size} | {eta:g}" if method != "supcon" else f"{display(method)} | {size} | –"


def compare(sweep_dir: Path) -> str:
    runs = load_runs(sweep_dir)
    if not runs:
        return f"## {sweep_dir}\n\nno finished runs\n"
    # Arms: (method, memory size, eta); each arm with a queue is paired with its method's arm
    # without one (there is one per method in these sweeps).
    groups: dict[tuple[str, int, float], dict[int, object]] = defaultdict(dict)
    for run in runs:
        arm = (run.method, int(run.config.get("loss.memory_size") or 0), float(run.config.get("loss.eta") or 0.0))
        groups[arm][int(run.seed)] = run
    arms = sorted(groups, key=lambda a: (a[0] == "afcl", a[0], a[1], a[2]))
    classes = runs[0].metrics.get("classes") or []
    lines = [f"## {sweep_dir.name}", "", f"rarest class (minority recall): {classes[-1] if classes else '?'}", ""]
    for split, title in SPLITS.items():
        if split not in runs[0].metrics["final"]:
            continue
        lines += [
            f"### {title}",
            "",
            "| method | memory_size | eta | seeds | UA | WA | minority recall |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm in arms:
            members = groups[arm]
            values = [_values(r, split) for _, r in sorted(members.items())]
            cells = [mean_std([v[m] for v in values]).format() for m in ("ua", "wa", "minority")]
            lines.append(f"| {_label(arm)} | {len(members)} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| method | memory_size | eta | vs | paired seeds | Δ UA [95% CI] | Δ WA [95% CI] | "
            "Δ minority recall [95% CI] |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for arm in arms:
            bases = [a for a in arms if a[0] == arm[0] and a[1] == 0]
            if arm[1] == 0 or not bases:
                continue
            base, other = groups[bases[0]], groups[arm]
            seeds = sorted(set(base) & set(other))
            cells = []
            for metric in ("ua", "wa", "minority"):
                diff = paired_difference(
                    [_values(other[s], split)[metric] for s in seeds], [_values(base[s], split)[metric] for s in seeds]
                )
                cells.append(diff.format() + (" *" if diff.significant else ""))
            vs = "K=0" if arm[0] == "supcon" else f"K=0, eta {bases[0][2]:g}"
            lines.append(f"| {_label(arm)} | {vs} | {len(seeds)} | " + " | ".join(cells) + " |")
        lines += ["", "(* the 95% interval excludes 0)", ""]
    # Did stage 1 learn? Its nearest-class-mean probe's validation UA (the checkpoint it keeps) and
    # its training loss, first and last epoch; and each run's wall time.
    lines += [
        "### stage 1 and wall time",
        "",
        "| method | memory_size | eta | stage-1 probe val UA (best) | stage-1 loss first -> last epoch | "
        "wall s median [min, max] |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        members = list(groups[arm].values())
        probe = mean_std([r.metrics["best"]["stage1"]["val_ua"] for r in members])
        first = mean_std([r.metrics["history"]["stage1"][0]["train_loss"] for r in members])
        last = mean_std([r.metrics["history"]["stage1"][-1]["train_loss"] for r in members])
        times = [_wall_seconds(r) for r in members]
        lines.append(
            f"| {_label(arm)} | {probe.format()} | {first.format(1, 2)} -> "
            f"{last.format(1, 2)} | {statistics.median(times):.0f} [{min(times):.0f}, {max(times):.0f}] |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("\n".join(compare(path) for path in args.sweep_dirs))


if __name__ == "__main__":
    main()

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


def compare(sweep_dir: Path) -> str:
    runs = load_runs(sweep_dir)
    if not runs:
        return f"## {sweep_dir}\n\nno finished runs\n"
    groups: dict[tuple[str, int], dict[int, object]] = defaultdict(dict)
    for run in runs:
        groups[(run.method, int(run.config.get("loss.memory_size") or 0))][int(run.seed)] = run
    methods = sorted({m for m, _ in groups}, key=lambda m: (m == "afcl", m))
    sizes = sorted({k for _, k in groups})
    classes = runs[0].metrics.get("classes") or []
    lines = [f"## {sweep_dir.name}", "",
             f"rarest class (minority recall): {classes[-1] if classes else '?'}", ""]
    for split, title in SPLITS.items():
        if split not in runs[0].metrics["final"]:
            continue
        lines += [f"### {title}", "", "| method | memory_size | seeds | UA | WA | minority recall |",
                  "|---|---|---|---|---|---|"]
        for method in methods:
            for size in sizes:
                members = groups.get((method, size), {})
                if not members:
                    continue
                values = [_values(r, split) for _, r in sorted(members.items())]
                cells = [mean_std([v[m] for v in values]).format() for m in ("ua", "wa", "minority")]
                lines.append(f"| {display(method)} | {size} | {len(members)} | " + " | ".join(cells) + " |")
        lines += ["", "| method | memory_size vs 0 | paired seeds | Δ UA [95% CI] | Δ WA [95% CI] | "
                  "Δ minority recall [95% CI] |", "|---|---|---|---|---|---|"]
        for method in methods:
            base = groups.get((method, 0), {})
            for size in sizes:
                if size == 0 or (method, size) not in groups:
                    continue
                other = groups[(method, size)]
                seeds = sorted(set(base) & set(other))
                cells = []
                for metric in ("ua", "wa", "minority"):
                    diff = paired_difference([_values(other[s], split)[metric] for s in seeds],
                                             [_values(base[s], split)[metric] for s in seeds])
                    mark = " *" if diff.significant else ""
                    cells.append(diff.format() + mark)
                lines.append(f"| {display(method)} | {size} | {len(seeds)} | " + " | ".join(cells) + " |")
        lines += ["", "(* the 95% interval excludes 0)", ""]
    lines += ["### wall time per run (s)", "", "| method | memory_size | median | min | max |", "|---|---|---|---|---|"]
    for method in methods:
        for size in sizes:
            members = groups.get((method, size), {})
            if members:
                times = [_wall_seconds(r) for r in members.values()]
                lines.append(f"| {display(method)} | {size} | {statistics.median(times):.0f} | "
                             f"{min(times):.0f} | {max(times):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    print("\n".join(compare(path) for path in args.sweep_dirs))


if __name__ == "__main__":
    main()

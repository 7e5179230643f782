"""``asymcl demo``: CE baseline vs SupCon vs AFCL on long-tailed digits, offline, a few CPU minutes.

The data is scikit-learn's bundled digits (8x8 grey, 10 classes; nothing to download) cut to an
exponential long tail (``exp:20`` by default: 107 training images of class 0 down to 5 of class
9). All three methods see identical splits, seeds and budgets. Each run is an ordinary run
directory under ``out_root/<method>``, so an interrupted demo resumes and a finished one is not redone.

Output: on a terminal, Lightning's progress bars. Elsewhere (a log file, a pipe, CI), and with
``--quiet``, one line per run (method, time, UA) and the table: a newcomer reading ``make demo >
log`` wants the result, not about two hundred epoch lines.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from asymcl.training.pipeline import is_terminal, run
from asymcl.training.run_dir import read_metrics

DEMO_METHODS = ("ce", "supcon", "afcl")


def demo_config(method: str, imbalance: str, seed: int, epochs: int, progress_bar: bool) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "data.dataset": "digits",
        "data.imbalance": imbalance,
        "stage1.epochs": epochs,
        "stage1.batch_size": 128,
        "stage2.epochs": max(1, epochs // 2),
        "stage2.batch_size": 64,
        "trainer.progress_bar": progress_bar,
    }


def run_demo(
    out_root: str | Path = "runs/demo",
    *,
    imbalance: str = "exp:20",
    seed: int = 0,
    epochs: int = 60,
    progress_bar: bool = True,
    stream=None,
) -> dict[str, dict]:
    """Run the three methods; prints and returns {method: metrics}. ``progress_bar``: Lightning's
    bars and stage messages where stderr is a terminal (off a terminal, or False: one line per run)."""
    stream = stream or sys.stdout
    out_root = Path(out_root)
    bars = progress_bar and is_terminal(sys.stderr)
    results = {}
    for method in DEMO_METHODS:
        run_dir = out_root / method
        if bars:
            print(f"[asymcl demo] {method} -> {run_dir}", file=sys.stderr)
        done_before = (read_metrics(run_dir) or {}).get("status") == "complete"
        start = time.monotonic()
        results[method] = run(demo_config(method, imbalance, seed, epochs, bars), run_dir)
        print(
            run_line(method, results[method], time.monotonic() - start, done_before, run_dir),
            file=sys.stderr,
            flush=True,
        )
    print(format_table(results, out_root, imbalance), file=stream)
    return results


def run_line(method: str, metrics: dict, seconds: float, done_before: bool, run_dir: Path) -> str:
    """``[asymcl demo] afcl    41.2 s  UA 78.4% balanced test  -> runs/demo/afcl``."""
    test = metrics["final"].get("test")
    ua = f"UA {test['ua'] * 100:.1f}% balanced test" if test else "no test split"
    took = "finished before" if done_before else f"{seconds:.1f} s"
    return f"[asymcl demo] {method:<7} {took:>15}  {ua}  -> {run_dir}"


def format_table(results: dict[str, dict], out_root: Path, imbalance: str) -> str:
    splits = [("test_imbalanced", f"test, {imbalance} like training"), ("test", "test, balanced")]
    lines = [f"digits, training set long-tailed {imbalance}; WA = accuracy, UA = mean per-class recall", ""]
    header = f"{'method':<8}" + "".join(f"  {label:>28}" for _, label in splits)
    lines += [header, f"{'':<8}" + "".join(f"  {'WA':>13} {'UA':>14}" for _ in splits)]
    for method, metrics in results.items():
        cells = []
        for split, _ in splits:
            final = metrics["final"].get(split)
            cells.append(f"  {final['wa'] * 100:>12.1f}% {final['ua'] * 100:>13.1f}%" if final else f"  {'-':>28}")
        lines.append(f"{method:<8}" + "".join(cells))
    lines += ["", "run directories (metrics.json, predictions.csv, checkpoints):"]
    lines += [f"  {method:<8} {out_root / method}" for method in results]
    return "\n".join(lines)

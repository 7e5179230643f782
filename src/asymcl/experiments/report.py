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
4. AFCL is compared with each other row over the seeds both have: the mean of the paired
   differences and a two-sided t-based 95% confidence interval; one sentence says whether the
   paper's claim (AFCL > CL and > FCL on WA and UA) held (:mod:`asymcl.experiments.claims`), and
   the best contrastive recipe on validation is compared with logit-adjusted CE (LA).

A row is a method plus its levers (``schedule=joint``, ``stage1.sampler``), shown as e.g.
``AFCL (joint)``; an old ``method=ce`` run with ``stage2.loss=logit_adjusted`` is the LA row.

``report.json`` holds the same numbers unrounded, for scripts and tests.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from asymcl.atomic import atomic_write_text
from asymcl.errors import DataError
from asymcl.experiments.figures import figure_confusion, figure_curves, figure_heatmap, figure_recall, figure_tsne
from asymcl.experiments.render import _comparison_table, _html, _md, _results_table, _summary_table
from asymcl.experiments.runs import Run, iter_run_dirs, load_run, run_status
from asymcl.experiments.selection import Setting, group_settings, select, setting_numbers  # noqa: F401
from asymcl.experiments.sweep import SWEEP_MANIFEST, current_command, write_json_atomic
from asymcl.experiments.claims import best_recipe_sentence
from asymcl.experiments.runs import row_display as display


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
        blocks.append(("p", numbers["paper_claim"]["sentence"]))
        vs_la = numbers["best_vs_la"]
        best = vs_la and best_recipe_sentence(vs_la, vs_la["split"], vs_la["split_title"])
        if best:
            blocks.append(("p", best))
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
    atomic_write_text(md_path, _md(blocks))
    atomic_write_text(html_path, _html(blocks, f"asymcl report: {runs_dir.name}"))
    write_json_atomic(json_path, {"runs_dir": str(runs_dir), "settings": all_numbers})
    return ReportResult(md_path, html_path, json_path, figures, all_numbers)

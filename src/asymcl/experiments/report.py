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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from asymcl.atomic import atomic_write_text
from asymcl.errors import DataError
from asymcl.experiments.claims import best_recipe_sentence
from asymcl.experiments.figures import figure_confusion, figure_curves, figure_heatmap, figure_recall, figure_tsne
from asymcl.experiments.render import comparison_table, results_table, summary_table, to_html, to_markdown
from asymcl.experiments.report_numbers import SettingNumbers
from asymcl.experiments.runs import Run, iter_run_dirs, load_run, run_status
from asymcl.experiments.runs import row_display as display
from asymcl.experiments.selection import Setting, group_settings, select, setting_numbers  # noqa: F401
from asymcl.experiments.sweep import SWEEP_MANIFEST, current_command, write_json_atomic


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
    numbers: list[SettingNumbers]


def load_runs_or_table(runs_dir: Path) -> tuple[list[Run], int, bool]:
    """(runs, unfinished count, from a runs.csv) of a runs directory or a ``runs.csv`` file."""
    if runs_dir.is_file() and runs_dir.suffix == ".csv":
        from asymcl.experiments.runs_table import load_runs_csv

        return load_runs_csv(runs_dir), 0, True
    if not runs_dir.is_dir():
        raise DataError(f"runs directory {str(runs_dir)!r} does not exist (give a directory of runs or a runs.csv)")
    all_dirs = list(iter_run_dirs(runs_dir))
    unfinished = [d for d in all_dirs if run_status(d) != "complete"]
    runs = [load_run(d) for d in all_dirs if d not in unfinished]
    if not runs:
        raise DataError(
            f"no finished runs under {str(runs_dir)!r} (a run directory has config.yaml and a metrics.json "
            f"with status 'complete'; found {len(unfinished)} unfinished)"
        )
    return runs, len(unfinished), False


def _budget_sentence(numbers: SettingNumbers) -> str:
    """How many validation-scored settings each row had (a fair table gives all the same number)."""
    counts = {row: entry.n_candidates for row, entry in numbers.table.items()}
    if len(set(counts.values())) == 1:
        n = next(iter(counts.values()))
        return (
            f"Budget: {n} validation-scored setting(s) per method, the same for every row "
            "(each drawn from the method's own search space)."
        )
    listed = ", ".join(f"{display(row)} {n}" for row, n in counts.items())
    return (
        f"Unequal budgets: validation-scored settings per row were {listed}. Rows with more settings had more "
        "chances on validation; read the comparisons with that in mind (`asymcl compare` and "
        "`asymcl reproduce` give every method the same number)."
    )


def _shared_views_sentence(setting: Setting) -> str | None:
    """Runs trained from one draw of cached views share it across seeds: say what the intervals miss."""
    cached = [
        run
        for run in setting.runs
        if run.config.get("data.cache") == "auto" and str(run.config.get("model.finetune", "all")) != "all"
    ]
    draws = {run.config.get("data.cache_seed") for run in cached}
    if not cached or None in draws or len(draws) != 1:
        return None
    return (
        f"Every seed trained on one draw of cached augmented views (data.cache_seed={draws.pop()}): the spread "
        "over seeds, and so every interval, leaves out the variance of that draw (once measured here, a second "
        "draw moved a paired difference by 4 points). data.cache_seed=null gives each seed its own views, at "
        "one view extraction per seed."
    )


def _validation_sentence(numbers: SettingNumbers) -> str | None:
    counts = next((entry.val_counts for entry in numbers.table.values() if entry.val_counts), None)
    if not counts:
        return None
    text = (
        "Validation images per class (model selection rests on these): "
        + ", ".join(f"{name} {n}" for name, n in counts.items())
        + "."
    )
    smallest = min(counts.values())
    if smallest < 20:
        text += (
            f" The smallest class has {smallest}: one image moves its recall by {100 / smallest:.0f} points, "
            "so choices made on validation are noisy here (a balanced validation set, data.val_per_class, "
            "or a larger data.val_fraction helps where the data allow)."
        )
    return text


def build_report(
    runs_dir: str | Path,
    out_dir: str | Path,
    *,
    tsne_points: int = 1000,
    command: str | None = None,
    progress=None,
) -> ReportResult:
    """Write report.md, report.html, report.json, runs.csv and the PNG figures for every finished
    run under ``runs_dir`` (or, from a ``runs.csv`` alone, everything but the figures)."""
    from asymcl.experiments.claims import adjust_family
    from asymcl.experiments.runs_table import write_runs_csv
    from asymcl.experiments.sweep_settings import split_stale_runs, stale_sentence

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    runs, unfinished, from_csv = load_runs_or_table(runs_dir)
    runs, stale = split_stale_runs(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_dir = out_dir / "figures"
    if not from_csv:
        figures_dir.mkdir(exist_ok=True)

    settings = group_settings(runs)
    title = runs_dir.parent.name if from_csv else runs_dir.name
    blocks: list[tuple] = [("h1", f"asymcl report: {title}")]
    source = f"from the per-run table `{runs_dir}`" if from_csv else f"under `{runs_dir}`"
    blocks.append(
        (
            "p",
            f"{len(runs)} finished runs {source} in {len(settings)} setting(s)"
            + (f"; {unfinished} unfinished runs ignored." if unfinished else ".")
            + (f" {stale_sentence(stale)}" if stale else ""),
        )
    )
    blocks.append(
        (
            "p",
            "Model selection: for each setting and method, the hyperparameters (γ, η, τ and any other "
            "swept key) with the highest validation UA, averaged over seeds, are chosen; the test splits "
            "play no part. Numbers are percent, mean ± sample standard deviation over seeds; the best mean "
            "of each column is bold. Paired comparisons use the seeds both methods have: mean difference "
            "and a two-sided t-based 95% confidence interval (raw, not adjusted).",
        )
    )
    figures: list[Path] = []
    for setting in settings:
        select(setting)
    settings = [setting for setting in settings if setting.chosen]
    all_numbers = [setting_numbers(setting) for setting in settings]
    family = adjust_family(all_numbers)
    blocks.append(
        (
            "p",
            f"Verdicts are Holm-adjusted at 5% over the report's family of {family} comparisons: in every "
            "setting, on the main test split, AFCL against every other row and the contrastive row chosen on "
            "validation against every baseline row (probe, CE, LA), each on UA and on WA. Comparisons on "
            "other splits are raw.",
        )
    )
    summary = summary_table(all_numbers)
    if summary is not None and len(settings) > 1:
        blocks.append(("h2", "Summary: test UA per setting (chosen hyperparameters)"))
        blocks.append(("table", summary))
    for setting, numbers in zip(settings, all_numbers, strict=True):
        blocks.append(("h2", setting.label))
        blocks.append(("table", results_table(numbers)))
        blocks.append(("p", _budget_sentence(numbers)))
        shared = _shared_views_sentence(setting)
        if shared:
            blocks.append(("p", shared))
        validation = _validation_sentence(numbers)
        if validation:
            blocks.append(("p", validation))
        choice_lines = []
        for method in setting.methods:
            chosen = setting.chosen[method]
            n = len(setting.candidates[method])
            if n > 1:
                choice_lines.append(
                    f"{display(method)}: {chosen.label()} (validation UA {chosen.val_ua * 100:.1f}, "
                    f"best of {n} settings)"
                )
        if choice_lines:
            blocks.append(("p", "Chosen on validation UA: " + "; ".join(choice_lines) + "."))
        comparison = comparison_table(numbers)
        if comparison is not None:
            blocks.append(("h3", "AFCL against each other row (paired over seeds, percentage points)"))
            blocks.append(("table", comparison))
        blocks.append(("p", numbers.paper_claim.sentence))
        for entry in numbers.best_vs_baselines:
            best = best_recipe_sentence(entry, entry.split, entry.split_title)
            if best:
                blocks.append(("p", best))
        if from_csv:
            continue
        progress(f"[report] figures for {setting.label}")
        plots = [
            (f"recall_{setting.slug}.png", "Per-class recall", lambda p, s=setting: figure_recall(s, "test", p)),
            (
                f"confusion_{setting.slug}.png",
                "Confusion matrices",
                lambda p, s=setting: figure_confusion(s, "test", p),
            ),
        ]
        if "test_imbalanced" in setting.test_splits:
            plots.append(
                (
                    f"recall-imbalanced_{setting.slug}.png",
                    "Per-class recall on the imbalanced test set",
                    lambda p, s=setting: figure_recall(s, "test_imbalanced", p),
                )
            )
        plots += [
            (
                f"heatmap_{setting.slug}.png",
                "Validation UA over gamma and eta",
                lambda p, s=setting: figure_heatmap(s, p),
            ),
            (f"curves_{setting.slug}.png", "Training curves", lambda p, s=setting: figure_curves(s, p)),
            (
                f"tsne_{setting.slug}.png",
                "t-SNE of test embeddings",
                lambda p, s=setting: figure_tsne(s, p, max_points=tsne_points),
            ),
        ]
        for filename, title_text, make in plots:
            path = figures_dir / filename
            if make(path):
                figures.append(path)
                blocks.append(("h3", title_text))
                blocks.append(("img", f"figures/{filename}", f"{title_text}: {setting.label}"))

    runs_csv = out_dir / "runs.csv"
    if not (from_csv and runs_dir.resolve() == runs_csv.resolve()):
        write_runs_csv(runs_csv, [(setting.label, setting.runs) for setting in settings], root=runs_dir)
    blocks.append(
        (
            "p",
            f"Every run's numbers: `runs.csv` ({len(runs)} runs, one row per run and split); "
            "`asymcl report runs.csv --out DIR` rebuilds every number of this report from it.",
        )
    )
    blocks.append(("h2", "How these results were made"))
    commands = [] if from_csv else _commands(runs_dir, runs)
    blocks.append(
        (
            "p",
            "Sweep commands recorded in the run directories:"
            if commands
            else "No sweep.json found; each run can be repeated with `asymcl train --config RUN/config.yaml --out RUN`.",
        )
    )
    if commands:
        blocks.append(("pre", "\n".join(commands)))
    blocks.append(
        (
            "p",
            "One run alone: `asymcl train --config RUN_DIR/config.yaml --out RUN_DIR` (the config is fully resolved).",
        )
    )
    blocks.append(("p", "This report:"))
    blocks.append(("pre", command if command is not None else current_command()))
    blocks.append(("h3", "Versions"))
    blocks.append(("pre", _versions_text(runs)))

    md_path, html_path, json_path = out_dir / "report.md", out_dir / "report.html", out_dir / "report.json"
    atomic_write_text(md_path, to_markdown(blocks))
    atomic_write_text(html_path, to_html(blocks, f"asymcl report: {title}"))
    write_json_atomic(
        json_path,
        {"runs_dir": str(runs_dir), "family_size": family, "settings": [numbers.to_dict() for numbers in all_numbers]},
    )
    return ReportResult(md_path, html_path, json_path, figures, all_numbers)

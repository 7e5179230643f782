"""Whole runs from Python: :func:`train`, :func:`sweep`, :func:`compare` and :func:`report`.

They do what ``asymcl train``, ``asymcl sweep``, ``asymcl compare`` and ``asymcl report`` do, with the same keys and
the same run directories, and return typed results instead of printing. A notebook::

    import asymcl

    run = asymcl.train({"data.dataset": "digits", "data.imbalance": "exp:20", "method": "afcl"},
                       out="runs/afcl")
    run.test.ua                   # balanced accuracy on the test split
    grid = asymcl.sweep("sweep.yaml", out="runs/grid")
    asymcl.report(grid).best_method

A config is what ``--config``/``--set`` take: a mapping of dotted (``"loss.gamma"``) or nested
(``{"loss": {"gamma": 2}}``) keys, a path to a YAML file of them, or a resolved
:class:`asymcl.training.config.RunConfig`. Errors are the CLI's: :class:`asymcl.errors.ConfigError`,
:class:`asymcl.errors.DataError`, ... with one line naming the problem and the fix.

Everything here wraps :func:`asymcl.training.pipeline.run`,
:func:`asymcl.experiments.sweep.run_sweep` and :func:`asymcl.experiments.report.build_report`;
the heavy imports happen inside the functions, so importing this module (or ``asymcl``) is cheap.
Runs resume as on the command line: call the same function again after an interruption.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from asymcl.errors import DataError

# The report's own cell type, not a copy; its module is torch-free, so this import stays light.
from asymcl.experiments.report_numbers import Score

if TYPE_CHECKING:
    from asymcl.experiments.report_numbers import SettingNumbers
    from asymcl.training.config import RunConfig

__all__ = [
    "train",
    "sweep",
    "compare",
    "report",
    "SplitMetrics",
    "TrainResult",
    "SweepSummary",
    "CompareSummary",
    "Score",
    "ReportRow",
    "SettingSummary",
    "ReportSummary",
]

#: What a config argument may be: a mapping of dotted or nested keys, a YAML file, or a RunConfig.
ConfigLike = Union[Mapping[str, Any], str, os.PathLike, "RunConfig"]
#: What ``--set`` takes: ``{"loss.gamma": 2}`` or ``["loss.gamma=2"]``.
Overrides = Mapping[str, Any] | Sequence[str]


# --------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class SplitMetrics:
    """The final metrics of one split (fractions in [0, 1]), from ``metrics.json``.

    ``wa`` is accuracy, ``ua`` the mean of the per-class recalls (balanced accuracy; ISIC 2018's
    challenge metric), ``per_class_recall`` has shape (C,) in the run's class order and
    ``confusion_matrix`` (C, C), rows the true class, columns the prediction.
    """

    wa: float
    ua: float
    macro_f1: float
    per_class_recall: tuple[float, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SplitMetrics:
        return cls(
            wa=float(values["wa"]),
            ua=float(values["ua"]),
            macro_f1=float(values["macro_f1"]),
            per_class_recall=tuple(float(v) for v in values["per_class_recall"]),
            confusion_matrix=tuple(tuple(int(v) for v in row) for row in values["confusion_matrix"]),
        )


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its directory, config and final metrics.

    ``metrics`` maps each evaluated split (``val``, ``test`` and, with ``data.imbalance``,
    ``test_imbalanced``: the test set cut to the training profile) to its :class:`SplitMetrics`;
    the model is each stage's checkpoint with the best validation UA. ``best`` maps each stage to
    ``(epoch, validation UA)`` of that checkpoint (epochs count from 0, as in ``history``). ``history`` is metrics.json's per-epoch record
    (stage -> list of ``{"epoch", "train_loss", "val_ua", ...}``).
    """

    run_dir: Path
    config: RunConfig
    classes: tuple[str, ...]
    metrics: dict[str, SplitMetrics]
    best: dict[str, tuple[int, float]]
    history: dict[str, list[dict[str, Any]]]

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def test(self) -> SplitMetrics:
        """The metrics of the ``test`` split (the balanced or official test set)."""
        return self.metrics["test"]

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> TrainResult:
        """Read a finished run directory (made by :func:`train`, ``asymcl train`` or a sweep).

        Its config.yaml is checked as a run's config is, except that its ``data.root`` and a
        weights file in ``model.pretrained`` need not be here: a run folder copied to another
        machine reads without its data.
        """
        return cls._read(Path(run_dir), None)

    @classmethod
    def _read(cls, run_dir: Path, config: RunConfig | None) -> TrainResult:
        from asymcl.training.config import read_recorded_config
        from asymcl.training.run_dir import read_metrics

        metrics = read_metrics(run_dir) if (run_dir / "config.yaml").is_file() else None
        if metrics is None or metrics.get("status") != "complete":
            raise DataError(
                f"{run_dir} is not a finished run directory (no config.yaml, or metrics.json "
                "without status 'complete'); train it first, e.g. asymcl.train(config, out=...)"
            )
        if config is None:
            config = read_recorded_config(run_dir / "config.yaml")
        return cls(
            run_dir=run_dir,
            config=config,
            classes=tuple(metrics.get("classes") or ()),
            metrics={split: SplitMetrics.from_dict(values) for split, values in metrics["final"].items()},
            best={stage: (int(entry["epoch"]), float(entry["val_ua"])) for stage, entry in metrics["best"].items()},
            history=metrics.get("history", {}),
        )


def _resolve(config: ConfigLike | None, overrides: Overrides | None) -> RunConfig:
    from asymcl.training.config import load_config_file, resolve_config

    if isinstance(config, (str, os.PathLike)):
        config = load_config_file(config)
    if isinstance(overrides, str):  # a lone "key=value" would be read as its characters
        overrides = [overrides]
    return resolve_config(config, dict(overrides) if isinstance(overrides, Mapping) else overrides)


def train(
    config: ConfigLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    overrides: Overrides | None = None,
    callbacks: Sequence = (),
    verbose: bool | None = None,
) -> TrainResult | None:
    """Train and evaluate one run, as ``asymcl train --config CONFIG --set ... --out OUT``.

    ``config``: the run's keys (a mapping, a YAML path or a RunConfig; None: every default, AFCL on
    the bundled digits). ``overrides``: keys applied on top, as ``--set`` (a mapping or
    ``["key=value", ...]``). ``out``: the run directory; by default ``runs/<method>-<dataset>-<hash
    of the config>`` under the working directory, as on the command line, so the same call resumes
    an interrupted run and returns a finished one at once. ``callbacks``: extra Lightning callbacks
    for every stage. ``verbose``: stage messages on stderr (default: ``trainer.progress_bar``).

    Returns the finished run. Under DDP (``trainer.devices`` > 1, from a script) every process
    trains, but only the main one (rank 0) evaluates and writes the run's files: the others get None.
    """
    from asymcl.training.pipeline import run
    from asymcl.training.run_dir import default_run_dir, is_main_process

    resolved = _resolve(config, overrides)
    run_dir = Path(out) if out is not None else Path(default_run_dir(resolved))
    run(resolved, run_dir, callbacks=callbacks, verbose=verbose)
    return TrainResult._read(run_dir, resolved) if is_main_process() else None


# --------------------------------------------------------------------------------------------
# Sweeps


@dataclass(frozen=True)
class SweepSummary:
    """What :func:`sweep` did: every run of the grid, by name, and how each call left it.

    ``runs`` maps each point's name to its run directory (``OUT/<name>``), in grid order.
    ``skipped`` were finished before this call, ``ran`` were trained by it, ``others`` were
    finished meanwhile by other workers on the same folder, ``failed`` maps a name to its
    one-line error (the traceback is in ``OUT/failures.log``).
    """

    out_dir: Path
    runs: dict[str, Path]
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    others: tuple[str, ...]
    failed: dict[str, str]

    @property
    def complete(self) -> bool:
        """Every run of the grid is finished."""
        return not self.failed and len(self.ran) + len(self.skipped) + len(self.others) == len(self.runs)

    def results(self) -> dict[str, TrainResult]:
        """The finished runs, loaded (name -> :class:`TrainResult`); failed runs are left out."""
        from asymcl.experiments.runs import is_complete

        return {name: TrainResult.load(path) for name, path in self.runs.items() if is_complete(path)}


def _call(function: str, *args: Any, **options: Any) -> str:
    """The Python call a report prints as the command that made it."""
    words = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in options.items()]
    return f"asymcl.{function}({', '.join(words)})"


def sweep(
    spec: Mapping[str, Any] | str | os.PathLike, *, out: str | os.PathLike | None = None, workers: int = 1
) -> SweepSummary:
    """Run (or continue) a grid sweep, as ``asymcl sweep --config SPEC --out OUT``.

    ``spec``: a sweep file's path or its mapping (``base``: a run config in the keys of ``--set``;
    ``grid``: key -> list of values; optional ``name``; docs/usage-experiments.md). ``out``: the
    sweep folder (default ``runs/<spec name>``), one run directory per point; a second call skips
    the finished runs and resumes the interrupted one. ``workers`` > 1 trains that many runs at
    once in worker processes, ``cores / workers`` threads each. A failed run does not stop the
    others: see :attr:`SweepSummary.failed`.
    """
    from asymcl.experiments.sweep import load_spec, parse_spec, run_sweep

    if isinstance(spec, (str, os.PathLike)):
        parsed = load_spec(spec)
        shown: Any = str(spec)
    else:
        parsed = parse_spec(dict(spec))
        shown = parsed.to_dict()
    out_dir = Path(out) if out is not None else Path("runs") / parsed.name
    command = _call("sweep", shown, out=str(out_dir), **({"workers": workers} if workers != 1 else {}))
    result = run_sweep(parsed, out_dir, command=command, workers=workers)
    return _sweep_summary(result, parsed, out_dir)


def _sweep_summary(result, spec, out_dir: Path) -> SweepSummary:
    """A :class:`SweepSummary` of what ``run_sweep`` returned for ``spec`` (a parsed sweep)."""
    from asymcl.experiments.sweep import expand

    return SweepSummary(
        out_dir=out_dir,
        runs={point.name: out_dir / point.name for point in expand(spec)},
        ran=tuple(result.ran),
        skipped=tuple(result.skipped),
        others=tuple(result.others),
        failed=dict(result.failed),
    )


# --------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class ReportRow:
    """One row of a report table: a method (plus levers) at the hyperparameters chosen for it on
    validation UA. ``scores`` maps ``"<split>.<metric>"`` (``val.ua``, ``test.wa``, ``test.ua``,
    ``test_imbalanced.ua``, ...) to its :class:`Score`."""

    row: str
    display: str
    params: dict[str, Any]
    seeds: tuple[Any, ...]
    scores: dict[str, Score]


@dataclass(frozen=True)
class SettingSummary:
    """One setting of a report (dataset, imbalance, class subset) and its rows in table order.

    ``best_method`` is the row with the highest mean validation UA: chosen on validation, like the
    hyperparameters, so the test splits play no part (ties go to the earlier row, baselines first).
    ``paper_claim`` is the report's sentence on whether AFCL beat CL and FCL on WA and UA.
    """

    label: str
    rows: dict[str, ReportRow]
    best_method: str | None
    paper_claim: str


@dataclass(frozen=True)
class ReportSummary:
    """The files :func:`report` wrote and its numbers, one :class:`SettingSummary` per setting."""

    out_dir: Path
    markdown: Path
    html: Path
    json: Path
    figures: tuple[Path, ...]
    settings: tuple[SettingSummary, ...]

    @property
    def best_method(self) -> str | None:
        """The best row of the report's only setting (see :class:`SettingSummary`); a report of
        several settings names one per setting: read ``settings[i].best_method``."""
        if len(self.settings) != 1:
            labels = ", ".join(setting.label for setting in self.settings)
            raise ValueError(f"the report has {len(self.settings)} settings ({labels}); read settings[i].best_method")
        return self.settings[0].best_method


def _setting_summary(numbers: SettingNumbers) -> SettingSummary:
    from asymcl.experiments.runs import row_display

    rows = {}
    for row, entry in numbers.table.items():
        rows[row] = ReportRow(
            row=row,
            display=row_display(row),
            params=dict(entry.params),
            seeds=tuple(entry.seeds),
            scores=dict(entry.scores),
        )
    scored = [row for row in rows if not math.isnan(rows[row].scores["val.ua"].mean)]
    best = max(scored, key=lambda row: rows[row].scores["val.ua"].mean, default=None)
    return SettingSummary(label=numbers.label, rows=rows, best_method=best, paper_claim=numbers.paper_claim.sentence)


def report(
    runs: str | os.PathLike | SweepSummary, *, out: str | os.PathLike | None = None, tsne_points: int | None = None
) -> ReportSummary:
    """Write the report of every finished run under ``runs``, as ``asymcl report RUNS --out OUT``.

    ``runs``: a folder searched recursively for run directories, or a :class:`SweepSummary`.
    ``out``: the report folder (default ``RUNS/report``): report.md, report.html, report.json and
    the figures. ``tsne_points``: test points per t-SNE panel (default: ``asymcl report``'s).
    Hyperparameters are chosen per method on validation UA.
    """
    from asymcl.experiments.report import build_report

    runs_dir = runs.out_dir if isinstance(runs, SweepSummary) else Path(runs)
    out_dir = Path(out) if out is not None else runs_dir / "report"
    options = {} if tsne_points is None else {"tsne_points": tsne_points}
    result = build_report(
        runs_dir, out_dir, command=_call("report", str(runs_dir), out=str(out_dir), **options), **options
    )
    return _report_summary(result, out_dir)


def _report_summary(result, out_dir: Path) -> ReportSummary:
    """A :class:`ReportSummary` of what ``build_report`` returned."""
    return ReportSummary(
        out_dir=out_dir,
        markdown=result.markdown,
        html=result.html,
        json=result.json,
        figures=tuple(result.figures),
        settings=tuple(_setting_summary(numbers) for numbers in result.numbers),
    )


# --------------------------------------------------------------------------------------------
# Fair comparisons


@dataclass(frozen=True)
class CompareSummary:
    """What :func:`compare` planned and did.

    ``runs``: the comparison's run count (methods x ``settings`` x seeds); ``eta_s`` its estimated
    time before it started (seconds; 0 when nothing was left to run). ``sweep`` and ``report`` are
    None after a dry run. ``best_method``: the report's row with the best validation UA.
    """

    out_dir: Path
    methods: tuple[str, ...]
    settings: int
    seeds: tuple[int, ...]
    runs: int
    eta_s: float
    sweep: SweepSummary | None
    report: ReportSummary | None

    @property
    def best_method(self) -> str | None:
        return None if self.report is None else self.report.best_method


def compare(
    data: Mapping[str, Any] | str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    profile: str = "quick",
    methods: Sequence[str] | None = None,
    settings: int = 2,
    seeds: int = 3,
    budget: str | float = "30m",
    yes: bool = False,
    dry_run: bool = False,
    workers: int = 1,
) -> CompareSummary:
    """The fair comparison of every method on a dataset, as ``asymcl compare``
    (docs/usage-experiments.md, "Fair comparisons").

    ``data``: the config keys of the data (and anything else to change), a mapping of dotted or
    nested keys or a YAML file, e.g. ``{"data.dataset": "folder", "data.root": "images/"}``.
    ``profile``: ``quick`` (small CNN from scratch) or ``pretrained`` (frozen EfficientNet-Lite0
    from the feature cache, with the probe). Every method gets ``settings`` validation-scored
    settings and ``seeds`` seeds. A plan estimated over ``budget`` (``"30m"``, ``"2h"``, or minutes)
    raises :class:`asymcl.errors.ConfigError` unless ``yes``. Call it again to resume.
    """
    from asymcl.experiments.compare import compare as run_compare
    from asymcl.experiments.compare import default_out
    from asymcl.training.config import load_config_file, parse_overrides

    overrides = load_config_file(Path(data)) if isinstance(data, (str, os.PathLike)) else parse_overrides(dict(data))
    out_dir = Path(out) if out is not None else default_out(overrides, profile)
    options = {
        "profile": profile,
        "settings": settings,
        "seeds": seeds,
        **({"methods": list(methods)} if methods else {}),
    }
    result = run_compare(
        overrides,
        out_dir,
        methods=methods,
        budget=budget,
        yes=yes,
        dry_run=dry_run,
        workers=workers,
        command=_call("compare", dict(overrides), out=str(out_dir), **options),
        profile=profile,
        settings=settings,
        seeds=seeds,
    )
    plan = result.plan
    sweep_summary = report_summary = None
    if result.sweep is not None:
        from asymcl.experiments.sweep import parse_spec

        sweep_summary = _sweep_summary(result.sweep, parse_spec(plan.spec), out_dir)
    if result.report is not None:
        report_summary = _report_summary(result.report, out_dir / "report")
    return CompareSummary(
        out_dir=out_dir,
        methods=tuple(plan.methods),
        settings=plan.settings,
        seeds=tuple(plan.seeds),
        runs=plan.runs,
        eta_s=plan.eta_s,
        sweep=sweep_summary,
        report=report_summary,
    )

"""``runs.csv``: every run's numbers in one flat file, from which the report's numbers can be rebuilt.

A reader who wants to check an interval, or redo the analysis another way, needs the per-run
numbers, not the run directories (gigabytes of checkpoints). Every report writes ``runs.csv``
beside it: one row per run and split, with

    run, setting, row, method, settings, seed, split, n_images, wa, ua, macro_f1,
    classes, per_class_recall, per_class_count, config

``settings`` is the JSON of the run's tuned keys (those in its method's search space and the loss
keys it uses); ``per_class_*`` are JSON lists in the order of ``classes``; ``config`` is the JSON of
the run's resolved config keys that differ from the defaults (a run's whole config is those plus
the defaults; read back, the ``settings`` keys are laid over them, so that the tuned values survive a
later change of a default). ``asymcl report runs.csv`` rebuilds every table, choice, interval and verdict from
this file alone (not the figures, which need the runs' predictions and histories); floats are
written with Python's ``repr``, so the numbers round-trip exactly.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asymcl.atomic import atomic_write_text
from asymcl.errors import DataError
from asymcl.experiments.runs import Run
from asymcl.training.config import SCHEMA, fill_missing_keys

COLUMNS = (
    "run",
    "setting",
    "row",
    "method",
    "settings",
    "seed",
    "split",
    "n_images",
    "wa",
    "ua",
    "macro_f1",
    "classes",
    "per_class_recall",
    "per_class_count",
    "config",
)
SPLITS = ("val", "test", "test_imbalanced")


def _tuned(run: Run) -> dict[str, Any]:
    from asymcl.training.methods import REGISTRY

    method = REGISTRY.get(run.method)
    keys = list(method.space) if method is not None else []
    keys += [f"loss.{name}" for name in (method.free if method is not None else ())]
    return {key: run.config.get(key) for key in dict.fromkeys(keys)}


def _non_default(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in sorted(config.items()) if key not in SCHEMA or SCHEMA[key][0] != value}


def run_rows(run: Run, setting_label: str, root: Path | None = None) -> list[dict[str, Any]]:
    """The rows of one run: one per split it has final metrics for. ``run`` is the run directory's
    path under ``root`` (its name without one), so folders that group runs (arms) survive."""
    rows = []
    classes = run.class_names() or []
    counts = run.metrics.get("counts") or {}
    for split in SPLITS:
        final = (run.metrics.get("final") or {}).get(split)
        if not final:
            continue
        per_class_count = [int(counts.get(split, {}).get(name, 0)) for name in classes] if counts.get(split) else []
        rows.append(
            {
                "run": _relative(run.path, root),
                "setting": setting_label,
                "row": run.row,
                "method": run.method,
                "settings": json.dumps(_tuned(run), sort_keys=True),
                "seed": run.seed,
                "split": split,
                "n_images": sum(per_class_count) if per_class_count else "",
                "wa": repr(float(final["wa"])),
                "ua": repr(float(final["ua"])),
                "macro_f1": repr(float(final["macro_f1"])) if final.get("macro_f1") is not None else "",
                "classes": json.dumps(classes),
                "per_class_recall": json.dumps(final.get("per_class_recall", [])),
                "per_class_count": json.dumps(per_class_count),
                "config": json.dumps(_non_default(run.config), sort_keys=True, default=str),
            }
        )
    return rows


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return Path(path).name


def write_runs_csv(path: Path, runs_by_setting: Sequence[tuple[str, Sequence[Run]]], root: Path | None = None) -> Path:
    """Write ``runs.csv`` (atomically) for ``[(setting label, its runs)]``; ``root``: see :func:`run_rows`."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for label, runs in runs_by_setting:
        for run in sorted(runs, key=lambda r: str(r.path)):
            writer.writerows(run_rows(run, label, root))
    atomic_write_text(path, text.getvalue())
    return path


def load_runs_csv(path: str | Path) -> list[Run]:
    """The runs of a ``runs.csv`` as :class:`Run` objects carrying what the report's numbers need
    (config, final metrics per split, classes, per-split counts)."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: not an asymcl runs.csv (missing column(s) {', '.join(missing)})")
            rows = list(reader)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from exc
    by_run: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_run[row["run"]].append(row)
    runs = []
    for name, members in by_run.items():
        try:
            # The tuned keys from ``settings`` over ``config``: ``config`` leaves out the values that
            # were defaults when it was written, so a default changed since would silently stand in
            # for them, and the tuned keys are what the selection reads (a committed report's probe
            # runs at probe.c 0.003, the default then, came back as probe.c 1.0).
            config = fill_missing_keys({**json.loads(members[0]["config"]), **json.loads(members[0]["settings"])})
            classes = json.loads(members[0]["classes"])
            final, counts = {}, {}
            for row in members:
                final[row["split"]] = {
                    "wa": float(row["wa"]),
                    "ua": float(row["ua"]),
                    "macro_f1": float(row["macro_f1"]) if row["macro_f1"] else None,
                    "per_class_recall": json.loads(row["per_class_recall"]),
                }
                per_class_count = json.loads(row["per_class_count"])
                if per_class_count:
                    counts[row["split"]] = dict(zip(classes, per_class_count, strict=True))
        except (ValueError, KeyError) as exc:
            raise DataError(f"{path}: run {name}: a malformed row ({exc})") from exc
        metrics = {"status": "complete", "final": final, "classes": classes, "counts": counts}
        runs.append(Run(path.parent / name, config, metrics))
    if not runs:
        raise DataError(f"{path} holds no runs")
    return runs

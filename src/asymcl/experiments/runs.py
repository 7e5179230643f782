"""Reading finished run directories (the layout of docs/architecture.md, "Layer 3").

Everything the sweep and the report know about a run comes from its files: ``config.yaml`` (the
resolved config), ``metrics.json`` (status, final metrics per split, history, best epoch),
``versions.json``, ``predictions.csv`` and ``embeddings.npz``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asymcl.errors import CheckpointError, DataError
from asymcl.training import methods as _methods
from asymcl.training.config import fill_missing_keys, flatten

#: Methods in the order tables list them (baselines first, the proposed loss last) and the loss
#: hyperparameters each one uses, both from the method registry: a grid value for a key that a
#: method does not use is not swept for that method (CE and SupCon are not repeated per gamma/eta).
METHODS = _methods.METHODS
METHOD_PARAMS: Mapping[str, frozenset[str]] = _methods.RegistryView(lambda method: method.tunable_keys)

#: The loss hyperparameters the rule above is about (others, e.g. loss.normalization, pass through).
LOSS_PARAMS = frozenset(f"loss.{name}" for name in _methods.TUNABLE)


def fixed_loss_params(method: str | None) -> dict[str, Any]:
    """``{loss.<name>: value}`` of the hyperparameters ``method`` fixes by definition (FCL: eta = 0)."""
    spec = _methods.REGISTRY.get(method or "")
    if spec is None:
        return {}
    return {f"loss.{name}": value for name, value in spec.fixed.items() if f"loss.{name}" in LOSS_PARAMS}


METHOD_KEY = "method"

#: Training options that make a report row of their own (a lever), with the label it shows:
#: ``{config key: {value: (row-key token, label)}}``. A key's default value has no token.
LEVERS: Mapping[str, Mapping[Any, tuple[str, str]]] = {
    "schedule": {"joint": ("joint", "joint")},
    "stage1.sampler": {"class_balanced": ("s1cb", "S1 class-balanced"), "m_per_class": ("s1mpc", "S1 m-per-class")},
}
_LEVER_LABELS = {token: label for values in LEVERS.values() for token, label in values.values()}


def base_method(config: Mapping[str, Any]) -> str:
    """The run's method as reports show it. ``method=ce`` with ``stage2.loss=logit_adjusted`` (how
    logit-adjusted CE was run before ``la`` had its own entry) is ``la``: the same model and loss."""
    method = str(config.get(METHOD_KEY) or config.get("loss.name"))
    spec = _methods.REGISTRY.get(method)
    if spec is not None and spec.end_to_end and spec.classification_loss is None:
        # the end-to-end method that fixes this run's classification loss (la: logit_adjusted)
        for other in _methods.REGISTRY.values():
            if (
                other.end_to_end
                and other.classification_loss
                and other.classification_loss == config.get("stage2.loss")
            ):
                return other.name
    return method


def row_key(config: Mapping[str, Any]) -> str:
    """The report row of a run: its method, plus a token per lever set (``afcl+joint+s1mpc``), so
    that runs with another schedule or stage-1 sampler are never mixed into the method's row."""
    tokens = [LEVERS[key][config[key]][0] for key in LEVERS if config.get(key) in LEVERS[key]]
    return "+".join([base_method(config), *tokens])


def row_method(row: str) -> str:
    """``afcl+joint`` -> ``afcl``."""
    return row.split("+", 1)[0]


def row_display(row: str) -> str:
    """``afcl+joint+s1mpc`` -> ``AFCL (joint, S1 m-per-class)``; a plain method -> its display name."""
    method, *tokens = row.split("+")
    name = _methods.display(method)
    return f"{name} ({', '.join(_LEVER_LABELS.get(t, t) for t in tokens)})" if tokens else name


TEST_SPLITS = ("test", "test_imbalanced")
COMPLETE = "complete"


def run_status(run_dir: Path) -> str | None:
    """``metrics.json``'s status (``"complete"``/``"running"``), or None when there is none (yet) or
    it cannot be read (a listing must not stop at one broken run)."""
    from asymcl.training.run_dir import read_metrics

    try:
        metrics = read_metrics(run_dir)
    except (OSError, CheckpointError):
        return None
    return metrics.get("status") if metrics else None


def is_complete(run_dir: Path) -> bool:
    return run_status(run_dir) == COMPLETE


@dataclass
class Run:
    """One finished run, loaded from its directory."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    versions: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        """The method (:func:`base_method`: an old ce + logit_adjusted run is ``la``)."""
        return base_method(self.config)

    @property
    def row(self) -> str:
        """The report row (:func:`row_key`): method plus levers."""
        return row_key(self.config)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def split_metric(self, split: str, metric: str) -> float | None:
        """``final[split][metric]`` or None when the run has no such split."""
        value = self.metrics.get("final", {}).get(split, {}).get(metric)
        return None if value is None else value

    @property
    def val_ua(self) -> float | None:
        """Validation UA of the selected (best) model: ``final.val.ua``, else ``best.<last stage>.val_ua``."""
        value = self.split_metric("val", "ua")
        if value is not None:
            return float(value)
        best = self.metrics.get("best") or {}
        for stage in reversed(list(best)):
            if best[stage].get("val_ua") is not None:
                return float(best[stage]["val_ua"])
        return None

    def test_splits(self) -> list[str]:
        final = self.metrics.get("final", {})
        return [split for split in TEST_SPLITS if split in final]

    def class_names(self) -> list[str] | None:
        """Class names: from metrics.json (``classes``), else predictions.csv's ``prob_<class>`` columns."""
        names = self.metrics.get("classes")
        if names:
            return [str(name) for name in names]
        predictions = self.path / "predictions.csv"
        if predictions.is_file():
            with predictions.open(newline="") as handle:
                header = next(csv.reader(handle), [])
            names = [column[len("prob_") :] for column in header if column.startswith("prob_")]
            if names:
                return names
        return None


def load_run(run_dir: Path) -> Run:
    """Load a run directory; raises DataError naming the file that is missing or unreadable."""
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{run_dir / 'metrics.json'}: cannot read the run's metrics ({exc})") from exc
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{run_dir / 'config.yaml'}: cannot read the run's config ({exc})") from exc
    versions: dict[str, Any] = {}
    versions_path = run_dir / "versions.json"
    if versions_path.is_file():
        try:
            versions = json.loads(versions_path.read_text())
        except json.JSONDecodeError:
            versions = {}
    # A run made before a config key existed compares with newer runs as what it did then, not as
    # a different setting (a sweep resumed after an upgrade would otherwise split into two rows).
    return Run(run_dir, fill_missing_keys(flatten(config)), metrics, versions)


def iter_run_dirs(root: Path) -> Iterator[Path]:
    """Every directory under ``root`` (itself included) that holds a metrics.json and a config.yaml."""
    root = Path(root)
    for metrics in sorted(root.rglob("metrics.json")):
        if (metrics.parent / "config.yaml").is_file():
            yield metrics.parent


def load_runs(root: Path, *, complete_only: bool = True) -> list[Run]:
    runs = []
    for run_dir in iter_run_dirs(root):
        if complete_only and not is_complete(run_dir):
            continue
        runs.append(load_run(run_dir))
    return runs

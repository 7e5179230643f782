"""Optuna (TPE) search over the loss hyperparameters, shareable between machines.

One study per *group*: a combination of the grid's values other than the searched keys and the
seed (so: per method and dataset/imbalance). A trial proposes gamma/eta(/temperature), runs every
seed of the group as ordinary run directories (named exactly like grid points, so a study and a
grid sweep in the same directory reuse each other's finished runs), and its objective is the mean
validation UA over those seeds. The test splits are never looked at.

Several machines: give them all the same ``--storage`` URL (any database URL Optuna accepts, e.g.
``postgresql://...`` or a SQLite file on a shared disk) and a different ``--sampler-seed``; the
trial budget ``n_trials`` is the total per study across all machines. How workers share a study
without losing or repeating a trial (heartbeats, retries, duplicates, database outages):
:mod:`asymcl.experiments.shared_study`.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymcl.errors import ConfigError
from asymcl.experiments import shared_study
from asymcl.experiments.runs import METHOD_KEY, METHOD_PARAMS, load_run
from asymcl.experiments.sweep import (
    Resolver,
    Runner,
    SweepSpec,
    default_resolver,
    default_runner,
    make_point,
    point_name,
    record_command,
    resolve_points,
    run_points,
)

SEARCHABLE = ("loss.gamma", "loss.eta", "loss.temperature")


def hide_password(url: str) -> str:
    """``url`` with its password replaced by ``***``, for logs, sweep.json and reports."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can parse: nothing it could hide either
        return url


def search_space(spec: SweepSpec) -> dict[str, dict[str, Any]]:
    """``search:`` if given, else [min, max] of each searchable grid list with two or more values.

    Derived ranges use a log scale when the grid's smallest value is > 0 and it spans >= 10x
    (eta's useful range is 1..300); otherwise linear.
    """
    space = dict(spec.search)
    for key in SEARCHABLE:
        values = spec.grid.get(key)
        if key in space or not values or len(values) < 2:
            continue
        numbers = [float(v) for v in values]
        low, high = min(numbers), max(numbers)
        space[key] = {"low": low, "high": high, "log": low > 0 and high / low >= 10}
    if not space:
        raise ConfigError(
            "optuna: nothing to search; give 'search:' ranges or at least two values of "
            "loss.gamma, loss.eta or loss.temperature in the grid"
        )
    return space


def _round(value: float) -> float:
    """Three significant digits: run names stay readable and near-identical proposals share runs."""
    if value == 0:
        return 0.0
    digits = 2 - int(math.floor(math.log10(abs(value))))
    return float(round(value, digits))


@dataclass
class StudyGroup:
    label: str  # e.g. "fashion-mnist_binary10__afcl"
    values: dict[str, Any]  # grid values fixed in this group (method, data.*, ...)
    seeds: list[Any]
    searched: list[str]  # the keys of the space this method uses


def study_groups(spec: SweepSpec, space: Mapping[str, Any]) -> list[StudyGroup]:
    """Groups of the grid that have at least one searched key their method uses."""
    if spec.settings:
        raise ConfigError(
            "sweep 'settings' lists each method's settings itself; --optuna searches a 'grid' "
            "with a 'method' key instead (remove one of them)"
        )
    fixed_keys = [k for k in spec.grid if k not in SEARCHABLE and k != "seed"]
    seeds = spec.grid.get("seed", [spec.base.get("seed", 0)])
    groups = []
    for combination in itertools.product(*(spec.grid[k] for k in fixed_keys)):
        values = dict(zip(fixed_keys, combination, strict=True))
        method = values.get(METHOD_KEY, spec.base.get(METHOD_KEY))
        used = [k for k in space if method is not None and method in METHOD_PARAMS and k in METHOD_PARAMS[method]]
        if not used:
            continue
        groups.append(StudyGroup(point_name(values, list(spec.grid)), values, list(seeds), used))
    if not groups:
        raise ConfigError(
            f"optuna: no method in the sweep uses the searched keys ({', '.join(space)}); FCL/ACL/AFCL use gamma/eta"
        )
    return groups


@dataclass
class StudyResult:
    storage: str
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)  # study name -> best params/value


def run_study(
    spec: SweepSpec,
    out_dir: str | Path,
    n_trials: int,
    *,
    storage: str | None = None,
    sampler_seed: int | None = 0,
    runner: Runner | None = None,
    resolver: Resolver | None = None,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    heartbeat: int = 30,
    db_wait: float = 600.0,
    poll_seconds: float = 5.0,
) -> StudyResult:
    """Run ``n_trials`` TPE trials (COMPLETE ones, in total across workers) for every group of the sweep.

    ``heartbeat``: seconds between a running trial's heartbeats; a trial silent for 4 of them is
    failed and retried by another worker. ``db_wait``: how long database errors are retried before
    giving up. ``poll_seconds``: how often a worker waiting for other workers' trials looks again.
    """
    import optuna

    if not isinstance(n_trials, int) or n_trials < 1:
        raise ConfigError(f"--optuna: the number of trials must be a positive integer, got {n_trials!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out_dir / 'optuna.db').resolve()}"
    runner = runner or default_runner()
    resolver = resolver or default_resolver()
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    space = search_space(spec)
    groups = study_groups(spec, space)
    grid_keys = list(spec.grid) + [k for k in space if k not in spec.grid]
    # A bad base/grid value must stop the study before the first trial: resolve one point per group.
    probe = []
    for group in groups:
        values = {**group.values, **{k: space[k]["low"] for k in group.searched}, "seed": group.seeds[0]}
        method = values.get(METHOD_KEY, spec.base.get(METHOD_KEY))
        probe.append(make_point(values, method, grid_keys))
    resolve_points(spec, probe, resolver)
    label = hide_password(storage)
    record_command(out_dir, spec, [], command, kind=f"optuna x{n_trials} ({label})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    retry = shared_study.DbRetry(label, db_wait, progress)
    storage_obj = shared_study.open_storage(storage, heartbeat=heartbeat, retry=retry)

    result = StudyResult(label)
    for group in groups:
        study_name = f"{spec.name}:{group.label}"

        def open_study(study_name: str = study_name) -> optuna.Study:  # a fresh sampler for each try
            return optuna.create_study(
                study_name=study_name,
                storage=storage_obj,
                direction="maximize",
                load_if_exists=True,
                sampler=optuna.samplers.TPESampler(seed=sampler_seed),
            )

        study = retry("opening the study", open_study)

        def objective(trial: optuna.Trial, group: StudyGroup = group, study: optuna.Study = study) -> float:
            proposal = {}
            for key in group.searched:
                bounds = space[key]
                proposal[key] = _round(trial.suggest_float(key, bounds["low"], bounds["high"], log=bounds["log"]))
            check_duplicate(trial, proposal, after_training=False)
            if retry("checking the budget", lambda: shared_study.over_budget(study, trial.number, n_trials)):
                retry("marking a trial over budget", lambda: trial.set_user_attr(shared_study.OVER_BUDGET_ATTR, True))
                progress(
                    f"[optuna] trial {trial.number} {group.label}: earlier trials already fill the "
                    f"budget of {n_trials}; not counted, nothing trained"
                )
                raise shared_study.OverBudget(n_trials)
            method = group.values.get(METHOD_KEY, spec.base.get(METHOD_KEY))
            points = []
            for seed in group.seeds:
                points.append(make_point({**group.values, **proposal, "seed": seed}, method, grid_keys))
            configs = resolve_points(spec, points, resolver)
            outcome = run_points(
                spec,
                points,
                out_dir,
                runner=runner,
                configs=configs,
                progress=progress,
                label=f"trial {trial.number} {group.label}",
            )
            if outcome.failed:
                raise RuntimeError(f"runs failed: {', '.join(outcome.failed)}")
            scores = [score for p in points if (score := load_run(out_dir / p.name).val_ua) is not None]
            if len(scores) < len(points):
                raise RuntimeError("a finished run has no validation UA in metrics.json")
            # Again after training: two workers that proposed the point at the same moment may both
            # have got here (the run lock kept them from training it twice); only one trial counts.
            check_duplicate(trial, proposal, after_training=True)
            retry("recording the trial's runs", lambda: trial.set_user_attr("runs", [p.name for p in points]))
            return float(sum(scores) / len(scores))

        def check_duplicate(
            trial: optuna.Trial,
            proposal: dict,
            *,
            after_training: bool,
            group: StudyGroup = group,
            study: optuna.Study = study,
        ) -> None:
            other = retry("checking for duplicates", lambda: shared_study.duplicate_of(study, trial, proposal, _round))
            if other is not None:
                retry("marking a duplicate", lambda: trial.set_user_attr(shared_study.DUPLICATE_ATTR, other))
                progress(
                    f"[optuna] trial {trial.number} {group.label}: "
                    + ", ".join(f"{k}={v:g}" for k, v in proposal.items())
                    + f" is trial {other}'s point; not counted"
                    + ("" if after_training else ", nothing trained")
                )
                raise shared_study.DuplicatePoint(other)

        finished = len(
            retry(
                "counting trials",
                functools.partial(study.get_trials, deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
            )
        )
        progress(f"[optuna] study {study_name}: {finished}/{n_trials} trials finished")
        shared_study.run_trials(
            study,
            objective,
            n_trials,
            retry=retry,
            progress=progress,
            label=f"study {study_name}",
            poll_seconds=poll_seconds,
        )

        def best_trial(study: optuna.Study = study) -> optuna.trial.FrozenTrial:
            return study.best_trial

        try:
            best = retry("reading the best trial", best_trial)
            result.studies[study_name] = {
                "params": best.params,
                "val_ua": best.value,
                "runs": best.user_attrs.get("runs", []),
            }
            progress(
                f"[optuna] {study_name}: best val UA {best.value:.4f} at "
                + ", ".join(f"{k}={_round(v):g}" for k, v in best.params.items())
            )
        except ValueError:
            result.studies[study_name] = {"params": None, "val_ua": None, "runs": []}
    return result

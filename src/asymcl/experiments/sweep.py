"""Grid sweeps: many ordinary runs from one YAML file, resumable, with progress and an ETA.

Sweep file schema (YAML)::

    name: fmnist-binary          # optional; defaults to the file's stem
    base:                        # optional: a normal config (dotted or nested keys) for every run
      data.dataset: fashion-mnist
      data.root: /data/fashion-mnist
      stage1.max_epochs: 5
    grid:                        # required: dotted config key -> non-empty list of values
      method: [ce, supcon, afcl]
      loss.gamma: [0, 2, 4]
      loss.eta: [0, 50, 150]
      seed: [0, 1, 2]
      data.imbalance: ["binary:10", "binary:100"]
    search:                      # optional, used by --optuna only: key -> {low, high, log}
      loss.eta: {low: 1, high: 300, log: true}
    settings:                    # optional, instead of a 'method' grid key: per method, its own list
      ce: [{stage1.lr: 0.001}, {stage1.lr: 0.0003}]           # of settings, each run with every
      afcl: [{loss.gamma: 1, loss.eta: 10}, {loss.gamma: 4, loss.eta: 100}]  # combination of 'grid'

``settings`` is how a fair comparison gives every method its own hyperparameters and the same
number of them (:mod:`asymcl.experiments.fair` writes it); ``grid`` then holds what every method
shares (seeds, imbalance profiles).

The runs are the Cartesian product of the grid, with one rule: a loss hyperparameter only varies
for the methods that use it (:data:`asymcl.experiments.runs.METHOD_PARAMS`). FCL gets eta = 0 and
ACL gamma = 0 by definition; CE ignores every ``loss.*`` key and SupCon/CL use only the temperature,
so they are not repeated per gamma/eta. Points that coincide after this rule are run once.

Each point is a normal run directory ``OUT/<name>`` whose name is made of the grid values, in a
fixed order (data keys first, then the method, then the other keys), e.g.
``fashion-mnist_binary10__afcl_g2_e50_s0``. Names depend only on the grid keys and the point's
values, so adding values to a list later keeps every existing run and runs only the new ones.
Finished runs (``metrics.json`` status ``complete``) are skipped; an interrupted run resumes
through the pipeline's own checkpoints.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from asymcl.atomic import atomic_write_json
from asymcl.errors import AsymclError, ConfigError
from asymcl.experiments.runs import (
    LEVERS,
    LOSS_PARAMS,
    METHOD_KEY,
    METHOD_PARAMS,
    METHODS,
    fixed_loss_params,
    is_complete,
)
from asymcl.experiments.sweep_settings import grid_values, parse_settings
from asymcl.experiments.sweep_types import Resolver, Runner, SweepPoint, SweepSpec  # noqa: F401  (public here too)
from asymcl.experiments.workers import SweepResult, run_points  # noqa: F401  (public here too)
from asymcl.training import runlock
from asymcl.training.config import flatten
from asymcl.training.methods import get_method

SPEC_KEYS = ("name", "description", "base", "grid", "search", "settings")
SEARCH_FIELDS = ("low", "high", "log")
SWEEP_MANIFEST = "sweep.json"

# Short name tokens for the keys every sweep uses; other keys appear as "key=value".
_NAME_ALIASES = {
    "loss.gamma": "g",
    "loss.eta": "e",
    "loss.temperature": "t",
    "seed": "s",
    METHOD_KEY: "",
    "data.dataset": "",
    "data.imbalance": "",
}
_SCALAR_TYPES = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------------------------
# The spec


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _known_keys() -> dict[str, Any] | None:
    """The pipeline's default config (flat), or None when the training layer is not installed."""
    try:
        from asymcl.training.config import default_config
    except ModuleNotFoundError:
        return None
    return flatten(default_config())


def _check_value(where: str, value: Any) -> None:
    """A grid/base value must be a YAML scalar or a list of them. Whether it suits its key (type,
    range) is the run config's own validation, which every point goes through before any run."""
    if isinstance(value, list):
        bad = [item for item in value if not isinstance(item, _SCALAR_TYPES)]
        if bad:
            raise ConfigError(f"{where}: list items must be numbers, strings or booleans, got {bad[0]!r}")
    elif not isinstance(value, _SCALAR_TYPES):
        raise ConfigError(f"{where}: expected a number, string, boolean or list, got {type(value).__name__} {value!r}")


def parse_spec(raw: Any, *, name: str = "sweep", known: Mapping[str, Any] | None = None) -> SweepSpec:
    """Validate a sweep mapping (the parsed YAML). Every error is a ConfigError naming the key.

    ``known``: the flat default config whose keys and value types the sweep may use; by default the
    pipeline's :func:`asymcl.training.config.default_config` when it is installed.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"sweep file: expected a mapping with 'base' and 'grid', got {type(raw).__name__}")
    for key in raw:
        if key not in SPEC_KEYS:
            raise ConfigError(
                f"sweep file: unknown top-level key {key!r}{_suggest(str(key), SPEC_KEYS)} "
                f"(allowed: {', '.join(SPEC_KEYS)})"
            )
    if known is None:
        known = _known_keys()

    def check_key(where: str, key: str) -> None:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}: keys must be dotted config names like 'loss.gamma', got {key!r}")
        if known is not None and key not in known:
            raise ConfigError(f"{where}: unknown config key {key!r}{_suggest(key, known)}")

    base_raw = raw.get("base") or {}
    if not isinstance(base_raw, Mapping):
        raise ConfigError(f"sweep 'base': expected a mapping of config keys, got {type(base_raw).__name__}")
    base = flatten(base_raw)
    for key, value in base.items():
        check_key("sweep 'base'", key)
        _check_value(f"sweep base key {key!r}", value)

    grid_raw = raw.get("grid")
    if grid_raw is None:
        raise ConfigError("sweep file: missing 'grid' (a mapping of dotted config keys to lists of values)")
    if not isinstance(grid_raw, Mapping):
        raise ConfigError(f"sweep 'grid': expected a mapping of config keys to lists, got {type(grid_raw).__name__}")
    if not grid_raw:
        raise ConfigError("sweep 'grid' is empty: give at least one key with a list of values")
    grid: dict[str, list[Any]] = {}
    for key, values in flatten(grid_raw).items():
        check_key("sweep 'grid'", key)
        if not isinstance(values, list):
            raise ConfigError(f"sweep grid key {key!r}: expected a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"sweep grid key {key!r}: the list is empty; give at least one value")
        for value in values:
            _check_value(f"sweep grid key {key!r}", value)
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"sweep grid key {key!r}: repeated values in {values!r}")
        grid[key] = list(values)

    settings = parse_settings(raw.get("settings"), grid, check_key, _check_value)
    methods = (
        list(settings)
        or grid.get(METHOD_KEY)
        or [base.get(METHOD_KEY, None if known is None else known.get(METHOD_KEY))]
    )
    for method in methods:
        if method is not None and method not in METHODS:
            raise ConfigError(f"sweep key {METHOD_KEY!r}: unknown method {method!r} (allowed: {', '.join(METHODS)})")
    if "loss.name" in grid or "loss.name" in base:
        raise ConfigError(f"sweep: set the loss with {METHOD_KEY!r} (one of {', '.join(METHODS)}), not 'loss.name'")

    search_raw = raw.get("search") or {}
    if not isinstance(search_raw, Mapping):
        raise ConfigError(f"sweep 'search': expected a mapping of key -> {{low, high, log}}, got {search_raw!r}")
    search: dict[str, dict[str, Any]] = {}
    for key, bounds in search_raw.items():
        check_key("sweep 'search'", key)
        if key not in ("loss.gamma", "loss.eta", "loss.temperature"):
            raise ConfigError(
                f"sweep 'search' key {key!r}: only loss.gamma, loss.eta and loss.temperature can be searched"
            )
        if not isinstance(bounds, Mapping) or "low" not in bounds or "high" not in bounds:
            raise ConfigError(f"sweep 'search' key {key!r}: expected {{low: X, high: Y, log: false}}, got {bounds!r}")
        for field_name in bounds:
            if field_name not in SEARCH_FIELDS:
                raise ConfigError(f"sweep 'search' key {key!r}: unknown field {field_name!r} (allowed: low, high, log)")
        low, high, log = bounds["low"], bounds["high"], bool(bounds.get("log", False))
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
            raise ConfigError(f"sweep 'search' key {key!r}: need numbers low < high, got low={low!r} high={high!r}")
        if log and low <= 0:
            raise ConfigError(f"sweep 'search' key {key!r}: a log scale needs low > 0, got {low!r}")
        search[key] = {"low": float(low), "high": float(high), "log": log}

    spec_name = raw.get("name", name)
    if not isinstance(spec_name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", spec_name):
        raise ConfigError(f"sweep 'name': use letters, digits, '.', '_' or '-', got {spec_name!r}")
    return SweepSpec(spec_name, base, grid, search, str(raw.get("description", "")), settings)


def load_spec(path: str | os.PathLike, *, known: Mapping[str, Any] | None = None) -> SweepSpec:
    from asymcl.training.config import read_yaml_file

    path = Path(path)
    raw = read_yaml_file(path, what="sweep file")
    return parse_spec(raw, name=re.sub(r"[^A-Za-z0-9._-]", "-", path.stem), known=known)


# --------------------------------------------------------------------------------------------
# Points


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, list):
        text = "-".join(_format_value(item) for item in value)
    elif value is None:
        text = "none"
    elif isinstance(value, str) and re.fullmatch(r"[a-z]+:[0-9.]+:[0-9]+", value):
        kind, ratio, n_max = value.split(":")  # an imbalance with a majority cap: binary10n2000
        text = f"{kind}{ratio}n{n_max}"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+=-]", "", text.replace("/", "-"))


def _key_order(keys: Sequence[str]) -> list[str]:
    """Data keys first (they name the setting), then the method, then everything else as given."""
    data = [k for k in keys if k.startswith("data.")]
    method = [k for k in keys if k == METHOD_KEY]
    loss = [k for k in ("loss.gamma", "loss.eta", "loss.temperature") if k in keys]
    rest = [k for k in keys if k not in data and k not in method and k not in loss and k != "seed"]
    return data + method + loss + rest + (["seed"] if "seed" in keys else [])


def point_name(values: Mapping[str, Any], grid_keys: Sequence[str]) -> str:
    """``<data tokens>__<method>_g.._e.._t.._<other>_s<seed>`` from the grid keys the point sets."""
    data_tokens: list[str] = []
    tokens: list[str] = []
    for key in _key_order(grid_keys):
        if key not in values:
            continue
        alias = _NAME_ALIASES.get(key, f"{key}=")
        token = alias + _format_value(values[key])
        (data_tokens if key.startswith("data.") else tokens).append(token)
    name = "_".join(tokens) or "run"
    return "_".join(data_tokens) + "__" + name if data_tokens else name


def _apply_method_rule(values: Mapping[str, Any], method: str | None) -> dict[str, Any]:
    """Drop the loss keys ``method`` does not use; a contrastive method's unused gamma/eta is 0.

    FCL is eta = 0 and ACL gamma = 0 by definition (method.md section 1), so they are set to 0
    explicitly rather than left to whatever the base config holds.
    """
    if method is None or method not in METHOD_PARAMS:
        return dict(values)
    out = {key: value for key, value in values.items() if key not in _unused(method)}
    out.update(fixed_loss_params(method))
    return out


def _unused(method: str) -> frozenset[str]:
    """Grid keys ``method`` has no use for: the loss keys it does not tune and, for an end-to-end
    baseline (no contrastive loss), the levers (``schedule``, ``stage1.sampler``): a grid over
    method x schedule then runs CE and LA once, not once per schedule."""
    unused = LOSS_PARAMS - METHOD_PARAMS[method]
    if not get_method(method).contrastive:
        unused |= frozenset(LEVERS)
    return unused


def make_point(values: Mapping[str, Any], method: str | None, grid_keys: Sequence[str]) -> SweepPoint:
    """The point for grid ``values``: the method rule applied; the name shows only what varies for it."""
    applied = _apply_method_rule(values, method)
    unused = _unused(method) if method is not None and method in METHOD_PARAMS else frozenset()
    name_values = {k: v for k, v in applied.items() if k in values and k not in unused}
    return SweepPoint(point_name(name_values, grid_keys), tuple(applied.items()))


def expand(spec: SweepSpec, *, default_method: str | None = None) -> list[SweepPoint]:
    """All points of the grid, in a stable order, with duplicates (after the method rule) removed."""
    keys = list(spec.grid)
    points: dict[str, SweepPoint] = {}
    for values, point_keys in grid_values(spec, keys):
        method = values.get(METHOD_KEY, spec.base.get(METHOD_KEY, default_method))
        point = make_point(values, method, point_keys)
        previous = points.get(point.name)
        if previous is not None and previous.values != point.values:
            raise ConfigError(
                f"sweep: two different grid points get the same run name {point.name!r}; "
                "give the values distinct spellings"
            )
        points.setdefault(point.name, point)
    return list(points.values())


# --------------------------------------------------------------------------------------------
# Running


def default_runner() -> Runner:
    import functools

    from asymcl.training.pipeline import run

    # A cache that was only read is not worth three lines per run in a sweep's log.
    return functools.partial(run, report_cache=False)


def default_resolver() -> Resolver:
    from asymcl.training.config import default_config, resolve_config

    # A plain nested dict: what a runner (the pipeline, or a user's own) receives, as before.
    return lambda overrides: resolve_config(default_config(), overrides).to_dict()


def write_json_atomic(path: Path, payload: Any) -> None:
    """JSON (values JSON cannot hold written as strings), atomically."""
    atomic_write_json(path, payload, default=str)


def current_command() -> str:
    """The command line of this process as a user would type it (``asymcl ...``)."""
    argv = list(sys.argv)
    program = Path(argv[0]).name if argv else "asymcl"
    if program in ("__main__.py", "asymcl") or program.startswith("asymcl"):
        argv[0] = "asymcl"
    return shlex.join(argv)


def record_command(
    out_dir: Path, spec: SweepSpec, points: Sequence[SweepPoint], command: str | None, kind: str = "grid"
) -> None:
    """Append this invocation to ``OUT/sweep.json`` (commands, the spec, the runs it names)."""
    # Several workers start on one directory: without the lock one's entry could overwrite another's.
    with runlock.exclusive(out_dir / f".{SWEEP_MANIFEST}.lock"):
        _record_command(out_dir / SWEEP_MANIFEST, spec, points, command, kind)


def _record_command(
    manifest_path: Path, spec: SweepSpec, points: Sequence[SweepPoint], command: str | None, kind: str
) -> None:
    manifest: dict[str, Any] = {}
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            manifest = {}
    manifest["name"] = spec.name
    manifest["spec"] = spec.to_dict()
    manifest.setdefault("commands", []).append(
        {
            "command": command if command is not None else current_command(),
            "cwd": os.getcwd(),
            "kind": kind,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    runs = manifest.setdefault("runs", {})
    for point in points:
        runs[point.name] = point.overrides
    write_json_atomic(manifest_path, manifest)


def resolve_points(spec: SweepSpec, points: Sequence[SweepPoint], resolver: Resolver) -> dict[str, dict]:
    """Resolve every point's config before anything runs, so a bad value stops the sweep at once."""
    configs = {}
    for point in points:
        merged = {**spec.base, **point.overrides}
        # The rule also covers base values: a base loss.gamma must not reach CE (or FCL's eta).
        overrides = _apply_method_rule(merged, merged.get(METHOD_KEY))
        try:
            configs[point.name] = resolver(overrides)
        except AsymclError as exc:
            raise ConfigError(f"sweep run {point.name!r}: {exc}") from exc
    return configs


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike,
    *,
    runner: Runner | None = None,
    resolver: Resolver | None = None,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    poll_seconds: float = 5.0,
    workers: int = 1,
    label: str = "sweep",
) -> SweepResult:
    """Run (or continue) the grid sweep ``spec`` into ``out_dir``; returns what ran, was skipped or failed.

    Any number of workers may run the same sweep into one ``out_dir`` at once (see :func:`run_points`).
    ``workers`` > 1 starts that many on this machine (:mod:`asymcl.experiments.parallel`): the
    feature caches are built first with every core, then each worker trains with cores // workers
    threads. It runs the pipeline in child processes, so it takes no custom ``runner``.
    """
    from asymcl.experiments import parallel

    parallel.check_workers(workers)
    if workers > 1 and runner is not None:
        raise ConfigError("workers > 1 runs the pipeline in worker processes; a custom runner cannot run there")
    out_dir = Path(out_dir)
    runner = runner or default_runner()
    resolver = resolver or default_resolver()
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    known = _known_keys()
    points = expand(spec, default_method=None if known is None else known.get(METHOD_KEY))
    configs = resolve_points(spec, points, resolver)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_command(out_dir, spec, points, command)
    # One worker, or nothing left for others (no processes to start): run_points alone. Only with
    # several workers is the grid scanned here too, for the runs whose caches to build first.
    pending = (
        {}
        if workers == 1
        else {point.name: configs[point.name] for point in points if not is_complete(out_dir / point.name)}
    )
    if not pending:
        return run_points(
            spec,
            points,
            out_dir,
            runner=runner,
            configs=configs,
            progress=progress,
            poll_seconds=poll_seconds,
            label=label,
        )
    import torch

    parallel.warm_feature_caches(pending, progress, label)
    threads = parallel.threads_per_worker(workers)
    progress(f"[{label}] {workers} workers on {parallel.available_cores()} core(s), {threads} torch thread(s) each")
    children = parallel.spawn_workers(spec.to_dict(), out_dir, workers - 1, threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_points(
            spec,
            points,
            out_dir,
            runner=runner,
            configs=configs,
            progress=progress,
            poll_seconds=poll_seconds,
            label="worker 1",
        )
        for number, child in enumerate(children, start=2):
            # A worker that died left its runs to the others (result says whether all finished);
            # its exit status is still worth a line, since its own output may have scrolled away.
            if child.wait() != 0:
                progress(
                    f"[{label}] worker {number} exited with status {child.returncode}; "
                    + (
                        "the other workers finished its runs"
                        if result.complete
                        else "see its output above; run the same command again to resume"
                    )
                )
    finally:
        torch.set_num_threads(before)
        parallel.stop_workers(children)
    return result

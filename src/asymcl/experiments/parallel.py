"""Several worker processes on one machine for one grid sweep (``--workers N``).

Why processes: the runs of a CPU preset are small (a 256-wide adapter on cached features, or a
3-conv CNN on 28 px images), and their tensors use torch's intra-op threads poorly. On 2 cores, two
workers of one thread each finished the levers sweeps about 1.7x sooner than one worker with two
threads (docs/results-archive.md). Lightning's multi-process strategies split one run, not a grid, so the
grid is split here, on top of the run locks that already let any number of workers share one sweep
directory (:func:`asymcl.experiments.workers.run_points`).

Phases:

1. The feature caches that the grid's runs read are built first, in this process and with every
   core (:func:`asymcl.training.pipeline.prepare_feature_caches`). Built inside the workers, the
   first one would extract on its share of the cores while the others waited on the cache's lock.
2. N - 1 worker processes (``asymcl sweep --threads K``) start on the same sweep directory, and
   this process is the N-th. Each one uses K = cores // N torch threads.
3. This process waits for all of them. A worker that dies leaves its run to the others, which
   resume it from its checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from asymcl import plugins
from asymcl.atomic import atomic_write_bytes
from asymcl.errors import ConfigError

WORKER_SPEC = ".workers-sweep.yaml"


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a container
    quota's cpuset), not every core of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    return max(1, (cores or available_cores()) // workers)


def check_workers(workers: int) -> None:
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a whole number >= 1, got {workers!r}")


def _cache_identity(config: Mapping) -> str:
    """What decides the caches a run reads: its data (the split depends on the seed) and model, and
    where extraction runs."""
    return json.dumps(
        {
            "data": config.get("data"),
            "model": config.get("model"),
            "seed": config.get("seed"),
            "accelerator": (config.get("trainer") or {}).get("accelerator"),
        },
        sort_keys=True,
        default=str,
    )


def warm_feature_caches(configs: Mapping[str, dict], progress: Callable[[str], None], label: str = "sweep") -> int:
    """Build the feature caches of every distinct (data, model, seed) among ``configs`` (run name ->
    resolved config); returns how many such groups train from cached features."""
    from asymcl.training.config import resolve_config
    from asymcl.training.encoder import uses_feature_cache
    from asymcl.training.pipeline import prepare_feature_caches

    groups: dict[str, dict] = {}
    for config in configs.values():
        if uses_feature_cache(resolve_config(config)):
            groups.setdefault(_cache_identity(config), config)
    for index, config in enumerate(groups.values(), start=1):
        progress(
            f"[{label}] feature caches {index}/{len(groups)} (seed {config.get('seed')}): building or "
            f"checking them before the workers start, with {available_cores()} core(s)"
        )
        prepare_feature_caches(config)
    return len(groups)


def spawn_workers(spec_dict: dict, out_dir: Path, count: int, threads: int) -> list[subprocess.Popen]:
    """Start ``count`` ``asymcl sweep`` worker processes on ``out_dir``, each with ``threads`` torch
    threads; they read the sweep from ``out_dir/.workers-sweep.yaml``."""
    spec_path = out_dir / WORKER_SPEC
    atomic_write_bytes(spec_path, yaml.safe_dump(spec_dict, sort_keys=False).encode())
    # The workers load this process's --plugin values too (entry points they load themselves), so a
    # plugin's method, dataset or backbone means the same in every worker.
    plugin_options = [word for value in plugins.loaded() for word in ("--plugin", value)]
    children = []
    for number in range(2, count + 2):
        command = [
            sys.executable,
            "-m",
            "asymcl",
            "sweep",
            "--config",
            str(spec_path),
            "--out",
            str(out_dir),
            "--threads",
            str(threads),
            "--worker-label",
            f"worker {number}",
            *plugin_options,
        ]
        children.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
    return children


def stop_workers(children: list[subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGTERM the workers still running and wait for them (they save nothing half-written: run
    directories and caches are written atomically, and a stopped run resumes)."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

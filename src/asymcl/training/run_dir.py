"""The run directory's bookkeeping files: ``config.yaml``, ``versions.json``, ``metrics.json``.

The layout is in :mod:`asymcl.training.pipeline` (and docs/architecture.md, layer 3). Only the
main process writes; every write is atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from asymcl.atomic import atomic_write_json, atomic_write_yaml
from asymcl.errors import CheckpointError, ConfigError
from asymcl.training.config import RunConfig, config_differences, read_recorded_config, run_identity

# Where a launcher puts this process's rank, in the order Lightning reads them for its own
# rank_zero_only (lightning.fabric.utilities.rank_zero._get_rank), so the process that writes the
# run's files is the one whose loggers Lightning keeps. Read on every call, not once at import as
# Lightning does: a sweep worker or test may set them later in the same process.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def launch_rank() -> int:
    """This process's global rank as its launcher (torchrun, Lightning's DDP re-launch, SLURM)
    set it in the environment; 0 when none did."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            return int(value)
    return 0


def is_main_process() -> bool:
    """The process that writes the run directory and prints results: rank 0 (:func:`launch_rank`)."""
    return launch_rank() == 0


def default_run_dir(config: RunConfig) -> str:
    """Where a run goes when no directory is given (``asymcl train``, :func:`asymcl.api.train`):
    the same config -> the same directory (so running it again resumes); another -> another."""
    digest = hashlib.sha256(json.dumps(run_identity(config), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"runs/{config.method}-{config.data.dataset}-{digest}"


def cpu_info() -> dict[str, Any]:
    """The processor a run's timings come from: its model name, the cores this process may use, and
    whether oneDNN computes bf16 natively (without it the feature cache's bf16 views fall back to
    fp32, about 2x slower: timings from two machines are not comparable)."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": name or platform.processor() or platform.machine(), "cores": cores, "cpu_bf16": bf16}


def versions_info() -> dict[str, Any]:
    import lightning

    import asymcl

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "asymcl": asymcl.__version__,
        "platform": platform.platform(),
        **cpu_info(),
        "git_commit": None,
    }
    try:
        repo = Path(asymcl.__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            info["git_commit"] = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def read_metrics(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:  # only possible if edited by hand: writes are atomic
        raise CheckpointError(f"{path} is not valid JSON ({exc}); delete it to recompute") from exc


def empty_metrics(config: RunConfig, classes: list[str] | None = None) -> dict:
    return {
        "status": "running",
        "method": config.method,
        "classes": classes,
        "final": {},
        "history": {},
        "best": {},
        "stages_complete": [],
    }


def check_run_dir(config: RunConfig, run_dir: Path) -> dict | None:
    """Check the run directory without writing to it. Returns the finished metrics if there is
    nothing to do; raises :class:`ConfigError` if it holds another config or something else."""
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            # Only compared: the new config's own paths were checked, and a recorded path that is
            # not here any more is a difference to report, not an unreadable run.
            previous = read_recorded_config(config_path)
        except (ConfigError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"{config_path} cannot be read as a run config ({exc}); choose another output directory"
            ) from exc
        differences = config_differences(previous, config)
        if differences:
            raise ConfigError(
                f"{run_dir} holds a run with a different config ({'; '.join(differences[:5])}"
                f"{' ...' if len(differences) > 5 else ''}); use another --out, or delete that "
                "directory to start over"
            )
        metrics = read_metrics(run_dir)
        if metrics and metrics.get("status") == "complete":
            return metrics
        return None
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output directory {run_dir} is a file; choose a new or empty directory")
    if run_dir.exists() and any(p for p in run_dir.iterdir() if not p.name.startswith(".")):
        raise ConfigError(
            f"{run_dir} is not empty and holds no run (no config.yaml); choose a new or empty output directory"
        )
    return None


def init_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Write config.yaml and versions.json into a new run directory (main process only)."""
    if is_main_process() and not (run_dir / "config.yaml").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "versions.json", versions_info())
        atomic_write_yaml(run_dir / "config.yaml", config.to_dict())


class MetricsRecorder:
    """Holds a run's metrics dict and rewrites ``metrics.json`` (main process only, atomically).

    Called as ``recorder(stage, entries, best)`` by :class:`~asymcl.training.callbacks.HistoryCallback`
    after every validation; a plain object rather than a closure, so that it pickles.
    """

    def __init__(self, run_dir: Path, metrics: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.metrics = metrics

    def save(self) -> None:
        if is_main_process():
            atomic_write_json(self.run_dir / "metrics.json", self.metrics)

    def reload_history(self) -> None:
        """Take ``history`` and ``best`` from the file: under ``ddp_spawn`` the stage was trained
        (and recorded) by spawned processes, whose copy of this object was not this one."""
        on_disk = read_metrics(self.run_dir) or {}
        for key in ("history", "best"):
            self.metrics[key].update(on_disk.get(key, {}))

    def __call__(self, stage: str, entries: list, best: dict) -> None:
        self.metrics["history"][stage] = entries
        self.metrics["best"][stage] = best
        self.save()

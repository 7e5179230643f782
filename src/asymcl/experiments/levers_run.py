"""``asymcl levers``: run the lever ablation of :mod:`asymcl.experiments.levers` arm by arm, then the
combination validation chose, then the table (:mod:`asymcl.experiments.levers_table`), for one preset
(``--preset``: ISIC 2018 or Fashion-MNIST-LT).

Each arm is a sweep into ``OUT/<arm>`` (resumable: run the same command again). Before an arm's runs
start, its feature caches are built on their own with every core and timed, and the cache entries
it read or wrote are found by comparing the cache folder before and after
(:func:`asymcl.data.cache_admin.entry_usage`): ``OUT/<arm>/levers-cost.json`` keeps the extraction
time, the bytes extracted, the disk of the entries the arm reads and the training time. A preset
whose seeds draw their own cached views (Fashion-MNIST-LT) builds each seed's entries in turn
(:func:`asymcl.experiments.parallel.warm_feature_caches` groups the runs by seed), all in that time.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from asymcl.atomic import atomic_write_text
from asymcl.errors import ConfigError
from asymcl.experiments.levers import (
    BUDGET,
    COMBINED,
    DEFAULT_PRESET,
    SEEDS,
    LeverPreset,
    combined_spec,
    lever_preset,
    lever_specs,
)
from asymcl.experiments.levers_disk import disk_estimates
from asymcl.experiments.levers_table import COST_FILE, read_cost, select_levers, write_table
from asymcl.experiments.run_archive import pack_runs, unpack_runs


class ArmCost:
    """This invocation's share of ``levers-cost.json``, written again at every progress line (a run
    starting, an extraction's progress), so an arm stopped before its end (a session that ends, a
    kill) keeps the time it spent up to its last line. A resumed arm adds up: the file's totals from
    earlier invocations are read once, here, and this invocation's are added to them at every write.
    With the times go the machine (``cpus``: a resumed arm lists every processor, since minutes from
    an AVX2-only CPU and one with native bf16 are not the same minutes) and what extracted
    (``extraction_engines``: precision and engine, from the entries' records,
    :func:`asymcl.data.cache_store.record_extraction`)."""

    def __init__(self, folder: Path, load_at_start: Sequence[float]) -> None:
        from asymcl.training.run_dir import cpu_info

        self.folder = folder
        self.earlier = read_cost(folder)
        self.now: dict[str, float] = {}
        self.engines: list[str] = []
        machine = cpu_info()
        self.cores = machine["cores"]
        self.cpu = f"{machine['cpu']} ({machine['cores']} cores, {'bf16' if machine['cpu_bf16'] else 'no native bf16'})"
        self.load_at_start = list(load_at_start)

    def update(self, engines: Sequence[str] = (), **measured: float) -> None:
        """Set this invocation's totals so far (not increments) and write the file."""
        self.now.update(measured)
        self.engines = [*self.engines, *(e for e in engines if e not in self.engines)]
        cost = dict(self.earlier)
        for key, value in self.now.items():
            cost[key] = cost.get(key, 0) + value if key != "cache_bytes" else value
        cost["cores"] = self.cores
        cost["cpus"] = [*[cpu for cpu in cost.get("cpus", []) if cpu != self.cpu], self.cpu]
        cost["extraction_engines"] = [
            *(e for e in self.earlier.get("extraction_engines", []) if e not in self.engines),
            *self.engines,
        ]
        cost.setdefault("load_average_at_start", self.load_at_start)
        atomic_write_text(self.folder / COST_FILE, json.dumps(cost, indent=1))


def _engines(root: Path, keys: Sequence[str], since: float) -> list[str]:
    """How the extractions into the entries ``keys`` since ``since`` (a time.time()) computed:
    e.g. ``"fp32 on onnxruntime (cpu)"``, from each entry's records."""
    from datetime import datetime

    from asymcl.data.cache_store import read_extractions

    found: list[str] = []
    for key in keys:
        for record in read_extractions(root / key):
            try:
                finished = datetime.fromisoformat(str(record["finished"])).timestamp()
            except (KeyError, ValueError):
                continue
            if finished >= since - 1 and record.get("images"):
                words = f"{record.get('precision', '?')} on {record.get('engine', '?')} ({record.get('device', '?')})"
                if words not in found:
                    found.append(words)
    return found


def extract(
    configs: Mapping[str, dict], progress: Callable[[str], None], label: str, cost: ArmCost | None = None
) -> dict[str, float]:
    """Build the feature caches ``configs`` train from (with every core, before any worker starts) and
    measure it: ``{extraction_s, extracted_bytes, cache_bytes}``, also written into ``cost`` at every
    progress line and when it stops. An arm whose entries were all there already extracted nothing,
    and its time is not counted (only the check's)."""
    from asymcl.data.cache_admin import cache_root, entry_usage
    from asymcl.experiments import parallel

    if not configs:
        return {}
    root = cache_root(next(iter(configs.values()))["data"].get("cache_dir"))
    before = entry_usage(root)
    start, wall_start = time.monotonic(), time.time()

    def measure() -> dict[str, float]:
        seconds = time.monotonic() - start
        after = entry_usage(root)
        used = {key: size for key, (size, last) in after.items() if key not in before or before[key] != (size, last)}
        extracted = sum(size - before.get(key, (0, 0.0))[0] for key, size in used.items())
        measured = {
            "extraction_s": seconds if extracted > 0 else 0.0,
            "extracted_bytes": float(extracted),
            "cache_bytes": float(sum(used.values())),
        }
        if cost is not None:
            cost.update(_engines(root, list(used), wall_start), **measured)
        return measured

    def tick(line: str) -> None:
        progress(line)
        measure()

    try:
        parallel.warm_feature_caches(configs, tick if cost is not None else progress, label)
    finally:
        measured = measure()
    return measured


def run_arm(
    name: str, raw: dict[str, Any], out: Path, workers: int, progress: Callable[[str], None], command: str | None
):
    """One arm's sweep into ``out/name``: its caches built and measured first, then its runs."""
    from asymcl.experiments.runs import is_complete
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points, run_sweep

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "sweep.yaml", yaml.safe_dump(raw, sort_keys=False))
    spec = parse_spec(copy.deepcopy(raw))
    configs = resolve_points(spec, expand(spec), default_resolver())
    pending = {run: config for run, config in configs.items() if not is_complete(folder / run)}
    if not pending:
        progress(f"[levers {name}] all {len(configs)} runs finished")
        return None
    cost = ArmCost(folder, os.getloadavg())
    extract(pending, progress, f"levers {name}", cost)
    start = time.monotonic()

    def tick(line: str) -> None:
        progress(line)
        cost.update(training_s=time.monotonic() - start)

    try:
        return run_sweep(spec, folder, progress=tick, command=command, workers=workers, label=f"levers {name}")
    finally:
        cost.update(training_s=time.monotonic() - start)


def _dry_run(
    specs: Mapping[str, dict], chosen: Sequence[str], out: Path, with_combined: bool, preset: LeverPreset
) -> dict[str, Any]:
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

    counts = {}
    for name in chosen:
        points = parse_spec(copy.deepcopy(specs[name]))
        counts[name] = len(resolve_points(points, expand(points), default_resolver()))  # a bad value stops here
    disk = disk_estimates({name: specs[name] for name in chosen}) if chosen else {}
    for name in chosen:
        spec = preset.arm(name)
        against = f"against {spec.reference}; " if spec.reference else ""
        total, new = disk[name]
        print(
            f"# arm {name} ({spec.lever}; {against}{spec.note}): {counts[name]} runs into {out / name}; "
            f"feature caches about {total / 2**20:,.0f} MB ({new / 2**20:,.0f} MB not in an earlier arm's)"
        )
        print(yaml.safe_dump(specs[name], sort_keys=False).rstrip())
    for name, why in preset.pruned.items():
        print(f"# pruned before any run: {name} ({why}; asymcl.experiments.levers)")
    runs = sum(counts[name] for name in chosen)
    first = next(iter(specs.values()))
    per_arm = len(first["grid"]["seed"]) * len(first["settings"]) * BUDGET
    combined = f", then {COMBINED}: {per_arm} runs of the levers kept on validation" if with_combined else ""
    new_disk = sum(new for _, new in disk.values())
    print(f"# {runs} runs in {len(chosen)} arms{combined}; feature caches about {new_disk / 2**30:.1f} GB in all")
    return {"runs": {name: counts[name] for name in chosen}, "disk": disk}


def run_levers(
    data: str | Path,
    out: str | Path,
    *,
    preset: str = DEFAULT_PRESET,
    methods: Sequence[str] | None = None,
    arms: Sequence[str] | None = None,
    seeds: int | None = None,
    workers: int = 1,
    dry_run: bool = False,
    archive: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """The ablation of ``preset`` (:data:`asymcl.experiments.levers.PRESETS`) into ``out`` (see the
    module docstring). ``arms``: only these now (``combined``
    included: the combination, which needs every other arm finished); without, every arm and then
    the combination. ``seeds``: run seeds 0..seeds-1 of these arms (default and minimum: the rule's
    3; the runs of seeds already finished are kept, and each gain pairs the seeds both arms have). The table is written over whatever is finished. ``archive``: as the claim
    grid's (:mod:`asymcl.experiments.run_archive`): finished runs (and each arm's costs) restored
    from it first, and written into it at the end, also when a run stops the ablation: the whole
    ablation is longer than one machine is held (docs/usage-experiments.md)."""
    from asymcl.experiments.parallel import check_workers

    check_workers(workers)
    spec = lever_preset(preset)
    for name in arms or ():
        if name != COMBINED:
            spec.arm(name)  # a one-line error naming the preset's arms
    specs = lever_specs(data, methods, spec, seeds)
    methods = list(next(iter(specs.values()))["settings"])
    chosen = [name for name in spec.arm_names if not arms or name in arms]
    with_combined = not arms or COMBINED in arms
    out = Path(out)
    if dry_run:
        return _dry_run(specs, chosen, out, with_combined, spec)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    if archive is not None and Path(archive).is_file():
        restored, kept = unpack_runs(archive, out)
        progress(f"[levers] {restored} finished run(s) restored from {archive} ({kept} already in {out})")
    try:
        results = {name: run_arm(name, specs[name], out, workers, progress, command) for name in chosen}
        if with_combined:
            results[COMBINED] = run_combination(data, out, methods, bool(arms), workers, progress, command, spec, seeds)
        paths = write_table(out, methods, spec)
    finally:
        if archive is not None and out.is_dir():
            progress(f"[levers] {pack_runs(out, archive)} finished run(s) packed into {archive}")
    failed = sum(len(r.failed) for r in results.values() if r is not None)
    return {"sweeps": results, "table": paths, "failed": failed}


def run_combination(
    data: str | Path,
    out: Path,
    methods: Sequence[str],
    asked: bool,
    workers: int,
    progress: Callable[[str], None],
    command: str | None,
    preset: str | LeverPreset = DEFAULT_PRESET,
    seeds: int | None = None,
):
    """The levers the rule keeps, run together into ``out/combined`` once every arm has every seed
    (``asked``: named in ``--arms``, so an unfinished ablation is an error rather than a note)."""
    selection = select_levers(out, methods, preset)
    if not selection.complete:
        missing = [spec.name for spec in lever_preset(preset).arms if not set(SEEDS) <= set(selection.means[spec.name])]
        if asked:
            raise ConfigError(
                f"the combination is chosen on the finished ablation; arm(s) {', '.join(missing)} have not "
                "finished every seed (run them first, e.g. --arms " + ",".join(missing) + ")"
            )
        progress(f"[levers] not every arm finished ({', '.join(missing)}): no combination yet")
        return None
    if selection.recipe != COMBINED:
        progress(f"[levers] the combination is arm {selection.recipe} itself: nothing new to run")
        return None
    progress(f"[levers] the combination: {' + '.join(selection.chosen)}")
    raw = combined_spec(data, selection.chosen, methods, preset, seeds)
    return run_arm(COMBINED, raw, out, workers, progress, command)

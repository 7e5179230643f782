"""The grid that answers the paper's claim (issue 22): sweep files per arm, run, then ``asymcl claim``.

A grid (an entry of :data:`GRIDS`) is a dataset, an imbalance profile per ratio rho (rho = 1 is the
balanced control), two stage-1 batch sizes (a small one, where a minority anchor rarely meets a
positive and the eta term should matter most, and a large one), and many seeds per cell:

* Fashion-MNIST (``pretrained``, ``quick``): balanced, so the imbalance is imposed, an exponential
  profile ``exp:RHO:1000`` (the head capped at 1,000 so that every cell trains on a few thousand
  images), validated on 200 images per class held out before the profile;
* ISIC 2018 (``isic-pretrained``): imbalanced by nature, so the rho axis turns it down,
  ``cap:RHO`` (:mod:`asymcl.data.imbalance`: the heads subsampled to RHO x the smallest class, the
  tails and the class order kept), plus the pool as it is, written ``cap:R`` with R its own
  ratio max/min (:func:`natural_ratio`, read from the ``--data`` folder), so that the analysis's rho
  axis shows the true ratio; validated on a lesion-grouped 20% of each cell's pool.

Arms, each its own sweep in its own folder (the folder is the arm
:mod:`asymcl.experiments.claim_grid` groups by):

* ``tuned``: SupCon, CL, FCL, ACL and AFCL, each with the same budget of settings drawn from its
  own search space and chosen on validation per cell (:mod:`asymcl.experiments.fair`);
* ``authors``: the authors' advice as a fixed arm, in their "batch" scale: gamma = 10 and
  eta = 300 at the top of their ranges (FCL gamma, ACL eta, AFCL both; CL as it is);
* ``eta-scaled-bN``: ACL and AFCL with eta multiplied by N / 256 for stage-1 batch size N, so
  that the negative term keeps its weight relative to the positive one (in "batch" normalisation it
  shrinks like 1/N), against CL and FCL at the same budget.

Training: ``pretrained`` (frozen ImageNet EfficientNet-Lite0 at 128 px from the feature cache, each
seed its own cached views: seconds per run), ``quick`` (the small CNN from scratch, so the answer
does not hang on ImageNet features; fewer cells, it costs a minute per run) and ``isic-pretrained``
(``asymcl reproduce isic2018 --profile pretrained``'s encoder and data: Lite2 and Lite0 side by side
at 260 px, one draw of cached views shared by the seeds).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asymcl.data.isic import training_counts as isic_training_counts
from asymcl.errors import AsymclError, ConfigError
from asymcl.experiments.fair import comparison_spec
from asymcl.experiments.reproduce import PRETRAINED_DATA, PRETRAINED_TRAINING, QUICK_TRAINING

CLAIM_METHODS = ("supcon", "cl", "fcl", "acl", "afcl")
AUTHORS = {
    "fcl": {"loss.gamma": 10.0},
    "acl": {"loss.eta": 300.0},
    "afcl": {"loss.gamma": 10.0, "loss.eta": 300.0},
    "cl": {},
}
ETA_REFERENCE_BATCH = 256
#: A ``rhos`` entry: the pool as it is, at its own ratio (a grid with ``pool_counts`` only).
NATURAL = "natural"
# What a grid of 2,200 runs keeps on disk. eval.embeddings 0: the claim is read from metrics alone,
# and every run's embeddings.npz (about 96 MB: 2 x 10,000 test images x 1,280 features) would not
# fit a disk. trainer.save_last false: no last.ckpt beside each best.ckpt (12 -> 6 MB a run); a run
# of 15-60 s that is interrupted restarts its stage instead of resuming mid-stage.
LEAN_OUTPUTS = {"eval.embeddings": 0, "trainer.save_last": False}
_FMNIST = {
    "dataset": "fashion-mnist",
    "folder": "the Fashion-MNIST folder with the four official IDX files",
    "data": {"data.val_per_class": 200},
    "imbalance": "exp:{rho:g}:1000",
}
#: Per profile: the dataset (``dataset``; ``folder``: what ``--data`` must be; ``data``: its config
#: keys), the profile of each imbalance ratio (``imbalance``, formatted with ``rho``), the ratios,
#: stage-1 batch sizes, seeds, budget and training; ``pool_counts(folder)``: the training pool's
#: per-class counts, for :data:`NATURAL`.
GRIDS: dict[str, dict[str, Any]] = {
    "pretrained": {
        **_FMNIST,
        "rhos": (1, 10, 50, 100, 200),
        "batches": (32, 512),
        "seeds": 10,
        "budget": 2,
        "training": {**PRETRAINED_TRAINING, "data.cache_seed": None, **LEAN_OUTPUTS},
    },
    "quick": {
        **_FMNIST,
        "rhos": (1, 100),
        "batches": (32, 512),
        "seeds": 10,
        "budget": 2,
        "training": {**QUICK_TRAINING, "stage1.epochs": 15, "stage2.epochs": 10, **LEAN_OUTPUTS},
    },
    # ISIC's natural ratio is NV / DF: 6,705 / 115 = 58.3 on the full training set, 4,323 / 60 = 72.05
    # on the shared partial copy (5,984 images); NATURAL reads it from the folder given, so a cell is
    # never labelled with a ratio its data does not have. cap:10 and cap:20 cut only NV (to 600 and
    # 1,200 of 4,323 on the partial copy, 1,150 and 2,300 of 6,705 on the full set), cap:5 MEL and
    # BKL too, cap:1 every class to DF's count. Validation: reproduce's, a lesion-grouped 20% carved
    # from each cell's pool (DF and VASC keep 12 and 16 images there on the partial copy at every
    # rho). One draw of cached views for every seed, as in reproduce: a draw per seed costs about
    # 23 min of extraction at 260 px with both networks, so the intervals leave that draw out.
    "isic-pretrained": {
        "dataset": "isic2018",
        "folder": "the ISIC 2018 Task 3 folder in its official layout (ISIC2018_Task3_Training_Input/ and "
        "ISIC2018_Task3_Training_GroundTruth.csv, the test set beside them)",
        "data": PRETRAINED_DATA["isic2018"],
        "imbalance": "cap:{rho:g}",
        "rhos": (1, 5, 10, 20, NATURAL),
        "pool_counts": isic_training_counts,
        "batches": (32, 512),
        "seeds": 10,
        "budget": 2,
        "training": {**PRETRAINED_TRAINING, **LEAN_OUTPUTS},
    },
}


def natural_ratio(counts: Sequence[int]) -> float:
    """max_c m_c / min_c m_c of a pool's per-class counts, rounded up at two decimals: the ratio as a
    ``cap:R`` that keeps every image (floor(R x min) >= max) and reads as the pool's own ratio."""
    largest, smallest = max(counts), min(counts)
    if smallest < 1:
        raise ConfigError(f"the training pool has a class without images (counts {list(counts)})")
    return -(-100 * largest // smallest) / 100  # integer ceiling: 4323 / 60 is 72.05, not 72.06


def claim_specs(
    data: str | Path,
    profile: str = "pretrained",
    *,
    seeds: int | None = None,
    budget: int | None = None,
    rhos: Sequence[float | str] | None = None,
    batches: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{arm: sweep mapping}`` of the grid (see the module docstring)."""
    if profile not in GRIDS:
        raise ConfigError(f"unknown profile {profile!r} for the claim grid (allowed: {', '.join(GRIDS)})")
    grid = GRIDS[profile]
    data = Path(data).expanduser()
    if not data.is_dir():
        raise ConfigError(f"--data {data}: expected {grid['folder']}")
    seeds = grid["seeds"] if seeds is None else seeds
    budget = grid["budget"] if budget is None else budget
    rhos = tuple(rhos or grid["rhos"])
    batches = tuple(batches or grid["batches"])
    if NATURAL in rhos:
        if "pool_counts" not in grid:
            raise ConfigError(f"the claim grid {profile} has no natural pool to read a ratio from")
        try:
            counts = grid["pool_counts"](data)
        except AsymclError as exc:
            raise ConfigError(f"--data {data}: expected {grid['folder']} ({exc})") from None
        rhos = tuple(natural_ratio(counts) if rho == NATURAL else rho for rho in rhos)
    base = {**grid["training"], "data.dataset": grid["dataset"], "data.root": str(data), **grid["data"]}
    shared: dict[str, list[Any]] = {
        "data.imbalance": [grid["imbalance"].format(rho=rho) for rho in rhos],
        "seed": list(range(seeds)),
    }
    specs: dict[str, dict[str, Any]] = {}
    specs["tuned"] = comparison_spec(
        f"claim-{profile}-tuned",
        "issue 22: every method tuned, the same budget",
        base,
        CLAIM_METHODS,
        budget,
        {**shared, "stage1.batch_size": list(batches)},
    )
    authors = comparison_spec(
        f"claim-{profile}-authors",
        "issue 22: the authors' advice, fixed",
        base,
        tuple(AUTHORS),
        1,
        {**shared, "stage1.batch_size": list(batches)},
    )
    for method, fixed in AUTHORS.items():
        authors["settings"][method] = [{**authors["settings"][method][0], **fixed}]
    specs["authors"] = authors
    for batch in batches:
        scaled = comparison_spec(
            f"claim-{profile}-eta-scaled-b{batch}",
            f"issue 22: eta x {batch}/{ETA_REFERENCE_BATCH} for batch {batch}",
            {**base, "stage1.batch_size": batch},
            ("cl", "fcl", "acl", "afcl"),
            budget,
            shared,
        )
        for method in ("acl", "afcl"):
            for setting in scaled["settings"][method]:
                setting["loss.eta"] = float(f"{setting['loss.eta'] * batch / ETA_REFERENCE_BATCH:.4g}")
        specs[f"eta-scaled-b{batch}"] = scaled
    return specs


def _identity(config: Any) -> str:
    from asymcl.training.config import result_config

    return json.dumps(result_config(config), sort_keys=True, default=str)


def duplicate_runs(specs: dict[str, dict[str, Any]]) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(arm, run): (earlier arm, run)}`` for every run whose config (its identity, as a run
    folder checks it) is that of a run in an earlier arm.

    CL and FCL in the eta-scaled arms and CL in the authors' arm take nothing from their arm (eta does
    not reach them), so they are the tuned arm's runs: about 500 of the full grid's 2,200.
    """
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points

    first: dict[str, tuple[str, str]] = {}
    duplicates: dict[tuple[str, str], tuple[str, str]] = {}
    for arm, raw in specs.items():
        spec = parse_spec(copy.deepcopy(raw))
        for name, config in resolve_points(spec, expand(spec), default_resolver()).items():
            identity = _identity(config)
            if identity in first:
                duplicates[(arm, name)] = first[identity]
            else:
                first[identity] = (arm, name)
    return duplicates


def copy_duplicates(out: Path, arm: str, duplicates: dict[tuple[str, str], tuple[str, str]]) -> int:
    """Give ``out/arm`` the finished records of its runs that are another arm's runs; returns how many.

    What is copied is what the claim reads (config.yaml, metrics.json) with ``duplicate_of.json``
    naming the source, so ``asymcl claim`` finds every arm's rows in that arm's folder. A source
    that is not complete (failed, or not run yet) is not copied: the arm's sweep trains that run.
    """
    from asymcl.atomic import atomic_write_bytes, atomic_write_json
    from asymcl.experiments.runs import is_complete

    copied = 0
    for (target_arm, name), (source_arm, source_name) in sorted(duplicates.items()):
        source, target = out / source_arm / source_name, out / target_arm / name
        if target_arm != arm or target.exists() or not is_complete(source):
            continue
        # config.yaml first and metrics.json last: a copy cut short is a run folder that is not
        # complete, which the arm's sweep then trains, never a folder that a sweep refuses.
        atomic_write_bytes(target / "config.yaml", (source / "config.yaml").read_bytes())
        atomic_write_json(target / "duplicate_of.json", {"run": f"../../{source_arm}/{source_name}"})
        for file in ("versions.json", "metrics.json"):
            if (source / file).is_file():
                atomic_write_bytes(target / file, (source / file).read_bytes())
        copied += 1
    return copied


def run_claim_grid(
    data: str | Path,
    out: str | Path,
    *,
    profile: str = "pretrained",
    seeds: int | None = None,
    budget: int | None = None,
    rhos: Sequence[float | str] | None = None,
    batches: Sequence[int] | None = None,
    arms: Sequence[str] | None = None,
    only_seeds: Sequence[int] | None = None,
    archive: str | Path | None = None,
    dry_run: bool = False,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every arm's sweep into ``out/<arm>`` (resumable), then the analysis into ``out/claim``.

    ``only_seeds``: run these of the grid's seeds now and leave the rest (the grid is split over
    sessions; every arm's ``sweep.yaml`` still names all seeds, and the claim is written over the
    runs finished so far). ``archive``: a ``.tar.xz`` of finished runs (:mod:`asymcl.experiments.run_archive`):
    restored into ``out`` first if it exists, and rewritten with every finished run at the end, also
    when the grid stops early. ``rhos``, ``batches``: these cells instead of the grid's (its sweep files
    name only them; a run's folder name does not depend on them). A run that another arm already has (:func:`duplicate_runs`) is
    copied from it, not trained again.
    """
    import yaml

    from asymcl.atomic import atomic_write_text
    from asymcl.experiments.claim_grid import write_claim
    from asymcl.experiments.run_archive import pack_runs, unpack_runs
    from asymcl.experiments.sweep import expand, parse_spec, run_sweep

    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    specs = claim_specs(data, profile, seeds=seeds, budget=budget, rhos=rhos, batches=batches)
    duplicates = duplicate_runs(specs)
    if arms:
        unknown = [arm for arm in arms if arm not in specs]
        if unknown:
            raise ConfigError(f"unknown arm(s) {', '.join(unknown)} (allowed: {', '.join(specs)})")
    grid_seeds = specs["tuned"]["grid"]["seed"]
    if only_seeds is not None:
        outside = sorted(set(only_seeds) - set(grid_seeds))
        if outside or not only_seeds:
            raise ConfigError(
                f"--only-seeds {','.join(map(str, only_seeds)) or '(none)'}: the grid's seeds are "
                f"{grid_seeds[0]}..{grid_seeds[-1]}; choose among them"
                + (f" ({', '.join(map(str, outside))} is not one)" if outside else "")
            )
    out = Path(out)
    counts = {arm: len(expand(parse_spec(copy.deepcopy(raw)))) for arm, raw in specs.items()}
    chosen = [arm for arm in specs if not arms or arm in arms]
    if dry_run:
        for arm in chosen:
            copies = sum(1 for target_arm, _ in duplicates if target_arm == arm)
            print(f"# arm {arm}: {counts[arm]} runs into {out / arm} ({copies} of them copied from an earlier arm)")
            print(yaml.safe_dump(specs[arm], sort_keys=False).rstrip())
        trained = sum(counts[arm] for arm in chosen) - sum(1 for arm, _ in duplicates if arm in chosen)
        print(f"# {sum(counts[arm] for arm in chosen)} runs in {len(chosen)} arms, {trained} of them trained")
        return {"runs": {arm: counts[arm] for arm in chosen}, "trained": trained}
    if archive is not None and Path(archive).is_file():
        restored, kept = unpack_runs(archive, out)
        progress(f"[claim] {restored} finished run(s) restored from {archive} ({kept} already in {out})")
    results = {}
    try:
        for arm in chosen:
            raw = specs[arm]
            (out / arm).mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / arm / "sweep.yaml", yaml.safe_dump(raw, sort_keys=False))
            copied = copy_duplicates(out, arm, duplicates)
            if copied:
                progress(f"[claim {arm}] {copied} run(s) copied from an earlier arm (the same config)")
            now = copy.deepcopy(raw)
            if only_seeds is not None:
                now["grid"]["seed"] = [seed for seed in grid_seeds if seed in set(only_seeds)]
            results[arm] = run_sweep(
                parse_spec(now), out / arm, progress=progress, command=command, workers=workers, label=f"claim {arm}"
            )
    finally:
        if archive is not None:
            packed = pack_runs(out, archive)
            progress(f"[claim] {packed} finished run(s) packed into {archive}")
    paths = write_claim(out, out / "claim")
    return {"runs": counts, "sweeps": results, "claim": paths}

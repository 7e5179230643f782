"""The grid that answers the paper's claim (issue 22): sweep files per arm, run, then ``asymcl claim``.

Fashion-MNIST with an exponential profile at imbalance ratio rho (rho = 1 is the balanced
control), the head class capped so that every cell trains on a few thousand images, two stage-1
batch sizes (a small one, where a minority anchor rarely meets a positive and the eta term should
matter most, and a large one), and many seeds per cell. Arms, each its own sweep in its own folder
(the folder is the arm :mod:`asymcl.experiments.claim_grid` groups by):

* ``tuned``: SupCon, CL, FCL, ACL and AFCL, each with the same budget of settings drawn from its
  own search space and chosen on validation per cell (:mod:`asymcl.experiments.fair`);
* ``authors``: the authors' advice as a fixed arm, in their "batch" scale: gamma = 10 and
  eta = 300 at the top of their ranges (FCL gamma, ACL eta, AFCL both; CL as it is);
* ``eta-scaled-bN``: ACL and AFCL with eta multiplied by N / 256 for stage-1 batch size N, so
  that the negative term keeps its weight relative to the positive one (in "batch" normalisation it
  shrinks like 1/N), against CL and FCL at the same budget.

Profiles: ``pretrained`` (frozen ImageNet EfficientNet-Lite0 at 128 px from the feature cache, each
seed its own cached views: seconds per run) and ``quick`` (the small CNN from scratch, so the
answer does not hang on ImageNet features; fewer cells, it costs a minute per run).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from asymcl.errors import ConfigError
from asymcl.experiments.fair import comparison_spec
from asymcl.experiments.reproduce import PRETRAINED_TRAINING, QUICK_TRAINING

CLAIM_METHODS = ("supcon", "cl", "fcl", "acl", "afcl")
AUTHORS = {
    "fcl": {"loss.gamma": 10.0},
    "acl": {"loss.eta": 300.0},
    "afcl": {"loss.gamma": 10.0, "loss.eta": 300.0},
    "cl": {},
}
ETA_REFERENCE_BATCH = 256
#: Per profile: imbalance ratios, stage-1 batch sizes, seeds, budget, head cap, training.
# What a grid of 2,200 runs keeps on disk. eval.embeddings 0: the claim is read from metrics alone,
# and every run's embeddings.npz (about 96 MB: 2 x 10,000 test images x 1,280 features) would not
# fit a disk. trainer.save_last false: no last.ckpt beside each best.ckpt (12 -> 6 MB a run); a run
# of 15-60 s that is interrupted restarts its stage instead of resuming mid-stage.
_OUTPUTS = {"eval.embeddings": 0, "trainer.save_last": False}
GRIDS: dict[str, dict[str, Any]] = {
    "pretrained": {
        "rhos": (1, 10, 50, 100, 200),
        "batches": (32, 512),
        "seeds": 10,
        "budget": 2,
        "head": 1000,
        "training": {**PRETRAINED_TRAINING, "data.cache_seed": None, **_OUTPUTS},
    },
    "quick": {
        "rhos": (1, 100),
        "batches": (32, 512),
        "seeds": 10,
        "budget": 2,
        "head": 1000,
        "training": {**QUICK_TRAINING, "stage1.epochs": 15, "stage2.epochs": 10, **_OUTPUTS},
    },
}


def claim_specs(
    data: str | Path,
    profile: str = "pretrained",
    *,
    seeds: int | None = None,
    budget: int | None = None,
    rhos: Sequence[float] | None = None,
    batches: Sequence[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{arm: sweep mapping}`` of the grid (see the module docstring)."""
    if profile not in GRIDS:
        raise ConfigError(f"unknown profile {profile!r} for the claim grid (allowed: {', '.join(GRIDS)})")
    data = Path(data).expanduser()
    if not data.is_dir():
        raise ConfigError(f"--data {data}: expected the Fashion-MNIST folder with the four official IDX files")
    grid = GRIDS[profile]
    seeds = grid["seeds"] if seeds is None else seeds
    budget = grid["budget"] if budget is None else budget
    rhos = tuple(rhos or grid["rhos"])
    batches = tuple(batches or grid["batches"])
    base = {**grid["training"], "data.dataset": "fashion-mnist", "data.root": str(data), "data.val_per_class": 200}
    shared: dict[str, list[Any]] = {
        "data.imbalance": [f"exp:{rho:g}:{grid['head']}" for rho in rhos],
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


def run_claim_grid(
    data: str | Path,
    out: str | Path,
    *,
    profile: str = "pretrained",
    seeds: int | None = None,
    budget: int | None = None,
    arms: Sequence[str] | None = None,
    dry_run: bool = False,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every arm's sweep into ``out/<arm>`` (resumable), then the analysis into ``out/claim``."""
    import yaml

    from asymcl.atomic import atomic_write_text
    from asymcl.experiments.claim_grid import write_claim
    from asymcl.experiments.sweep import expand, parse_spec, run_sweep

    specs = claim_specs(data, profile, seeds=seeds, budget=budget)
    if arms:
        unknown = [arm for arm in arms if arm not in specs]
        if unknown:
            raise ConfigError(f"unknown arm(s) {', '.join(unknown)} (allowed: {', '.join(specs)})")
        specs = {arm: specs[arm] for arm in arms}
    out = Path(out)
    counts = {arm: len(expand(parse_spec(copy.deepcopy(raw)))) for arm, raw in specs.items()}
    if dry_run:
        for arm, raw in specs.items():
            print(f"# arm {arm}: {counts[arm]} runs into {out / arm}")
            print(yaml.safe_dump(raw, sort_keys=False).rstrip())
        print(f"# {sum(counts.values())} runs in {len(specs)} arms")
        return {"runs": counts}
    results = {}
    for arm, raw in specs.items():
        (out / arm).mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / arm / "sweep.yaml", yaml.safe_dump(raw, sort_keys=False))
        results[arm] = run_sweep(
            parse_spec(raw), out / arm, progress=progress, command=command, workers=workers, label=f"claim {arm}"
        )
    paths = write_claim(out, out / "claim")
    return {"runs": counts, "sweeps": results, "claim": paths}

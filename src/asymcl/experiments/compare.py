"""``asymcl compare``: the fair comparison of every method on the user's own data.

The same protocol as the benchmark presets (``asymcl reproduce`` is its fixed use on Fashion-MNIST
and ISIC 2018): every method, the practitioner's baselines included, gets the same budget of
validation-scored settings, the same classifier input, epochs and levers
(:mod:`asymcl.experiments.fair`); seeds repeat the whole split; the report chooses each method's
setting on validation and Holm-adjusts its verdicts.

Before anything trains, :func:`plan_comparison` resolves every run's config, builds the first
seed's splits and checks them (at least two classes, every class in validation), counts the runs
and estimates the time. A plan over the time budget needs ``yes=True`` (``--yes``); a budget too
small for one run per method is refused outright. The estimate is rough: it scales throughputs
measured on 2 CPU cores (benchmarks/README.md) by image area and image count.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymcl.errors import ConfigError, DataError
from asymcl.experiments.preset_names import COMPARE_PROFILES as PROFILES
from asymcl.experiments.reproduce import PAPER_TABLE, PRETRAINED_TRAINING, QUICK_TRAINING
from asymcl.training.methods import PROPOSED

#: The methods of each profile's comparison (the probe needs a pretrained encoder).
COMPARE_METHODS = {"quick": PAPER_TABLE, "pretrained": ("probe", *PAPER_TABLE)}
#: Each profile's training: the presets' (10 + 10 epochs for quick, as the ISIC quick preset
#: needed for the contrastive stage to move), with an image size for sources of large images.
COMPARE_TRAINING = {
    "quick": {**QUICK_TRAINING, "stage1.epochs": 10, "stage2.epochs": 10, "stage1.batch_size": 128},
    "pretrained": dict(PRETRAINED_TRAINING),
}
DEFAULT_IMAGE_SIZE = {"quick": 64, "pretrained": 224}
DEFAULT_SETTINGS = 2
DEFAULT_SEEDS = 3

# Throughputs measured on 2 CPU cores (benchmarks/README.md): the small CNN trains about 600
# images/s at 28 px in fp32; EfficientNet-Lite0 extracts about 42 images/s at 224 px with the clean
# image and 4 views (210 forward passes/s); a cached-feature run of the ISIC preset (about 4,800
# training images, 20 epochs) took about 17 s. Every figure scales with the image area.
_CNN_IMAGES_PER_S_28PX = 600.0
_LITE0_PASSES_PER_S_224PX = 210.0
_CACHED_IMAGE_EPOCHS_PER_S = 6000.0
_RUN_OVERHEAD_S = 4.0


def parse_duration(text: str | int | float) -> float:
    """``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"`` or a number of minutes -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * 60
    else:
        value = str(text).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?", value)
        if value and re.fullmatch(r"\d+(?:\.\d+)?", value):
            seconds = float(value) * 60
        elif value and parts and any(parts.groups()):
            hours, minutes, secs = (float(g) if g else 0.0 for g in parts.groups())
            seconds = hours * 3600 + minutes * 60 + secs
        else:
            raise ConfigError(f"--budget {text!r}: give a duration such as 30m, 2h, 1h30m or 90s")
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r} must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    minutes = seconds / 60
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 10:
        return f"{int(minutes)} min {seconds - 60 * int(minutes):.0f} s"
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


@dataclass
class ComparisonPlan:
    """What a comparison will run, and what it is expected to cost."""

    spec: dict[str, Any]  # the sweep mapping (base, grid, settings)
    runs: int
    pending: int  # runs not yet complete in ``out``
    methods: list[str]
    settings: int
    seeds: list[int]
    counts: dict[str, dict[str, int]]  # the first seed's images per split and class
    extraction_s: float  # one-time feature extraction (pretrained), 0 when cached or quick
    per_method_run_s: dict[str, float]
    eta_s: float

    def summary(self) -> str:
        classes = len(next(iter(self.counts.values())))
        sizes = ", ".join(f"{split} {sum(c.values())}" for split, c in self.counts.items())
        return (
            f"{self.runs} runs ({len(self.methods)} methods x {self.settings} settings x {len(self.seeds)} seeds; "
            f"{self.pending} to run): {classes} classes, {sizes} images; about {format_duration(self.eta_s)}"
            + (f" (of which feature extraction {format_duration(self.extraction_s)})" if self.extraction_s else "")
        )


def _profile_base(overrides: Mapping[str, Any], profile: str) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (allowed: {', '.join(PROFILES)})")
    base = dict(COMPARE_TRAINING[profile])
    if "data.image_size" not in overrides:
        base["data.image_size"] = DEFAULT_IMAGE_SIZE[profile]
    return {**base, **overrides}


def _check_splits(counts: Mapping[str, Mapping[str, int]], where: str) -> None:
    train = counts.get("train", {})
    if len(train) < 2:
        raise DataError(
            f"{where} has {len(train)} class(es); a comparison needs at least two (one folder of "
            "images per class, or a label column with two or more values)"
        )
    val = counts.get("val", {})
    missing = [name for name in train if val.get(name, 0) == 0]
    if missing:
        raise DataError(
            f"the validation split has no image of {', '.join(missing)} ({sum(val.values())} validation images "
            f"for {len(train)} classes): choices made on validation would ignore them; add images, raise "
            "data.val_fraction, or set data.val_per_class"
        )


def _estimate(
    config, counts: Mapping[str, Mapping[str, int]], profile: str, cached: bool
) -> tuple[float, dict[str, float]]:
    """(one-time extraction s, {method: s per run}) from the throughputs above."""
    from asymcl.training.methods import PROBE, get_method

    n = {split: sum(c.values()) for split, c in counts.items()}
    size = config.data.image_size or 28
    area = (size * size) / (28 * 28)
    epochs1, epochs2 = config.stage1.epochs, config.stage2.epochs
    per_method: dict[str, float] = {}
    if profile == "pretrained":
        lite_area = (size * size) / (224 * 224)
        views = config.data.cache_views
        passes = n.get("train", 0) * (1 + views) + sum(v for k, v in n.items() if k != "train")
        extraction = 0.0 if cached else passes * lite_area / _LITE0_PASSES_PER_S_224PX
        train_cost = n.get("train", 0) * (epochs1 + epochs2) / _CACHED_IMAGE_EPOCHS_PER_S
        for method in COMPARE_METHODS[profile]:
            per_method[method] = _RUN_OVERHEAD_S + (1.0 if get_method(method).stages == PROBE else train_cost)
        return extraction, per_method
    rate = _CNN_IMAGES_PER_S_28PX / max(area, 1e-6)
    evaluation = (epochs1 + epochs2) * n.get("val", 0) / (3 * rate)
    for method in COMPARE_METHODS[profile]:
        spec = get_method(method)
        if spec.end_to_end:
            cost = (epochs1 + epochs2) * n.get("train", 0) / rate
        else:  # two views through the encoder per image, then a classifier on a frozen encoder
            cost = epochs1 * n.get("train", 0) * 2 / rate + epochs2 * n.get("train", 0) / (3 * rate)
        per_method[method] = _RUN_OVERHEAD_S + cost + evaluation
    return 0.0, per_method


def plan_comparison(
    overrides: Mapping[str, Any] | Sequence[str],
    out: str | Path,
    *,
    profile: str = "quick",
    methods: Sequence[str] | None = None,
    settings: int = DEFAULT_SETTINGS,
    seeds: int = DEFAULT_SEEDS,
    workers: int = 1,
) -> ComparisonPlan:
    """Resolve, check and cost the comparison (nothing is trained or written)."""
    from asymcl.data import build_splits
    from asymcl.experiments.fair import comparison_spec
    from asymcl.experiments.runs import is_complete
    from asymcl.experiments.sweep import default_resolver, expand, parse_spec, resolve_points
    from asymcl.training.config import parse_overrides, resolve_config
    from asymcl.training.run_data import data_spec

    overrides = parse_overrides(dict(overrides)) if isinstance(overrides, Mapping) else parse_overrides(list(overrides))
    if "method" in overrides or "seed" in overrides:
        raise ConfigError(
            "compare runs every method over its seeds itself: use --methods and --seeds instead of "
            "--set method=... or --set seed=..."
        )
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    methods = list(methods or COMPARE_METHODS[profile])
    base = _profile_base(overrides, profile)
    raw = comparison_spec(
        f"compare-{profile}",
        f"asymcl compare --profile {profile}",
        base,
        methods,
        settings,
        {"seed": list(range(seeds))},
    )
    spec = parse_spec(raw)
    points = expand(spec)
    resolve_points(spec, points, default_resolver())  # every run's config is valid, before anything runs
    first = resolve_config({**base, "method": methods[-1], "seed": 0})
    splits = build_splits(data_spec(first))
    counts = splits.counts()
    _check_splits(counts, first.data.root or first.data.dataset)
    out = Path(out)
    pending = [p for p in points if not is_complete(out / p.name)]
    cached = not pending
    extraction, per_method = _estimate(first, counts, profile, cached)
    for method in methods:  # a user's method not in the profile's list: cost it like AFCL
        per_method.setdefault(method, per_method.get(PROPOSED, max(per_method.values())))
    pending_cost = sum(per_method[p.overrides.get("method", methods[-1])] for p in pending)
    speedup = min(max(workers, 1), 2) * 0.85 if workers > 1 else 1.0
    eta = extraction + pending_cost / speedup
    return ComparisonPlan(
        raw,
        len(points),
        len(pending),
        methods,
        settings,
        list(range(seeds)),
        counts,
        extraction,
        {m: per_method[m] for m in methods},
        eta if pending else 0.0,
    )


def check_budget(plan: ComparisonPlan, budget_s: float, yes: bool) -> None:
    """Refuse a plan that cannot fit one run per method; ask for ``yes`` past the budget."""
    one_each = plan.extraction_s + sum(plan.per_method_run_s.values())
    if plan.pending and one_each > budget_s:
        raise ConfigError(
            f"a budget of {format_duration(budget_s)} is too small for one run per method (about "
            f"{format_duration(one_each)} for {len(plan.methods)} methods); raise --budget or compare fewer --methods"
        )
    if plan.eta_s > budget_s and not yes:
        raise ConfigError(
            f"the comparison needs about {format_duration(plan.eta_s)}, over the budget of {format_duration(budget_s)}; "
            "pass --yes to run it anyway, raise --budget, or lower --settings or --seeds (every method keeps the "
            "same number)"
        )


@dataclass
class CompareResult:
    plan: ComparisonPlan
    out: Path
    sweep: Any
    report: Any


def compare(
    overrides: Mapping[str, Any] | Sequence[str],
    out: str | Path,
    *,
    profile: str = "quick",
    methods: Sequence[str] | None = None,
    settings: int = DEFAULT_SETTINGS,
    seeds: int = DEFAULT_SEEDS,
    budget: str | float = "30m",
    yes: bool = False,
    dry_run: bool = False,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    tsne_points: int = 1000,
) -> CompareResult:
    """Plan, check and run the fair comparison into ``out`` (resumable), then write ``out/report``."""
    import sys

    import yaml

    from asymcl.experiments.parallel import check_workers
    from asymcl.experiments.report import build_report
    from asymcl.experiments.sweep import current_command, expand, parse_spec, run_sweep

    check_workers(workers)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    budget_s = parse_duration(budget)
    out = Path(out)
    plan = plan_comparison(
        overrides, out, profile=profile, methods=methods, settings=settings, seeds=seeds, workers=workers
    )
    if dry_run:
        print(yaml.safe_dump(plan.spec, sort_keys=False).rstrip())
        for point in expand(parse_spec(plan.spec)):
            print(point.name)
        print(f"# {plan.summary()}; into {out}")
        return CompareResult(plan, out, None, None)
    check_budget(plan, budget_s, yes)
    progress(f"[compare] {plan.summary()}")
    out.mkdir(parents=True, exist_ok=True)
    from asymcl.atomic import atomic_write_text

    atomic_write_text(out / "sweep.yaml", yaml.safe_dump(plan.spec, sort_keys=False))
    command = command or current_command()
    sweep = run_sweep(parse_spec(plan.spec), out, progress=progress, command=command, workers=workers, label="compare")
    report = None
    if sweep.ran or sweep.skipped:
        report = build_report(out, out / "report", command=command, progress=progress, tsne_points=tsne_points)
    return CompareResult(plan, out, sweep, report)


def default_out(overrides: Mapping[str, Any] | Sequence[str], profile: str) -> Path:
    """``runs/compare-<dataset or root name>-<profile>``."""
    from asymcl.training.config import SCHEMA, parse_overrides

    flat = parse_overrides(dict(overrides) if isinstance(overrides, Mapping) else list(overrides))
    name = (
        Path(str(flat["data.root"])).stem
        if flat.get("data.root")
        else str(flat.get("data.dataset", SCHEMA["data.dataset"][0]))
    )
    return Path("runs") / f"compare-{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}-{profile}"

"""``asymcl reproduce``: the benchmark protocol of method.md section 5 as ready-made sweeps.

Each preset is a sweep file (base config + grid, see :mod:`asymcl.experiments.sweep`) followed by the
report. ``quick`` is sized for 2 CPU cores (a small CNN, few epochs, a subset of the grid, still 3
seeds); ``full`` is the whole grid for a GPU. ``pretrained`` (isic2018 on its official layout, fmnist-lt) is
sized for 2 CPU cores too: the frozen ImageNet EfficientNet-Lite (Lite2 and Lite0 side by side for
ISIC, Lite0 for Fashion-MNIST) with a trainable adapter, trained from the feature cache (extracted
once, shared by every run and seed), plus the probe. Every preset is a fair comparison built by
:mod:`asymcl.experiments.fair` (the same budget of validation-scored settings for every method, the
same classifier input, epochs and levers); ``asymcl reproduce PRESET --data PATH --dry-run`` prints
its runs.

Protocol (method.md section 5): the official training set is the pool for training and a stratified,
seeded validation split (grouped by lesion for ISIC); the official test set is the test set
(for an imbalance profile also cut to the training profile: ``test_imbalanced``); gamma/eta are
chosen on validation UA; every number is over >= 3 seeds.

The methods of a preset are listed here (:data:`PRESET_METHODS`): registering a method changes no
preset; ``--methods`` adds it to a comparison by name.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from asymcl.data.idx import check_fashion_mnist_folder
from asymcl.data.isic import find_isic_parts
from asymcl.errors import ConfigError, DataError
from asymcl.experiments.preset_names import PRESETS, PROFILES
from asymcl.experiments.report import ReportResult, build_report
from asymcl.experiments.sweep import SweepResult, current_command, parse_spec, run_sweep

# Seeds: >= 3 per method.md; the sweep prints its own progress line, so progress bars are off.
_SEEDS_QUICK = [0, 1, 2]
_SEEDS_FULL = [0, 1, 2, 3, 4]

# Stage 2 (and the CE baseline) sample class-balanced batches for every method: without it a
# linear classifier trained for a few epochs at rho = 100 predicts only the majority class and every
# method ties at UA = 50%. The sampler is the same for all methods, so the comparison isolates what
# the stage-1 loss does to the representation.
QUICK_TRAINING = {
    "stage2.augment": False,  # every method's final classifier reads clean images/features
    "model.backbone": "small_cnn",
    "stage1.epochs": 3,
    "stage1.batch_size": 256,
    "stage2.epochs": 3,
    "stage2.batch_size": 256,
    "stage2.sampler": "class_balanced",
    "trainer.progress_bar": False,
}
_FULL_TRAINING = {
    "stage2.augment": False,  # every method's final classifier reads clean images/features
    "model.backbone": "cifar_resnet18",
    "stage1.epochs": 100,
    "stage1.batch_size": 256,
    "stage2.epochs": 30,
    "stage2.batch_size": 256,
    "stage2.sampler": "class_balanced",
    "trainer.accelerator": "auto",
    "trainer.precision": "bf16-mixed",
    "trainer.progress_bar": False,
}

# pretrained: a frozen ImageNet EfficientNet-Lite + adapter, trained from cached features (clean
# image and data.cache_views augmented views per training image, extracted once, shared by all runs:
# the cache seed is not the run seed). ISIC uses Lite2 and Lite0 side by side at 260 px, features
# concatenated: of the three encoders run through this whole preset (Lite2, Lite0, both; 3 seeds,
# docs/results-archive.md "Choosing the ISIC encoder"), it has the best validation UA averaged over the seven
# methods (62.8 against 61.4 and 61.1), the rule fixed before the comparison. On an idle 2-core
# machine its one-time extraction takes about 29 min and the preset's training about 9 min with
# --workers 2. (A linear probe on seed 0's split alone had picked Lite2: benchmarks/README.md.)
# Fashion-MNIST-LT keeps Lite0, its 28 px grey images upsampled to 128 px. 4 views are
# cached; the hue jitter is left out of the augmentation (dermoscopy_lite: cheaper to render, see
# benchmarks/bench_cache_augment.py; chosen before the cache's augmentation ran on one thread, where
# the saving is only 14%).
# Training on cached pooled features is cheap: the table adds the probe, and 5 seeds where the
# extraction allows (ISIC; Fashion-MNIST-LT: see _PRESET_SEEDS).
# A pilot with a 1280-wide adapter and 20 + 20 epochs took about 2 min per run under load 12 (each
# epoch's two 53 MB checkpoints included) and overfitted: the CE baseline's validation UA peaked at
# epoch 2 of 20 while its training loss kept falling. Hence a 256-wide adapter and 10 + 10 epochs.
PRETRAINED_TRAINING = {
    "stage2.augment": False,  # every method's final classifier reads clean images/features
    "model.backbone": "efficientnet_lite0",
    "model.pretrained": "imagenet",
    "model.finetune": "frozen",
    "data.cache": "auto",
    "data.cache_views": 4,
    "model.adapter": 256,
    "stage1.epochs": 10,
    "stage1.batch_size": 256,
    "stage1.lr": 1e-3,
    "stage2.epochs": 10,
    "stage2.batch_size": 256,
    "stage2.lr": 1e-2,
    "stage2.sampler": "class_balanced",
    "trainer.progress_bar": False,
}
PRETRAINED_DATA: dict[str, dict[str, Any]] = {
    # ISIC shares one draw of views over its seeds: a draw per seed costs 23 min of extraction each at
    # 260 px with both networks, past the time budget; the report says the intervals leave that draw out.
    "isic2018": {
        "data.image_size": 260,
        "model.backbone": "efficientnet_lite2+efficientnet_lite0",
        "data.augment": "dermoscopy_lite",
    },
    # the full 60,000-image pool; Lite upsamples 28 -> 128 px. Each seed draws its own cached views
    # (its 4 views of about 15,000 images cost minutes at 128 px), so the intervals include that draw.
    "fmnist-lt": {"data.imbalance": "exp:100", "data.cache_seed": None},
}

# gpu (issue 12): what one short window of one H100/H200 can run (benchmarks/gpu/run.sh calls it,
# with a time limit per preset). ISIC at 224 px with the pretrained Lite0 fine-tuned end to end
# (model.finetune=all, the paper's setting), images held on the GPU as uint8, bf16, channels_last;
# Fashion-MNIST-LT exp:100 on the full pool with the small CNN. CE, LA, SupCon and AFCL, 2 seeds, one
# gamma/eta point. The epoch counts are first sizes, not measured: no GPU has run this yet. The
# script's training-throughput step measures images/s before the profiles run; the first GPU session
# sets the epochs from that figure (docs/results.md says which were used).
_GPU_TRAINING = {
    "stage2.augment": False,  # every method's final classifier reads clean images/features
    "trainer.accelerator": "auto",
    "trainer.precision": "bf16-mixed",
    "trainer.channels_last": True,
    "trainer.progress_bar": False,
    "stage2.sampler": "class_balanced",
}
_GPU_DATA = {
    "isic2018": {
        "data.image_size": 224,
        "model.backbone": "efficientnet_lite0",
        "model.pretrained": "imagenet",
        "model.finetune": "all",
        "stage1.epochs": 8,
        "stage1.batch_size": 128,
        "stage1.lr": 3e-4,
        "stage2.epochs": 4,
        "stage2.batch_size": 256,
    },
    "fmnist-lt": {
        "data.imbalance": "exp:100",
        "model.backbone": "small_cnn",
        "stage1.epochs": 15,
        "stage1.batch_size": 512,
        "stage2.epochs": 5,
        "stage2.batch_size": 512,
    },
}

# The methods of each profile's table, listed here, not taken from the registry: registering a
# method (a plugin's, say) never changes a preset; a user adds it to a comparison by name
# (`--methods`). CE and LA are the baselines practitioners use; the probe (a class-weighted logistic
# regression on the frozen encoder's clean features) is the one-liner every pretrained table must beat.
PAPER_TABLE = ("ce", "la", "supcon", "cl", "fcl", "acl", "afcl")
PRESET_METHODS: dict[str, tuple[str, ...]] = {
    "quick": PAPER_TABLE,
    "full": PAPER_TABLE,
    "pretrained": ("probe", *PAPER_TABLE),
    "gpu": ("ce", "la", "supcon", "afcl"),
}

# The budget: validation-scored settings per method, the same for every method of a table
# (experiments/fair.py draws them from each method's own search space). Sized from the per-run
# times measured under this protocol (docs/results.md, 2 cores, --workers 2): a quick table of 7
# methods x 2 settings x 3 seeds is 42 runs, 31-34 min; the pretrained ISIC table of 8 methods x 2
# settings x 5 seeds is 80 runs, 18 min of training after a 43-min one-time extraction (62 min in
# all, on a shared machine). A table that does not fit gets fewer settings for every method, never
# fewer for some.
BUDGETS = {"quick": 2, "full": 8, "pretrained": 2, "gpu": 1}
# ISIC quick at 2 settings was measured at 4-5 min per run per worker (10 + 10 epochs on about 4,800
# images at 28 px): 42 runs, about 85 min on 2 cores, over the quick profile's 45 min. So every
# method of that table gets 1 setting (its space's default), decided before its results were read:
# 21 runs, measured at 60 min beside a CI run and about 47 min on the idle machine: still over 45
# (docs/results.md says so).
# Fashion-MNIST-LT pretrained draws each seed's own cached views (data.cache_seed null, so the
# intervals include the views' draw). Measured on 2 cores: one seed's 14,392 training images x 4
# views of Lite0 at 128 px take 14-16 min, so 5 seeds' extraction alone (about 75 min) is past the
# pretrained profile's 60 min. It takes 3 seeds (the minimum of method.md) and 1 setting per method
# (about 45 min of extraction and 10 min of training for 24 runs): decided before any of its runs
# trained, after the first two seeds' extraction was timed. The other way to fit, one draw of
# views shared by all seeds (ISIC's), would leave the draw's variance out of the intervals.
_PRESET_BUDGETS = {("isic2018", "quick"): 1, ("fmnist-lt", "pretrained"): 1}


def preset_budget(preset: str, profile: str) -> int:
    """Validation-scored settings per method in ``reproduce PRESET --profile PROFILE``."""
    return _PRESET_BUDGETS.get((preset, profile), BUDGETS[profile])


SEEDS = {"quick": _SEEDS_QUICK, "full": _SEEDS_FULL, "pretrained": _SEEDS_FULL, "gpu": [0, 1]}
_PRESET_SEEDS = {("fmnist-lt", "pretrained"): _SEEDS_QUICK}


def preset_seeds(preset: str, profile: str) -> list[int]:
    """The seeds of ``reproduce PRESET --profile PROFILE`` (each its own split)."""
    return list(_PRESET_SEEDS.get((preset, profile), SEEDS[profile]))


# The shared grid of each preset (what every method runs over besides its own settings and seeds).
# Quick binary keeps rho = 100, the hard end, so that every method gets two settings within budget
# (the rho axis is the power study's, docs/results.md).
GRIDS: dict[str, dict[str, dict[str, Any]]] = {
    "fmnist-binary": {
        "quick": {"data.imbalance": ["binary:100"]},
        "full": {"data.imbalance": ["binary:10", "binary:50", "binary:100"]},
    },
    "fmnist-lt": {"quick": {"data.imbalance": ["exp:100:1000"]}, "full": {"data.imbalance": ["exp:10", "exp:100"]}},
    "isic2018": {"quick": {}, "full": {}},
}
# Fashion-MNIST has thousands of official training images the profile leaves out: validation is a
# balanced set drawn from the pool before the profile (as ImageNet-LT and CIFAR-LT do), not 20% of
# the imbalanced pool, which left two images of a tail class to choose gamma, eta and the epoch on.
# ISIC's validation is a lesion-grouped 20% of its natural pool; its DF and VASC have about a dozen
# images there, which the report prints.
_FMNIST_VALIDATION = {"data.val_per_class": 200}
# Fashion-MNIST-LT quick caps the head class at 1,000 images (exp:100:1000, about 2,500 images in
# all instead of 15,000), which buys 15 stage-1 epochs (about 230 steps of 128) within budget: with
# the uncapped pool and 2 epochs the contrastive stage had barely started to learn.
# ISIC quick: 10 + 10 epochs (about 190 stage-1 steps of 256): with 3 + 3 the contrastive stage had
# barely moved and the comparison said nothing about the losses.
_PRESET_OVERRIDES = {
    ("fmnist-lt", "quick"): {"stage1.epochs": 15, "stage1.batch_size": 128, "stage2.epochs": 10},
    ("isic2018", "quick"): {"stage1.epochs": 10, "stage2.epochs": 10},
}


_FMNIST_EXPECTED = (
    "expected the Fashion-MNIST folder with the four official IDX files (train-images-idx3-ubyte.gz, ...)"
)


def check_data_folder(preset: str, data: str | Path) -> None:
    """A one-line :class:`ConfigError` when ``data`` is not what ``preset`` reads (another
    dataset's folder, a folder without the files), before any run starts rather than when the
    first run reads it. (The sweep file is made without this: a dry run shows it for any folder.)"""
    data = Path(data).expanduser()
    try:
        if preset in ("fmnist-binary", "fmnist-lt"):
            check_fashion_mnist_folder(data)
        elif data.is_dir():
            find_isic_parts(data)
    except DataError as exc:
        expected = (
            _FMNIST_EXPECTED if preset.startswith("fmnist") else "expected the ISIC 2018 folder (official layout)"
        )
        raise ConfigError(f"--data {data}: {expected}; {exc}") from None


def _data_base(preset: str, data: Path, profile: str) -> dict[str, Any]:
    if preset in ("fmnist-binary", "fmnist-lt"):
        if not data.is_dir():
            raise ConfigError(f"--data {data}: {_FMNIST_EXPECTED}")
        base: dict[str, Any] = {"data.dataset": "fashion-mnist", "data.root": str(data)}
        if preset == "fmnist-binary":
            base["data.classes"] = [0, 6]  # T-shirt/top (majority) vs Shirt: the hard pair
        return {**base, **_FMNIST_VALIDATION}
    # isic2018: the official folder layout, or an .npz such as isic2018_28px.npz
    if data.is_file() and data.suffix == ".npz":
        return {"data.dataset": "npz", "data.root": str(data)}
    if data.is_dir():
        return {
            "data.dataset": "isic2018",
            "data.root": str(data),
            "data.image_size": 28 if profile == "quick" else 224,
        }
    raise ConfigError(f"--data {data}: expected the ISIC 2018 folder (official layout) or an .npz file")


def preset_spec(
    preset: str,
    data: str | Path,
    profile: str = "quick",
    *,
    methods: Sequence[str] | None = None,
    budget: int | None = None,
) -> dict[str, Any]:
    """The sweep file (as a mapping) that ``reproduce PRESET --profile PROFILE`` runs: the preset's
    base config, its shared grid (with the seeds) and every method's equal share of settings
    (:func:`asymcl.experiments.fair.comparison_spec`). ``methods``/``budget``: instead of the
    profile's own (:data:`PRESET_METHODS`, :data:`BUDGETS`)."""
    from asymcl.experiments.fair import comparison_spec

    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} (allowed: {', '.join(PRESETS)})")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r} (allowed: {', '.join(PROFILES)})")
    data = Path(data).expanduser()
    if not data.exists():
        raise ConfigError(f"--data {data} does not exist")
    grid: dict[str, Any]
    if profile == "pretrained":
        base, grid = _official_layout(profile, preset, data, PRETRAINED_TRAINING, PRETRAINED_DATA)
    elif profile == "gpu":
        base, grid = _official_layout(profile, preset, data, _GPU_TRAINING, _GPU_DATA)
    else:
        base = {**(QUICK_TRAINING if profile == "quick" else _FULL_TRAINING), **_data_base(preset, data, profile)}
        base.update(_PRESET_OVERRIDES.get((preset, profile), {}))
        if preset == "isic2018" and profile == "full":
            base["model.backbone"] = "resnet18"
        grid = copy.deepcopy(GRIDS[preset][profile])
    grid["seed"] = preset_seeds(preset, profile)
    return comparison_spec(
        f"{preset}-{profile}",
        f"asymcl reproduce {preset} --profile {profile}",
        base,
        list(methods or PRESET_METHODS[profile]),
        budget or preset_budget(preset, profile),
        grid,
    )


def _official_layout(
    profile: str, preset: str, data: Path, training: dict[str, Any], per_preset: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A profile that reads ISIC from its official folder (the pretrained encoders need the images,
    not the 28 px .npz) and has its own training settings per preset."""
    if preset not in per_preset:
        raise ConfigError(f"profile {profile} has presets {', '.join(per_preset)}, not {preset}")
    if preset == "isic2018" and not data.is_dir():
        raise ConfigError(f"--data {data}: profile {profile} needs the ISIC 2018 folder (official layout)")
    return {**training, **_data_base(preset, data, profile), **per_preset[preset]}, {}


@dataclass
class ReproduceResult:
    spec_path: Path
    sweep: SweepResult
    report: ReportResult | None


def reproduce(
    preset: str,
    data: str | Path,
    out: str | Path,
    *,
    profile: str = "quick",
    dry_run: bool = False,
    runner=None,
    progress=None,
    command: str | None = None,
    tsne_points: int = 1000,
    workers: int = 1,
    methods: Sequence[str] | None = None,
    budget: int | None = None,
) -> ReproduceResult | None:
    """Run (or continue) the preset's sweep into ``out`` and write the report to ``out/report``.

    ``workers``: worker processes on this machine (:func:`asymcl.experiments.sweep.run_sweep`)."""
    from asymcl.experiments.parallel import check_workers

    check_workers(workers)  # before anything is written
    raw = preset_spec(preset, data, profile, methods=methods, budget=budget)
    if not dry_run:
        check_data_folder(preset, data)
    spec = parse_spec(raw)
    out = Path(out)
    if dry_run:
        from asymcl.experiments.sweep import default_resolver, expand, resolve_points

        resolve_points(spec, expand(spec), default_resolver())
        print(yaml.safe_dump(raw, sort_keys=False).rstrip())
        print(f"# {len(expand(spec))} runs into {out}")
        return None
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "sweep.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    command = command or current_command()
    sweep = run_sweep(spec, out, runner=runner, progress=progress, command=command, workers=workers)
    report = None
    if sweep.ran or sweep.skipped:
        report = build_report(out, out / "report", command=command, progress=progress, tsne_points=tsne_points)
    return ReproduceResult(spec_path, sweep, report)

"""Issue 23's lever ablation: each lever on its own against its reference, then the combination that
validation chose (``asymcl levers --preset {isic2018,fmnist-lt}``), on ISIC 2018 and on
Fashion-MNIST-LT ("the same levers where they apply").

A *preset* (:data:`PRESETS`, one :class:`LeverPreset` each) is ``asymcl reproduce PRESET --profile
pretrained``'s config, taken as it is, with its methods
(:data:`asymcl.experiments.reproduce.PRESET_METHODS`), each at 1 validation-scored setting (its search
space's default, through :func:`asymcl.experiments.fair.comparison_spec`) and 3 seeds (each its own
split), and the arms that apply to it. Every *arm* is that comparison with one lever changed, a sweep
in its own folder; every method gets every lever (method.md section 7), so an arm differs from its
reference only in the lever's keys.

``isic2018``: frozen ImageNet EfficientNet-Lite2 + Lite0 at 260 px, 256-wide adapter, from the
feature cache; one draw of cached views shared by the seeds; lesion-grouped splits.

* ``tta``: ``eval.tta_views`` 4, the same number of views as the training cache; validation and
  test are predicted as the mean softmax over the clean image and 4 views drawn like the cached
  ones (seeded by ``data.cache_seed``). The training cache is the base's; what it adds is the
  val/test entries with 4 views, extracted in fp32 like the clean images.
* ``tta-dihedral``: the ``tta`` lever's other value (run after the first part found ``tta`` losing
  6.5 points: the training views are far from the clean images the classifiers learn on).
  ``eval.tta_views`` 7 with ``eval.tta_augment`` dihedral: the mean softmax over the clean image and
  its 7 flips and quarter turns, label-preserving for dermoscopy, whose orientation carries no
  meaning. The views are fixed, so the seeds share one entry of them (val/test only, in fp32).
* ``layers``: ``model.feature_layers`` [block10, block14, head]: the head (today's features) plus
  two stage outputs. In both networks of the pair block10 and block14 end a stage (Lite0: 112
  channels at stride 16 and 192 at stride 32; Lite2: 88 and 120, both at stride 16), so the taps are
  whole stages' mid-level outputs, not a half-finished residual stack: 3,072 features for 2,560.
* ``last1``, ``last2``, ``last3``: ``model.finetune=last:K``. last:K cuts one network's blocks and
  the ``+`` backbone refuses it, so these arms use a single encoder, EfficientNet-Lite0 at 224 px,
  against their own no-lever reference ``lite0-224`` (frozen, the same encoder). Lite0 at 224 px
  is the cheapest of the candidates to extract and to train K blocks on: its cached maps are the
  smallest (benchmarks/README.md, "last:K from the feature cache": 153 KB per image with 4 views
  for K = 1 against 253 KB at 260 px), each step has 1.35x fewer pixels than at 260, and a step of
  K = 1..3 took 0.17-0.5 s per 128 rows there on the nearly idle machine; 224 px is also the shared
  copy's own file size.
* ``last1-lr0.1`` ... ``last3-lr0.1``: the same, the blocks at ``model.finetune_lr_scale`` 0.1 x the
  recipe's lr (added when ``last1``'s first runs lost 1-4 validation points for CE and LA: a
  pretrained block stepping as fast as a new head overfits). The same lever as ``last1`` ... ``last3``.
* ``last1-bn-frozen`` ... ``last3-bn-frozen``: ``last1`` ... ``last3`` with ``model.finetune_bn``
  frozen: the trained blocks' BatchNorm layers normalise with ImageNet's running statistics, in
  training as in evaluation, while their scale and shift still train. Added after both the
  ``last1`` and the ``last1-lr0.1`` runs had lost on both datasets, the slow blocks by more, which
  the overfitting reason above does not explain. The hypothesis these arms test: in training mode
  the statistics drift toward the batches of augmented views at any learning rate (in the seed-0
  checkpoints of ``last1-lr0.1`` the head's running means had moved 0.31-0.43 pretrained standard
  deviations and its variances had fallen to 0.47-0.64 of ImageNet's, while its scale weights moved
  0.02-0.03%), and evaluation then normalises clean images with them. The same lever again.
* the size/encoder arms (``lite0-224`` ... ``lite2-300``): ``data.image_size`` and
  ``model.backbone``, pruned before any run (:data:`PRUNED`, rule below).

``fmnist-lt``: frozen ImageNet EfficientNet-Lite0, the 28 px grey images upsampled to 128 px inside
the model, 256-wide adapter, from the feature cache; exp:100 on the full pool, 200 validation images
per class held out before the profile; each seed draws its own cached views (``data.cache_seed``
null), so each seed extracts its own entries.

* ``tta``, ``layers``: as on ISIC (the same arms). No ``tta-dihedral``: clothing has an up and a
  down, so its turned and flipped images are not the same garment as the network saw it. In Lite0
  at 128 px block10 ends the stride-16 stage (112 channels, an 8 x 8 map) and block14 the
  192-channel stride-32 stage (4 x 4), block15 being the 320-channel stage of one block before the
  head: 1,584 features for 1,280.
* ``tta-hflip``: the label-preserving test-time view that clothing has, its mirror image
  (``eval.tta_views`` 1 with ``eval.tta_augment`` dihedral, whose first view is the horizontal
  flip): the mean softmax over the clean image and its mirror. Added, as ISIC's ``tta-dihedral``
  was, after ``tta`` over the training views had lost on both datasets, and before any of its runs.
* ``last1``, ``last2``, ``last3``: ``model.finetune=last:K`` on the preset's own Lite0 at 128 px.
  The base is already a single network, so their reference is ``base`` itself (no reference arm).
* ``last1-lr0.1`` ... ``last3-lr0.1``, ``last1-bn-frozen`` ... ``last3-bn-frozen``: as on ISIC,
  against ``base``.
* no size or encoder arms. The images are 28 px grey: a larger upsampling than 128 px adds pixels,
  not information, and Lite0 is the preset's encoder. The pruning that sized ISIC's candidates is
  about ISIC's 45-minute target for its 260 px extraction and has nothing to decide here.

Selection rule, fixed here before any arm ran, the same code for every preset (:func:`kept`,
:func:`combine`):

1. Gain of an arm = its validation UA minus its reference's, both averaged over the methods, paired
   over the seeds (each seed is one split both arms share): per seed the mean over the methods of
   each arm, then :func:`asymcl.experiments.stats.paired_difference` over the seeds (95% t
   interval). Pooled over methods, not per method: the recipe is one preset that every method
   runs (a lever goes to every method or to none), and 8 per-method tests on 3 seeds would each be
   a t interval on 2 degrees of freedom, 8 times over. Per-method numbers are written beside it,
   not used for selection. (In the last:K arms the probe fits no block, so its rows equal its
   reference's up to the float16 rounding of the cached maps and pull the pooled gain toward 0 by
   its 1/8 share.)
2. A lever value is kept when the lower end of that interval is above 0.
3. Of the kept values of one lever (the K of last:K, the size/encoder pairs) the one with the largest
   mean gain.
4. last:K excludes ``feature_layers`` (which pools a frozen network) and on ISIC brings its own
   encoder (Lite0 at 224 px): when it is kept beside a kept encoder or layers arm, the one with the
   larger validation gain over ``base`` (the same paired mean) is taken, the other dropped.
5. The combined recipe is ``base`` with the chosen arms' keys together, run as one more arm,
   ``combined`` (none kept: ``base`` itself; one: that arm, which then runs nothing new). Its TEST
   numbers are the only test numbers quoted as the recipe's result; the single arms' test numbers
   are in the table, marked as not used for selection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymcl.data.idx import check_fashion_mnist_folder
from asymcl.data.isic import find_isic_parts
from asymcl.errors import AsymclError, ConfigError, DataError
from asymcl.experiments.claim_presets import GRIDS as CLAIM_GRIDS
from asymcl.experiments.claim_presets import LEAN_OUTPUTS
from asymcl.experiments.fair import comparison_spec
from asymcl.experiments.preset_names import LEVERS_PRESETS
from asymcl.experiments.reproduce import PRETRAINED_DATA, preset_spec
from asymcl.experiments.stats import PairedDifference

#: The seeds every arm runs: the rule's minimum. ``asymcl levers --seeds N`` runs 0..N-1 for the
#: arms named (more seeds only narrow an interval; the gain pairs the seeds both arms have).
SEEDS = (0, 1, 2)
#: Validation-scored settings per method: each space's default, the same for every method and arm.
BUDGET = 1
BASE = "base"
COMBINED = "combined"
LAYERS = ["block10", "block14", "head"]
_ISIC = PRETRAINED_DATA["isic2018"]
#: ISIC's base encoder and size, as the preset has them.
BASE_ENCODER = (str(_ISIC["model.backbone"]), int(_ISIC["data.image_size"]))
ENCODERS = {
    "lite0": "efficientnet_lite0",
    "lite2": "efficientnet_lite2",
    "lite2-lite0": "efficientnet_lite2+efficientnet_lite0",
}
SIZES = (224, 260, 300)

# Pruning of ISIC's size/encoder arms, decided before any of them ran. The budget for the
# recipe is 45 min on 2 cores including the one-time extraction and 15 min with the cache in place,
# so a candidate whose extraction alone is over 45 - 15 = 30 min cannot be the recipe and is not
# run. The extraction of the preset's images (3 seeds: 4,787 + 1,138 training images x (clean + 4
# views), 2,709 val/test images clean) was measured on 2 idle cores at 260 px only
# (docs/results-archive.md, "Choosing the ISIC encoder"): Lite0 about 16 min, Lite2 22 min 21 s,
# Lite2 + Lite0 28 min 47 s. Other sizes are scaled by the pixel count (the networks' cost is
# proportional to it; decoding is not, so 300 px is if anything overestimated): an estimate, not a
# measurement. 224 px: 11.9 / 16.6 / 21.4 min; 300 px: 21.3 / 29.8 / 38.3 min. So Lite2 + Lite0
# at 300 px (38 min) is pruned; Lite2 at 300 px (29.8) stays, at the limit: the table's measured
# time says whether it really fits. (On the shared copy, whose files are 224 x 224, 260 and 300 px
# are upsampled; that is what the preset already does at 260.)
EXTRACTION_BUDGET_MIN = 45.0 - 15.0
MEASURED_EXTRACTION_260_MIN = {
    "efficientnet_lite0": 16.0,
    "efficientnet_lite2": 22.35,
    "efficientnet_lite2+efficientnet_lite0": 28.78,
}


def extraction_estimate_min(backbone: str, size: int) -> float:
    """Minutes of one-time extraction on 2 idle cores, scaled from the measured 260 px figures."""
    return MEASURED_EXTRACTION_260_MIN[backbone] * (size / 260) ** 2


@dataclass(frozen=True)
class Arm:
    """One sweep of the ablation: ``keys`` is what it changes from ``reference`` (None for base)."""

    name: str
    lever: str  # base, tta, layers, finetune or encoder: arms of one lever are alternatives
    reference: str | None
    keys: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


def _size_arms() -> tuple[list[Arm], dict[str, str]]:
    arms, pruned = [], {}
    budget = f"{EXTRACTION_BUDGET_MIN:g} min that the 45-min target leaves beside 15 min of training"
    for short, backbone in ENCODERS.items():
        for size in SIZES:
            if (backbone, size) == BASE_ENCODER:
                continue
            name, minutes = f"{short}-{size}", extraction_estimate_min(backbone, size)
            if minutes > EXTRACTION_BUDGET_MIN:
                pruned[name] = f"estimated extraction {minutes:.0f} min on 2 idle cores, over the {budget}"
                continue
            keys = {"model.backbone": backbone, "data.image_size": size}
            arms.append(Arm(name, "encoder", BASE, keys, f"estimated extraction {minutes:.0f} min"))
    cost = {a.name: extraction_estimate_min(a.keys["model.backbone"], a.keys["data.image_size"]) for a in arms}
    return sorted(arms, key=lambda a: cost[a.name]), pruned


def _last_k(reference: str, note: str) -> list[Arm]:
    return [Arm(f"last{k}", "finetune", reference, {"model.finetune": f"last:{k}"}, note) for k in (1, 2, 3)]


#: The trained blocks' learning rate in the ``-lr`` arms, as a multiple of the recipe's.
SLOW_BLOCKS_LR_SCALE = 0.1


def _last_k_variant(reference: str, suffix: str, keys: dict[str, Any], note: str) -> list[Arm]:
    """``last1`` ... ``last3`` with ``keys`` added, named ``lastK-<suffix>``: another value of the
    finetune lever, so it differs from ``lastK`` in ``keys`` alone."""
    return [Arm(f"{a.name}-{suffix}", a.lever, reference, {**a.keys, **keys}, note) for a in _last_k(reference, "")]


def _last_k_slow(reference: str, note: str) -> list[Arm]:
    scale = f"{SLOW_BLOCKS_LR_SCALE:g}"
    keys = {"model.finetune_lr_scale": SLOW_BLOCKS_LR_SCALE}
    return _last_k_variant(reference, f"lr{scale}", keys, f"{note}; the blocks at {scale} x the recipe's lr")


def _last_k_frozen_bn(reference: str, note: str) -> list[Arm]:
    keys = {"model.finetune_bn": "frozen"}
    return _last_k_variant(
        reference, "bn-frozen", keys, f"{note}; the blocks' BatchNorm running statistics kept at ImageNet's"
    )


# The levers every preset has, defined once.
_TTA = Arm("tta", "tta", BASE, {"eval.tta_views": 4}, "val/test predicted over the clean image + 4 views")
_TTA_DIHEDRAL = Arm(
    "tta-dihedral",
    "tta",
    BASE,
    {"eval.tta_views": 7, "eval.tta_augment": "dihedral"},
    "val/test predicted over the clean image + its 7 flips and quarter turns",
)
# Clothing has an up and a down but no left and right: its label-preserving test-time view is the
# mirror image alone, dihedral's first view.
_TTA_HFLIP = Arm(
    "tta-hflip",
    "tta",
    BASE,
    {"eval.tta_views": 1, "eval.tta_augment": "dihedral"},
    "val/test predicted over the clean image + its mirror image",
)
_LAYERS = Arm("layers", "layers", BASE, {"model.feature_layers": LAYERS}, "block10 + block14 + head, pooled")
_SIZE_ARMS, PRUNED = _size_arms()
LAST_K_REFERENCE = "lite0-224"
#: ISIC's arms in the order they run: the base and the cheap levers on its cache first, then the
#: last:K reference and K = 1..3, then the other sizes and encoders, cheapest first.
ARMS: tuple[Arm, ...] = (
    Arm(BASE, "base", None, {}, "reproduce isic2018 --profile pretrained's encoder and size"),
    _TTA,
    _TTA_DIHEDRAL,
    _LAYERS,
    *[a for a in _SIZE_ARMS if a.name == LAST_K_REFERENCE],
    *_last_k(LAST_K_REFERENCE, "single encoder Lite0 at 224 px: last:K refuses the + backbone"),
    *_last_k_slow(LAST_K_REFERENCE, "single encoder Lite0 at 224 px"),
    *_last_k_frozen_bn(LAST_K_REFERENCE, "single encoder Lite0 at 224 px"),
    *[a for a in _SIZE_ARMS if a.name != LAST_K_REFERENCE],
)
ARM_NAMES = tuple(arm.name for arm in ARMS)
#: Fashion-MNIST-LT's arms (no size or encoder arms: see the module docstring).
FMNIST_ARMS: tuple[Arm, ...] = (
    Arm(
        BASE, "base", None, {}, "reproduce fmnist-lt --profile pretrained's recipe: Lite0, 28 px grey upsampled to 128"
    ),
    _TTA,
    _TTA_HFLIP,
    _LAYERS,
    *_last_k(BASE, "the preset's Lite0 at 128 px, its last K units trained from the cached maps"),
    *_last_k_slow(BASE, "the preset's Lite0 at 128 px"),
    *_last_k_frozen_bn(BASE, "the preset's Lite0 at 128 px"),
)
#: Levers in the order the combination applies them (encoder first: last:K may replace it).
LEVERS = ("encoder", "finetune", "layers", "tta")


@dataclass(frozen=True)
class LeverPreset:
    """One dataset's ablation: ``asymcl reproduce NAME --profile pretrained``'s recipe, its arms in
    the order they run and those pruned before any run; ``title``, ``splits``: the dataset and how
    each seed's split is drawn, in words (the table); ``folder``: what ``--data`` must be, and
    ``check(folder)`` raises an :class:`~asymcl.errors.AsymclError` when it is not that."""

    name: str
    title: str
    splits: str
    folder: str
    check: Callable[[Path], object]
    arms: tuple[Arm, ...]
    pruned: Mapping[str, str] = field(default_factory=dict)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.arms)

    def arm(self, name: str) -> Arm:
        for spec in self.arms:
            if spec.name == name:
                return spec
        allowed = ", ".join((*self.arm_names, COMBINED))
        raise ConfigError(f"unknown arm {name!r} for --preset {self.name} (allowed: {allowed})")


#: The presets by name (their names, torch-free for the CLI, are LEVERS_PRESETS; the first is the default).
PRESETS: dict[str, LeverPreset] = {
    "isic2018": LeverPreset(
        "isic2018",
        "ISIC 2018",
        "each its own lesion-grouped split",
        CLAIM_GRIDS["isic-pretrained"]["folder"],
        find_isic_parts,
        ARMS,
        PRUNED,
    ),
    "fmnist-lt": LeverPreset(
        "fmnist-lt",
        "Fashion-MNIST-LT",
        "each its own split (exp:100, 200 validation images per class held out before the profile) and its "
        "own draw of cached views",
        CLAIM_GRIDS["pretrained"]["folder"],
        check_fashion_mnist_folder,
        FMNIST_ARMS,
    ),
}
DEFAULT_PRESET = LEVERS_PRESETS[0]


def lever_preset(preset: str | LeverPreset = DEFAULT_PRESET) -> LeverPreset:
    if isinstance(preset, LeverPreset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown levers preset {preset!r} (allowed: {', '.join(PRESETS)})")
    return PRESETS[preset]


def arm(name: str, preset: str | LeverPreset = DEFAULT_PRESET) -> Arm:
    return lever_preset(preset).arm(name)


def arm_overrides(name: str, preset: str | LeverPreset = DEFAULT_PRESET) -> dict[str, Any]:
    """Everything ``name`` changes from ``base``: its reference's keys, then its own."""
    spec = arm(name, preset)
    return {**(arm_overrides(spec.reference, preset) if spec.reference else {}), **spec.keys}


def check_folder(data: str | Path, preset: str | LeverPreset = DEFAULT_PRESET) -> Path:
    """``data`` as a path; a one-line ConfigError naming the folder the preset reads when it is not."""
    spec, data = lever_preset(preset), Path(data).expanduser()
    try:
        if not data.is_dir():
            raise DataError("it does not exist" if not data.exists() else "it is a file")
        spec.check(data)
    except AsymclError as exc:
        raise ConfigError(f"--data {data}: --preset {spec.name} reads {spec.folder}; {exc}") from None
    return data


def base_config(
    data: str | Path, methods: Sequence[str] | None = None, preset: str | LeverPreset = DEFAULT_PRESET
) -> tuple[dict[str, Any], list[str]]:
    """The base recipe and its methods: ``reproduce PRESET --profile pretrained``'s own sweep (its
    base config, taken as it is), with outputs a 300-run ablation can keep on disk."""
    name = lever_preset(preset).name
    check_folder(data, name)
    spec = preset_spec(name, data, "pretrained", methods=methods, budget=BUDGET)
    # eval.embeddings 0 and no last.ckpt (the claim grid's choice): the table reads metrics only, and
    # 300+ runs' embeddings (1,512 test images x 2,560 features each) would be GBs; the same in every arm.
    return {**spec["base"], **LEAN_OUTPUTS}, list(spec["settings"])


def seed_list(seeds: int | None) -> list[int]:
    """The seeds of an arm run with ``--seeds`` (None: :data:`SEEDS`); fewer than the rule's
    minimum is a :class:`ConfigError`."""
    if seeds is None:
        return list(SEEDS)
    if seeds < len(SEEDS):
        raise ConfigError(
            f"--seeds {seeds}: the lever rule pairs at least {len(SEEDS)} seeds per arm; give {len(SEEDS)} or more"
        )
    return list(range(seeds))


def _spec(
    name: str, description: str, base: Mapping[str, Any], overrides: Mapping[str, Any], methods, seeds: list[int]
) -> dict:
    grid = {"seed": list(seeds)}
    return comparison_spec(f"levers-{name}", description, {**base, **overrides}, methods, BUDGET, grid)


def lever_specs(
    data: str | Path,
    methods: Sequence[str] | None = None,
    preset: str | LeverPreset = DEFAULT_PRESET,
    seeds: int | None = None,
) -> dict[str, dict[str, Any]]:
    """``{arm: sweep mapping}`` for every arm of the preset, each over ``seeds`` seeds (:func:`seed_list`)."""
    chosen_seeds = seed_list(seeds)
    base, methods = base_config(data, methods, preset)
    specs = {}
    for spec in lever_preset(preset).arms:
        what = ", ".join(f"{k}={v}" for k, v in spec.keys.items()) or "the base recipe"
        against = f" against {spec.reference}" if spec.reference else ""
        specs[spec.name] = _spec(
            spec.name,
            f"issue 23 lever ablation: {what}{against}",
            base,
            arm_overrides(spec.name, preset),
            methods,
            chosen_seeds,
        )
    return specs


def kept(gain: PairedDifference | None) -> bool:
    """Rule 2: a lever value is kept when its paired validation gain's 95% interval is above 0."""
    return gain is not None and gain.n >= 2 and gain.low > 0


def combine(
    gains: Mapping[str, PairedDifference],
    over_base: Mapping[str, PairedDifference],
    preset: str | LeverPreset = DEFAULT_PRESET,
) -> list[str]:
    """Rules 3 and 4: the arms whose keys make the combined recipe, in :data:`LEVERS` order.

    ``gains``: each arm's paired validation gain against its reference; ``over_base``: against
    ``base`` (only read to settle last:K against a kept encoder or layers arm)."""
    best: dict[str, str] = {}
    for spec in lever_preset(preset).arms:
        gain = gains.get(spec.name)
        if spec.reference is None or not kept(gain):
            continue
        assert gain is not None  # kept(None) is False
        if spec.lever not in best or gain.mean > gains[best[spec.lever]].mean:
            best[spec.lever] = spec.name
    if "finetune" in best:
        rivals = [best[lever] for lever in ("encoder", "layers") if lever in best]
        mine = over_base[best["finetune"]].mean
        if any(over_base[rival].mean >= mine for rival in rivals):
            del best["finetune"]
        else:
            for lever in ("encoder", "layers"):
                best.pop(lever, None)
    return [best[lever] for lever in LEVERS if lever in best]


def combined_overrides(chosen: Sequence[str], preset: str | LeverPreset = DEFAULT_PRESET) -> dict[str, Any]:
    """Rule 5: ``base`` with the chosen arms' keys together."""
    merged: dict[str, Any] = {}
    for name in chosen:
        merged.update(arm_overrides(name, preset))
    return merged


def same_as(overrides: Mapping[str, Any], preset: str | LeverPreset = DEFAULT_PRESET) -> str | None:
    """The arm whose config the combination is (no lever kept: base; one: that arm), else None."""
    for spec in lever_preset(preset).arms:
        if arm_overrides(spec.name, preset) == dict(overrides):
            return spec.name
    return None


def combined_spec(
    data: str | Path,
    chosen: Sequence[str],
    methods: Sequence[str] | None = None,
    preset: str | LeverPreset = DEFAULT_PRESET,
    seeds: int | None = None,
) -> dict[str, Any]:
    base, methods = base_config(data, methods, preset)
    what = " + ".join(chosen) or "no lever kept"
    return _spec(
        COMBINED,
        f"issue 23: the levers kept on validation together ({what})",
        base,
        combined_overrides(chosen, preset),
        methods,
        seed_list(seeds),
    )

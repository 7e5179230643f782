"""Issue 23's lever ablation on ISIC 2018: each lever on its own against its reference, then the
combination that validation chose (``asymcl levers``).

The base recipe is ``asymcl reproduce isic2018 --profile pretrained``'s config (frozen ImageNet
EfficientNet-Lite2 + Lite0 at 260 px, 256-wide adapter, from the feature cache; one draw of cached
views shared by the seeds), with its methods (:data:`asymcl.experiments.reproduce.PRESET_METHODS`),
each at 1 validation-scored setting (its search space's default, through
:func:`asymcl.experiments.fair.comparison_spec`) and 3 seeds (each its own lesion-grouped split).
Every *arm* is that comparison with one lever changed, a sweep in its own folder; every method gets
every lever (method.md section 7), so an arm differs from its reference only in the lever's keys:

* ``tta``: ``eval.tta_views`` 4, the same number of views as the training cache; validation and
  test are predicted as the mean softmax over the clean image and 4 views drawn like the cached
  ones (seeded by ``data.cache_seed``). The training cache is the base's; what it adds is the
  val/test entries with 4 views, extracted in fp32 like the clean images.
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
* the size/encoder arms (``lite0-224`` ... ``lite2-300``): ``data.image_size`` and
  ``model.backbone``, pruned before any run (:data:`PRUNED`, rule below).

Selection rule, fixed here before any arm ran (:func:`kept`, :func:`combine`):

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
4. last:K brings its own encoder (Lite0 at 224 px) and excludes ``feature_layers`` (which pools a
   frozen network): when it is kept beside a kept encoder or layers arm, the one with the larger
   validation gain over ``base`` (the same paired mean) is taken, the other dropped.
5. The combined recipe is ``base`` with the chosen arms' keys together, run as one more arm,
   ``combined`` (none kept: ``base`` itself; one: that arm, which then runs nothing new). Its TEST
   numbers are the only test numbers quoted as the recipe's result; the single arms' test numbers
   are in the table, marked as not used for selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymcl.errors import ConfigError
from asymcl.experiments.claim_presets import LEAN_OUTPUTS
from asymcl.experiments.fair import comparison_spec
from asymcl.experiments.reproduce import PRETRAINED_DATA, preset_spec
from asymcl.experiments.stats import PairedDifference

SEEDS = (0, 1, 2)
#: Validation-scored settings per method: each space's default, the same for every method and arm.
BUDGET = 1
BASE = "base"
COMBINED = "combined"
LAYERS = ["block10", "block14", "head"]
_ISIC = PRETRAINED_DATA["isic2018"]
#: The base's encoder and size, as the preset has them.
BASE_ENCODER = (str(_ISIC["model.backbone"]), int(_ISIC["data.image_size"]))
ENCODERS = {
    "lite0": "efficientnet_lite0",
    "lite2": "efficientnet_lite2",
    "lite2-lite0": "efficientnet_lite2+efficientnet_lite0",
}
SIZES = (224, 260, 300)

# Pruning of the size/encoder arms, decided before any of them ran. The budget for the
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


_SIZE_ARMS, PRUNED = _size_arms()
LAST_K_REFERENCE = "lite0-224"
_ONE_ENCODER = "single encoder Lite0 at 224 px: last:K refuses the + backbone"
#: Every arm in the order they run: the base and the cheap levers on its cache first, then the
#: last:K reference and K = 1..3, then the other sizes and encoders, cheapest first.
ARMS: tuple[Arm, ...] = (
    Arm(BASE, "base", None, {}, "reproduce isic2018 --profile pretrained's encoder and size"),
    Arm("tta", "tta", BASE, {"eval.tta_views": 4}, "val/test predicted over the clean image + 4 views"),
    Arm("layers", "layers", BASE, {"model.feature_layers": LAYERS}, "block10 + block14 + head, pooled"),
    *[a for a in _SIZE_ARMS if a.name == LAST_K_REFERENCE],
    *[Arm(f"last{k}", "finetune", LAST_K_REFERENCE, {"model.finetune": f"last:{k}"}, _ONE_ENCODER) for k in (1, 2, 3)],
    *[a for a in _SIZE_ARMS if a.name != LAST_K_REFERENCE],
)
ARM_NAMES = tuple(arm.name for arm in ARMS)
_BY_NAME = {arm.name: arm for arm in ARMS}
#: Levers in the order the combination applies them (encoder first: last:K may replace it).
LEVERS = ("encoder", "finetune", "layers", "tta")


def arm(name: str) -> Arm:
    if name not in _BY_NAME:
        raise ConfigError(f"unknown arm {name!r} (allowed: {', '.join((*ARM_NAMES, COMBINED))})")
    return _BY_NAME[name]


def arm_overrides(name: str) -> dict[str, Any]:
    """Everything ``name`` changes from ``base``: its reference's keys, then its own."""
    spec = arm(name)
    return {**(arm_overrides(spec.reference) if spec.reference else {}), **spec.keys}


def base_config(data: str | Path, methods: Sequence[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """The base recipe and its methods: ``reproduce isic2018 --profile pretrained``'s own sweep
    (its base config, taken as it is), with outputs a 300-run ablation can keep on disk."""
    preset = preset_spec("isic2018", data, "pretrained", methods=methods, budget=BUDGET)
    # eval.embeddings 0 and no last.ckpt (the claim grid's choice): the table reads metrics only, and
    # 300+ runs' embeddings (1,512 test images x 2,560 features each) would be GBs; the same in every arm.
    return {**preset["base"], **LEAN_OUTPUTS}, list(preset["settings"])


def _spec(name: str, description: str, base: Mapping[str, Any], overrides: Mapping[str, Any], methods) -> dict:
    grid = {"seed": list(SEEDS)}
    return comparison_spec(f"levers-{name}", description, {**base, **overrides}, methods, BUDGET, grid)


def lever_specs(data: str | Path, methods: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{arm: sweep mapping}`` for every arm of :data:`ARMS`."""
    base, methods = base_config(data, methods)
    specs = {}
    for spec in ARMS:
        what = ", ".join(f"{k}={v}" for k, v in spec.keys.items()) or "the base recipe"
        against = f" against {spec.reference}" if spec.reference else ""
        specs[spec.name] = _spec(
            spec.name, f"issue 23 lever ablation: {what}{against}", base, arm_overrides(spec.name), methods
        )
    return specs


def kept(gain: PairedDifference | None) -> bool:
    """Rule 2: a lever value is kept when its paired validation gain's 95% interval is above 0."""
    return gain is not None and gain.n >= 2 and gain.low > 0


def combine(gains: Mapping[str, PairedDifference], over_base: Mapping[str, PairedDifference]) -> list[str]:
    """Rules 3 and 4: the arms whose keys make the combined recipe, in :data:`LEVERS` order.

    ``gains``: each arm's paired validation gain against its reference; ``over_base``: against
    ``base`` (only read to settle last:K against a kept encoder or layers arm)."""
    best: dict[str, str] = {}
    for spec in ARMS:
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


def combined_overrides(chosen: Sequence[str]) -> dict[str, Any]:
    """Rule 5: ``base`` with the chosen arms' keys together."""
    merged: dict[str, Any] = {}
    for name in chosen:
        merged.update(arm_overrides(name))
    return merged


def same_as(overrides: Mapping[str, Any]) -> str | None:
    """The arm whose config the combination is (no lever kept: base; one: that arm), else None."""
    for spec in ARMS:
        if arm_overrides(spec.name) == dict(overrides):
            return spec.name
    return None


def combined_spec(data: str | Path, chosen: Sequence[str], methods: Sequence[str] | None = None) -> dict[str, Any]:
    base, methods = base_config(data, methods)
    what = " + ".join(chosen) or "no lever kept"
    return _spec(
        COMBINED,
        f"issue 23: the levers kept on validation together ({what})",
        base,
        combined_overrides(chosen),
        methods,
    )


# -- the plan: what each arm's feature cache will take on disk ----------------------------------------


def cache_shape(config) -> tuple[int, ...]:
    """The shape of one cached output (no batch axis) of a resolved run config: a frozen network's
    features (its ``feature_dim``, multi-layer taps included), or for last:K the frozen prefix's
    output map, run on the meta device (no weights read, no memory)."""
    import torch

    from asymcl.models import parse_finetune
    from asymcl.training.encoder import build_encoder

    size = int(config.data.image_size)
    with torch.device("meta"):
        encoder = build_encoder(config, 3, (size, size), load_pretrained=False)
        if parse_finetune(config.model.finetune)[0] == "frozen":
            return (int(encoder.feature_dim),)
        return tuple(encoder.frozen_input()(torch.empty(1, 3, size, size)).shape[1:])


def image_counts(base: Mapping[str, Any], method: str) -> tuple[int, int]:
    """(training images, validation + test images) that the seeds' caches hold: each seed has its
    own split, and an entry holds every image any seed asked for (found by fingerprint)."""
    from asymcl.data import build_splits
    from asymcl.training.config import resolve_config
    from asymcl.training.run_data import data_spec

    train: set[str] = set()
    evaluation: set[str] = set()
    for seed in SEEDS:
        splits = build_splits(data_spec(resolve_config({**base, "method": method, "seed": seed})))
        for name, dataset in splits.splits.items():
            (train if name == "train" else evaluation).update(map(str, dataset.ids))
    return len(train), len(evaluation)


def disk_estimates(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{arm: (bytes of its feature caches, bytes not already counted for an earlier arm)}`` from
    the cache's own estimate (:func:`asymcl.data.cache_store.estimate_bytes`)."""
    from asymcl.data.cache_store import estimate_bytes
    from asymcl.training.config import resolve_config

    first = next(iter(specs.values()))
    method = next(iter(first["settings"]))
    n_train, n_eval = image_counts(first["base"], method)
    seen: set[tuple] = set()
    shapes: dict[tuple, tuple[int, ...]] = {}
    out = {}
    for name, raw in specs.items():
        config = resolve_config({**raw["base"], "method": method, "seed": SEEDS[0]})
        model = config.model
        identity = (model.backbone, config.data.image_size, model.finetune, tuple(model.feature_layers or ()))
        shape = shapes[identity] if identity in shapes else shapes.setdefault(identity, cache_shape(config))
        entries = {
            (*identity, "train", config.data.cache_views): estimate_bytes(shape, n_train, config.data.cache_views),
            (*identity, "eval", config.eval.tta_views): estimate_bytes(shape, n_eval, config.eval.tta_views),
        }
        out[name] = (sum(entries.values()), sum(v for k, v in entries.items() if k not in seen))
        seen.update(entries)
    return out

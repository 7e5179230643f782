"""The run's encoder (input standardisation, backbone, adapter) and its feature caches.

:class:`Encoder` maps (B, C, H, W) images in [0, 1] to features (B, D). ``model.finetune`` splits
its backbone into a frozen part and a trainable part (:func:`asymcl.models.apply_finetune`);
``model.adapter`` adds a trainable :class:`asymcl.models.Adapter` after it::

    features = adapter(trainable(frozen(standardise(images))))

The state-dict layout is the same whatever the finetune mode and whether the run trains from
cached features (``backbone.*``, ``adapter.*``): the parts are views over the backbone's own
sub-modules and are not registered a second time, so ``asymcl predict`` and ``export`` load one
checkpoint and feed raw images through the whole encoder.

Feature caches (``data.cache=auto`` and a frozen part with weights): the outputs of
``frozen(standardise(.))`` are computed once per image (:mod:`asymcl.data.feature_cache`), for the
clean image and ``data.cache_views`` augmented views of each training image, and reused by every
run with the same key; the modules then train :meth:`Encoder.from_frozen` on them. Val/test
caches hold the clean image only, or with ``eval.tta_views`` = V also V views (float32, for
test-time augmentation). Everything is extracted in float32 (stored as float16), so a
run's own predictions and those of ``predict``/``export`` on raw images agree to float16 rounding;
on CPU bf16 was not faster at 128 px (benchmarks/README.md, feature extraction).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from asymcl.models import (
    Adapter,
    FinetuneParts,
    apply_finetune,
    build_backbone,
    default_input_size,
    lite_members,
    parse_finetune,
    set_feature_layers,
)
from asymcl.models.backbones import feature_dim_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Standardise(nn.Module):
    """(x - mean) / std per channel; the constants come from the config (not in checkpoints)."""

    mean: Tensor  # buffers (register_buffer), which nn.Module would type as Tensor | Module
    std: Tensor

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images - self.mean) / self.std

    def extra_repr(self) -> str:  # in the feature cache's key (repr of the frozen part)
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _standardise(backbone: str, in_channels: int, pretrained: str | None) -> nn.Module:
    """EfficientNet-Lite normalises inside the model; an ImageNet-pretrained backbone gets
    ImageNet's mean/std (averaged for grey input); otherwise (x - 0.5) / 0.25."""
    if lite_members(backbone):
        return nn.Identity()
    if pretrained is not None:
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        if in_channels != 3:
            mean, std = mean.mean().repeat(in_channels), std.mean().repeat(in_channels)
    else:
        mean, std = torch.full((in_channels,), 0.5), torch.full((in_channels,), 0.25)
    return Standardise(mean, std)


def adapter_width(model_config) -> int:
    """Hidden width of the adapter, 0 for none (``model.adapter`` null: on when finetune != all)."""
    if model_config.adapter is not None:
        return int(model_config.adapter)
    return 0 if parse_finetune(model_config.finetune)[0] == "all" else -1  # -1: the feature width


class Encoder(nn.Module):
    """Standardisation + backbone (+ adapter): (B, C, H, W) in [0, 1] -> (B, feature_dim).

    ``frozen_input`` is the cacheable front, ``standardise`` then the frozen part (a module whose
    outputs never change); :meth:`from_frozen` is the rest, the part that trains.
    """

    # Set with object.__setattr__, not registered (see __init__): declared for the type checker,
    # which would otherwise take it for one of nn.Module's Tensor | Module attributes.
    _parts: FinetuneParts

    def __init__(
        self,
        backbone: str,
        in_channels: int,
        image_hw: tuple[int, int],
        *,
        pretrained: str | None = None,
        load_pretrained: bool = True,
        input_size: int | None = None,
        finetune: str = "all",
        finetune_bn: str = "train",
        adapter: int = 0,
        feature_layers: list[str] | None = None,
    ):
        super().__init__()
        size = None
        if lite_members(backbone):
            size = (input_size, input_size) if input_size else default_input_size((int(image_hw[0]), int(image_hw[1])))
        # load_pretrained=False: same layout, weights to come from a checkpoint
        self.backbone = build_backbone(backbone, in_channels, pretrained if load_pretrained else None, input_size=size)
        # What rebuilds the backbone's weights without a checkpoint (see frozen_reference).
        self._backbone_source = {
            "kind": "backbone",
            "backbone": backbone,
            "in_channels": int(in_channels),
            "pretrained": None if pretrained is None else str(pretrained),
            "input_size": list(size) if size else None,
            "finetune": str(finetune),
        }
        if feature_layers:  # pooled outputs of several units (asymcl.models.multilayer); frozen only
            set_feature_layers(self.backbone, feature_layers)
        self.feature_dim = feature_dim_of(self.backbone)
        self.standardise = _standardise(backbone, in_channels, pretrained)
        parts = apply_finetune(self.backbone, finetune, finetune_bn)
        # Not registered: they share the backbone's sub-modules (registering them would give every
        # weight a second name in the checkpoint).
        object.__setattr__(self, "_parts", parts)
        self.adapter = nn.Identity() if adapter == 0 else Adapter(self.feature_dim, None if adapter < 0 else adapter)
        self.train(True)

    @property
    def parts(self) -> FinetuneParts:
        return self._parts

    @property
    def cacheable(self) -> bool:
        return self._parts.cacheable

    def frozen_reference(self) -> tuple[dict, dict[str, Tensor]] | None:
        """(source, {name: tensor}) of the frozen backbone parameters that a checkpoint may store as
        a reference instead of their values, names relative to ``backbone``; None when there are
        none or they are not reproducible from a file (no pretrained weights: a random frozen part).

        Parameters only: buffers (frozen batch-norm statistics) are small and stay in checkpoints.
        ``source`` holds what :func:`reference_weights` needs to rebuild them.
        """
        if self._backbone_source["pretrained"] is None:
            return None
        frozen = {id(p) for p in self._parts.frozen.parameters()}
        tensors: dict[str, Tensor] = {name: p for name, p in self.backbone.named_parameters() if id(p) in frozen}
        return (dict(self._backbone_source), tensors) if tensors else None

    def frozen_input(self) -> nn.Module:
        """The module whose outputs the feature cache stores: standardisation + frozen part."""
        return nn.Sequential(self.standardise, self._parts.frozen)

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        self._parts.frozen.train(False)  # frozen batch-norm statistics must never move
        return self

    def from_frozen(self, frozen_out: Tensor) -> Tensor:
        """Cached frozen-part outputs (B, *S) -> features (B, D)."""
        return self.adapter(self._parts.trainable(frozen_out))

    def forward(self, images: Tensor) -> Tensor:
        # The whole backbone in one call (equal to trainable(frozen(.)): frozen weights have no
        # gradient and stay in eval mode), so tracing/export sees only registered modules.
        return self.adapter(self.backbone(self.standardise(images)))


def reference_weights(source: dict, names) -> dict[str, Tensor]:
    """The backbone parameters ``names`` as :meth:`Encoder.frozen_reference`'s ``source`` builds them
    (bundled or file weights, folded for grey input like a run's own)."""
    size = source.get("input_size")
    backbone = build_backbone(
        source["backbone"], int(source["in_channels"]), source["pretrained"], input_size=tuple(size) if size else None
    )
    state = backbone.state_dict()
    return {name: state[name] for name in names}


def build_encoder(config, in_channels: int, image_hw: tuple[int, int], load_pretrained: bool = True) -> Encoder:
    model = config.model
    return Encoder(
        model.backbone,
        in_channels,
        image_hw,
        pretrained=model.pretrained,
        load_pretrained=load_pretrained,
        input_size=model.input_size,
        finetune=model.finetune,
        finetune_bn=model.finetune_bn,
        adapter=adapter_width(model),
        feature_layers=model.feature_layers,
    )


def uses_feature_cache(config) -> bool:
    """Whether a run trains from cached features: ``data.cache=auto`` and a frozen part with
    weights (finetune frozen or last:K; ``all`` has nothing to cache)."""
    return config.data.cache == "auto" and parse_finetune(config.model.finetune)[0] != "all"


def cache_device(config) -> torch.device:
    """Where the frozen part runs for extraction: this process's GPU (``LOCAL_RANK`` under a
    launcher, so that the ranks of a distributed build use one GPU each), else the CPU."""
    accelerated = config.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if not accelerated:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def join_launched_group(config) -> bool:
    """Under torchrun-style launchers (``RANK`` and ``WORLD_SIZE`` > 1 set), initialise the process
    group now, with the backend Lightning would pick (nccl on GPUs, gloo on CPU), so that extraction
    before training is shared too; Lightning then uses this group. True if this initialised it."""
    import torch.distributed as dist

    # RANK: set by torchrun/srun-style launchers, not by Lightning's (whose children set the rest).
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = cache_device(config)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def views_seed(config) -> int:
    """The seed of the run's cached views: ``data.cache_seed``, or the run's seed when that is null
    (each seed then draws its own views, so the spread over seeds includes the views' draw)."""
    return config.seed if config.data.cache_seed is None else config.data.cache_seed


def tta_views_preset(config, training_preset: str) -> str:
    """The augmentation preset of the run's test-time views (``eval.tta_views``): the fixed
    ``dihedral`` views (``eval.tta_augment``), or ``training_preset``, its own training augmentation."""
    from asymcl.data.augment import DIHEDRAL

    return DIHEDRAL if config.eval.tta_augment == DIHEDRAL else training_preset


def tta_seed(config) -> int:
    """The seed of the run's test-time views: that of its cached training views (:func:`views_seed`),
    or 0 for the fixed ``dihedral`` views, which draw nothing (so every run seed shares their entry)."""
    from asymcl.data.augment import DIHEDRAL

    return 0 if config.eval.tta_augment == DIHEDRAL else views_seed(config)


def build_feature_caches(
    config, data, augmentation: str, device: torch.device | str = "cpu", report_reuse: bool = True
) -> dict:
    """``{split: FeatureCache}`` of the run's splits: the training split with ``data.cache_views``
    augmented views per image, the others clean only (plus ``eval.tta_views`` views when set). Extracted on ``device``: clean images in
    float32 (what evaluation, predict and export compute), views in ``data.cache_precision``.
    ``report_reuse=False``: no line for a cache that was only read (a sweep's runs would print
    three each); an extraction always says what it computed, where, and the size."""
    from asymcl.data.feature_cache import build_feature_cache

    encoder = build_encoder(config, data.channels, data.image_hw).to(device)
    frozen = encoder.frozen_input().eval()
    model, source = config.model, config.data
    describe = {
        "encoder": model.backbone,
        "pretrained": model.pretrained,
        "finetune": model.finetune,
        "input_size": encoder._backbone_source["input_size"],
        "dataset": source.dataset,
        "root": source.root,
    }
    caches = {}
    for split, dataset in data.splits.splits.items():
        train = split == "train"
        # eval.tta_views: val/test hold views too, in float32 like the clean images, so the run's
        # test-time augmentation equals `predict --tta` on the image files (asymcl.training.tta).
        views = config.data.cache_views if train else config.eval.tta_views
        preset = augmentation if train else tta_views_preset(config, augmentation)
        caches[split] = build_feature_cache(
            dataset,
            frozen,
            augmentation=preset if views else "none",
            views=views,
            seed=views_seed(config) if train else tta_seed(config),
            cache_dir=config.data.cache_dir,
            precision="fp32",
            view_precision=config.data.cache_precision if train else "fp32",
            engine=config.data.cache_engine,
            device=device,
            progress=None if config.trainer.progress_bar else False,
            report_reuse=report_reuse,
            describe=describe,
        )
    return caches

"""The run config's typed sections: one frozen dataclass per section, each field declared once
with :func:`option` (default, check, help).

:mod:`asymcl.training.config` derives the key table (``SCHEMA``), parsing and the one-line errors
from these declarations, and :mod:`asymcl.training.config_rules` runs the cross-field rules on
them. The ``data`` section's what-to-load fields are the data layer's declaration
(:class:`asymcl.data.spec.DataFields`), so ``DataSpec`` and ``data.*`` keys cannot disagree.
Frozen: a config is resolved once (:func:`asymcl.training.config.resolve_config`) and then only
read; a changed copy is ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from asymcl.data.augment import DIHEDRAL
from asymcl.data.augment import PRESETS as AUGMENT_PRESETS
from asymcl.data.cache_engine import ENGINES as CACHE_ENGINES
from asymcl.data.spec import DataFields
from asymcl.training import config_checks as check
from asymcl.training.methods import JOINT, PROPOSED, REGISTRY, SCHEDULES, get_method


def option(default: Any, check: Callable[[Any], Any], help: str) -> Any:
    """A config field: its default, ``check(value) -> normalised value`` (ValueError: what is
    allowed), and the help text shown in errors."""
    return field(default=default, metadata={"check": check, "help": help})


class Section:
    """Attribute access is the API; ``section["key"]`` and ``"key" in section`` read the same values
    for code written against the nested-dict form of the config."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # what @dataclass gives every section

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.__dataclass_fields__

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.__dataclass_fields__ else default

    def keys(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DataConfig(Section, DataFields):
    """The ``data`` section: what to load is the data layer's own declaration
    (:class:`asymcl.data.spec.DataFields`: one default, check and help per field, shared with
    :class:`~asymcl.data.DataSpec`); below, how a run reads it. ``cache`` is the feature cache of a
    frozen encoder part (the data layer's decoded-image cache is ``DataSpec.decoded_cache``, always
    on in a run)."""

    augment: str = option("auto", check.choice("auto", *AUGMENT_PRESETS), "augmentation preset")
    in_memory: bool = option(True, check.boolean, "hold the whole dataset as one tensor and index batches")
    num_workers: int = option(0, check.integer(0), "DataLoader workers (only when data.in_memory is false)")
    cache: str = option(
        "auto",
        check.choice("auto", "off"),
        "the feature cache: auto keeps the frozen encoder part's outputs on disk when model.finetune is not all; off",
    )
    cache_dir: str | None = option(
        None, check.optional_str, "feature cache folder (null: $ASYMCL_CACHE_DIR/features or ~/.cache/asymcl/features)"
    )
    cache_views: int = option(4, check.integer(2), "augmented views cached per training image (stage 1 draws two)")
    cache_seed: int | None = option(
        0,
        check.integer(0, optional=True),
        "seed of the cached views: a number (a "
        "sweep's seeds share one draw) or null (each run seed draws its own views)",
    )
    cache_precision: str = option(
        "auto",
        check.choice("auto", "bf16", "fp32"),
        "precision of the cached views' extraction (auto: bf16 where the device has it; clean images are always fp32)",
    )
    cache_engine: str = option(
        "auto",
        check.choice(*CACHE_ENGINES),
        "what runs the cache's fp32 passes on a CPU (auto: onnxruntime where it exports the frozen part, "
        "3.8-4.5x faster than torch on AVX2 CPUs; the stored features agree to their last bit)",
    )


@dataclass(frozen=True)
class ModelConfig(Section):
    backbone: str = option("small_cnn", check.backbone, "encoder")
    pretrained: str | None = option(
        None, check.optional_str, "imagenet (bundled weights, efficientnet_lite0/1/2) or a local .pth/.safetensors file"
    )
    input_size: int | None = option(
        None,
        check.integer(16, optional=True),
        "EfficientNet-Lite input side (null: images below 128 px -> 128, else as loaded)",
    )
    finetune: str = option("all", check.finetune, "encoder part that trains: all, frozen or last:K (last K blocks)")
    finetune_lr_scale: float = option(
        1.0,
        check.number(0.0, exclusive=True),
        "learning rate of the backbone blocks that train (model.finetune all or last:K) as a "
        "multiple of the stage's lr; the adapter and heads keep the stage's lr",
    )
    finetune_bn: str = option(
        "train",
        check.finetune_bn,
        "BatchNorm of the backbone blocks that train (model.finetune all or last:K): train (batch "
        "statistics, running statistics updated) or frozen (the pretrained running statistics, in "
        "training too; scale and shift still train)",
    )
    feature_layers: list[str] | None = option(
        None,
        check.names,
        "layers of a frozen encoder whose pooled outputs "
        "are concatenated, e.g. [block10, head] (null: its usual output)",
    )
    adapter: int | None = option(
        None,
        check.integer(0, optional=True),
        "adapter MLP hidden width between encoder and heads (null: feature width when "
        "model.finetune is not all, else none; 0: none)",
    )
    proj_hidden_dim: int = option(512, check.integer(1), "projection head hidden width")
    proj_dim: int = option(128, check.integer(1), "projection (embedding) dimension")


@dataclass(frozen=True)
class LossConfig(Section):
    """Null values are filled by the method (its fixed values, else ``methods.LOSS_DEFAULTS``)."""

    gamma: float | None = option(None, check.number(0.0, optional=True), "focal exponent (null: the method's default)")
    eta: float | None = option(
        None, check.number(0.0, optional=True), "negative-term weight (null: the method's default)"
    )
    temperature: float = option(0.1, check.number(0.0, exclusive=True), "softmax temperature tau")
    normalization: str | None = option(
        None, check.choice(None, "batch", "pairs"), "batch or pairs (null: method's default)"
    )
    memory_size: int = option(0, check.integer(0), "rows of the labelled memory queue stage 1 contrasts with (0: off)")


@dataclass(frozen=True)
class OptimisationConfig(Section):
    """The optimisation fields both stages have, under the same keys (``stage1.lr``,
    ``stage2.lr``, ...); a stage redeclares a field only to change its default or help
    (:func:`_redeclare`), so the checks are declared once."""

    epochs: int = option(30, check.integer(1), "epochs")
    batch_size: int = option(64, check.integer(1), "images per batch")
    optimizer: str = option("adamw", check.choice("adamw", "sgd"), "optimizer")
    lr: float = option(1e-2, check.number(0.0, exclusive=True), "peak learning rate")
    weight_decay: float = option(0.0, check.number(0.0), "weight decay")
    scheduler: str = option("cosine", check.choice("cosine", "none"), "learning-rate schedule")


def _redeclare(name: str, default: Any, help: str | None = None, check: Callable[[Any], Any] | None = None) -> Any:
    """:class:`OptimisationConfig`'s field ``name`` with another default (and help or check)."""
    base = OptimisationConfig.__dataclass_fields__[name].metadata
    return option(default, check or base["check"], help or base["help"])


@dataclass(frozen=True)
class Stage1Config(OptimisationConfig):
    """Contrastive pre-training; also the optimisation of an end-to-end method (``ce``)."""

    epochs: int = _redeclare("epochs", 30, "epochs of stage 1 (or of the ce baseline)")
    batch_size: int = _redeclare("batch_size", 128, "images per batch (two views each in stage 1)", check.integer(2))
    lr: float = _redeclare("lr", 2e-3)
    weight_decay: float = _redeclare("weight_decay", 1e-4)
    sampler: str = option(
        "random",
        check.choice("random", "class_balanced", "m_per_class"),
        "contrastive (or joint) batches: random, class_balanced, or m_per_class "
        "(every batch holds batch_size // classes images of each class)",
    )


@dataclass(frozen=True)
class Stage2Config(OptimisationConfig):
    """The linear classifier; its loss and sampler are also the end-to-end baseline's."""

    epochs: int = _redeclare("epochs", 30, "epochs of the linear classifier")
    loss: str = option(
        "ce",  # not a method name: the loss
        check.choice("ce", "focal", "logit_adjusted"),  # not a method name: the loss
        "classification loss (also the baseline's)",
    )
    focal_gamma: float = option(2.0, check.number(0.0), "gamma of the focal classification loss")
    logit_tau: float = option(1.0, check.number(0.0), "tau of logit-adjusted cross-entropy")
    sampler: str = option("random", check.choice("random", "class_balanced"), "batch sampling (also the baseline's)")
    augment: bool = option(
        False,
        check.boolean,
        "train the final classifier on augmented images (a cached view "
        "when training from the feature cache, where the baselines follow it too) instead of clean ones",
    )


@dataclass(frozen=True)
class ProbeConfig(Section):
    """``method=probe``: LogisticRegression(class_weight="balanced") on the frozen encoder's features."""

    c: float = option(1.0, check.number(0.0, exclusive=True), "inverse regularisation strength C of the probe")
    max_iter: int = option(2000, check.integer(10), "L-BFGS iterations of the probe")


@dataclass(frozen=True)
class JointConfig(Section):
    """``schedule=joint``: loss = logit-adjusted CE (``stage2.logit_tau``) + weight * contrastive."""

    weight: float | None = option(
        None,
        check.number(0.0, optional=True),
        "lambda of the joint loss (null: 1.0 with schedule=joint; only for joint)",
    )


@dataclass(frozen=True)
class EvalConfig(Section):
    tta_views: int = option(
        0,
        check.integer(0),
        "test-time augmentation on val/test: softmax averaged over the clean image and this many "
        "views seeded like the cached views (data.cache_seed, or the run seed when null; 0: off)",
    )
    tta_augment: str = option(
        "train",
        check.choice("train", DIHEDRAL),
        "what the test-time views are: train (the run's training augmentation, seeded draws) or "
        "dihedral (fixed flips and quarter turns: up to 7 views of a square image, 3 of another)",
    )
    embeddings: int | None = option(
        None,
        check.integer(0, optional=True),
        "rows per test split kept in embeddings.npz (null: all; N: a seeded sample of "
        "N, enough for the report's t-SNE; 0: no embeddings.npz)",
    )


@dataclass(frozen=True)
class TrainerConfig(Section):
    accelerator: str = option("cpu", check.choice("cpu", "gpu", "cuda", "mps", "auto"), "Lightning accelerator")
    devices: Any = option(1, check.devices, "Lightning devices")
    strategy: str = option(
        "auto", check.choice("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"), "Lightning strategy"
    )
    precision: str = option("32-true", check.choice("32-true", "bf16-mixed", "16-mixed"), "Lightning precision")
    deterministic: bool = option(True, check.boolean, "use deterministic algorithms")
    channels_last: bool = option(
        False, check.boolean, "channels_last memory format for images and the model (faster convolutions on GPUs)"
    )
    progress_bar: bool = option(True, check.boolean, "progress: bars on a terminal, one line per epoch otherwise")
    num_threads: int | None = option(None, check.integer(1, optional=True), "torch CPU threads (null: torch's default)")
    save_last: bool = option(
        True, check.boolean, "keep last.ckpt each epoch (false: best only; an interrupted stage restarts)"
    )


@dataclass(frozen=True)
class RunConfig(Section):
    """A whole, resolved run config (build it with :func:`resolve_config`)."""

    method: str = option(
        PROPOSED,
        check.method,
        "a method of the registry (asymcl.training.methods): "
        + "; ".join(f"{m.name}: {m.display}" for m in REGISTRY.values()),
    )
    seed: int = option(0, check.integer(0), "fixes splits, sampling, initialisation and augmentation")
    schedule: str = option(
        "two_stage",
        check.choice(*SCHEDULES),
        "two_stage (contrastive pre-training, then a linear probe) or joint (one stage: "
        "logit-adjusted CE + joint.weight * contrastive loss); contrastive methods only",
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    joint: JointConfig = field(default_factory=JointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def method_spec(self):
        """This run's :class:`asymcl.training.methods.Method`."""
        return get_method(self.method)

    @property
    def stages(self) -> tuple[str, ...]:
        return JOINT if self.schedule == "joint" else self.method_spec.stages

    def stage_section(self, stage: str) -> OptimisationConfig:
        """The optimisation settings a stage trains with (stage 2's for ``stage2``, else stage 1's:
        stage 1, the end-to-end baselines and the joint schedule)."""
        return self.stage2 if stage == "stage2" else self.stage1

    def stage_sampler(self, stage: str) -> str:
        """The training batches' sampler of ``stage``: ``stage1.sampler`` for the contrastive stage
        and the joint schedule, ``stage2.sampler`` for the classifier and the baselines."""
        return self.stage1.sampler if stage in ("stage1", "joint") else self.stage2.sampler

    def flat(self) -> dict[str, Any]:
        """``{dotted key: value}`` for every key."""
        flat: dict[str, Any] = {}
        for name, value in self.to_dict().items():
            if isinstance(value, dict):  # a section
                flat.update({f"{name}.{key}": inner for key, inner in value.items()})
            else:
                flat[name] = value
        return flat

"""The run configuration: typed sections with their defaults, checks and help; ``--set key=value``.

A config is a :class:`RunConfig`: the top-level fields ``method``, ``seed``, ``schedule`` and the
sections (dataclasses). Code reads attributes (``config.loss.gamma``); ``config["loss"]["gamma"]``
also works. Keys are addressed as dotted names (``loss.gamma``) on the
command line and in sweeps; a YAML file may use nested sections, dotted names, or both.

Every field is declared once, with :func:`option` (default, check, help text): :data:`SCHEMA`,
the unknown-key suggestions and the one-line errors are derived from the declarations, so adding
a key is one line. Dataclasses rather than pydantic: no new dependency, and every error message
and accepted spelling (``0,6`` for a list, ``2`` for a float) stayed as it was.

``resolve_config`` fills every default, checks every key, type and value, and lets the method
registry (:mod:`asymcl.training.methods`) fix and fill the method's loss parameters (e.g. ``fcl``
fixes ``loss.eta`` at 0), so that everything a run depends on is written in its ``config.yaml``.
It raises :class:`ConfigError` before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asymcl.data.augment import PRESETS as AUGMENT_PRESETS
from asymcl.data.spec import DATASETS
from asymcl.errors import ConfigError
from asymcl.training import config_checks as check
from asymcl.training.methods import JOINT, PROBE, PROPOSED, REGISTRY, SCHEDULES, get_method


def _nest(flat: dict[str, Any]) -> dict:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return nested


def option(default: Any, check: Callable[[Any], Any], help: str) -> Any:
    """A config field: its default, ``check(value) -> normalised value`` (ValueError: what is
    allowed), and the help text shown in errors."""
    return field(default=default, metadata={"check": check, "help": help})


def _spec_default(name: str) -> Any:
    """The data layer's own default, so that `asymcl data summary` and training agree."""
    from asymcl.data.spec import DataSpec

    return DataSpec.__dataclass_fields__[name].default


class _Section:
    """Attribute access is the API; ``section["key"]`` and ``"key" in section`` read the same values
    for code written against the nested-dict form of the config."""

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


@dataclass
class DataConfig(_Section):
    dataset: str = option("digits", check.dataset, "data source")
    root: str | None = option(None, check.optional_str, "dataset folder or file (not needed for digits)")
    imbalance: str | None = option(None, check.imbalance, "training-set imbalance profile, e.g. exp:100")
    classes: list[int] | None = option(None, check.classes, "class ids to keep, majority first")
    val_fraction: float = option(_spec_default("val_fraction"), check.number(0.0, exclusive=True, maximum=1.0),
                                 "validation share of training pool")
    test_fraction: float = option(_spec_default("test_fraction"), check.number(0.0, exclusive=True, maximum=1.0),
                                  "test share carved from the pool when the source has no test split")
    val_per_class: int | None = option(None, check.integer(1, optional=True), "balanced validation: N images per "
                                       "class held out before the imbalance profile (null: val_fraction)")
    csv_path_column: str | None = option(None, check.optional_str, "image-path column of a csv source (null: found by name)")
    csv_label_column: str | None = option(None, check.optional_str, "label column of a csv source (null: found by name)")
    image_size: int | None = option(None, check.integer(4, optional=True), "resize images to this side (null: native)")
    augment: str = option("auto", check.choice("auto", *AUGMENT_PRESETS), "augmentation preset")
    in_memory: bool = option(True, check.boolean, "hold the whole dataset as one tensor and index batches")
    num_workers: int = option(0, check.integer(0), "DataLoader workers (only when data.in_memory is false)")
    cache: str = option("auto", check.choice("auto", "off"),
                        "auto: cache the frozen encoder part's outputs on disk when model.finetune is not all")
    cache_dir: str | None = option(None, check.optional_str,
                                   "feature cache folder (null: $ASYMCL_CACHE_DIR/features or ~/.cache/asymcl/features)")
    cache_views: int = option(4, check.integer(2), "augmented views cached per training image (stage 1 draws two)")
    cache_seed: int | None = option(0, check.integer(0, optional=True), "seed of the cached views: a number (a "
                                    "sweep's seeds share one draw) or null (each run seed draws its own views)")
    cache_precision: str = option("auto", check.choice("auto", "bf16", "fp32"),
                                  "precision of the cached views' extraction (auto: bf16 where the device has it; "
                                  "clean images are always fp32)")


@dataclass
class ModelConfig(_Section):
    backbone: str = option("small_cnn", check.backbone, "encoder")
    pretrained: str | None = option(None, check.optional_str,
                                    "imagenet (bundled weights, efficientnet_lite0/1/2) or a local .pth/.safetensors file")
    input_size: int | None = option(None, check.integer(16, optional=True),
                                    "EfficientNet-Lite input side (null: images below 128 px -> 128, else as loaded)")
    finetune: str = option("all", check.finetune, "encoder part that trains: all, frozen or last:K (last K blocks)")
    feature_layers: list[str] | None = option(None, check.names, "layers of a frozen encoder whose pooled outputs "
                                              "are concatenated, e.g. [block10, head] (null: its usual output)")
    adapter: int | None = option(None, check.integer(0, optional=True),
                                 "adapter MLP hidden width between encoder and heads (null: feature width when "
                                 "model.finetune is not all, else none; 0: none)")
    proj_hidden_dim: int = option(512, check.integer(1), "projection head hidden width")
    proj_dim: int = option(128, check.integer(1), "projection (embedding) dimension")


@dataclass
class LossConfig(_Section):
    """Null values are filled by the method (its fixed values, else ``methods.LOSS_DEFAULTS``)."""

    gamma: float | None = option(None, check.number(0.0, optional=True), "focal exponent (null: the method's default)")
    eta: float | None = option(None, check.number(0.0, optional=True), "negative-term weight (null: the method's default)")
    temperature: float = option(0.1, check.number(0.0, exclusive=True), "softmax temperature tau")
    normalization: str | None = option(None, check.choice(None, "batch", "pairs"), "batch or pairs (null: method's default)")
    memory_size: int = option(0, check.integer(0), "rows of the labelled memory queue stage 1 contrasts with (0: off)")


@dataclass
class Stage1Config(_Section):
    """Contrastive pre-training; also the optimisation of an end-to-end method (``ce``)."""

    epochs: int = option(30, check.integer(1), "epochs of stage 1 (or of the ce baseline)")
    batch_size: int = option(128, check.integer(2), "images per batch (two views each in stage 1)")
    optimizer: str = option("adamw", check.choice("adamw", "sgd"), "optimizer")
    lr: float = option(2e-3, check.number(0.0, exclusive=True), "peak learning rate")
    weight_decay: float = option(1e-4, check.number(0.0), "weight decay")
    scheduler: str = option("cosine", check.choice("cosine", "none"), "learning-rate schedule")
    sampler: str = option("random", check.choice("random", "class_balanced", "m_per_class"),
                          "contrastive (or joint) batches: random, class_balanced, or m_per_class "
                          "(every batch holds batch_size // classes images of each class)")


@dataclass
class Stage2Config(_Section):
    """The linear classifier; its loss and sampler are also the end-to-end baseline's."""

    epochs: int = option(30, check.integer(1), "epochs of the linear classifier")
    batch_size: int = option(64, check.integer(1), "images per batch")
    optimizer: str = option("adamw", check.choice("adamw", "sgd"), "optimizer")
    lr: float = option(1e-2, check.number(0.0, exclusive=True), "peak learning rate")
    weight_decay: float = option(0.0, check.number(0.0), "weight decay")
    scheduler: str = option("cosine", check.choice("cosine", "none"), "learning-rate schedule")
    loss: str = option("ce", check.choice("ce", "focal", "logit_adjusted"),  # not a method name: the loss
                       "classification loss (also the baseline's)")
    focal_gamma: float = option(2.0, check.number(0.0), "gamma of the focal classification loss")
    logit_tau: float = option(1.0, check.number(0.0), "tau of logit-adjusted cross-entropy")
    sampler: str = option("random", check.choice("random", "class_balanced"), "batch sampling (also the baseline's)")
    augment: bool = option(False, check.boolean, "train the final classifier on augmented images (a cached view "
                           "when training from the feature cache, where the baselines follow it too) instead of clean ones")


@dataclass
class ProbeConfig(_Section):
    """``method=probe``: LogisticRegression(class_weight="balanced") on the frozen encoder's features."""

    c: float = option(1.0, check.number(0.0, exclusive=True), "inverse regularisation strength C of the probe")
    max_iter: int = option(2000, check.integer(10), "L-BFGS iterations of the probe")


@dataclass
class JointConfig(_Section):
    """``schedule=joint``: loss = logit-adjusted CE (``stage2.logit_tau``) + weight * contrastive."""

    weight: float | None = option(None, check.number(0.0, optional=True),
                                  "lambda of the joint loss (null: 1.0 with schedule=joint; only for joint)")


@dataclass
class EvalConfig(_Section):
    tta_views: int = option(0, check.integer(0), "test-time augmentation on val/test: softmax averaged over the clean "
                            "image and this many views seeded by data.cache_seed (0: off)")


@dataclass
class TrainerConfig(_Section):
    accelerator: str = option("cpu", check.choice("cpu", "gpu", "cuda", "mps", "auto"), "Lightning accelerator")
    devices: Any = option(1, check.devices, "Lightning devices")
    strategy: str = option("auto", check.choice("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"),
                           "Lightning strategy")
    precision: str = option("32-true", check.choice("32-true", "bf16-mixed", "16-mixed"), "Lightning precision")
    deterministic: bool = option(True, check.boolean, "use deterministic algorithms")
    channels_last: bool = option(False, check.boolean,
                                 "channels_last memory format for images and the model (faster convolutions on GPUs)")
    progress_bar: bool = option(True, check.boolean, "progress: bars on a terminal, one line per epoch otherwise")
    num_threads: int | None = option(None, check.integer(1, optional=True), "torch CPU threads (null: torch's default)")
    save_last: bool = option(True, check.boolean, "keep last.ckpt each epoch (false: best only; an interrupted stage restarts)")


@dataclass
class RunConfig(_Section):
    """A whole, resolved run config (build it with :func:`resolve_config`)."""

    method: str = option(PROPOSED, check.method, "a method of the registry (asymcl.training.methods): "
                         + "; ".join(f"{m.name}: {m.display}" for m in REGISTRY.values()))
    seed: int = option(0, check.integer(0), "fixes splits, sampling, initialisation and augmentation")
    schedule: str = option("two_stage", check.choice(*SCHEDULES),
                           "two_stage (contrastive pre-training, then a linear probe) or joint (one stage: "
                           "logit-adjusted CE + joint.weight * contrastive loss); contrastive methods only")
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

    def stage_section(self, stage: str) -> Stage1Config | Stage2Config:
        """The optimisation settings a stage trains with (stage 2's for ``stage2``, else stage 1's:
        stage 1, the end-to-end baselines and the joint schedule)."""
        return self.stage2 if stage == "stage2" else self.stage1

    def stage_sampler(self, stage: str) -> str:
        """The training batches' sampler of ``stage``: ``stage1.sampler`` for the contrastive stage
        and the joint schedule, ``stage2.sampler`` for the classifier and the baselines."""
        return self.stage1.sampler if stage in ("stage1", "joint") else self.stage2.sampler

    def flat(self) -> dict[str, Any]:
        """``{dotted key: value}`` for every key."""
        return flatten(self.to_dict())


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if "check" not in f.metadata)
_SECTION_TYPES = {f.name: f.default_factory for f in dataclasses.fields(RunConfig) if "check" not in f.metadata}


def _schema() -> dict[str, tuple[Any, Callable[[Any], Any], str]]:
    schema = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in SECTIONS:
            for g in dataclasses.fields(_SECTION_TYPES[f.name]):
                schema[f"{f.name}.{g.name}"] = (g.default, g.metadata["check"], g.metadata["help"])
        else:
            schema[f.name] = (f.default, f.metadata["check"], f.metadata["help"])
    return schema


#: dotted key -> (default, check(value) -> normalised value, help), derived from the dataclasses.
SCHEMA: dict[str, tuple[Any, Callable[[Any], Any], str]] = _schema()


def default_config() -> dict:
    """Every key with its default value, as a nested dict (method-dependent loss values unfilled)."""
    return _nest({key: copy.deepcopy(spec[0]) for key, spec in SCHEMA.items()})


def _from_flat(flat: dict[str, Any]) -> RunConfig:
    nested = _nest(flat)
    sections = {name: _SECTION_TYPES[name](**nested.pop(name)) for name in SECTIONS}
    return RunConfig(**nested, **sections)


def flatten(config: dict | RunConfig, prefix: str = "") -> dict[str, Any]:
    """Nested (or partly dotted) dict, or a :class:`RunConfig` -> {dotted key: value}."""
    if isinstance(config, _Section):
        config = config.to_dict()
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys must be strings, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted in SECTIONS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _unknown_key_error(key: str, source: str) -> ConfigError:
    section = key.split(".")[0]
    if section in SECTIONS:
        names = {k.split(".", 1)[1]: k for k in SCHEMA if k.startswith(section + ".")}
        close = [names[n] for n in difflib.get_close_matches(key.split(".", 1)[-1], names, n=3, cutoff=0.6)]
    else:
        close = difflib.get_close_matches(key, SCHEMA, n=3, cutoff=0.6)
    if close:
        hint = f"did you mean {' or '.join(close)}?"
    elif section in SECTIONS:
        hint = "allowed keys in " + section + ": " + ", ".join(k for k in SCHEMA if k.startswith(section + "."))
    else:
        hint = "allowed top-level keys: method, seed, and the sections " + ", ".join(SECTIONS)
    return ConfigError(f"unknown config key {key!r} ({source}); {hint}")


def parse_overrides(overrides: list[str] | dict | None) -> dict[str, Any]:
    """``["loss.gamma=2", "data.classes=[0,6]"]`` or a dict -> flat dict; values parsed as YAML."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return flatten(overrides)
    flat: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. --set loss.gamma=2), got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # e.g. an unquoted path with ':'; the key's own check decides
        flat[key] = value
    return flat


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """Parse a YAML file; a missing file or a syntax error is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        # PyYAML's message spans several lines (with a caret drawing); one line with the position.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{what} {path} is not valid YAML{where}: {problem}; fix the file "
                          "(keys as `section: {key: value}` or dotted `section.key: value`)") from exc


def load_config_file(path: str | Path) -> dict:
    """Read a YAML config file (nested sections and/or dotted keys)."""
    loaded = read_yaml_file(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def _check_backbone_options(flat: dict[str, Any]) -> None:
    """model.pretrained, input_size, finetune and feature_layers against what model.backbone takes
    (K and layer names from the model layer's own unit lists, before Lightning starts)."""
    from asymcl.models import BUNDLED_WEIGHTS, check_encoder_options, check_joined_weights, has_bundled_weights

    name, pretrained = flat["model.backbone"], flat["model.pretrained"]
    if pretrained == "imagenet":
        if not has_bundled_weights(name):
            raise ConfigError(f"model.pretrained=imagenet: backbone {name} has no bundled "
                              f"ImageNet weights; use model.backbone {' or '.join(BUNDLED_WEIGHTS)} (or several "
                              "joined by '+'), or give model.pretrained a local weights file")
    elif pretrained is not None:
        check_joined_weights(name, pretrained)  # the model layer's rule, before anything runs
        if not Path(pretrained).expanduser().is_file():
            raise ConfigError(f"model.pretrained {pretrained} is not a file (or imagenet for the bundled weights)")
    check_encoder_options(name, flat["model.finetune"], flat["model.feature_layers"], flat["model.input_size"])


def resolve_config(base: dict | RunConfig | None = None,
                   overrides: list[str] | dict | None = None) -> RunConfig:
    """Defaults <- ``base`` <- ``overrides``; validated and with method-specific values filled in.

    Raises :class:`ConfigError` naming the key and what is allowed on an unknown key, a wrong type,
    an impossible value, a loss parameter the method fixes, or a dataset path that does not exist.
    """
    flat = {key: copy.deepcopy(spec[0]) for key, spec in SCHEMA.items()}
    for source, values in (("in the config", flatten(base or {})), ("in --set", parse_overrides(overrides))):
        for key, value in values.items():
            if key not in SCHEMA:
                raise _unknown_key_error(key, source)
            flat[key] = value
    for key, (_, validate, help_text) in SCHEMA.items():
        try:
            flat[key] = validate(flat[key])
        except ValueError as exc:
            raise ConfigError(f"{key} {exc}; got {flat[key]!r} ({help_text})") from None

    method = get_method(flat["method"])
    loss = method.resolve_loss(
        {name.split(".", 1)[1]: value for name, value in flat.items() if name.startswith("loss.")})
    flat.update({f"loss.{name}": value for name, value in loss.items()})
    check.resolve_levers(flat, method)

    dataset = DATASETS[flat["data.dataset"]]
    if dataset.needs_root:
        root = flat["data.root"]
        if root is None:
            raise ConfigError(f"data.root is required for data.dataset={dataset.name} "
                              "(the folder or file holding it)")
        if not Path(root).expanduser().exists():
            raise ConfigError(f"data.root {root} does not exist")
    _check_backbone_options(flat)
    if method.stages == PROBE and flat["model.pretrained"] is None:
        raise ConfigError("method probe needs a pretrained encoder's features: set model.pretrained (e.g. "
                          "imagenet with an efficientnet_lite backbone) or choose another method")
    if flat["data.imbalance"] and flat["data.imbalance"].startswith("binary:"):
        classes = flat["data.classes"]
        if classes is not None and len(classes) != 2:
            raise ConfigError(f"data.imbalance binary:* needs exactly two data.classes, got {classes}")
    return _from_flat(flat)


# How a run is displayed or scheduled, not what it computes: a run may be resumed with other values
# (e.g. `asymcl demo --quiet` after `asymcl demo`), and they do not change its default directory.
# data.cache_dir: a cache moved elsewhere holds the same numbers (its key is in the folder name).
# trainer.save_last: which checkpoints are kept, not what they hold.
NON_RESULT_KEYS = ("trainer.progress_bar", "trainer.num_threads", "data.num_workers", "data.cache_dir",
                   "trainer.save_last")


def result_config(config: dict | RunConfig) -> dict:
    """The resolved config without :data:`NON_RESULT_KEYS` (flat, dotted keys)."""
    return {k: v for k, v in flatten(config).items() if k not in NON_RESULT_KEYS}


# The keys of asymcl 0.1.0, the first release that wrote run directories. A key added since then
# is left out of a run's identity while it holds its default, so an old command (`asymcl train`
# with no --out) still finds, and resumes, the directory it wrote before the key existed.
_KEYS_0_1 = frozenset("""
method seed data.dataset data.root data.imbalance data.classes data.val_fraction data.test_fraction
data.csv_path_column data.csv_label_column data.image_size data.augment data.in_memory data.num_workers
model.backbone model.pretrained model.proj_hidden_dim model.proj_dim loss.gamma loss.eta
loss.temperature loss.normalization stage1.epochs stage1.batch_size stage1.optimizer stage1.lr
stage1.weight_decay stage1.scheduler stage2.epochs stage2.batch_size stage2.optimizer stage2.lr
stage2.weight_decay stage2.scheduler stage2.loss stage2.focal_gamma stage2.logit_tau stage2.sampler
stage2.augment trainer.accelerator trainer.devices trainer.strategy trainer.precision
trainer.deterministic trainer.progress_bar trainer.num_threads
""".split())


# What a key added since 0.1.0 meant before it existed, where that is not its default today: a run
# directory written before the key was added did this. Reports fill the keys an older run's
# config.yaml lacks from here and from the defaults (experiments.runs.load_run).
LEGACY_VALUES = {"data.cache_precision": "fp32"}  # views were extracted in fp32 before the key


def fill_missing_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """A flat config written by an older asymcl, with every key added since set to what that run did."""
    filled = {key: copy.deepcopy(LEGACY_VALUES.get(key, spec[0])) for key, spec in SCHEMA.items() if key not in flat}
    return {**flat, **filled}


def run_identity(config: dict | RunConfig) -> dict:
    """What names a run (its default directory): :func:`result_config` without the keys added after
    0.1.0 that hold their default."""
    return {k: v for k, v in result_config(config).items()
            if k in _KEYS_0_1 or k not in SCHEMA or v != SCHEMA[k][0]}


def config_differences(a: dict | RunConfig, b: dict | RunConfig) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as 'key: a != b'
    (keys in :data:`NON_RESULT_KEYS` are ignored)."""
    flat_a, flat_b = result_config(a), result_config(b)
    return [
        f"{key}: {flat_a.get(key)!r} != {flat_b.get(key)!r}"
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]

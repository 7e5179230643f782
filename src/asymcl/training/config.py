"""The run configuration: typed sections with their defaults, checks and help; ``--set key=value``.

A config is a :class:`RunConfig`: the top-level fields ``method`` and ``seed`` and the sections
``data``, ``model``, ``loss``, ``stage1``, ``stage2``, ``trainer`` (dataclasses). Code reads it
as attributes (``config.loss.gamma``); ``config["loss"]["gamma"]`` also works, for code written
against the earlier nested-dict form. Keys are addressed as dotted names (``loss.gamma``) on the
command line and in sweeps; a YAML file may use nested sections, dotted names, or both.

Every field is declared once, with :func:`option` (default, check, help text): :data:`SCHEMA`,
the unknown-key suggestions and the one-line errors are derived from the declarations, so adding
a key is one line. Dataclasses rather than pydantic: no new dependency, and the checks are the
existing ones, so every error message (key, what is allowed, the value given, the key's help)
and every accepted spelling (``0,6`` for a list, ``2`` for a float) stay exactly as they were.

``resolve_config`` fills every default, checks every key, type and value, and lets the method
registry (:mod:`asymcl.training.methods`) fix and fill the method's loss parameters (e.g. ``fcl``
fixes ``loss.eta`` at 0), so that everything a run depends on is written in its ``config.yaml``.
It raises :class:`ConfigError` before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from asymcl.data.spec import DATASETS
from asymcl.errors import ConfigError
from asymcl.training import config_checks as check
from asymcl.training.methods import get_method


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
    dataset: str = option("digits", check.choice(*DATASETS), "data source")
    root: str | None = option(None, check.optional_str, "dataset folder or file (not needed for digits)")
    imbalance: str | None = option(None, check.imbalance, "training-set imbalance profile, e.g. exp:100")
    classes: list[int] | None = option(None, check.classes, "class ids to keep, majority first")
    val_fraction: float = option(_spec_default("val_fraction"), check.number(0.0, exclusive=True, maximum=1.0),
                                 "validation share of training pool")
    test_fraction: float = option(_spec_default("test_fraction"), check.number(0.0, exclusive=True, maximum=1.0),
                                  "test share carved from the pool when the source has no test split")
    csv_path_column: str | None = option(None, check.optional_str, "image-path column of a csv source (null: found by name)")
    csv_label_column: str | None = option(None, check.optional_str, "label column of a csv source (null: found by name)")
    image_size: int | None = option(None, check.integer(4, optional=True), "resize images to this side (null: native)")
    augment: str = option("auto", check.choice("auto", "grey28", "dermoscopy", "none"), "augmentation preset")
    in_memory: bool = option(True, check.boolean, "hold the whole dataset as one tensor and index batches")
    num_workers: int = option(0, check.integer(0), "DataLoader workers (only when data.in_memory is false)")


@dataclass
class ModelConfig(_Section):
    backbone: str = option("small_cnn", check.backbone, "encoder")
    pretrained: str | None = option(None, check.optional_str, "local .pth/.safetensors weights for the encoder")
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


@dataclass
class Stage2Config(_Section):
    """The linear classifier; its loss and sampler are also the end-to-end baseline's."""

    epochs: int = option(30, check.integer(1), "epochs of the linear classifier")
    batch_size: int = option(64, check.integer(1), "images per batch")
    optimizer: str = option("adamw", check.choice("adamw", "sgd"), "optimizer")
    lr: float = option(1e-2, check.number(0.0, exclusive=True), "peak learning rate")
    weight_decay: float = option(0.0, check.number(0.0), "weight decay")
    scheduler: str = option("cosine", check.choice("cosine", "none"), "learning-rate schedule")
    loss: str = option("ce", check.choice("ce", "focal", "logit_adjusted"), "classification loss (also the baseline's)")
    focal_gamma: float = option(2.0, check.number(0.0), "gamma of the focal classification loss")
    logit_tau: float = option(1.0, check.number(0.0), "tau of logit-adjusted cross-entropy")
    sampler: str = option("random", check.choice("random", "class_balanced"), "batch sampling (also the baseline's)")
    augment: bool = option(False, check.boolean, "augment images while training the classifier")


@dataclass
class TrainerConfig(_Section):
    accelerator: str = option("cpu", check.choice("cpu", "gpu", "cuda", "mps", "auto"), "Lightning accelerator")
    devices: Any = option(1, check.devices, "Lightning devices")
    strategy: str = option("auto", check.choice("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"),
                           "Lightning strategy")
    precision: str = option("32-true", check.choice("32-true", "bf16-mixed", "16-mixed"), "Lightning precision")
    deterministic: bool = option(True, check.boolean, "use deterministic algorithms")
    progress_bar: bool = option(True, check.boolean, "show progress bars")
    num_threads: int | None = option(None, check.integer(1, optional=True), "torch CPU threads (null: torch's default)")


@dataclass
class RunConfig(_Section):
    """A whole, resolved run config (build it with :func:`resolve_config`)."""

    method: str = option("afcl", check.method, "ce (end-to-end baseline) or a two-stage contrastive loss")
    seed: int = option(0, check.integer(0), "fixes splits, sampling, initialisation and augmentation")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def method_spec(self):
        """This run's :class:`asymcl.training.methods.Method`."""
        return get_method(self.method)

    @property
    def stages(self) -> tuple[str, ...]:
        return self.method_spec.stages

    def stage_section(self, stage: str) -> Stage1Config | Stage2Config:
        """The optimisation settings a stage trains with (stage 2's for ``stage2``, else stage 1's)."""
        return self.stage2 if stage == "stage2" else self.stage1

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

    loss = get_method(flat["method"]).resolve_loss(
        {name.split(".", 1)[1]: value for name, value in flat.items() if name.startswith("loss.")})
    flat.update({f"loss.{name}": value for name, value in loss.items()})

    dataset = DATASETS[flat["data.dataset"]]
    if dataset.needs_root:
        root = flat["data.root"]
        if root is None:
            raise ConfigError(f"data.root is required for data.dataset={dataset.name} "
                              "(the folder or file holding it)")
        if not Path(root).expanduser().exists():
            raise ConfigError(f"data.root {root} does not exist")
    if flat["model.pretrained"] is not None and not Path(flat["model.pretrained"]).expanduser().is_file():
        raise ConfigError(f"model.pretrained {flat['model.pretrained']} is not a file")
    if flat["data.imbalance"] and flat["data.imbalance"].startswith("binary:"):
        classes = flat["data.classes"]
        if classes is not None and len(classes) != 2:
            raise ConfigError(f"data.imbalance binary:* needs exactly two data.classes, got {classes}")
    return _from_flat(flat)


# How a run is displayed or scheduled, not what it computes: a run may be resumed with other values
# (e.g. `asymcl demo --quiet` after `asymcl demo`), and they do not change its default directory.
NON_RESULT_KEYS = ("trainer.progress_bar", "trainer.num_threads", "data.num_workers")


def result_config(config: dict | RunConfig) -> dict:
    """The resolved config without :data:`NON_RESULT_KEYS` (flat, dotted keys)."""
    return {k: v for k, v in flatten(config).items() if k not in NON_RESULT_KEYS}


def config_differences(a: dict | RunConfig, b: dict | RunConfig) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as 'key: a != b'
    (keys in :data:`NON_RESULT_KEYS` are ignored)."""
    flat_a, flat_b = result_config(a), result_config(b)
    return [
        f"{key}: {flat_a.get(key)!r} != {flat_b.get(key)!r}"
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]

"""The run configuration: defaults, parsing of ``--set key=value``, and validation.

A config is a nested dict with the sections ``data``, ``model``, ``loss``, ``stage1``, ``stage2``,
``trainer`` and the top-level keys ``method`` and ``seed``. Keys are addressed as dotted names
(``loss.gamma``); a YAML file may use nested sections, dotted names, or both.

``resolve_config`` fills every default, checks every key, type and value, and fills the method's
own loss parameters (e.g. ``fcl`` fixes ``loss.eta`` at 0), so that everything a run depends on is
written in its ``config.yaml``. It raises :class:`ConfigError` before any training starts.

Methods: ``ce`` trains the backbone and a linear classifier end to end with the classification loss
``stage2.loss`` and the optimisation settings ``stage1.*`` (the baseline); ``supcon``, ``cl``,
``fcl``, ``acl``, ``afcl`` are two-stage: stage 1 trains encoder + projection head with that
contrastive loss, stage 2 a linear classifier on the frozen encoder.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from asymcl.errors import ConfigError, DataError

METHODS = ("ce", "supcon", "cl", "fcl", "acl", "afcl")
DATASETS = ("digits", "fashion-mnist", "isic2018", "npz", "folder", "csv")
# Loss parameters each method fixes (None: free, filled with the default when not set).
_FIXED_LOSS = {
    "supcon": {"gamma": 0.0, "eta": 0.0, "normalization": "pairs"},
    "cl": {"gamma": 0.0, "eta": 0.0},
    "fcl": {"eta": 0.0},
    "acl": {"gamma": 0.0},
    "afcl": {},
}
_DEFAULT_GAMMA = 1.0
_DEFAULT_ETA = 5.0


def _choice(*allowed: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value

    return check


def _integer(minimum: int | None = None, optional: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueError("must be an integer" + (" or null" if optional else ""))
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return check


def _number(
    minimum: float | None = None, exclusive: bool = False, maximum: float | None = None,
    optional: bool = False,
) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number" + (" or null" if optional else ""))
        value = float(value)
        if not math.isfinite(value):
            raise ValueError("must be finite")
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            raise ValueError(f"must be {'>' if exclusive else '>='} {minimum}")
        if maximum is not None and value >= maximum:
            raise ValueError(f"must be < {maximum}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)):
        raise ValueError("must be a string (a path) or null")
    return str(value)


def _imbalance(value: Any) -> str | None:
    """KIND:RHO or KIND:RHO:NMAX, checked by the data layer's own parser (one grammar, one place)."""
    from asymcl.data.imbalance import parse_imbalance

    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("must be null or exp:RATIO, step:RATIO or binary:RATIO, optionally :NMAX (e.g. exp:100)")
    try:
        parse_imbalance(value)
    except DataError as exc:
        raise ValueError(str(exc)) from None
    return value


def _classes(value: Any) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("must be a list of class ids such as [0, 6] or 0,6") from None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise ValueError("must be a non-empty list of class ids >= 0, e.g. [0, 6]")
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a class id")
    return list(value)


def _backbone(value: Any) -> str:
    from asymcl.models.backbones import BACKBONES

    if not isinstance(value, str) or not (value in BACKBONES or (value.startswith("timm:") and len(value) > 5)):
        raise ValueError(f"must be one of {', '.join(BACKBONES)}")
    return value


def _devices(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return value
    raise ValueError("must be 'auto', a count >= 1, or a list of device indices")


# key -> (default, check(value) -> normalised value, help)
SCHEMA: dict[str, tuple[Any, Callable[[Any], Any], str]] = {
    "method": ("afcl", _choice(*METHODS), "ce (end-to-end baseline) or a two-stage contrastive loss"),
    "seed": (0, _integer(0), "fixes splits, sampling, initialisation and augmentation"),
    "data.dataset": ("digits", _choice(*DATASETS), "data source"),
    "data.root": (None, _optional_str, "dataset folder or file (not needed for digits)"),
    "data.imbalance": (None, _imbalance, "training-set imbalance profile, e.g. exp:100"),
    "data.classes": (None, _classes, "class ids to keep, majority first"),
    "data.val_fraction": (0.2, _number(0.0, exclusive=True, maximum=1.0), "validation share of training pool"),
    "data.test_fraction": (0.25, _number(0.0, exclusive=True, maximum=1.0),
                           "test share carved from the pool when the source has no test split"),
    "data.csv_path_column": (None, _optional_str, "image-path column of a csv source (null: found by name)"),
    "data.csv_label_column": (None, _optional_str, "label column of a csv source (null: found by name)"),
    "data.image_size": (None, _integer(4, optional=True), "resize images to this side (null: native)"),
    "data.augment": ("auto", _choice("auto", "grey28", "dermoscopy", "none"), "augmentation preset"),
    "data.in_memory": (True, _boolean, "hold the whole dataset as one tensor and index batches"),
    "data.num_workers": (0, _integer(0), "DataLoader workers (only when data.in_memory is false)"),
    "model.backbone": ("small_cnn", _backbone, "encoder"),
    "model.pretrained": (None, _optional_str, "local .pth/.safetensors weights for the encoder"),
    "model.proj_hidden_dim": (512, _integer(1), "projection head hidden width"),
    "model.proj_dim": (128, _integer(1), "projection (embedding) dimension"),
    "loss.gamma": (None, _number(0.0, optional=True), "focal exponent (null: the method's default)"),
    "loss.eta": (None, _number(0.0, optional=True), "negative-term weight (null: the method's default)"),
    "loss.temperature": (0.1, _number(0.0, exclusive=True), "softmax temperature tau"),
    "loss.normalization": (None, _choice(None, "batch", "pairs"), "batch or pairs (null: method's default)"),
    "stage1.epochs": (30, _integer(1), "epochs of stage 1 (or of the ce baseline)"),
    "stage1.batch_size": (128, _integer(2), "images per batch (two views each in stage 1)"),
    "stage1.optimizer": ("adamw", _choice("adamw", "sgd"), "optimizer"),
    "stage1.lr": (2e-3, _number(0.0, exclusive=True), "peak learning rate"),
    "stage1.weight_decay": (1e-4, _number(0.0), "weight decay"),
    "stage1.scheduler": ("cosine", _choice("cosine", "none"), "learning-rate schedule"),
    "stage2.epochs": (30, _integer(1), "epochs of the linear classifier"),
    "stage2.batch_size": (64, _integer(1), "images per batch"),
    "stage2.optimizer": ("adamw", _choice("adamw", "sgd"), "optimizer"),
    "stage2.lr": (1e-2, _number(0.0, exclusive=True), "peak learning rate"),
    "stage2.weight_decay": (0.0, _number(0.0), "weight decay"),
    "stage2.scheduler": ("cosine", _choice("cosine", "none"), "learning-rate schedule"),
    "stage2.loss": ("ce", _choice("ce", "focal", "logit_adjusted"), "classification loss (also the baseline's)"),
    "stage2.focal_gamma": (2.0, _number(0.0), "gamma of the focal classification loss"),
    "stage2.logit_tau": (1.0, _number(0.0), "tau of logit-adjusted cross-entropy"),
    "stage2.sampler": ("random", _choice("random", "class_balanced"), "batch sampling (also the baseline's)"),
    "stage2.augment": (False, _boolean, "augment images while training the classifier"),
    "trainer.accelerator": ("cpu", _choice("cpu", "gpu", "cuda", "mps", "auto"), "Lightning accelerator"),
    "trainer.devices": (1, _devices, "Lightning devices"),
    "trainer.strategy": ("auto", _choice("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"), "Lightning strategy"),
    "trainer.precision": ("32-true", _choice("32-true", "bf16-mixed", "16-mixed"), "Lightning precision"),
    "trainer.deterministic": (True, _boolean, "use deterministic algorithms"),
    "trainer.progress_bar": (True, _boolean, "show progress bars"),
    "trainer.num_threads": (None, _integer(1, optional=True), "torch CPU threads (null: torch's default)"),
}

SECTIONS = ("data", "model", "loss", "stage1", "stage2", "trainer")


def default_config() -> dict:
    """Every key with its default value, as a nested dict (method-dependent loss values unfilled)."""
    return _nest({key: copy.deepcopy(spec[0]) for key, spec in SCHEMA.items()})


def _nest(flat: dict[str, Any]) -> dict:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return nested


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested (or partly dotted) dict -> {dotted key: value}."""
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


def resolve_config(base: dict | None = None, overrides: list[str] | dict | None = None) -> dict:
    """Defaults <- ``base`` <- ``overrides``; validated and with method-specific values filled in.

    Raises :class:`ConfigError` naming the key and what is allowed on an unknown key, a wrong type,
    an impossible value, a loss parameter the method fixes, or a dataset path that does not exist.
    """
    flat = {key: copy.deepcopy(spec[0]) for key, spec in SCHEMA.items()}
    explicit: set[str] = set()
    for source, values in (("in the config", flatten(base or {})), ("in --set", parse_overrides(overrides))):
        for key, value in values.items():
            if key not in SCHEMA:
                raise _unknown_key_error(key, source)
            flat[key] = value
            explicit.add(key)
    for key, (_, check, help_text) in SCHEMA.items():
        try:
            flat[key] = check(flat[key])
        except ValueError as exc:
            raise ConfigError(f"{key} {exc}; got {flat[key]!r} ({help_text})") from None

    method = flat["method"]
    if method == "ce":
        for name in ("gamma", "eta"):
            if flat[f"loss.{name}"] not in (None, 0.0):
                raise ConfigError(f"loss.{name} has no effect with method ce (no contrastive loss); "
                                  "choose a method among supcon, cl, fcl, acl, afcl or remove it")
    else:
        fixed = _FIXED_LOSS[method]
        for name, value in fixed.items():
            given = flat[f"loss.{name}"]
            if given is not None and given != value:
                raise ConfigError(
                    f"loss.{name}={given!r} contradicts method {method}, which fixes it at {value!r}; "
                    f"use method afcl to set gamma and eta freely"
                )
            flat[f"loss.{name}"] = value
        if flat["loss.gamma"] is None:
            flat["loss.gamma"] = _DEFAULT_GAMMA
        if flat["loss.eta"] is None:
            flat["loss.eta"] = _DEFAULT_ETA
        if flat["loss.normalization"] is None:
            flat["loss.normalization"] = "batch"

    if flat["data.dataset"] != "digits":
        root = flat["data.root"]
        if root is None:
            raise ConfigError(f"data.root is required for data.dataset={flat['data.dataset']} "
                              "(the folder or file holding it)")
        if not Path(root).expanduser().exists():
            raise ConfigError(f"data.root {root} does not exist")
    if flat["model.pretrained"] is not None and not Path(flat["model.pretrained"]).expanduser().is_file():
        raise ConfigError(f"model.pretrained {flat['model.pretrained']} is not a file")
    if flat["data.imbalance"] and flat["data.imbalance"].startswith("binary:"):
        classes = flat["data.classes"]
        if classes is not None and len(classes) != 2:
            raise ConfigError(f"data.imbalance binary:* needs exactly two data.classes, got {classes}")
    return _nest(flat)


# How a run is displayed or scheduled, not what it computes: a run may be resumed with other values
# (e.g. `asymcl demo --quiet` after `asymcl demo`), and they do not change its default directory.
NON_RESULT_KEYS = ("trainer.progress_bar", "trainer.num_threads", "data.num_workers")


def result_config(config: dict) -> dict:
    """The resolved config without :data:`NON_RESULT_KEYS` (flat, dotted keys)."""
    return {k: v for k, v in flatten(config).items() if k not in NON_RESULT_KEYS}


def config_differences(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as 'key: a != b'
    (keys in :data:`NON_RESULT_KEYS` are ignored)."""
    flat_a, flat_b = result_config(a), result_config(b)
    return [
        f"{key}: {flat_a.get(key)!r} != {flat_b.get(key)!r}"
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]


def loss_kwargs(config: dict) -> dict[str, Any]:
    """The contrastive loss's keyword arguments from a resolved config."""
    loss = config["loss"]
    return {
        "gamma": loss["gamma"],
        "eta": loss["eta"],
        "temperature": loss["temperature"],
        "normalization": loss["normalization"],
    }

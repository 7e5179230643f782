"""The run configuration: typed sections with their defaults, checks and help; ``--set key=value``.

A config is a :class:`RunConfig`: the top-level fields ``method``, ``seed``, ``schedule`` and the
sections (dataclasses). Code reads attributes (``config.loss.gamma``); ``config["loss"]["gamma"]``
also works. Keys are addressed as dotted names (``loss.gamma``) on the
command line and in sweeps; a YAML file may use nested sections, dotted names, or both.

Every field is declared once, with :func:`option` (default, check, help text), in the frozen
section dataclasses of :mod:`asymcl.training.config_sections` (re-exported here); the ``data``
section's what-to-load fields are the data layer's own (:class:`asymcl.data.spec.DataFields`, the
fields of ``DataSpec`` too). :data:`SCHEMA`, the unknown-key suggestions and the one-line errors
are derived from the declarations, so adding a key is one line. Dataclasses rather than pydantic:
no new dependency, and every accepted spelling (``0,6`` for a list, ``2`` for a float) stayed.

``resolve_config`` fills every default, checks every key, type and value on its own, builds the
typed :class:`RunConfig`, then runs the cross-field rules on it
(:func:`asymcl.training.config_rules.apply_rules`: the method registry fixes and fills the
method's loss parameters, e.g. ``fcl`` fixes ``loss.eta`` at 0), so that everything a run depends
on is written in its ``config.yaml``. It raises :class:`ConfigError` before any training starts.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from asymcl.errors import ConfigError
from asymcl.training.config_rules import apply_rules
from asymcl.training.config_sections import DataConfig as DataConfig
from asymcl.training.config_sections import EvalConfig as EvalConfig
from asymcl.training.config_sections import JointConfig as JointConfig
from asymcl.training.config_sections import LossConfig as LossConfig
from asymcl.training.config_sections import ModelConfig as ModelConfig
from asymcl.training.config_sections import OptimisationConfig as OptimisationConfig
from asymcl.training.config_sections import ProbeConfig as ProbeConfig
from asymcl.training.config_sections import RunConfig
from asymcl.training.config_sections import Section as _Section
from asymcl.training.config_sections import Stage1Config as Stage1Config
from asymcl.training.config_sections import Stage2Config as Stage2Config
from asymcl.training.config_sections import TrainerConfig as TrainerConfig
from asymcl.training.config_sections import option as option


def _nest(flat: dict[str, Any]) -> dict:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if "." in key:
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return nested


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if "check" not in f.metadata)


def _section_type(f: dataclasses.Field) -> type[_Section]:
    """A section field's dataclass: its default_factory (RunConfig's sections are built that way)."""
    factory = f.default_factory
    if not (isinstance(factory, type) and issubclass(factory, _Section)):
        raise TypeError(f"RunConfig.{f.name}: a section's default_factory must be its Section class")
    return factory


_SECTION_TYPES = {f.name: _section_type(f) for f in dataclasses.fields(RunConfig) if "check" not in f.metadata}


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
    # Any: each name has its own section class, a pairing a dict's value type cannot state
    sections: dict[str, Any] = {name: _SECTION_TYPES[name](**nested.pop(name)) for name in SECTIONS}
    return RunConfig(**nested, **sections)


def flatten(config: Mapping[str, Any] | RunConfig, prefix: str = "") -> dict[str, Any]:
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


def parse_overrides(overrides: Sequence[str] | dict | None) -> dict[str, Any]:
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


def read_yaml_file(path: str | os.PathLike[str], what: str = "config file") -> Any:
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
        raise ConfigError(
            f"{what} {path} is not valid YAML{where}: {problem}; fix the file "
            "(keys as `section: {key: value}` or dotted `section.key: value`)"
        ) from exc


def load_config_file(path: str | os.PathLike[str]) -> dict:
    """Read a YAML config file (nested sections and/or dotted keys)."""
    loaded = read_yaml_file(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def resolve_config(
    base: Mapping[str, Any] | RunConfig | None = None,
    overrides: Sequence[str] | dict | None = None,
    *,
    files_must_exist: bool = True,
) -> RunConfig:
    """Defaults <- ``base`` <- ``overrides``; validated and with method-specific values filled in.

    Raises :class:`ConfigError` naming the key and what is allowed on an unknown key, a wrong type,
    an impossible value, a loss parameter the method fixes, or a dataset path that does not exist.
    ``files_must_exist=False`` leaves out that last check (``data.root`` and a weights file in
    ``model.pretrained``): for a finished run's config.yaml, read to report or predict where its
    data and weights file are not (a run folder copied to a laptop). Such a config is for reading;
    training with it would fail when the data is read.
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

    return apply_rules(_from_flat(flat), files_must_exist)


def read_recorded_config(path: str | os.PathLike[str]) -> RunConfig:
    """A run folder's config.yaml, resolved for reading (``files_must_exist=False``): the one way a
    finished or earlier run's config is read back, for loading, predicting and resume's comparison."""
    return resolve_config(yaml.safe_load(Path(path).read_text()) or {}, files_must_exist=False)


# How a run is displayed or scheduled, not what it computes: a run may be resumed with other values
# (e.g. `asymcl demo --quiet` after `asymcl demo`), and they do not change its default directory.
# data.cache_dir: a cache moved elsewhere holds the same numbers (its key is in the folder name).
# trainer.save_last: which checkpoints are kept, not what they hold.
NON_RESULT_KEYS = (
    "trainer.progress_bar",
    "trainer.num_threads",
    "data.num_workers",
    "data.cache_dir",
    "data.cache_engine",
    "trainer.save_last",
    "eval.embeddings",
)


def result_config(config: dict | RunConfig) -> dict:
    """The resolved config without :data:`NON_RESULT_KEYS` (flat, dotted keys)."""
    return {k: v for k, v in flatten(config).items() if k not in NON_RESULT_KEYS}


# The keys of asymcl 0.1.0, the first release that wrote run directories. A key added since then
# is left out of a run's identity while it holds its default, so an old command (`asymcl train`
# with no --out) still finds, and resumes, the directory it wrote before the key existed.
_KEYS_0_1 = frozenset(
    """
method seed data.dataset data.root data.imbalance data.classes data.val_fraction data.test_fraction
data.csv_path_column data.csv_label_column data.image_size data.augment data.in_memory data.num_workers
model.backbone model.pretrained model.proj_hidden_dim model.proj_dim loss.gamma loss.eta
loss.temperature loss.normalization stage1.epochs stage1.batch_size stage1.optimizer stage1.lr
stage1.weight_decay stage1.scheduler stage2.epochs stage2.batch_size stage2.optimizer stage2.lr
stage2.weight_decay stage2.scheduler stage2.loss stage2.focal_gamma stage2.logit_tau stage2.sampler
stage2.augment trainer.accelerator trainer.devices trainer.strategy trainer.precision
trainer.deterministic trainer.progress_bar trainer.num_threads
""".split()
)


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
    return {k: v for k, v in result_config(config).items() if k in _KEYS_0_1 or k not in SCHEMA or v != SCHEMA[k][0]}


def config_differences(a: dict | RunConfig, b: dict | RunConfig) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, as 'key: a != b'
    (keys in :data:`NON_RESULT_KEYS` are ignored)."""
    flat_a, flat_b = result_config(a), result_config(b)
    return [
        f"{key}: {flat_a.get(key)!r} != {flat_b.get(key)!r}"
        for key in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(key) != flat_b.get(key)
    ]

"""The value checks of the run config's fields: ``check(value) -> normalised value``, raising
ValueError with what is allowed (``resolve_config`` adds the key, the value given and the help)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asymcl.errors import ConfigError, DataError


def choice(*allowed: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return value

    return check


def method(value: Any) -> str:
    """A name in the method registry (read at check time: a new entry needs no change here)."""
    from asymcl.training.methods import METHODS

    if value not in METHODS:
        raise ValueError(f"must be one of {', '.join(METHODS)} (a plugin's method: load it with --plugin)")
    return value


def dataset(value: Any) -> str:
    """A name in the dataset table (read at check time: a plugin's dataset is known once registered)."""
    from asymcl.data.spec import DATASETS

    if value not in DATASETS:
        raise ValueError(f"must be one of {', '.join(DATASETS)} (a plugin's dataset: load it with --plugin)")
    return value


def integer(minimum: int | None = None, optional: bool = False) -> Callable[[Any], Any]:
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


def number(
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


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, Path)):
        raise ValueError("must be a string (a path) or null")
    return str(value)


def imbalance(value: Any) -> str | None:
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


def classes(value: Any) -> list[int] | None:
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


def names(value: Any) -> list[str] | None:
    """Null, a non-empty list of names, or one comma-separated string (``block10,head``)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be null or a non-empty list of layer names, e.g. [block10, head] or block10,head")
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a layer name")
    return list(value)


def backbone(value: Any) -> str:
    """A backbone name, checked by the model layer (one grammar, one place)."""
    from asymcl.errors import ConfigError
    from asymcl.models.backbones import BACKBONES, check_backbone_name

    try:
        return check_backbone_name(value)
    except ConfigError:
        raise ValueError(f"must be one of {', '.join(BACKBONES)} (a '+' joins distinct EfficientNet-Lite "
                         "variants, e.g. efficientnet_lite2+efficientnet_lite0)") from None


def finetune(value: Any) -> str:
    """all | frozen | last:K, parsed by the model layer's own parser (one grammar, one place)."""
    from asymcl.errors import ConfigError
    from asymcl.models.finetune import parse_finetune

    try:
        parse_finetune(value)
    except ConfigError:
        raise ValueError("must be all, frozen or last:K with K >= 1 (the number of final blocks that train)") from None
    return str(value).strip()


def devices(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return value
    raise ValueError("must be 'auto', a count >= 1, or a list of device indices")


def resolve_levers(flat: dict[str, Any], method) -> None:
    """The schedule, the stage-1 sampler and the classification loss a method or schedule fixes.

    ``la`` and the joint schedule train on logit-adjusted CE: ``stage2.loss`` is written as
    ``logit_adjusted`` so that config.yaml says what ran (``ce``, the default, counts as unset).
    ``la`` is logit adjustment as Menon et al. train it, on naturally sampled batches: its
    ``stage2.sampler`` is ``random`` (a class-balanced sampler would cancel the adjustment, and the
    reproduce presets give every other method class-balanced classifier batches).
    """
    joint = flat["schedule"] == "joint"
    if not method.contrastive:
        if joint:
            from asymcl.training.methods import contrastive_methods

            raise ConfigError(f"schedule=joint needs a contrastive loss; method {method.name} has none "
                              f"(choose one of {', '.join(contrastive_methods())}, or schedule=two_stage)")
        if flat["stage1.sampler"] != "random":
            raise ConfigError(f"stage1.sampler={flat['stage1.sampler']} has no effect with method {method.name} "
                              "(an end-to-end baseline samples with stage2.sampler); remove it")
    fixed_loss = method.classification_loss or ("logit_adjusted" if joint else None)
    if fixed_loss is not None:
        if flat["stage2.loss"] not in ("ce", fixed_loss):  # not a method name: stage2.loss's default
            what = f"method {method.name}" if method.classification_loss else "schedule=joint"
            raise ConfigError(f"stage2.loss={flat['stage2.loss']} contradicts {what}, which trains on "
                              f"{fixed_loss} cross-entropy; remove stage2.loss")
        flat["stage2.loss"] = fixed_loss
    if method.classification_loss == "logit_adjusted":
        flat["stage2.sampler"] = "random"
    if joint:
        if flat["joint.weight"] is None:
            flat["joint.weight"] = 1.0
    elif flat["joint.weight"] is not None:
        raise ConfigError("joint.weight is only used with schedule=joint; set schedule=joint or remove it")

"""The value checks of the run config's fields: ``check(value) -> normalised value``, raising
ValueError with what is allowed (``resolve_config`` adds the key, the value given and the help).

The generic ones (numbers, choices, ...) are :mod:`asymcl.checks`, shared with the data layer's
declarations and re-exported here; those below ask the registries of the layers they name.
The cross-field rules are :mod:`asymcl.training.config_rules`.
"""

from __future__ import annotations

from typing import Any

from asymcl.checks import boolean as boolean
from asymcl.checks import choice as choice
from asymcl.checks import integer as integer
from asymcl.checks import number as number
from asymcl.checks import optional_str as optional_str


def method(value: Any) -> str:
    """A name in the method registry (read at check time: a new entry needs no change here)."""
    from asymcl.training.methods import METHODS

    if value not in METHODS:
        raise ValueError(f"must be one of {', '.join(METHODS)} (a plugin's method: load it with --plugin)")
    return value


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
    """The model layer's own check (:func:`asymcl.models.backbones.backbone_name`), imported on
    first use so that reading a config does not import torch."""
    from asymcl.models.backbones import backbone_name

    return backbone_name(value)


def finetune(value: Any) -> str:
    """all | frozen | last:K, parsed by the model layer's own parser (one grammar, one place)."""
    from asymcl.errors import ConfigError
    from asymcl.models.finetune import parse_finetune

    try:
        parse_finetune(value)
    except ConfigError:
        raise ValueError("must be all, frozen or last:K with K >= 1 (the number of final blocks that train)") from None
    return str(value).strip()


def finetune_bn(value: Any) -> str:
    """train | frozen, the model layer's own list (:data:`asymcl.models.finetune.FINETUNE_BN`)."""
    from asymcl.models.finetune import FINETUNE_BN

    if value not in FINETUNE_BN:
        raise ValueError(f"must be one of {', '.join(FINETUNE_BN)}")
    return str(value)


def devices(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return value
    raise ValueError("must be 'auto', a count >= 1, or a list of device indices")

"""Which part of an encoder trains: ``model.finetune`` = ``all`` | ``frozen`` | ``last:K``.

:func:`apply_finetune` splits an encoder into a frozen part and a trainable part such that
``trainable(frozen(x)) == encoder(x)`` (in eval mode) and sets ``requires_grad`` accordingly:

* ``all``: frozen = ``nn.Identity()``, trainable = the encoder (today's behaviour);
* ``frozen``: frozen = the whole encoder (outputs pooled features (B, D)), trainable = identity;
* ``last:K``: the encoder's ``layers()`` = (input step, units, pooling) is cut before the last K
  units: frozen = input step + the first ``n - K`` units (outputs a feature map (B, C, h, w)),
  trainable = the last K units + pooling. Units: EfficientNet-Lite stem, each inverted-residual
  block, head (Lite0: 18); ResNet stem and each residual block (ResNet-18: 9); SmallCNN its
  three conv blocks.

The frozen part is wrapped in :class:`FrozenPart`, which stays in eval mode whatever
``.train()`` is called with (its BatchNorm statistics never move, so its outputs for an image
never change and can be cached: :mod:`asymcl.data.feature_cache`) and runs without autograd.
Register the two returned parts on the training module rather than the encoder itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from asymcl.errors import ConfigError

FINETUNE_MODES = ("all", "frozen", "last:K")
#: What the BatchNorm layers of the blocks that train do (``model.finetune_bn``).
FINETUNE_BN = ("train", "frozen")


class StatsFrozenBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d of a block that trains with its statistics kept: always in eval mode, so it
    normalises with its running (pretrained) mean and variance in training too and never updates
    them, while its scale and shift still get gradients. The usual choice when fine-tuning a
    pretrained network on small batches from another domain: in training mode the running
    statistics drift toward the training batches (here the cached augmented views) at any learning
    rate, and evaluation then normalises clean images with them.

    :func:`apply_finetune` swaps the class of the existing modules rather than wrapping them, so the
    state-dict keys, checkpoints and exports stay those of a plain BatchNorm2d."""

    def train(self, mode: bool = True) -> StatsFrozenBatchNorm2d:
        return super().train(False)


def _set_batchnorm(module: nn.Module, batchnorm: str) -> None:
    child: nn.Module
    for child in module.modules():
        kind = type(child)
        if batchnorm == "frozen" and kind is nn.BatchNorm2d:
            child.__class__ = StatsFrozenBatchNorm2d
            child.train(False)
        elif batchnorm == "train" and kind is StatsFrozenBatchNorm2d:
            child.__class__ = nn.BatchNorm2d
        elif (
            batchnorm == "frozen"
            and isinstance(child, nn.modules.batchnorm._NormBase)
            and not isinstance(child, StatsFrozenBatchNorm2d)
        ):
            raise ConfigError(
                f"model.finetune_bn=frozen keeps BatchNorm2d statistics; this backbone's trained part has a "
                f"{type(child).__name__}: use model.finetune_bn=train"
            )


class FrozenPart(nn.Module):
    """A module that never trains: no gradients, always in eval mode, no autograd graph."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenPart:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.module(x)


class FinetuneParts(NamedTuple):
    frozen: nn.Module  # nn.Identity() when nothing is frozen
    trainable: nn.Module  # nn.Identity() when everything is frozen

    @property
    def cacheable(self) -> bool:
        """True when the frozen part has weights, i.e. caching its outputs saves work."""
        return any(True for _ in self.frozen.parameters())


def parse_finetune(value: str) -> tuple[str, int | None]:
    """``"all"`` -> ("all", None), ``"frozen"`` -> ("frozen", None), ``"last:3"`` -> ("last", 3)."""
    text = str(value).strip()
    if text in ("all", "frozen"):
        return text, None
    if text.startswith("last:"):
        try:
            k = int(text[5:])
        except ValueError:
            k = None
        if k is not None and k >= 1:
            return "last", k
    raise ConfigError(
        f"model.finetune={value!r} is not valid: use all, frozen or last:K with K a positive integer "
        "(the number of final encoder blocks that train)"
    )


def encoder_layers(encoder: nn.Module) -> tuple[nn.Module, list[nn.Module], nn.Module] | None:
    """``encoder.layers()``: (input step, units, pooling), or None for an encoder without one
    (timm, a ``+`` backbone)."""
    layers = getattr(encoder, "layers", None)
    return None if layers is None else layers()


def count_units(encoder: nn.Module) -> int | None:
    """How many units ``last:K`` can count over, or None for an encoder without ``layers()``."""
    layers = encoder_layers(encoder)
    return None if layers is None else len(layers[1])


def unit_names(encoder: nn.Module) -> list[str] | None:
    """The names of ``encoder``'s units (what ``last:K`` counts), None for an encoder without
    ``layers()`` (timm, a ``+`` backbone)."""
    layers = encoder_layers(encoder)
    if layers is None:
        return None
    named = getattr(encoder, "unit_names", None)
    if named is not None:
        return list(named())
    return [f"unit{i}" for i in range(len(layers[1]))]


def check_finetune_fits(finetune: str, backbone: str, units: list[str] | None, feature_layers: bool = False) -> None:
    """The rules of ``finetune`` against an encoder, one wording for both places that ask them: the
    run config (``units`` from the model built on the meta device, before anything runs) and
    :func:`apply_finetune` (the built encoder's). ``last:K`` needs a unit list (``units``) of at
    least K; ``feature_layers`` (the encoder returns pooled layers) needs ``frozen``."""
    mode, k = parse_finetune(finetune)
    if feature_layers and mode != "frozen":
        raise ConfigError(
            f"model.feature_layers pools layers of a frozen encoder; set model.finetune=frozen "
            f"(got {finetune}) or remove model.feature_layers"
        )
    if mode != "last":
        return
    if units is None:
        raise ConfigError(f"model.finetune={finetune}: backbone {backbone} has no block list; use all or frozen")
    if k is not None and k > len(units):
        raise ConfigError(
            f"model.finetune={finetune}: backbone {backbone} has {len(units)} blocks "
            f"({units[0]} ... {units[-1]}), so K must be 1..{len(units)} (or use all / frozen)"
        )


def apply_finetune(encoder: nn.Module, finetune: str, batchnorm: str = "train") -> FinetuneParts:
    """Set ``requires_grad`` on ``encoder``'s parameters and return (frozen, trainable) parts.

    Output shapes: ``frozen(x)`` is (B, D) for ``frozen``, a feature map for ``last:K``, ``x``
    itself for ``all``; ``trainable(frozen(x))`` is always (B, D), ``D = encoder.feature_dim``.
    ``batchnorm`` (:data:`FINETUNE_BN`): ``frozen`` turns the trainable part's BatchNorm2d layers
    into :class:`StatsFrozenBatchNorm2d` (statistics kept, scale and shift trained).
    """
    mode, k = parse_finetune(finetune)
    check_finetune_fits(finetune, type(encoder).__name__, unit_names(encoder), hasattr(encoder, "taps"))
    if batchnorm not in FINETUNE_BN:
        raise ConfigError(f"model.finetune_bn={batchnorm!r} is not valid: use one of {', '.join(FINETUNE_BN)}")
    for parameter in encoder.parameters():
        parameter.requires_grad_(True)  # a second call with another mode starts from scratch
    _set_batchnorm(encoder, "train")
    if mode == "all":
        parts = FinetuneParts(nn.Identity(), encoder)
    elif mode == "frozen":
        parts = FinetuneParts(FrozenPart(encoder), nn.Identity())
    else:
        layers = encoder_layers(encoder)
        assert layers is not None and k is not None  # check_finetune_fits: last:K has a unit list of >= K
        pre, units, post = layers
        n = len(units)
        frozen = FrozenPart(nn.Sequential(pre, *units[: n - k]))
        parts = FinetuneParts(frozen, nn.Sequential(*units[n - k :], post))
    _set_batchnorm(parts.trainable, batchnorm)
    return parts

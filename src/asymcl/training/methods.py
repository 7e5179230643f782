"""The method registry: one :class:`Method` object per training method, asked by everything else.

Config validation (which loss parameters a method fixes, which defaults it fills), sweeps and
studies (which hyperparameters vary for it), reports (row order, display name, which method is the
proposed one) and the pipeline (which stages it trains, which contrastive loss stage 1 uses) all
read this table, so adding a method is one entry here plus its tests.

Loss parameters are the names of the ``loss`` section of the run config (``gamma``, ``eta``,
``temperature``, ``normalization``). For a method:

* ``fixed``: parameters the method pins by definition (FCL is eta = 0, ACL gamma = 0, CL both,
  SupCon is CL with SupCon's "pairs" averaging). Setting another value is a config error.
* ``free``: the hyperparameters a user tunes for it; only these vary in a sweep or an Optuna
  study, are shown in report labels, and are chosen on validation.
* anything else in ``loss`` that the method uses and the user leaves null gets
  :data:`LOSS_DEFAULTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asymcl.errors import ConfigError

#: Stage names of the two schedules in use (run directories, checkpoints, metrics.json keys).
TWO_STAGE = ("stage1", "stage2")
BASELINE = ("baseline",)
#: ``probe``: no gradient training; a class-weighted logistic regression (scikit-learn) on the frozen
#: encoder's clean features, folded into the same linear classifier the other methods train.
PROBE = ("probe",)
#: ``schedule=joint``: one stage in which encoder, projection head and classifier train together
#: on logit-adjusted CE + ``joint.weight`` * the method's contrastive loss (any contrastive method).
JOINT = ("joint",)
#: Each stage's own offset in the seeds of its initial weights, batches and augmentations.
STAGE_OFFSETS = {"stage1": 1, "stage2": 2, "baseline": 3, "joint": 4, "probe": 5}


def stage_seed(seed: int, stage: str) -> int:
    """The seed of a stage's initial weights and batches: a function of the run's seed and the stage
    alone, so a stage starts the same whatever ran before it (one formula for every caller)."""
    return int(seed) * 100 + STAGE_OFFSETS[stage]


#: Schedules a contrastive method can train with (``schedule`` in the run config).
SCHEDULES = ("two_stage", "joint")

#: Defaults of the loss parameters a method neither fixes nor has a value for. They are the
#: pipeline's starting point on the bundled data, not the loss layer's neutral defaults (there
#: ``afcl_loss()`` with no arguments is plain CL at SupCon's tau = 0.07): see the README.
LOSS_DEFAULTS: Mapping[str, Any] = {"gamma": 1.0, "eta": 5.0, "normalization": "batch"}

#: The loss hyperparameters that sweeps, studies and report labels deal with (``loss.<name>``).
TUNABLE = ("gamma", "eta", "temperature")


def _afcl_factory(loss, gather_distributed: bool):
    from asymcl.losses import AsymmetricFocalContrastiveLoss

    # cl/fcl/acl are AFCL with gamma and/or eta fixed at 0: the config already filled them in.
    return AsymmetricFocalContrastiveLoss(
        gamma=loss.gamma,
        eta=loss.eta,
        temperature=loss.temperature,
        normalization=loss.normalization,
        gather_distributed=gather_distributed,
    )


def _supcon_factory(loss, gather_distributed: bool):
    from asymcl.losses import SupConLoss

    return SupConLoss(temperature=loss.temperature, gather_distributed=gather_distributed)


@dataclass(frozen=True)
class Relative:
    """Search-space values given as factors of the comparison's base value of the key (a learning
    rate that suits a small CNN does not suit an adapter on frozen features): ``Relative(1, 1/3, 3)``
    with a base ``stage1.lr`` of 1e-3 is (1e-3, 3.3e-4, 3e-3)."""

    factors: tuple[float, ...]

    def __init__(self, *factors: float):
        object.__setattr__(self, "factors", tuple(float(f) for f in factors))

    def values(self, base: float) -> tuple[float, ...]:
        return tuple(float(f"{base * factor:.4g}") for factor in self.factors)


#: The learning rate of whatever trains: every method tunes it within its budget (stage 1's
#: settings train the contrastive stage and the end-to-end baselines alike).
_LR = {"stage1.lr": Relative(1.0, 1 / 3, 3.0)}
_TEMPERATURE = {"loss.temperature": (0.1, 0.07, 0.2, 0.05, 0.3)}
_GAMMA = {"loss.gamma": (1.0, 2.0, 4.0, 0.5, 8.0)}
_ETA = {"loss.eta": (10.0, 50.0, 100.0, 5.0, 300.0)}


@dataclass(frozen=True)
class Method:
    """One training method.

    ``stages``: the stage names it trains, in order (``baseline`` = encoder + classifier end to end
    on the classification loss; ``stage1`` + ``stage2`` = contrastive pre-training, then a linear
    classifier on the frozen encoder). ``loss_factory(loss_config, gather_distributed)``: stage 1's
    contrastive loss module (None for a method without one).
    """

    name: str
    display: str
    stages: tuple[str, ...]
    help: str
    loss_factory: Callable[[Any, bool], Any] | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    free: tuple[str, ...] = ()
    #: ``stage2.loss`` the method fixes (``la`` is the baseline trained on logit-adjusted CE).
    classification_loss: str | None = None
    #: What a fair comparison may tune for it: dotted config key -> candidate values (a tuple, or a
    #: :class:`Relative` of the comparison's base value), the first of each being the default. A
    #: comparison gives every method the same number of settings drawn from its own space
    #: (:mod:`asymcl.experiments.fair`), so a new method states its space here and inherits the rule.
    search_space: Mapping[str, Any] = field(default_factory=dict)

    @property
    def contrastive(self) -> bool:
        return self.loss_factory is not None

    @property
    def space(self) -> Mapping[str, Any]:
        """``search_space``, or for an entry that declares none (a plugin's, say) the built-in
        candidates of the loss keys it tunes (``free``) and of its learning rate."""
        if self.search_space:
            return self.search_space
        defaults = {"gamma": _GAMMA, "eta": _ETA, "temperature": _TEMPERATURE}
        space: dict[str, Any] = {}
        for name in self.free:
            space.update(defaults.get(name, {}))
        return {**space, **_LR}

    @property
    def end_to_end(self) -> bool:
        """Encoder and classifier trained together in one stage (the CE and LA baselines)."""
        return self.stages == BASELINE

    @property
    def tunable_keys(self) -> frozenset[str]:
        """``loss.<name>`` of its free hyperparameters (what a sweep varies for it)."""
        return frozenset(f"loss.{name}" for name in self.free)

    def build_loss(self, loss_config, gather_distributed: bool = False):
        """Stage 1's criterion: the factory's loss, inside a labelled memory queue of the last
        ``loss_config.memory_size`` projected rows when that is > 0 (the one place it is wrapped)."""
        if self.loss_factory is None:
            raise ValueError(f"method {self.name} has no contrastive loss")
        loss = self.loss_factory(loss_config, gather_distributed)
        memory_size = getattr(loss_config, "memory_size", 0) or 0
        if memory_size:
            from asymcl.losses import ContrastiveMemory

            loss = ContrastiveMemory(loss, memory_size=memory_size)
        return loss

    def resolve_loss(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the user's loss parameters against the method and fill the method's values.

        ``params``: ``{name: value or None}`` for every loss parameter. Returns the filled dict;
        raises :class:`ConfigError` on a value the method contradicts or cannot use.
        """
        params = dict(params)
        if not self.contrastive:
            for name in ("gamma", "eta", "memory_size"):
                if params.get(name) not in (None, 0.0):
                    raise ConfigError(
                        f"loss.{name} has no effect with method {self.name} (no contrastive loss); "
                        f"choose a method among {', '.join(contrastive_methods())} or remove it"
                    )
            return params
        for name, value in self.fixed.items():
            given = params.get(name)
            if given is not None and given != value:
                raise ConfigError(
                    f"loss.{name}={given!r} contradicts method {self.name}, which fixes it at {value!r}; "
                    f"use method afcl to set gamma and eta freely"
                )
            params[name] = value
        for name, default in LOSS_DEFAULTS.items():
            if params.get(name) is None:
                params[name] = default
        return params


_ALL = (
    Method(
        "probe",
        "Probe",
        PROBE,
        "class-weighted logistic regression (scikit-learn) on the frozen pretrained "
        "encoder's clean features; probe.c is its inverse regularisation",
        # The first point, which every comparison scores: on 1,280-2,688 standardised ImageNet features and a few thousand images,
        # validation chose C = 0.001-0.003 (benchmarks/isic_linear_probe.py, 3 seeds); scikit-learn's
        # 1.0 is a few-feature default and left the probe 4.5 points short on ISIC at a budget of 2.
        # (probe.c's own default stays 1.0: it is part of every run's config hash, and changing it
        # would rename and refuse to resume every run directory made before.)
        search_space={"probe.c": (0.003, 0.01, 0.001, 0.03, 0.0003, 0.1, 0.3, 1.0, 3.0, 10.0)},
    ),
    Method(
        "ce",
        "CE",
        BASELINE,
        "end-to-end cross-entropy baseline (stage2.loss, stage1 optimisation)",
        search_space={**_LR, "stage1.weight_decay": (1e-4, 0.0, 1e-3, 1e-2)},
    ),
    Method(
        "la",
        "LA",
        BASELINE,
        "end-to-end logit-adjusted cross-entropy baseline (Menon et al. 2021; "
        "stage2.logit_tau, natural sampling, stage1 optimisation)",
        classification_loss="logit_adjusted",
        search_space={**_LR, "stage1.weight_decay": (1e-4, 0.0, 1e-3, 1e-2), "stage2.logit_tau": (1.0, 0.5, 1.5, 2.0)},
    ),
    Method(
        "supcon",
        "SupCon",
        TWO_STAGE,
        "supervised contrastive loss, SupCon's per-anchor averaging",
        _supcon_factory,
        {"gamma": 0.0, "eta": 0.0, "normalization": "pairs"},
        ("temperature",),
        search_space={**_TEMPERATURE, **_LR},
    ),
    Method(
        "cl",
        "CL",
        TWO_STAGE,
        "contrastive loss (AFCL with gamma = eta = 0)",
        _afcl_factory,
        {"gamma": 0.0, "eta": 0.0},
        ("temperature",),
        search_space={**_TEMPERATURE, **_LR},
    ),
    Method(
        "fcl",
        "FCL",
        TWO_STAGE,
        "focal contrastive loss (AFCL with eta = 0)",
        _afcl_factory,
        {"eta": 0.0},
        ("gamma", "temperature"),
        search_space={**_GAMMA, **_TEMPERATURE, **_LR},
    ),
    Method(
        "acl",
        "ACL",
        TWO_STAGE,
        "asymmetric contrastive loss (AFCL with gamma = 0)",
        _afcl_factory,
        {"gamma": 0.0},
        ("eta", "temperature"),
        search_space={**_ETA, **_TEMPERATURE, **_LR},
    ),
    Method(
        "afcl",
        "AFCL",
        TWO_STAGE,
        "asymmetric focal contrastive loss (the proposed method)",
        _afcl_factory,
        {},
        ("gamma", "eta", "temperature"),
        search_space={**_GAMMA, **_ETA, **_TEMPERATURE, **_LR},
    ),
)

#: name -> Method, in the order tables list them: baselines first, the proposed loss last.
REGISTRY: dict[str, Method] = {method.name: method for method in _ALL}


class _Names(Sequence):
    """The registry's names, read live (so an entry added to :data:`REGISTRY` is known everywhere)."""

    def __getitem__(self, index):
        return tuple(REGISTRY)[index]

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return repr(tuple(REGISTRY))


class RegistryView(Mapping):
    """``{name: attribute(method)}`` over the registry, read live."""

    def __init__(self, attribute: Callable[[Method], Any]):
        self._attribute = attribute

    def __getitem__(self, name: str) -> Any:
        return self._attribute(REGISTRY[name])

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


METHODS: Sequence[str] = _Names()
#: The method whose gain over the others a report tests.
PROPOSED = "afcl"


def get_method(name: str) -> Method:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def contrastive_methods() -> tuple[str, ...]:
    return tuple(name for name, method in REGISTRY.items() if method.contrastive)


def display(name: str) -> str:
    """The name tables and figures show (``afcl`` -> ``AFCL``); an unknown name as it is."""
    method = REGISTRY.get(name)
    return method.display if method else name


#: The names asymcl itself defines; a plugin may not take them (a run directory's method must
#: mean the same thing in every installation).
BUILTIN = frozenset(REGISTRY)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def register_method(method: Method) -> Method:
    """Add ``method`` to :data:`REGISTRY` (after the built-in ones), the public extension point.

    Everything that asks the registry (config validation, the pipeline, sweeps, studies, reports,
    export) then knows it. Registering the same object again is a no-op; a name that a built-in
    or another registered method has is a :class:`ConfigError`. Returns ``method``.
    """
    if not isinstance(method, Method):
        raise ConfigError(f"register_method takes an asymcl.Method, got {type(method).__name__}")
    name = method.name
    if not name or not set(name) <= _NAME_CHARS:
        raise ConfigError(
            f"method name {name!r}: use lower-case letters, digits, '_' and '-' "
            "(it is a config value and part of run directory names)"
        )
    from asymcl.plugins import claim_name

    if not claim_name("method", name, method, REGISTRY, BUILTIN):
        return method
    if method.stages not in (TWO_STAGE, BASELINE):
        raise ConfigError(f"method {name}: stages must be methods.TWO_STAGE or methods.BASELINE, got {method.stages}")
    if method.contrastive != (method.stages == TWO_STAGE):
        raise ConfigError(f"method {name}: a two-stage method needs a loss_factory and a baseline has none")
    unknown = sorted(set(method.free) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"method {name}: free hyperparameters {unknown} are not among {', '.join(TUNABLE)}")
    REGISTRY[name] = method
    return method

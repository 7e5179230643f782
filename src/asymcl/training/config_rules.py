"""The run config's cross-field rules, on the typed, frozen config (:class:`RunConfig`).

:func:`asymcl.training.config.resolve_config` checks every key on its own first (the fields'
checks), builds the :class:`RunConfig`, then calls :func:`apply_rules`: what a rule fills in (the
method's loss parameters, the classification loss a method fixes) comes back as a changed copy
(``dataclasses.replace``); what a rule refuses is a one-line :class:`ConfigError`. Each rule asks
the layer that owns the fact: the method registry (:meth:`Method.resolve_loss`), the data layer
(:meth:`asymcl.data.spec.DataFields.source_problem`, also what ``DataSpec`` checks), the model
layer (:func:`asymcl.models.check_encoder_options`, also what building a backbone checks).
"""

from __future__ import annotations

from dataclasses import replace

from asymcl.errors import ConfigError
from asymcl.training.config_sections import ModelConfig, RunConfig
from asymcl.training.methods import PROBE, Method, contrastive_methods


def apply_rules(config: RunConfig, files_must_exist: bool = True) -> RunConfig:
    """``config`` with what its method and schedule fix filled in; a :class:`ConfigError` on the
    first rule it breaks. ``files_must_exist=False``: ``data.root`` and a weights file in
    ``model.pretrained`` may be missing (:func:`asymcl.training.config.resolve_config`)."""
    method = config.method_spec
    config = replace(config, loss=replace(config.loss, **method.resolve_loss(config.loss.to_dict())))
    config = resolve_levers(config, method)
    problem = config.data.source_problem("data.", root_must_exist=files_must_exist)
    if problem is not None:
        raise ConfigError(problem)
    from asymcl.models import check_encoder_options  # torch: only once the keys themselves are right
    from asymcl.models.finetune import parse_finetune

    check_tta(config)
    model = config.model
    check_encoder_options(
        model.backbone, model.finetune, model.feature_layers, model.input_size, model.pretrained, files_must_exist
    )
    if parse_finetune(model.finetune)[0] == "frozen":
        # The options of the backbone blocks that train: with none training, any value but the
        # default would be silently ignored.
        defaults = ModelConfig()
        for key, does in (
            ("finetune_lr_scale", "scales the learning rate of"),
            ("finetune_bn", "sets the BatchNorm of"),
        ):
            value = getattr(model, key)
            if value != getattr(defaults, key):
                shown = f"{value:g}" if isinstance(value, float) else value
                raise ConfigError(
                    f"model.{key}={shown} {does} backbone blocks that train, and model.finetune=frozen trains "
                    f"none: set model.finetune to last:K or all, or remove model.{key}"
                )
    if method.stages == PROBE and model.pretrained is None:
        raise ConfigError(
            "method probe needs a pretrained encoder's features: set model.pretrained (e.g. "
            "imagenet with an efficientnet_lite backbone) or choose another method"
        )
    return config


def check_tta(config: RunConfig) -> None:
    """``eval.tta_augment=dihedral`` has at most 7 views (the square's symmetries other than the
    identity) and nothing to do without ``eval.tta_views``; non-square images are checked when their
    size is known (:class:`asymcl.data.augment.Dihedral`)."""
    from asymcl.data.augment import DIHEDRAL, DIHEDRAL_VIEWS

    views, most = config.eval.tta_views, DIHEDRAL_VIEWS
    if config.eval.tta_augment != DIHEDRAL:
        return
    if views == 0:
        raise ConfigError(
            f"eval.tta_augment=dihedral needs eval.tta_views: set it to 1-{most} ({most}: every flip and turn)"
        )
    if views > most:
        raise ConfigError(
            f"eval.tta_augment=dihedral has {most} views (the flips and turns of a square image); eval.tta_views is {views}: "
            f"set it to {most} or fewer"
        )


def resolve_levers(config: RunConfig, method: Method) -> RunConfig:
    """The schedule, the stage-1 sampler and the classification loss a method or schedule fixes.

    ``la`` and the joint schedule train on logit-adjusted CE: ``stage2.loss`` is written as
    ``logit_adjusted`` so that config.yaml says what ran (``ce``, the default, counts as unset).
    ``la`` is logit adjustment as Menon et al. train it, on naturally sampled batches: its
    ``stage2.sampler`` is ``random`` (a class-balanced sampler would cancel the adjustment, and the
    reproduce presets give every other method class-balanced classifier batches).
    """
    joint = config.schedule == "joint"
    stage1, stage2 = config.stage1, config.stage2
    if not method.contrastive:
        if joint:
            raise ConfigError(
                f"schedule=joint needs a contrastive loss; method {method.name} has none "
                f"(choose one of {', '.join(contrastive_methods())}, or schedule=two_stage)"
            )
        if stage1.sampler != "random":
            raise ConfigError(
                f"stage1.sampler={stage1.sampler} has no effect with method {method.name} "
                "(an end-to-end baseline samples with stage2.sampler); remove it"
            )
    fixed_loss = method.classification_loss or ("logit_adjusted" if joint else None)
    if fixed_loss is not None:
        if stage2.loss not in ("ce", fixed_loss):  # not a method name: stage2.loss's default
            what = f"method {method.name}" if method.classification_loss else "schedule=joint"
            raise ConfigError(
                f"stage2.loss={stage2.loss} contradicts {what}, which trains on "
                f"{fixed_loss} cross-entropy; remove stage2.loss"
            )
        stage2 = replace(stage2, loss=fixed_loss)
    if method.classification_loss == "logit_adjusted":
        stage2 = replace(stage2, sampler="random")
    weight = config.joint.weight
    if joint and weight is None:
        weight = 1.0
    elif not joint and weight is not None:
        raise ConfigError("joint.weight is only used with schedule=joint; set schedule=joint or remove it")
    return replace(config, stage2=stage2, joint=replace(config.joint, weight=weight))

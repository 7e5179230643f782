"""Issue 24, part 4: loss hyperparameters are checked once (at construction, one wording), the
NaN/inf input check stays and can be turned off with ``validate_args=False``, and the subclasses
take ``**kwargs`` for the base."""

from __future__ import annotations

import pytest
import torch

from asymcl.losses import (
    AsymmetricContrastiveLoss,
    AsymmetricFocalContrastiveLoss,
    ContrastiveMemory,
    FocalContrastiveLoss,
    SupConLoss,
    _validation,
    afcl_loss,
    functional,
)

LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def _features(seed: int = 0) -> torch.Tensor:
    return torch.randn(6, 2, 8, generator=torch.Generator().manual_seed(seed))


def test_forward_does_not_check_the_hyperparameters_again(monkeypatch):
    module = AsymmetricFocalContrastiveLoss(1.0, 3.0, temperature=0.2)
    expected = module(_features(), LABELS)

    def refuse(**_):
        raise AssertionError("hyperparameters checked on a forward call")

    monkeypatch.setattr(functional, "check_hyperparameters", refuse)
    for seed in range(3):
        module(_features(seed), LABELS)
    assert torch.equal(module(_features(), LABELS), expected)
    memory = ContrastiveMemory(module, memory_size=6)
    memory(_features(1), LABELS)
    memory(_features(2), LABELS)  # scored against the queue, still without a check
    with pytest.raises(AssertionError, match="checked on a forward"):
        afcl_loss(_features(), LABELS)  # the functional form has no construction: it keeps its checks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(gamma=-1.0), "gamma must be a finite number >= 0 (0 disables the focal weight), got -1.0"),
        (dict(eta=float("inf")), "eta must be a finite number >= 0 (0 disables the negative term), got inf"),
        (dict(temperature=0.0), "temperature must be a finite number > 0, e.g. 0.07, got 0.0"),
    ],
)
def test_one_wording_from_every_entry_point(kwargs, message):
    """The module, the functional form and the internal core's argument check say the same."""
    settings = dict(gamma=1.0, eta=1.0, temperature=0.1, normalization="batch") | kwargs
    with pytest.raises(ValueError) as built:
        AsymmetricFocalContrastiveLoss(settings["gamma"], settings["eta"], temperature=settings["temperature"])
    with pytest.raises(ValueError) as called:
        afcl_loss(_features(), LABELS, **settings)
    rows = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    with pytest.raises(ValueError) as core:
        _validation.check_core_arguments(
            rows,
            rows,
            torch.arange(4),
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            None,
            n_total=4,
            block_size=None,
            **settings,
        )
    assert str(built.value) == str(called.value) == str(core.value) == message


def test_validate_args_false_skips_the_nan_check_only():
    bad = _features()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features contains 1 NaN or infinite"):
        AsymmetricFocalContrastiveLoss(1.0, 2.0)(bad, LABELS)
    unchecked = AsymmetricFocalContrastiveLoss(1.0, 2.0, validate_args=False)
    assert torch.isnan(unchecked(bad, LABELS))  # never a silent number
    good = _features(3)
    assert torch.equal(unchecked(good, LABELS), AsymmetricFocalContrastiveLoss(1.0, 2.0)(good, LABELS))
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        unchecked(good, LABELS[:4])  # shape checks read metadata only: they always run
    with pytest.raises(TypeError, match="validate_args must be True or False"):
        AsymmetricFocalContrastiveLoss(validate_args="no")
    assert "validate_args=False" in repr(unchecked) and "validate_args" not in repr(SupConLoss())


def test_subclasses_pass_keywords_to_the_base():
    acl = AsymmetricContrastiveLoss(4.0, temperature=0.2, normalization="pairs", validate_args=False, block_size=4)
    assert (acl.gamma, acl.eta, acl.temperature, acl.normalization, acl.validate_args, acl.block_size) == (
        0.0,
        4.0,
        0.2,
        "pairs",
        False,
        4,
    )
    fcl = FocalContrastiveLoss(gamma=2.0, impl="reference")
    assert (fcl.gamma, fcl.eta, fcl.impl) == (2.0, 0.0, "reference")
    supcon = SupConLoss(temperature=0.5, normalize=False)
    assert (supcon.normalization, supcon.temperature, supcon.normalize) == ("pairs", 0.5, False)
    features = _features(4)
    assert torch.equal(
        acl(features, LABELS),
        AsymmetricFocalContrastiveLoss(0.0, 4.0, temperature=0.2, normalization="pairs")(features, LABELS),
    )
    with pytest.raises(TypeError, match="FocalContrastiveLoss fixes eta = 0.0; use AsymmetricFocalContrastiveLoss"):
        FocalContrastiveLoss(1.0, eta=3.0)
    with pytest.raises(TypeError, match="SupConLoss fixes normalization = 'pairs'"):
        SupConLoss(normalization="batch")
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'"):
        AsymmetricContrastiveLoss(1.0, temprature=0.1)


def test_a_user_subclass_is_a_few_lines():
    """pytorch-metric-learning style: a subclass pins what defines it and forwards the rest."""

    class FocalSupCon(AsymmetricFocalContrastiveLoss):
        def __init__(self, gamma: float = 2.0, **kwargs):
            super().__init__(gamma, 0.0, normalization="pairs", **kwargs)

    loss = FocalSupCon(1.5, temperature=0.1, validate_args=False)
    features = _features(5)
    expected = afcl_loss(features, LABELS, gamma=1.5, temperature=0.1, normalization="pairs")
    assert torch.allclose(loss(features, LABELS), expected)
    assert ContrastiveMemory(loss, memory_size=4)(features, LABELS).isfinite()

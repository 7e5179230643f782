"""Values, gradients, special cases, numerics and input errors of asymcl.losses.

Every value is checked against tests/naive_afcl.py (plain loops, written from method.md). Tests that
take an ``impl`` run for the reference implementation always and for the blockwise one wherever it
is importable (an explicit skip with its reason otherwise).
"""

from __future__ import annotations

import math

import pytest
import torch

from asymcl.losses import (
    AsymmetricContrastiveLoss,
    AsymmetricFocalContrastiveLoss,
    FocalContrastiveLoss,
    SupConLoss,
    afcl_loss,
)
from naive_afcl import naive_afcl, naive_afcl_from_batch, row_positive_mask

torch.set_num_threads(1)

IMPLS = ["reference", "blockwise"]


def _batch(n_images: int, n_views: int, dim: int, *, seed: int, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (n_images, dim) if n_views == 0 else (n_images, n_views, dim)
    return torch.randn(*shape, generator=generator, dtype=dtype)


# Labels with a lone class (anchors without a positive when V = 1) and a big class.
LABELS_7 = torch.tensor([3, 3, 3, 0, 5, 5, 9])


def _image_mask(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, n, generator=generator) < 0.35
    mask[0, :] = False  # image 0 has no positive image (only its own views)
    mask[1, :] = True  # image 1 has every image as a positive (no negative with V = 1)
    return mask


# --------------------------------------------------------------------------- values vs naive


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
@pytest.mark.parametrize(
    ("gamma", "eta", "temperature"),
    [(0.0, 0.0, 0.07), (2.0, 0.0, 0.1), (0.0, 30.0, 0.5), (0.5, 3.0, 0.2), (7.0, 300.0, 1.0)],
)
@pytest.mark.parametrize("positives", ["labels-2d", "labels-views", "mask-2d", "mask-views", "views-only"])
def test_value_matches_naive(impl, normalization, gamma, eta, temperature, positives):
    n_views = 0 if positives.endswith("2d") else 2
    features = _batch(7, n_views, 5, seed=hash((gamma, eta, positives)) % 1000)
    labels = LABELS_7 if positives.startswith("labels") else None
    mask = _image_mask(7, seed=1) if positives.startswith("mask") else None

    got = afcl_loss(
        features,
        labels,
        mask=mask,
        gamma=gamma,
        eta=eta,
        temperature=temperature,
        normalization=normalization,
        impl=impl,
    )
    expected = naive_afcl_from_batch(
        features, labels, mask=mask, gamma=gamma, eta=eta, temperature=temperature, normalization=normalization
    )
    assert got.dtype == torch.float64 and got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected > 0


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_anchors_without_positive_or_negative(impl, normalization):
    # classes: one lone anchor (no positive) and a batch where one class is everything but it.
    features = _batch(6, 0, 4, seed=3)
    labels = torch.tensor([1, 1, 1, 1, 1, 2])  # anchor 5 has no positive; anchors 0-4 have 1 negative
    for gamma, eta in [(0.0, 5.0), (1.5, 5.0)]:
        got = afcl_loss(features, labels, gamma=gamma, eta=eta, temperature=0.3, normalization=normalization, impl=impl)
        expected = naive_afcl_from_batch(
            features, labels, gamma=gamma, eta=eta, temperature=0.3, normalization=normalization
        )
        assert got.item() == pytest.approx(expected, rel=1e-6)

    # All one class: no anchor has a negative, so eta changes nothing.
    same = torch.zeros(6, dtype=torch.long)
    assert afcl_loss(
        features, same, gamma=1.0, eta=100.0, temperature=0.3, normalization=normalization, impl=impl
    ).item() == pytest.approx(
        afcl_loss(features, same, gamma=1.0, eta=0.0, temperature=0.3, normalization=normalization, impl=impl).item(),
        rel=1e-12,
    )
    # All different classes: pos_i = 0 for every anchor; only the eta term is left, and it is > 0.
    distinct = torch.arange(6)
    only_negative = afcl_loss(
        features, distinct, gamma=1.0, eta=2.0, temperature=0.3, normalization=normalization, impl=impl
    )
    assert only_negative.item() > 0
    assert only_negative.item() == pytest.approx(
        naive_afcl_from_batch(features, distinct, gamma=1.0, eta=2.0, temperature=0.3, normalization=normalization),
        rel=1e-6,
    )
    assert afcl_loss(features, distinct, eta=0.0, impl=impl).item() == 0.0  # truly nothing to pull together


def test_normalize_false_uses_rows_as_given():
    features = _batch(5, 0, 3, seed=4)
    labels = torch.tensor([0, 0, 1, 1, 2])
    got = afcl_loss(features, labels, gamma=1.0, eta=2.0, temperature=5.0, normalize=False, impl="reference")
    positive = row_positive_mask(5, 1, labels=labels)
    assert got.item() == pytest.approx(naive_afcl(features, positive, 1.0, 2.0, 5.0, "batch"), rel=1e-6)
    assert got.item() != pytest.approx(
        afcl_loss(features, labels, gamma=1.0, eta=2.0, temperature=5.0).item(), rel=1e-3
    )


def test_labels_of_any_integer_dtype():
    features = _batch(6, 2, 4, seed=5)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    reference = afcl_loss(features, labels, gamma=1.0, eta=1.0)
    for dtype in (torch.int8, torch.int16, torch.int32, torch.uint8):
        assert afcl_loss(features, labels.to(dtype), gamma=1.0, eta=1.0).item() == pytest.approx(
            reference.item(), rel=1e-12
        )


# --------------------------------------------------------------------------- special cases


def _supcon_standard(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon L_out (Khosla et al. 2020), vectorised, float64: mean over anchors of
    -(1/|P(i)|) sum_{p in P(i)} log softmax_{a != i}(z_i.z_a / tau)_p (0 for an empty P(i))."""
    z = torch.nn.functional.normalize(features.double().reshape(-1, features.shape[-1]), dim=1)
    n_views = 1 if features.dim() == 2 else features.shape[1]
    row_labels = labels.repeat_interleave(n_views)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    log_prob = logits - torch.logsumexp(logits.masked_fill(eye, -math.inf), dim=1, keepdim=True)
    positive = (row_labels[:, None] == row_labels[None, :]) & ~eye
    n_positive = positive.sum(1)
    per_anchor = -(log_prob * positive).sum(1) / n_positive.clamp(min=1)
    return per_anchor.mean(), per_anchor, n_positive


@pytest.mark.parametrize("impl", IMPLS)
def test_special_cases_are_exact(impl):
    features = _batch(8, 2, 6, seed=6)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    common = dict(temperature=0.15, impl=impl)
    for normalization in ("batch", "pairs"):
        fcl = FocalContrastiveLoss(2.5, normalization=normalization, **common)(features, labels)
        assert torch.equal(fcl, afcl_loss(features, labels, gamma=2.5, eta=0.0, normalization=normalization, **common))
        acl = AsymmetricContrastiveLoss(40.0, normalization=normalization, **common)(features, labels)
        assert torch.equal(acl, afcl_loss(features, labels, gamma=0.0, eta=40.0, normalization=normalization, **common))
        afcl = AsymmetricFocalContrastiveLoss(1.0, 4.0, normalization=normalization, **common)(features, labels)
        assert torch.equal(afcl, afcl_loss(features, labels, gamma=1.0, eta=4.0, normalization=normalization, **common))

    supcon, per_anchor, n_positive = _supcon_standard(features, labels, 0.15)
    assert SupConLoss(**common)(features, labels).item() == pytest.approx(supcon.item(), rel=1e-12)
    pairs_cl = afcl_loss(features, labels, normalization="pairs", **common)
    assert pairs_cl.item() == pytest.approx(supcon.item(), rel=1e-12)
    # "batch" CL is SupCon with each anchor weighted by |P(i)| / N.
    n_rows = len(per_anchor)
    weighted = (per_anchor * n_positive / n_rows).mean()
    assert afcl_loss(features, labels, **common).item() == pytest.approx(weighted.item(), rel=1e-12)


def test_supcon_with_lone_anchors_counts_them_as_zero():
    features = _batch(6, 0, 4, seed=7)
    labels = torch.tensor([0, 0, 0, 1, 2, 2])  # anchor 3 has no positive
    supcon, per_anchor, n_positive = _supcon_standard(features, labels, 0.1)
    assert n_positive[3] == 0 and per_anchor[3] == 0
    assert SupConLoss(temperature=0.1)(features, labels).item() == pytest.approx(supcon.item(), rel=1e-12)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("gamma", "eta", "normalization", "positives"),
    [
        (0.0, 0.0, "batch", "labels"),
        (2.0, 10.0, "batch", "labels"),
        (0.5, 3.0, "pairs", "labels"),
        (1.0, 2.0, "pairs", "mask"),
        (3.0, 1.0, "batch", "views-only"),
    ],
)
def test_gradcheck_float64(impl, gamma, eta, normalization, positives):
    features = _batch(5, 2, 3, seed=8).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 2, 2]) if positives == "labels" else None
    mask = _image_mask(5, seed=2) if positives == "mask" else None

    def loss(x):
        return afcl_loss(
            x, labels, mask=mask, gamma=gamma, eta=eta, temperature=0.3, normalization=normalization, impl=impl
        )

    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_flows_through_the_focal_weight(impl):
    # If (1 - p)^gamma were detached, the gradient would differ from the full derivative that
    # gradcheck verifies; check directly against a finite difference of the focal-only loss.
    features = _batch(4, 0, 3, seed=9).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    value = afcl_loss(features, labels, gamma=3.0, temperature=0.5, impl=impl)
    (grad,) = torch.autograd.grad(value, features)
    step = 1e-6
    direction = torch.randn(features.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        plus = afcl_loss(features + step * direction, labels, gamma=3.0, temperature=0.5, impl=impl)
        minus = afcl_loss(features - step * direction, labels, gamma=3.0, temperature=0.5, impl=impl)
    numeric = (plus - minus) / (2 * step)
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-5)


# --------------------------------------------------------------------------- numerics


def _near_duplicates(dtype: torch.dtype, *, seed: int) -> torch.Tensor:
    """8 rows in 4 pairs of near-duplicates (cosine ~ 1 - 1e-6) from different classes."""
    base = _batch(4, 0, 16, seed=seed)
    jitter = 1e-3 * _batch(4, 0, 16, seed=seed + 1)
    rows = torch.stack([base, base + jitter], dim=1).reshape(8, 16)
    return rows.to(dtype)


NEAR_DUPLICATE_LABELS = torch.tensor([0, 1, 1, 2, 2, 3, 3, 0])  # each near-duplicate is a negative


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_near_duplicates_at_tiny_temperature_float64_match_exact_naive(impl, normalization):
    # p of the near-duplicate is 1 - O(1e-30): float64 "1 - p" would be 0, log(1 - p) = -inf.
    features = _near_duplicates(torch.float64, seed=10)
    for gamma, eta in [(0.0, 1.0), (2.0, 5.0), (0.3, 1.0)]:
        got = afcl_loss(
            features,
            NEAR_DUPLICATE_LABELS,
            gamma=gamma,
            eta=eta,
            temperature=0.01,
            normalization=normalization,
            impl=impl,
        )
        expected = naive_afcl_from_batch(
            features,
            NEAR_DUPLICATE_LABELS,
            gamma=gamma,
            eta=eta,
            temperature=0.01,
            normalization=normalization,
            exact=True,
        )
        assert math.isfinite(got.item()) and expected > 1.0
        assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("temperature", [0.07, 0.01])
@pytest.mark.parametrize("duplicates", ["near-duplicate negatives", "near-duplicate positives"])
def test_low_precision_inputs_give_finite_accurate_loss_and_gradients(impl, dtype, temperature, duplicates):
    features = _near_duplicates(dtype, seed=11).requires_grad_(True)
    # "positives": each near-duplicate pair shares a class with one unrelated pair (hard positives).
    labels = (
        NEAR_DUPLICATE_LABELS if duplicates == "near-duplicate negatives" else torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    )
    value = afcl_loss(features, labels, gamma=0.5, eta=20.0, temperature=temperature, impl=impl)
    assert value.dtype == torch.float32  # computed in float32 whatever the input precision
    value.backward()
    assert math.isfinite(value.item()) and value.item() > 0
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0

    # Same inputs (already rounded to `dtype`) in exact arithmetic: float32 accuracy expected.
    expected = naive_afcl_from_batch(
        features.detach().double(), labels, gamma=0.5, eta=20.0, temperature=temperature, exact=True
    )
    assert value.item() == pytest.approx(expected, rel=2e-3)

    # Gradients agree with the float64 computation on the same rounded inputs.
    exact_input = features.detach().double().requires_grad_(True)
    afcl_loss(exact_input, labels, gamma=0.5, eta=20.0, temperature=temperature, impl="reference").backward()
    scale = exact_input.grad.abs().max().item()
    assert (features.grad.double() - exact_input.grad).abs().max().item() <= 2e-2 * scale


@pytest.mark.parametrize("impl", IMPLS)
def test_focal_power_below_one_has_finite_gradient_when_p_is_one(impl):
    # Two near-duplicate positives among far-away negatives at tau = 0.01: p ~ 1, and the
    # derivative of (1 - p)^0.3 in p is unbounded; the derivative in the features must not be.
    features = torch.tensor(
        [[1.0, 0.0, 0.0], [1.0, 1e-4, 0.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    labels = torch.tensor([0, 0, 1, 2])
    value = afcl_loss(features, labels, gamma=0.3, eta=1.0, temperature=0.01, impl=impl)
    value.backward()
    assert math.isfinite(value.item()) and torch.isfinite(features.grad).all()
    assert value.item() == pytest.approx(
        naive_afcl_from_batch(features, labels, gamma=0.3, eta=1.0, temperature=0.01, exact=True), rel=1e-6
    )


def test_bfloat16_autocast_region_still_computes_in_float32():
    features = _batch(6, 2, 8, seed=12, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    plain = afcl_loss(features, labels, gamma=1.0, eta=10.0, temperature=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = afcl_loss(features, labels, gamma=1.0, eta=10.0, temperature=0.05)
    assert under_autocast.dtype == torch.float32
    assert under_autocast.item() == pytest.approx(plain.item(), rel=1e-6)


def test_two_rows():
    features = _batch(2, 0, 3, seed=13)
    # A positive pair: p = 1 exactly, the loss is exactly 0 (log 1) with a zero gradient.
    assert afcl_loss(features, torch.tensor([4, 4]), gamma=2.0).item() == 0.0
    # A negative pair and eta = 0: nothing to learn either.
    assert afcl_loss(features, torch.tensor([4, 5])).item() == 0.0
    with pytest.raises(ValueError, match="at least 3 rows or eta=0"):
        afcl_loss(features, torch.tensor([4, 5]), eta=1.0)


# --------------------------------------------------------------------------- dispatch


def test_impl_dispatch():
    features = _batch(6, 2, 4, seed=14)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    reference = afcl_loss(features, labels, gamma=1.0, eta=2.0, impl="reference")
    assert afcl_loss(features, labels, gamma=1.0, eta=2.0, impl="auto").item() == pytest.approx(
        reference.item(), rel=1e-9
    )
    blockwise = afcl_loss(features, labels, gamma=1.0, eta=2.0, impl="blockwise")
    assert blockwise.item() == pytest.approx(reference.item(), rel=1e-9)


def test_gather_distributed_without_process_group_is_single_process():
    features = _batch(6, 2, 4, seed=15)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.equal(
        afcl_loss(features, labels, gamma=1.0, eta=2.0, gather_distributed=True),
        afcl_loss(features, labels, gamma=1.0, eta=2.0),
    )


# --------------------------------------------------------------------------- bad input

GOOD_FEATURES = torch.randn(4, 2, 3)
GOOD_LABELS = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(features=torch.randn(1, 3), labels=torch.tensor([0])), ValueError, r"at least 2 rows .* got 1"),
        (
            dict(features=torch.randn(0, 2, 3), labels=torch.zeros(0, dtype=torch.long)),
            ValueError,
            r"at least 2 rows .* got 0",
        ),
        (dict(features=GOOD_FEATURES, labels=torch.tensor([0, 1, 1])), ValueError, r"labels must have shape \(4,\)"),
        (
            dict(features=GOOD_FEATURES, labels=torch.zeros(4, 2, dtype=torch.long)),
            ValueError,
            r"labels must have shape \(4,\)",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, mask=torch.eye(4, dtype=torch.bool)),
            ValueError,
            "labels or mask, not both",
        ),
        (dict(features=GOOD_FEATURES, labels=GOOD_LABELS.float()), TypeError, "labels must be integer class ids"),
        (dict(features=GOOD_FEATURES, labels=GOOD_LABELS.bool()), TypeError, "labels must be integer class ids"),
        (dict(features=GOOD_FEATURES, labels=[0, 0, 1, 1]), TypeError, "labels must be a torch.Tensor"),
        (dict(features=GOOD_FEATURES, mask=torch.eye(4)), TypeError, "mask must have dtype torch.bool"),
        (
            dict(features=GOOD_FEATURES, mask=torch.eye(3, dtype=torch.bool)),
            ValueError,
            r"mask must have shape \(4, 4\)",
        ),
        (dict(features=torch.randn(4, 3)), ValueError, r"V >= 2 views.*labels="),
        (dict(features=torch.randn(4, 1, 3)), ValueError, r"V >= 2 views"),
        (
            dict(
                features=GOOD_FEATURES.clone().index_put_((torch.tensor([1]),), torch.tensor(float("nan"))),
                labels=GOOD_LABELS,
            ),
            ValueError,
            "features contains .* NaN or infinite",
        ),
        (
            dict(features=torch.full((4, 3), float("inf")), labels=GOOD_LABELS),
            ValueError,
            "features contains 12 NaN or infinite",
        ),
        (
            dict(features=GOOD_LABELS[:, None].expand(4, 3), labels=GOOD_LABELS),
            TypeError,
            "features must be a floating-point tensor",
        ),
        (
            dict(features=[[0.0, 1.0], [1.0, 0.0]], labels=torch.tensor([0, 1])),
            TypeError,
            r"features must be a torch.Tensor of shape \(N, D\)",
        ),
        (
            dict(features=torch.randn(4), labels=GOOD_LABELS),
            ValueError,
            r"features must have shape \(N, D\) or \(N, V, D\)",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, temperature=0.0),
            ValueError,
            "temperature must be a finite number > 0",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, temperature=-0.1),
            ValueError,
            "temperature must be a finite number > 0",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, temperature=float("nan")),
            ValueError,
            "temperature must be a finite number > 0",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, temperature="0.1"),
            TypeError,
            "temperature must be a finite number",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, gamma=-1.0),
            ValueError,
            "gamma must be a finite number >= 0",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, gamma=float("inf")),
            ValueError,
            "gamma must be a finite number >= 0",
        ),
        (dict(features=GOOD_FEATURES, labels=GOOD_LABELS, eta=-0.5), ValueError, "eta must be a finite number >= 0"),
        (dict(features=GOOD_FEATURES, labels=GOOD_LABELS, eta=None), TypeError, "eta must be a finite number >= 0"),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, normalization="mean"),
            ValueError,
            "normalization must be one of 'batch', 'pairs', got 'mean'",
        ),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, impl="fast"),
            ValueError,
            "impl must be one of 'auto', 'reference', 'blockwise'",
        ),
        (dict(features=GOOD_FEATURES, labels=GOOD_LABELS, normalize=1), TypeError, "normalize must be True or False"),
        (
            dict(features=GOOD_FEATURES, labels=GOOD_LABELS, gather_distributed="yes"),
            TypeError,
            "gather_distributed must be True or False",
        ),
    ],
)
def test_bad_input_raises_a_clear_error(kwargs, error, message):
    features = kwargs.pop("features")
    labels = kwargs.pop("labels", None)
    with pytest.raises(error, match=message):
        afcl_loss(features, labels, **kwargs)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: AsymmetricFocalContrastiveLoss(gamma=-1.0), ValueError, "gamma must be a finite number >= 0"),
        (lambda: AsymmetricContrastiveLoss(eta=-1.0), ValueError, "eta must be a finite number >= 0"),
        (lambda: FocalContrastiveLoss(2.0, temperature=0), ValueError, "temperature must be a finite number > 0"),
        (lambda: SupConLoss(temperature=-1), ValueError, "temperature must be a finite number > 0"),
        (lambda: AsymmetricFocalContrastiveLoss(normalization="sum"), ValueError, "normalization must be one of"),
        (lambda: AsymmetricFocalContrastiveLoss(impl="gpu"), ValueError, "impl must be one of"),
    ],
)
def test_modules_validate_at_construction(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_module_repr_and_forward_forms():
    module = AsymmetricFocalContrastiveLoss(2.0, 50.0, temperature=0.1, normalization="pairs")
    text = repr(module)
    for part in ("gamma=2.0", "eta=50.0", "temperature=0.1", "normalization='pairs'", "normalize=True"):
        assert part in text
    assert "gamma=0.0" in repr(AsymmetricContrastiveLoss(3.0)) and "eta=3.0" in repr(AsymmetricContrastiveLoss(3.0))
    assert "eta=0.0" in repr(FocalContrastiveLoss(2.0)) and "normalization='pairs'" in repr(SupConLoss())

    features = _batch(4, 2, 3, seed=16)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    by_mask = module(features, mask=mask)
    by_labels = module(features, torch.tensor([0, 0, 1, 2]))
    assert by_mask.item() == pytest.approx(by_labels.item(), rel=1e-12)
    assert module(features).item() == pytest.approx(
        afcl_loss(features, gamma=2.0, eta=50.0, temperature=0.1, normalization="pairs").item(), rel=1e-12
    )


def test_importing_losses_needs_only_torch():
    # In a fresh interpreter where every non-torch dependency of asymcl is made unimportable,
    # the loss layer still imports and computes a loss.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('lightning', 'pytorch_lightning', 'sklearn', 'torchvision', 'timm', 'kornia',\n"
        "             'torchmetrics', 'matplotlib', 'yaml', 'PIL', 'safetensors', 'optuna', 'hypothesis'):\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        "import torch\n"
        "from asymcl.losses import afcl_loss, SupConLoss\n"
        "x = torch.randn(4, 2, 3)\n"
        "print(float(afcl_loss(x, torch.tensor([0, 0, 1, 1]), gamma=1.0, eta=2.0)) > 0, float(SupConLoss()(x)) > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("duplicates", ["near-duplicate negatives", "near-duplicate positives"])
def test_gradient_at_near_duplicates_matches_exact_finite_difference(impl, duplicates):
    # tau = 0.01 and p within ~1e-30 of 1: the gradient of -log(1 - p) must come out of
    # log-space (a p / (1 - p) ratio overflows and cancels). Reference for the directional
    # derivative: a central difference of the 60-digit naive loss.
    features = _near_duplicates(torch.float64, seed=17).requires_grad_(True)
    labels = (
        NEAR_DUPLICATE_LABELS if duplicates == "near-duplicate negatives" else torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    )
    settings = dict(gamma=0.5, eta=5.0, temperature=0.01)
    value = afcl_loss(features, labels, impl=impl, **settings)
    (grad,) = torch.autograd.grad(value, features)
    assert torch.isfinite(grad).all()

    direction = torch.randn(features.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step = 1e-7
    plus = naive_afcl_from_batch(features.detach() + step * direction, labels, exact=True, **settings)
    minus = naive_afcl_from_batch(features.detach() - step * direction, labels, exact=True, **settings)
    numeric = (plus - minus) / (2 * step)
    assert abs(numeric) > 1e-3
    assert (grad * direction).sum().item() == pytest.approx(numeric, rel=1e-5)


def test_block_size_is_a_public_choice_that_does_not_change_the_loss():
    torch.manual_seed(3)
    features = torch.randn(37, 2, 8, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (37,))
    reference = afcl_loss(features, labels, gamma=1.5, eta=20.0, impl="reference")
    (grad_reference,) = torch.autograd.grad(reference, features)
    for block_size in (1, 5, 16, 1000):
        for impl in ("auto", "blockwise"):
            loss = afcl_loss(features, labels, gamma=1.5, eta=20.0, impl=impl, block_size=block_size)
            (grad,) = torch.autograd.grad(loss, features)
            assert torch.allclose(loss, reference, rtol=1e-10)
            assert torch.allclose(grad, grad_reference, rtol=1e-8, atol=1e-12)
    module = AsymmetricFocalContrastiveLoss(1.5, 20.0, block_size=8)
    assert "block_size=8" in repr(module)
    assert torch.allclose(module(features, labels), afcl_loss(features, labels, gamma=1.5, eta=20.0), rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_size": 0}, r"block_size must be a positive int"),
        ({"block_size": 2.5}, r"block_size must be a positive int"),
        ({"block_size": True}, r"block_size must be a positive int"),
        ({"block_size": 8, "impl": "reference"}, r"block_size applies to the row-blocked implementation"),
    ],
)
def test_bad_block_size_is_refused(kwargs, message):
    features, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=message):
        afcl_loss(features, labels, **kwargs)
    with pytest.raises(ValueError, match=message):
        AsymmetricFocalContrastiveLoss(1.0, 1.0, **kwargs)

"""Second-order gradients, torch.func transforms and forward-mode AD through afcl_loss.

The row-blocked path's analytic backward is first-order; these tests pin that every mode still
gives the right number (or the reference path takes over) at sizes where impl="auto" picks each
path on CPU (blockwise from _blockwise.CPU_MIN_ROWS rows on).
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as forward_ad

from asymcl.losses import _blockwise, afcl_loss

torch.set_num_threads(1)

SMALL, LARGE = 16, 200  # rows; auto picks the reference path for SMALL, the blockwise one for LARGE
SETTINGS = dict(gamma=1.5, eta=4.0, temperature=0.5)


def test_the_sizes_cover_both_paths():
    cpu = torch.device("cpu")
    assert not _blockwise.prefer_blockwise(SMALL, cpu) and _blockwise.prefer_blockwise(LARGE, cpu)


def _inputs(n_rows, *, seed, dim=3):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n_rows, dim, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (n_rows,), generator=generator)
    return features, labels


def _penalty(features, labels, impl, **extra):
    """||d loss / d features||^2, differentiable (a gradient penalty)."""
    loss = afcl_loss(features, labels, impl=impl, **SETTINGS, **extra)
    (grad,) = torch.autograd.grad(loss, features, create_graph=True)
    return grad.pow(2).sum()


@pytest.mark.parametrize("impl", ["auto", "blockwise", "reference"])
@pytest.mark.parametrize("n_rows", [SMALL, LARGE])
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_gradient_penalty_matches_finite_differences(impl, n_rows, normalization):
    features, labels = _inputs(n_rows, seed=n_rows)
    x = features.clone().requires_grad_(True)
    penalty = _penalty(x, labels, impl, normalization=normalization)
    (second_order,) = torch.autograd.grad(penalty, x)

    direction = torch.randn(features.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    step = 1e-5

    def at(shift):
        return _penalty(
            (features + shift * direction).requires_grad_(True), labels, "reference", normalization=normalization
        ).item()

    numeric = (at(step) - at(-step)) / (2 * step)
    assert abs(numeric) > 1e-8
    assert (second_order * direction).sum().item() == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize("block_size", [None, 3])
def test_gradgradcheck_through_the_blockwise_path(block_size):
    # Also covers an upstream gradient that itself requires grad (gradgradcheck varies it).
    features, labels = _inputs(10, seed=3)
    refs, ref_labels = _inputs(4, seed=4)

    def loss(x):
        return afcl_loss(
            x,
            labels,
            ref_features=refs,
            ref_labels=ref_labels,
            impl="blockwise",
            block_size=block_size,
            normalization="pairs",
            **SETTINGS,
        )

    x = features.clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(loss, (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_hessian_vector_product_at_large_size_with_references_equals_the_reference_path():
    features, labels = _inputs(LARGE, seed=5)
    refs, ref_labels = _inputs(30, seed=6)
    vector = torch.randn(features.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    products = []
    for impl in ("auto", "reference"):
        x = features.clone().requires_grad_(True)
        loss = afcl_loss(x, labels, ref_features=refs, ref_labels=ref_labels, impl=impl, **SETTINGS)
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * vector).sum(), x)
        products.append(hvp)
    assert products[0].abs().max() > 0
    torch.testing.assert_close(products[0], products[1], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("n_rows", [SMALL, LARGE])
def test_torch_func_grad_equals_autograd(n_rows):
    features, labels = _inputs(n_rows, seed=7)
    got = torch.func.grad(lambda x: afcl_loss(x, labels, **SETTINGS))(features)
    x = features.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(afcl_loss(x, labels, impl="reference", **SETTINGS), x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-16)
    # impl="blockwise" and block_size are honoured outside transforms, and give way inside them.
    forced = torch.func.grad(lambda x: afcl_loss(x, labels, impl="blockwise", block_size=4, **SETTINGS))(features)
    torch.testing.assert_close(forced, expected, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("n_rows", [SMALL, LARGE])
def test_vmap_over_batches_and_over_per_batch_gradients(n_rows):
    features, labels = _inputs(n_rows, seed=8)
    stacked = torch.stack([features, 2.0 * features + 1.0, features.flip(0)])
    values = torch.func.vmap(lambda x: afcl_loss(x, labels, **SETTINGS))(stacked)
    expected = torch.stack([afcl_loss(x, labels, **SETTINGS) for x in stacked])
    torch.testing.assert_close(values, expected, rtol=1e-10, atol=0)
    grads = torch.func.vmap(torch.func.grad(lambda x: afcl_loss(x, labels, **SETTINGS)))(stacked)
    expected_grads = torch.stack([torch.func.grad(lambda x: afcl_loss(x, labels, **SETTINGS))(x) for x in stacked])
    torch.testing.assert_close(grads, expected_grads, rtol=1e-10, atol=1e-16)


def test_vmap_cannot_raise_on_nan_so_it_returns_nan():
    features, labels = _inputs(SMALL, seed=9)
    stacked = torch.stack([features, torch.full_like(features, float("nan"))])
    values = torch.func.vmap(lambda x: afcl_loss(x, labels, **SETTINGS))(stacked)
    assert torch.isfinite(values[0]) and torch.isnan(values[1])


def test_torch_func_hessian_matches_double_backward():
    features, labels = _inputs(6, seed=10)
    hessian = torch.func.hessian(lambda x: afcl_loss(x, labels, **SETTINGS))(features)
    x = features.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(afcl_loss(x, labels, impl="blockwise", **SETTINGS), x, create_graph=True)
    rows = [torch.autograd.grad(g, x, retain_graph=True)[0] for g in grad.reshape(-1)]
    torch.testing.assert_close(
        hessian.reshape(features.numel(), -1), torch.stack(rows).reshape(features.numel(), -1), rtol=1e-9, atol=1e-14
    )


@pytest.mark.parametrize("n_rows", [SMALL, LARGE])
def test_forward_mode_ad_equals_the_directional_derivative(n_rows):
    features, labels = _inputs(n_rows, seed=11)
    tangent = torch.randn(features.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with forward_ad.dual_level():
        out = afcl_loss(forward_ad.make_dual(features, tangent), labels, **SETTINGS)
        directional = forward_ad.unpack_dual(out).tangent
    x = features.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(afcl_loss(x, labels, **SETTINGS), x)
    assert directional.item() == pytest.approx((grad * tangent).sum().item(), rel=1e-9)
    _, jvp = torch.func.jvp(lambda z: afcl_loss(z, labels, **SETTINGS), (features,), (tangent,))
    assert jvp.item() == pytest.approx(directional.item(), rel=1e-10)

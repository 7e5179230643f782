"""Deferred input checks and the sync-free blockwise paths (what the loss does on CUDA), forced on CPU.

On CUDA (``asymcl.losses._deferred.DEFERRING_DEVICE_TYPES``) the NaN/inf check must not copy a
flag to the host every step; the error comes one call late or from ``raise_pending_input_errors``.
Adding "cpu" to that set runs exactly the code CUDA runs (minus the pinned copy and the event), so
these tests pin its behaviour without a GPU.
"""

from __future__ import annotations

import pytest
import torch

from asymcl.losses import (
    AsymmetricFocalContrastiveLoss,
    ContrastiveMemory,
    _deferred,
    afcl_loss,
    raise_pending_input_errors,
)
from asymcl.losses._blockwise import per_anchor_loss

torch.set_num_threads(2)

FEATURES = torch.nn.functional.normalize(torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])


@pytest.fixture
def deferred_on_cpu(monkeypatch):
    monkeypatch.setattr(_deferred, "DEFERRING_DEVICE_TYPES", {"cpu"})
    yield
    _deferred._pending.clear()


def with_nan(features):
    bad = features.clone()
    bad[1, 0, 3] = float("nan")
    return bad


def test_cpu_raises_at_once_by_default():
    with pytest.raises(ValueError, match=r"^features contains 1 NaN or infinite value\(s\); the loss refuses"):
        afcl_loss(with_nan(FEATURES), LABELS, gamma=1.0, eta=5.0)
    assert not _deferred._pending


@pytest.mark.parametrize("impl", ["reference", "blockwise"])
def test_deferred_error_comes_at_the_next_call_and_the_bad_call_is_nan(deferred_on_cpu, impl):
    loss = afcl_loss(with_nan(FEATURES), LABELS, gamma=1.0, eta=5.0, impl=impl)
    assert torch.isnan(loss)  # never a finite number from bad input
    with pytest.raises(ValueError, match=r"features contains 1 NaN or infinite value\(s\).*later call of the loss"):
        afcl_loss(FEATURES, LABELS, gamma=1.0, eta=5.0, impl=impl)
    # Reported once: the run goes on normally afterwards.
    assert torch.isfinite(afcl_loss(FEATURES, LABELS, gamma=1.0, eta=5.0, impl=impl))
    raise_pending_input_errors()


def test_raise_pending_input_errors_reports_without_another_call(deferred_on_cpu):
    afcl_loss(torch.full((4, 3), float("inf")), torch.tensor([0, 0, 1, 1]), eta=1.0)
    with pytest.raises(ValueError, match="features contains 12 NaN or infinite"):
        raise_pending_input_errors()
    raise_pending_input_errors()  # nothing left


def test_deferred_reference_rows_and_module_and_memory(deferred_on_cpu):
    criterion = AsymmetricFocalContrastiveLoss(gamma=1.0, eta=5.0)
    refs = FEATURES[:3, 0].clone()
    refs[2, 0] = float("inf")
    assert torch.isnan(criterion(FEATURES, LABELS, ref_features=refs, ref_labels=LABELS[:3]))
    with pytest.raises(ValueError, match="ref_features contains 1 NaN or infinite"):
        raise_pending_input_errors()
    memory = ContrastiveMemory(criterion, memory_size=16)
    memory(with_nan(FEATURES), LABELS)
    with pytest.raises(ValueError, match="features contains 1 NaN"):
        memory(FEATURES, LABELS)


def test_deferred_anchor_index_range_of_the_core(deferred_on_cpu):
    z = FEATURES[:, 0].double()
    labels = LABELS
    kw = dict(
        anchor_labels=labels[:2],
        contrast_labels=labels,
        mask=None,
        gamma=1.0,
        eta=1.0,
        temperature=0.1,
        normalization="batch",
        n_total=8,
    )
    per_anchor_loss(z[:2], z, torch.tensor([0, 1]), **kw)
    raise_pending_input_errors()
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        # On CPU the out-of-range scatter fails at once; the deferred check is queued before it.
        per_anchor_loss(z[:2], z, torch.tensor([0, 8]), **kw)
    with pytest.raises(ValueError, match=r"anchor_index values must lie in \[0, 8\).*1 do not"):
        raise_pending_input_errors()


def saturated_batch(dtype):
    """Duplicated orthonormal rows (s = 100 against 0 at tau = 0.01: the rest of the row underflows
    and the argmax negative's logit overflows) plus ordinary random rows."""
    n_dup, d = 6, 16
    basis = torch.eye(d, dtype=torch.float64)[:n_dup]
    random_rows = torch.zeros(6, d, dtype=torch.float64)  # orthogonal to the duplicated rows
    random_rows[:, n_dup:] = torch.randn(6, d - n_dup, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    random_rows = torch.nn.functional.normalize(random_rows, dim=1)
    z = torch.cat([basis, basis, random_rows]).to(dtype)
    labels = torch.arange(z.shape[0]) % 5  # duplicates mostly negatives of each other
    return z, labels


def core_values_and_grads(z, labels, weights, **extra):
    a = z.clone().requires_grad_()
    out = per_anchor_loss(
        a,
        a,
        torch.arange(z.shape[0]),
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=2.0,
        eta=50.0,
        temperature=0.01,
        normalization="pairs",
        n_total=z.shape[0],
        block_size=5,
        **extra,
    )
    (out * weights).sum().backward()
    return out.detach(), a.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("uniform", [False, True])
def test_sync_free_blockwise_equals_the_cpu_path_where_rows_saturate(monkeypatch, dtype, uniform):
    z, labels = saturated_batch(dtype)
    n = z.shape[0]
    s = (z.double() @ z.double().T) / 0.01
    s.fill_diagonal_(-float("inf"))
    top2 = s.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1] > 90).sum() == 12  # the rare branches are really taken
    weights = torch.ones(n, dtype=dtype) if uniform else torch.linspace(0.5, 2.0, n, dtype=dtype)
    extra = {"uniform_upstream": True} if uniform else {}
    want = core_values_and_grads(z, labels, weights, **extra)
    monkeypatch.setattr(_deferred, "DEFERRING_DEVICE_TYPES", {"cpu"})
    got = core_values_and_grads(z, labels, weights, **extra)
    raise_pending_input_errors()
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-6, atol=0)


def test_sync_free_blockwise_two_rows(deferred_on_cpu):
    z = torch.nn.functional.normalize(torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    z.requires_grad_()
    out = per_anchor_loss(
        z,
        z,
        torch.arange(2),
        anchor_labels=torch.tensor([0, 0]),
        contrast_labels=torch.tensor([0, 0]),
        mask=None,
        gamma=0.5,
        eta=1.0,
        temperature=0.1,
        normalization="batch",
        n_total=2,
    )
    out.sum().backward()
    assert torch.equal(out.detach(), torch.zeros(2)) and torch.equal(z.grad, torch.zeros_like(z))


def test_pending_list_stays_bounded(deferred_on_cpu, monkeypatch):
    monkeypatch.setattr(_deferred, "_MAX_PENDING", 3)
    for _ in range(10):
        _deferred.check_count(torch.tensor(0), lambda n: "unused")
        assert len(_deferred._pending) <= 3
    raise_pending_input_errors()
    _deferred.check_count(torch.tensor(2), lambda n: f"{n} bad")
    _deferred.check_count(torch.tensor(0), lambda n: "unused")
    _deferred.check_count(torch.tensor(0), lambda n: "unused")
    assert len(_deferred._pending) == 3
    with pytest.raises(ValueError, match="^2 bad"):
        _deferred.check_count(torch.tensor(0), lambda n: "unused")  # over the bound: waits, raises
    assert not _deferred._pending

"""Reference rows of afcl_loss (contrasted, never anchors, no gradient) and ContrastiveMemory.

Values are checked against the naive loop oracle (tests/naive_afcl.py) with its reference rows: the
concatenated batch in which only the batch's rows are anchors.
"""

from __future__ import annotations

import pytest
import torch

from asymcl.losses import (
    AsymmetricFocalContrastiveLoss,
    ContrastiveMemory,
    FocalContrastiveLoss,
    SupConLoss,
    afcl_loss,
)
from naive_afcl import naive_afcl_from_batch

torch.set_num_threads(1)

IMPLS = ["reference", "blockwise"]


def _randn(*shape, seed, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Anchor class 7 has no positive in the batch, only in the references; class 4 only in references.
BATCH_LABELS = torch.tensor([0, 0, 1, 7, 1, 2])
REF_LABELS = torch.tensor([7, 0, 4, 4, 2])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
@pytest.mark.parametrize(
    ("gamma", "eta", "temperature"), [(0.0, 0.0, 0.1), (2.0, 0.0, 0.2), (0.0, 30.0, 0.5), (0.5, 3.0, 0.3)]
)
@pytest.mark.parametrize(("views", "ref_views"), [(0, 0), (2, 0), (2, 2)])
def test_reference_rows_match_the_naive_oracle(impl, normalization, gamma, eta, temperature, views, ref_views):
    features = _randn(*((6, views) if views else (6,)), 5, seed=1)
    refs = _randn(*((5, ref_views) if ref_views else (5,)), 5, seed=2)
    settings = dict(gamma=gamma, eta=eta, temperature=temperature, normalization=normalization)
    got = afcl_loss(features, BATCH_LABELS, ref_features=refs, ref_labels=REF_LABELS, impl=impl, **settings)
    expected = naive_afcl_from_batch(features, BATCH_LABELS, ref_features=refs, ref_labels=REF_LABELS, **settings)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    without = naive_afcl_from_batch(features, BATCH_LABELS, **settings)
    assert expected != pytest.approx(without, rel=1e-3)  # the references change the loss


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_no_reference_rows_is_exactly_the_loss_without_them(impl, normalization):
    features = _randn(6, 2, 4, seed=3).requires_grad_(True)
    settings = dict(gamma=1.5, eta=4.0, temperature=0.2, normalization=normalization, impl=impl)
    plain = afcl_loss(features, BATCH_LABELS, **settings)
    (grad_plain,) = torch.autograd.grad(plain, features)
    empty = afcl_loss(
        features,
        BATCH_LABELS,
        ref_features=torch.zeros(0, 4, dtype=torch.float64),
        ref_labels=torch.zeros(0, dtype=torch.long),
        **settings,
    )
    (grad_empty,) = torch.autograd.grad(empty, features)
    assert torch.equal(plain, empty) and torch.equal(grad_plain, grad_empty)


@pytest.mark.parametrize("normalization", ["batch", "pairs"])
@pytest.mark.parametrize(("gamma", "eta"), [(0.0, 0.0), (2.0, 50.0), (0.5, 3.0)])
def test_blockwise_equals_reference_with_references(normalization, gamma, eta):
    features = _randn(40, 2, 8, seed=4).requires_grad_(True)
    labels = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(5))
    refs = _randn(25, 8, seed=6)
    ref_labels = torch.randint(0, 6, (25,), generator=torch.Generator().manual_seed(7))
    settings = dict(
        gamma=gamma, eta=eta, temperature=0.1, normalization=normalization, ref_features=refs, ref_labels=ref_labels
    )
    reference = afcl_loss(features, labels, impl="reference", **settings)
    (grad_reference,) = torch.autograd.grad(reference, features)
    for block_size in (7, 1000):
        blockwise = afcl_loss(features, labels, impl="blockwise", block_size=block_size, **settings)
        (grad_blockwise,) = torch.autograd.grad(blockwise, features)
        torch.testing.assert_close(blockwise, reference, rtol=1e-12, atol=0)
        torch.testing.assert_close(grad_blockwise, grad_reference, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_with_references(impl):
    features = _randn(6, 2, 3, seed=8).requires_grad_(True)
    refs = _randn(5, 3, seed=9)

    def loss(x):
        return afcl_loss(
            x,
            BATCH_LABELS,
            ref_features=refs,
            ref_labels=REF_LABELS,
            gamma=1.0,
            eta=3.0,
            temperature=0.3,
            normalization="pairs",
            impl=impl,
        )

    assert torch.autograd.gradcheck(loss, (features,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_gradient_reaches_the_references(impl):
    features = _randn(6, 4, seed=10).requires_grad_(True)
    refs = _randn(5, 4, seed=11).requires_grad_(True)
    loss = afcl_loss(features, BATCH_LABELS, ref_features=refs, ref_labels=REF_LABELS, gamma=1.0, eta=2.0, impl=impl)
    loss.backward()
    assert refs.grad is None and features.grad.abs().max() > 0


def test_one_batch_row_with_references():
    features, refs = _randn(1, 4, seed=12), _randn(3, 4, seed=13)
    got = afcl_loss(features, torch.tensor([1]), ref_features=refs, ref_labels=torch.tensor([1, 0, 2]), eta=2.0)
    expected = naive_afcl_from_batch(
        features, torch.tensor([1]), ref_features=refs, ref_labels=torch.tensor([1, 0, 2]), eta=2.0
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="at least 3 rows or eta=0"):  # one other row, a negative
        afcl_loss(features, torch.tensor([1]), ref_features=refs[:1], ref_labels=torch.tensor([0]), eta=2.0)


def test_references_of_another_float_dtype_are_cast():
    features, refs = _randn(6, 4, seed=14), _randn(5, 4, seed=15)
    as_float64 = afcl_loss(features, BATCH_LABELS, ref_features=refs, ref_labels=REF_LABELS, gamma=1.0)
    as_float32 = afcl_loss(features, BATCH_LABELS, ref_features=refs.float(), ref_labels=REF_LABELS.int(), gamma=1.0)
    assert as_float32.dtype == torch.float64
    assert as_float32.item() == pytest.approx(as_float64.item(), rel=1e-6)


def test_modules_take_references():
    features, refs = _randn(6, 2, 4, seed=16), _randn(5, 4, seed=17)
    for module in (AsymmetricFocalContrastiveLoss(1.0, 2.0), FocalContrastiveLoss(2.0), SupConLoss()):
        got = module(features, BATCH_LABELS, ref_features=refs, ref_labels=REF_LABELS)
        expected = naive_afcl_from_batch(
            features,
            BATCH_LABELS,
            ref_features=refs,
            ref_labels=REF_LABELS,
            gamma=module.gamma,
            eta=module.eta,
            temperature=module.temperature,
            normalization=module.normalization,
        )
        assert got.item() == pytest.approx(expected, rel=1e-9)


REFS, REF_Y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 2])
X, Y = torch.randn(4, 2, 3), torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(ref_features=REFS), ValueError, "give ref_features and ref_labels together"),
        (dict(ref_labels=REF_Y), ValueError, "give ref_features and ref_labels together"),
        (
            dict(labels=None, mask=torch.eye(4, dtype=torch.bool), ref_features=REFS, ref_labels=REF_Y),
            ValueError,
            "pass labels=... with ref_features",
        ),
        (dict(labels=None, ref_features=REFS, ref_labels=REF_Y), ValueError, "pass labels=... with ref_features"),
        (
            dict(ref_features=torch.randn(5, 4), ref_labels=REF_Y),
            ValueError,
            r"ref_features must have the feature dimension of features, D = 3",
        ),
        (
            dict(ref_features=REF_Y[:, None].expand(5, 3), ref_labels=REF_Y),
            TypeError,
            "ref_features must be a floating-point tensor",
        ),
        (dict(ref_features=REFS.tolist(), ref_labels=REF_Y), TypeError, "ref_features must be a torch.Tensor"),
        (
            dict(ref_features=torch.randn(5), ref_labels=REF_Y),
            ValueError,
            r"ref_features must have shape \(N, D\) or \(N, V, D\)",
        ),
        (
            dict(ref_features=REFS, ref_labels=REF_Y[:4]),
            ValueError,
            r"ref_labels must have shape \(5,\) to match ref_features",
        ),
        (dict(ref_features=REFS, ref_labels=REF_Y.float()), TypeError, "ref_labels must be integer class ids"),
        (
            dict(
                ref_features=REFS.clone().index_put_((torch.tensor([2]),), torch.tensor(float("nan"))), ref_labels=REF_Y
            ),
            ValueError,
            "ref_features contains 3 NaN or infinite",
        ),
        (
            dict(ref_features=REFS.to("meta"), ref_labels=REF_Y),
            ValueError,
            "ref_features must be on the device of features",
        ),
    ],
)
def test_bad_references_raise_a_clear_error(kwargs, error, message):
    labels = kwargs.pop("labels", Y)
    with pytest.raises(error, match=message):
        afcl_loss(X, labels, **kwargs)


# --------------------------------------------------------------------------- ContrastiveMemory


def _steps(n_steps, n_images=4, views=2, dim=5, seed=20):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(n_images, views, dim, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (n_images,), generator=generator),
        )
        for _ in range(n_steps)
    ]


SETTINGS = dict(gamma=1.0, eta=5.0, temperature=0.2)


def test_memory_size_zero_is_exactly_the_loss_and_keeps_no_state():
    loss = AsymmetricFocalContrastiveLoss(**SETTINGS)
    memory = ContrastiveMemory(loss, 0)
    for features, labels in _steps(3):
        assert torch.equal(memory(features, labels), loss(features, labels))
    assert memory.state_dict() == {} and memory.filled == 0


@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_memory_contrasts_each_batch_with_the_rows_before_it(normalization):
    loss = AsymmetricFocalContrastiveLoss(**SETTINGS, normalization=normalization)
    memory = ContrastiveMemory(loss, 12)  # 8 rows per step: full after 2 steps, then FIFO
    steps = _steps(4)
    seen_rows, seen_labels = [], []
    for step, (features, labels) in enumerate(steps):
        got = memory(features, labels)
        if step == 0:  # an empty queue: exactly the loss without memory
            assert torch.equal(got, loss(features, labels))
        else:
            queued = torch.cat(seen_rows)[-12:]
            queued_labels = torch.cat(seen_labels)[-12:]
            expected = naive_afcl_from_batch(
                features, labels, ref_features=queued, ref_labels=queued_labels, normalization=normalization, **SETTINGS
            )
            assert got.item() == pytest.approx(expected, rel=1e-9)
        seen_rows.append(features.reshape(-1, 5))
        seen_labels.append(labels.repeat_interleave(2))
        assert memory.filled == min(12, 8 * (step + 1))
    # The queue holds the last 12 rows (normalised), whatever its ring order.
    queued = torch.nn.functional.normalize(torch.cat(seen_rows)[-12:], dim=1)
    pointer = int(memory.queue_pointer)
    ring = torch.cat([memory.queue_features[pointer:], memory.queue_features[:pointer]])
    torch.testing.assert_close(ring, queued)
    labels_ring = torch.cat([memory.queue_labels[pointer:], memory.queue_labels[:pointer]])
    assert torch.equal(labels_ring, torch.cat(seen_labels)[-12:])


def test_queue_equal_to_the_batch_is_the_concatenated_batch_with_non_anchor_copies():
    features, labels = _steps(1)[0]
    memory = ContrastiveMemory(AsymmetricFocalContrastiveLoss(**SETTINGS), 8)
    memory(features, labels)
    got = memory(features, labels)  # the queue now holds exactly this batch's 8 rows
    expected = naive_afcl_from_batch(features, labels, ref_features=features, ref_labels=labels, **SETTINGS)
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert got.item() == pytest.approx(
        afcl_loss(features, labels, ref_features=features, ref_labels=labels, **SETTINGS).item(), rel=1e-12
    )


def test_a_batch_larger_than_the_memory_keeps_its_last_rows():
    memory = ContrastiveMemory(SupConLoss(), 3)
    features, labels = _steps(1)[0]
    memory(features, labels)
    rows = torch.nn.functional.normalize(features.reshape(-1, 5), dim=1)
    torch.testing.assert_close(memory.queue_features, rows[-3:])
    assert torch.equal(memory.queue_labels, labels.repeat_interleave(2)[-3:])
    assert memory.filled == 3 and int(memory.queue_pointer) == 0


def test_no_gradient_reaches_the_queue_and_the_gradient_is_that_of_detached_references():
    memory = ContrastiveMemory(AsymmetricFocalContrastiveLoss(**SETTINGS), 16)
    (first, first_labels), (second, second_labels) = _steps(2)
    memory(first.requires_grad_(True), first_labels)
    assert not memory.queue_features.requires_grad and memory.queue_features.grad_fn is None
    second.requires_grad_(True)
    loss = memory(second, second_labels)
    (grad,) = torch.autograd.grad(loss, second)
    expected_loss = afcl_loss(second, second_labels, ref_features=first.detach(), ref_labels=first_labels, **SETTINGS)
    (expected_grad,) = torch.autograd.grad(expected_loss, second)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)
    assert first.grad is None


def test_eval_mode_reads_the_memory_without_filling_it():
    memory = ContrastiveMemory(AsymmetricFocalContrastiveLoss(**SETTINGS), 16)
    (first, y1), (second, y2) = _steps(2)
    memory(first, y1)
    memory.eval()
    value = memory(second, y2)
    assert memory.filled == 8
    assert value.item() == pytest.approx(
        afcl_loss(second, y2, ref_features=first, ref_labels=y1, **SETTINGS).item(), rel=1e-12
    )
    memory(second, y2, enqueue=True)
    assert memory.filled == 16
    memory.reset()
    assert memory.filled == 0 and torch.equal(memory(second, y2), afcl_loss(second, y2, **SETTINGS))


def test_state_dict_resumes_the_memory():
    steps = _steps(5)
    original = ContrastiveMemory(AsymmetricFocalContrastiveLoss(**SETTINGS), 12)
    for features, labels in steps[:3]:
        original(features, labels)
    state = original.state_dict()
    assert set(state) == {"queue_features", "queue_labels", "queue_filled", "queue_pointer"}
    resumed = ContrastiveMemory(AsymmetricFocalContrastiveLoss(**SETTINGS), 12)
    resumed.load_state_dict(state)
    assert resumed.filled == original.filled
    for features, labels in steps[3:]:
        assert torch.equal(resumed(features, labels), original(features, labels))
    with pytest.raises(RuntimeError, match="memory holds 12 rows but this ContrastiveMemory has memory_size=8"):
        ContrastiveMemory(SupConLoss(), 8).load_state_dict(state)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ContrastiveMemory(SupConLoss(), 0).load_state_dict(state)


def test_memory_follows_the_module_dtype_and_rows_of_2d_input():
    memory = ContrastiveMemory(FocalContrastiveLoss(2.0), 10)
    memory(torch.randn(6, 4, dtype=torch.float16), torch.tensor([0, 1, 0, 1, 2, 2]))
    assert memory.queue_features.dtype == torch.float32 and memory.queue_features.shape == (10, 4)
    assert memory.filled == 6


@pytest.mark.parametrize(
    ("make", "call", "error", "message"),
    [
        (
            lambda: ContrastiveMemory(torch.nn.MSELoss(), 4),
            None,
            TypeError,
            "loss must be one of asymcl.losses' loss modules",
        ),
        (lambda: ContrastiveMemory(SupConLoss(), -1), None, ValueError, "memory_size must be an int >= 0"),
        (lambda: ContrastiveMemory(SupConLoss(), 2.5), None, ValueError, "memory_size must be an int >= 0"),
        (
            lambda: ContrastiveMemory(SupConLoss(), 4),
            lambda m: m(X, None),
            ValueError,
            "ContrastiveMemory needs labels",
        ),
        (
            lambda: ContrastiveMemory(SupConLoss(), 4),
            lambda m: m(X, Y, enqueue=1),
            TypeError,
            "enqueue must be True, False or None",
        ),
        (
            lambda: ContrastiveMemory(SupConLoss(), 16),
            lambda m: (m(X, Y), m(torch.randn(4, 2, 7), Y)),
            ValueError,
            "features have dimension 7 but the memory holds rows of dimension 3",
        ),
        (
            lambda: ContrastiveMemory(SupConLoss(), 16),
            lambda m: (m(X, Y), m(torch.full((4, 3), float("nan")), Y)),
            ValueError,
            "features contains 12 NaN",
        ),
    ],
)
def test_memory_bad_input(make, call, error, message):
    with pytest.raises(error, match=message):
        module = make()
        call(module)


def test_a_rejected_batch_is_not_enqueued():
    memory = ContrastiveMemory(SupConLoss(), 16)
    memory(X, Y)
    with pytest.raises(ValueError, match="NaN"):
        memory(torch.full((4, 2, 3), float("nan")), Y)
    assert memory.filled == 8

"""The row-blocked AFCL core (asymcl.losses._blockwise) against an independent loop implementation.

The loop implementation below follows method.md section 1 word for word, one anchor and one pair at
a time in float64 (no log-sum-exp tricks: it is only used where plain float64 is exact enough).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from asymcl.losses import _blockwise, _reference
from asymcl.losses._blockwise import per_anchor_loss, prefer_blockwise
from naive_afcl import naive_afcl

torch.set_num_threads(2)


def loop_per_anchor_loss(anchors, contrast, anchor_index, positive, gamma, eta, temperature, normalization, n_total):
    """method.md section 1 by plain loops; positive[i][j] says whether j is in P(i) (self ignored)."""
    losses = []
    for i in range(anchors.shape[0]):
        others = [j for j in range(contrast.shape[0]) if j != int(anchor_index[i])]
        sims = {j: torch.dot(anchors[i], contrast[j]) / temperature for j in others}
        denominator = sum(torch.exp(sims[j]) for j in others)
        pos = anchors.new_zeros(())
        neg = anchors.new_zeros(())
        n_pos = n_neg = 0
        for j in others:
            p = torch.exp(sims[j]) / denominator
            if positive[i][j]:
                pos = pos - (1 - p) ** gamma * torch.log(p)
                n_pos += 1
            else:
                neg = neg - torch.log(1 - p)
                n_neg += 1
        if normalization == "batch":
            w_pos = w_neg = 1.0 / n_total
        else:
            w_pos = 1.0 / n_pos if n_pos else 0.0
            w_neg = 1.0 / n_neg if n_neg else 0.0
        losses.append(w_pos * pos + eta * w_neg * neg)
    return torch.stack(losses)


def unit_rows(n, d, *, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def label_positive(anchor_labels, contrast_labels):
    return (anchor_labels[:, None] == contrast_labels[None, :]).tolist()


def both_grads(fn, anchors, contrast, weights):
    """Loss values and gradients to anchors and contrast for sum(weights * fn(a, c))."""
    a = anchors.detach().clone().requires_grad_()
    c = contrast.detach().clone().requires_grad_()
    out = fn(a, c)
    (out * weights).sum().backward()
    return out.detach(), a.grad, c.grad


@pytest.mark.parametrize("normalization", ["batch", "pairs"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("eta", [0.0, 1.0, 50.0])
def test_matches_loops_with_labels_on_anchor_subset(normalization, gamma, eta):
    # The distributed case: 7 local anchors out of a global batch of 12; class 3 appears once
    # (an anchor with no positive), block size 3 does not divide 7.
    contrast = unit_rows(12, 5, seed=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2, 1, 0, 2, 1])
    anchor_index = torch.tensor([1, 5, 6, 0, 11, 3, 8])
    anchors = contrast[anchor_index]
    weights = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)  # not uniform upstream gradient
    kw = dict(gamma=gamma, eta=eta, temperature=0.3, normalization=normalization, n_total=12)

    def fast(a, c):
        return per_anchor_loss(
            a,
            c,
            anchor_index,
            anchor_labels=labels[anchor_index],
            contrast_labels=labels,
            mask=None,
            block_size=3,
            **kw,
        )

    def loops(a, c):
        return loop_per_anchor_loss(a, c, anchor_index, label_positive(labels[anchor_index], labels), **kw)

    got = both_grads(fast, anchors, contrast, weights)
    want = both_grads(loops, anchors, contrast, weights)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("normalization", ["batch", "pairs"])
@pytest.mark.parametrize(("gamma", "eta"), [(0.0, 0.0), (0.5, 1.0), (2.0, 50.0)])
def test_matches_loops_with_mask_and_shared_tensor(normalization, gamma, eta):
    # A random, asymmetric positive mask with the diagonal set (it must be ignored); anchors and
    # contrast are the same leaf tensor, so autograd sums the two gradients.
    n = 10
    z = unit_rows(n, 4, seed=2)
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(n, n, generator=g) < 0.3
    mask.fill_diagonal_(True)
    mask[4] = True  # anchor 4: every other row positive, no negative
    mask[7] = False  # anchor 7: no positive
    mask[7, 7] = True
    index = torch.arange(n)
    kw = dict(gamma=gamma, eta=eta, temperature=0.5, normalization=normalization, n_total=n)
    weights = torch.arange(1, n + 1, dtype=torch.float64)

    z_fast = z.clone().requires_grad_()
    out = per_anchor_loss(
        z_fast, z_fast, index, anchor_labels=None, contrast_labels=None, mask=mask, block_size=4, **kw
    )
    (out * weights).sum().backward()
    z_loop = z.clone().requires_grad_()
    want = loop_per_anchor_loss(z_loop, z_loop, index, mask.tolist(), **kw)
    (want * weights).sum().backward()
    torch.testing.assert_close(out.detach(), want.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(z_fast.grad, z_loop.grad, rtol=1e-9, atol=1e-12)
    # Anchor 7 has no positive: pos_7 = 0, but the eta term is still there.
    assert (out[7] > 0) if eta > 0 else (out[7] == 0)


@pytest.mark.parametrize("block_size", [1, 3, 7, 8, 64, None])
def test_block_size_does_not_change_the_result(block_size):
    contrast = unit_rows(23, 6, seed=4)
    labels = torch.arange(23) % 4
    anchor_index = torch.arange(0, 23, 3)  # 8 anchors: 3 and 7 do not divide it
    anchors = contrast[anchor_index]
    kw = dict(
        anchor_labels=labels[anchor_index],
        contrast_labels=labels,
        mask=None,
        gamma=1.5,
        eta=3.0,
        temperature=0.2,
        normalization="pairs",
        n_total=23,
    )
    weights = torch.rand(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    got = both_grads(
        lambda a, c: per_anchor_loss(a, c, anchor_index, block_size=block_size, **kw), anchors, contrast, weights
    )
    want = both_grads(lambda a, c: _reference.per_anchor_loss(a, c, anchor_index, **kw), anchors, contrast, weights)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_float32_equals_reference_to_1e5_relative(normalization):
    n = 300
    z = unit_rows(n, 32, seed=5, dtype=torch.float32)
    labels = torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(6))
    labels[0] = 99  # lone minority sample
    index = torch.arange(n)
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=2.0,
        eta=50.0,
        temperature=0.07,
        normalization=normalization,
        n_total=n,
    )
    weights = torch.full((n,), 1.0 / n)

    got = both_grads(lambda a, c: per_anchor_loss(a, c, index, block_size=37, **kw), z, z, weights)
    want = both_grads(lambda a, c: _reference.per_anchor_loss(a, c, index, **kw), z, z, weights)
    torch.testing.assert_close(got[0].sum(), want[0].sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


@pytest.mark.parametrize(
    ("gamma", "eta", "normalization"), [(0.5, 2.0, "batch"), (2.0, 1.0, "pairs"), (0.0, 0.0, "pairs")]
)
def test_gradcheck_float64(gamma, eta, normalization):
    contrast = unit_rows(9, 4, seed=7).requires_grad_()
    anchors = unit_rows(5, 4, seed=8).requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1, 3])
    anchor_index = torch.tensor([0, 2, 4, 8, 5])

    def fn(a, c):
        return per_anchor_loss(
            a,
            c,
            anchor_index,
            anchor_labels=labels[anchor_index],
            contrast_labels=labels,
            mask=None,
            gamma=gamma,
            eta=eta,
            temperature=0.4,
            normalization=normalization,
            n_total=9,
            block_size=2,
        )

    assert torch.autograd.gradcheck(fn, (anchors, contrast))


def near_duplicate_views(n_images, d, *, seed, noise):
    """Two views per image, the second perturbed by noise[k]; the first half of the images are
    close to each other (spread 0.05, so p stays well below 1 at tau = 0.01), the second half are
    random directions (p of the partner view within 1e-20 of 1 at tau = 0.01)."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.nn.functional.normalize(torch.randn(d, generator=g, dtype=torch.float64), dim=0)
    half = n_images // 2
    base = torch.cat(
        [
            centre + 0.05 * torch.randn(half, d, generator=g, dtype=torch.float64),
            torch.randn(n_images - half, d, generator=g, dtype=torch.float64),
        ]
    )
    base = torch.nn.functional.normalize(base, dim=1)
    jitter = noise[:, None] * torch.randn(n_images, d, generator=g, dtype=torch.float64)
    views = torch.cat([base, base + jitter])
    labels = torch.arange(n_images).repeat(2)
    return torch.nn.functional.normalize(views, dim=1), labels


@pytest.mark.parametrize("gamma", [0.0, 0.3, 2.0])
def test_low_temperature_near_duplicates_float32_matches_float64(gamma):
    noise = torch.cat([torch.zeros(2, dtype=torch.float64), torch.logspace(-4, -1.5, 14)])
    z64, labels = near_duplicate_views(16, 32, seed=9, noise=noise)
    z32 = z64.float()
    n, tau = 32, 0.01
    index = torch.arange(n)
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=gamma,
        eta=5.0,
        temperature=tau,
        normalization="batch",
        n_total=n,
    )
    weights = torch.full((n,), 1 / n, dtype=torch.float64)
    # float64 on the very same (float32-rounded) inputs, so only the arithmetic differs.
    want = both_grads(lambda a, c: _reference.per_anchor_loss(a, c, index, **kw), z32.double(), z32.double(), weights)
    got = both_grads(lambda a, c: per_anchor_loss(a, c, index, block_size=5, **kw), z32, z32, weights.float())
    # Gradients are O(1 / (tau * n)) where the loss is not saturated; float32 resolves p to ~1e-7
    # of that scale (a saturated p = 1 - 1e-30 is 1 in float32, its 1e-30 gradient is rounding).
    grad_scale = 1.0 / (tau * n)
    for g in got:
        assert torch.isfinite(g).all()
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-4, atol=1e-6 / n)
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-5 * grad_scale)
    assert want[1].abs().max() > 100 * 1e-5 * grad_scale  # the comparison is not vacuous


def test_argmax_negative_where_the_rest_underflows():
    # Anchor 0's nearest row is a *negative* with a similarity margin of 0.6 at tau = 0.01: the
    # others are exp(-60) below it, so p = 1 - 9e-27 and a naive log(1 - p) is log(0) = -inf.
    anchor = torch.tensor([1.0, 0.0, 0.0])
    near = anchor.clone()
    others = torch.tensor(
        [[0.4, math.sqrt(1 - 0.16), 0.0], [0.4, 0.0, math.sqrt(1 - 0.16)], [0.3, -math.sqrt(1 - 0.09), 0.0]]
    )
    z64 = torch.cat([anchor[None], near[None], others]).double()
    labels = torch.tensor([0, 1, 2, 2, 0])  # row 4 (a positive of anchor 0) is far away
    index = torch.arange(5)
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=0.5,
        eta=1.0,
        temperature=0.01,
        normalization="pairs",
        n_total=5,
    )
    weights = torch.ones(5)
    got = both_grads(lambda a, c: per_anchor_loss(a, c, index, **kw), z64.float(), z64.float(), weights)
    want = both_grads(lambda a, c: _reference.per_anchor_loss(a, c, index, **kw), z64, z64, weights.double())
    # s = (100, 40, 40, 30) over rows 1..4; row 4 is the only positive, rows 1..3 negatives.
    lse = math.log(math.exp(100) + 2 * math.exp(40) + math.exp(30))
    pos = -((1 - math.exp(30 - lse)) ** 0.5) * (30 - lse)
    neg = -(math.log(2 * math.exp(40) + math.exp(30)) - lse) - 2 * math.log1p(-math.exp(40 - lse))
    assert got[0][0].item() == pytest.approx(pos + neg / 3, rel=1e-5)  # neg ~ 59.3, not inf
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4 * w.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    z64, labels = near_duplicate_views(20, 16, seed=10, noise=torch.logspace(-3, -0.5, 20))
    z_half = z64.to(dtype)
    index = torch.arange(40)
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=2.0,
        eta=10.0,
        temperature=0.07,
        normalization="batch",
        n_total=40,
    )
    z = z_half.clone().requires_grad_()
    out = per_anchor_loss(z, z, index, **kw)
    assert out.dtype == torch.float32
    out.mean().backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all()
    # Against float64 on the same (rounded) inputs.
    w = z_half.double().requires_grad_()
    want = _reference.per_anchor_loss(w, w, index, **kw)
    want.mean().backward()
    torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), w.grad, rtol=1e-2, atol=1e-2 * w.grad.abs().max().item())


def test_autocast_does_not_lower_the_precision():
    z = unit_rows(50, 16, seed=11, dtype=torch.float32)
    labels = torch.arange(50) % 5
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=1.0,
        eta=2.0,
        temperature=0.1,
        normalization="pairs",
        n_total=50,
    )
    plain = per_anchor_loss(z, z, torch.arange(50), **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = per_anchor_loss(z, z, torch.arange(50), **kw)
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=1e-6, atol=0)


def test_two_row_batch_negative_is_infinite_not_nan():
    # M = 2: the single other row has p = 1 exactly; as a positive it costs 0, as a negative inf.
    z = unit_rows(2, 3, seed=12)
    index = torch.arange(2)
    same = per_anchor_loss(
        z,
        z,
        index,
        anchor_labels=torch.tensor([0, 0]),
        contrast_labels=torch.tensor([0, 0]),
        mask=None,
        gamma=0.5,
        eta=1.0,
        temperature=0.1,
        normalization="batch",
        n_total=2,
    )
    assert torch.equal(same, torch.zeros(2, dtype=torch.float64))
    differ = per_anchor_loss(
        z,
        z,
        index,
        anchor_labels=torch.tensor([0, 1]),
        contrast_labels=torch.tensor([0, 1]),
        mask=None,
        gamma=0.5,
        eta=1.0,
        temperature=0.1,
        normalization="batch",
        n_total=2,
    )
    assert torch.isposinf(differ).all()


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_the_whole_batch_is_ever_built():
    n, d, block = 200, 8, 16
    z = unit_rows(n, d, seed=13, dtype=torch.float32).requires_grad_()
    labels = torch.arange(n) % 9
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=2.0,
        eta=5.0,
        temperature=0.1,
        normalization="pairs",
        n_total=n,
    )
    # One thread: a dispatch mode sees the ops of its own thread only.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _LargestTensor() as probe:
            per_anchor_loss(z, z, torch.arange(n), block_size=block, **kw).sum().backward()
    finally:
        torch.set_num_threads(threads)
    assert probe.largest == block * n  # one block of similarities, nothing of size n * n
    with _LargestTensor() as probe_reference:
        _reference.per_anchor_loss(z, z, torch.arange(n), **kw).sum().backward()
    assert probe_reference.largest >= n * n


def test_automatic_block_size_fits_the_budget():
    rows = _blockwise.auto_block_size(32768, 32768, torch.device("cpu"), torch.float32)
    assert 1 <= rows < 32768
    assert rows * 32768 * 4 * _blockwise.LIVE_BUFFERS <= _blockwise.CPU_BLOCK_BUDGET_BYTES
    assert _blockwise.auto_block_size(10, 10, torch.device("cpu"), torch.float32) == 10


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_on_parallel_threads_give_the_same_result(threads):
    z = unit_rows(50, 6, seed=18, dtype=torch.float32)
    labels = torch.arange(50) % 4
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=0.5,
        eta=3.0,
        temperature=0.1,
        normalization="pairs",
        n_total=50,
    )
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for weights in (torch.full((50,), 0.02), torch.linspace(0.0, 1.0, 50)):
            got = both_grads(lambda a, c: per_anchor_loss(a, c, torch.arange(50), block_size=7, **kw), z, z, weights)
            want = both_grads(lambda a, c: _reference.per_anchor_loss(a, c, torch.arange(50), **kw), z, z, weights)
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        assert torch.get_num_threads() == threads  # the caller's setting survives the worker pool
    finally:
        torch.set_num_threads(before)


def test_prefer_blockwise_answers_a_bool():
    for n in (2, 256, 4096, 100000):
        assert isinstance(prefer_blockwise(n, torch.device("cpu")), bool)
        assert isinstance(prefer_blockwise(n, torch.device("cuda")), bool)
    assert prefer_blockwise(4096, torch.device("cpu"))
    assert not prefer_blockwise(16, torch.device("cpu"))


def _call(**overrides):
    z = unit_rows(6, 3, seed=14)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=1.0,
        eta=1.0,
        temperature=0.1,
        normalization="batch",
        n_total=6,
    )
    args = dict(anchors=z, contrast=z, anchor_index=torch.arange(6))
    for key, value in overrides.items():
        (args if key in args else kw)[key] = value
    return per_anchor_loss(args["anchors"], args["contrast"], args["anchor_index"], **kw)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(block_size=0), "block_size"),
        (dict(block_size=-3), "block_size"),
        (dict(block_size=2.5), "block_size"),
        (dict(block_size=True), "block_size"),
        (dict(normalization="mean"), "normalization"),
        (dict(temperature=0.0), "temperature"),
        (dict(gamma=-1.0), "gamma"),
        (dict(eta=float("nan")), "eta"),
        (dict(n_total=0), "n_total"),
        (dict(mask=torch.ones(6, 6, dtype=torch.bool)), "exactly one"),
        (dict(anchor_labels=None, contrast_labels=None, mask=torch.ones(6, 5, dtype=torch.bool)), "mask"),
        (dict(anchor_labels=None, contrast_labels=None, mask=torch.ones(6, 6)), "mask"),
        (dict(anchor_index=torch.tensor([0, 1, 2, 3, 4, 6])), "anchor_index"),
        (dict(anchor_index=torch.arange(5)), "anchor_index"),
        (dict(anchor_labels=torch.zeros(5, dtype=torch.int64)), "anchor_labels"),
        (dict(contrast=unit_rows(6, 4, seed=0)), "feature dimension"),
    ],
)
def test_bad_arguments_name_themselves(override, message):
    with pytest.raises(ValueError, match=message):
        _call(**override)


def test_float_labels_are_a_type_error():
    with pytest.raises(TypeError, match="integer"):
        _call(anchor_labels=torch.zeros(6), contrast_labels=torch.zeros(6))


@pytest.mark.parametrize(
    ("gamma", "eta", "normalization"), [(0.0, 0.0, "batch"), (0.5, 50.0, "pairs"), (2.0, 1.0, "batch")]
)
def test_uniform_upstream_gradient_takes_the_forward_computed_gradients(gamma, eta, normalization):
    # loss = per_anchor.sum() * c: the backward only scales the gradients the forward computed.
    contrast = unit_rows(12, 5, seed=15)
    labels = torch.tensor([0, 1, 0, 2, 1, 3, 0, 2, 1, 0, 2, 1])
    anchor_index = torch.tensor([1, 5, 6, 0, 11, 3, 8])
    anchors = contrast[anchor_index]
    kw = dict(gamma=gamma, eta=eta, temperature=0.3, normalization=normalization, n_total=12)
    uniform = torch.full((7,), -0.7, dtype=torch.float64)

    got = both_grads(
        lambda a, c: per_anchor_loss(
            a,
            c,
            anchor_index,
            anchor_labels=labels[anchor_index],
            contrast_labels=labels,
            mask=None,
            block_size=3,
            **kw,
        ),
        anchors,
        contrast,
        uniform,
    )
    want = both_grads(
        lambda a, c: loop_per_anchor_loss(a, c, anchor_index, label_positive(labels[anchor_index], labels), **kw),
        anchors,
        contrast,
        uniform,
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_forward_without_grad_needs_no_backward_state():
    z = unit_rows(30, 4, seed=16)
    labels = torch.arange(30) % 3
    kw = dict(
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=1.0,
        eta=1.0,
        temperature=0.2,
        normalization="batch",
        n_total=30,
    )
    with torch.no_grad():
        out = per_anchor_loss(z.clone().requires_grad_(), z, torch.arange(30), **kw)
    assert out.grad_fn is None
    torch.testing.assert_close(out, per_anchor_loss(z, z, torch.arange(30), **kw))


@pytest.mark.parametrize(
    ("gamma", "eta", "normalization"), [(0.5, 50.0, "batch"), (2.0, 1.0, "pairs"), (0.0, 0.0, "pairs")]
)
def test_total_equals_the_shared_naive_oracle_in_exact_arithmetic(gamma, eta, normalization):
    # tests/naive_afcl.py (the loss layer's oracle) in 60-digit decimals: exact even where the
    # partner view has p within 1e-20 of 1 (tau = 0.01, duplicates and near-duplicates).
    noise = torch.tensor([0.0, 1e-4, 1e-3, 1e-2, 0.03, 0.1], dtype=torch.float64)
    z, labels = near_duplicate_views(6, 8, seed=17, noise=noise)
    n = z.shape[0]
    positive = label_positive(labels, labels)
    want = naive_afcl(z, positive, gamma, eta, 0.01, normalization, exact=True)
    got = (
        per_anchor_loss(
            z,
            z,
            torch.arange(n),
            anchor_labels=labels,
            contrast_labels=labels,
            mask=None,
            gamma=gamma,
            eta=eta,
            temperature=0.01,
            normalization=normalization,
            n_total=n,
        ).sum()
        / n
    )
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_backward_through_a_retained_graph_is_repeatable():
    z = unit_rows(9, 3, seed=19).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2])
    out = per_anchor_loss(
        z,
        z,
        torch.arange(9),
        anchor_labels=labels,
        contrast_labels=labels,
        mask=None,
        gamma=1.0,
        eta=2.0,
        temperature=0.3,
        normalization="batch",
        n_total=9,
    ).sum()
    (first,) = torch.autograd.grad(out, z, retain_graph=True)
    (second,) = torch.autograd.grad(out, z)
    assert torch.equal(first, second)

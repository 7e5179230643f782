"""Row-blocked AFCL core with an analytic backward (issue 6).

Same contract as :func:`asymcl.losses._reference.per_anchor_loss` (docs/architecture.md, layer 1);
this version never materialises an (A, M) matrix of the whole batch. It walks over blocks of B
anchor rows; for each block it computes the (B, M) similarities, everything the loss needs from them,
and throws them away. The forward keeps three numbers per anchor (the row log-sum-exp, the row
argmax and the log-sum-exp with the argmax left out); the backward recomputes each block's
similarities from the embeddings and applies the closed-form gradient below. Peak extra memory is
a few (B, M) buffers instead of the dozen (N, N) temporaries plain autograd keeps alive.

Math (method.md section 1), for one anchor row i, columns j in A(i) (every column but the anchor's
own), s_ij = a_i . c_j / tau:

    log p_ij  = s_ij - LSE_i,              LSE_i = logsumexp_{j in A(i)} s_ij
    log q_ij  = log(1 - p_ij)              (q for "the rest of the row")
    pos_i     = - sum_{j in P(i)} exp(gamma * log q_ij) * log p_ij
    neg_i     = - sum_{j in Q(i)} log q_ij
    loss_i    = w_pos(i) * pos_i + eta * w_neg(i) * neg_i

log q is computed without cancellation: for j other than the row argmax p_ij <= 1/2 and
log1p(-p_ij) is accurate; for the argmax, 1 - p_im = sum_{j != m} exp(s_ij) / sum_j exp(s_ij), so
log q_im = LSE_{j != m} - LSE_i, with the excluded log-sum-exp taken around its own maximum (it stays
accurate when every other entry underflows relative to the argmax, e.g. tau = 0.01 and a
near-duplicate).

Gradient. With d log p_ij / d s_ik = delta_jk - p_ik and d log q_ij / d s_ik = -r_ij (delta_jk - p_ik),
r_ij = p_ij / (1 - p_ij):

    d pos_i / d s_ik = -u_ik [k in P(i)] + p_ik * U_i,     U_i = sum_{j in P(i)} u_ij
    d neg_i / d s_ik =  r_ik [k in Q(i)] - p_ik * R_i,     R_i = sum_{j in Q(i)} r_ij
    u_ij = (1 - p_ij)^gamma * (1 + gamma * h_ij),   h_ij = -(p_ij / (1 - p_ij)) * log p_ij >= 0

The focal weight is differentiated (not detached), which is the gamma * h term. h is evaluated as
-log p * exp(logit) where the logit log(p / (1 - p)) <= 0, and as log1p(x) / x with x = (1 - p) / p
elsewhere, so u stays finite as p -> 1 even for gamma in (0, 1) (h -> 1 and (1 - p)^gamma -> 0).
Then d loss_i / d a_i = sum_k G_ik c_k / tau and d loss_i / d c_k = G_ik a_i / tau, two matrix
products per block, with G_ik = w_pos(i) * d pos_i / d s_ik + eta * w_neg(i) * d neg_i / d s_ik.

Precision: float16/bfloat16 inputs are computed in float32 (autograd casts the gradients back),
float64 stays float64; autocast is switched off inside, so the matrix products run in that precision
too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["per_anchor_loss", "prefer_blockwise", "auto_block_size"]

_NORMALIZATIONS = ("batch", "pairs")

# Memory for one block's temporaries. The backward holds about _LIVE_BUFFERS float (B, M) buffers at
# once (similarities/log p, p, log q, focal weight u, ratio r, the gradient block, masks).
# On CPU a block that stays within the last-level cache matters more than matrix-product efficiency;
# 16 MiB was the fastest budget at N = 4096 in benchmarks/bench_losses.py (--block-sweep): smaller
# blocks lose matmul efficiency, larger ones spill the elementwise passes to DRAM.
# On a GPU a larger block amortises kernel launches; 512 MiB is untested here (no GPU in the
# session that wrote this) but small next to any training GPU's memory.
_LIVE_BUFFERS = 8
_CPU_BLOCK_BUDGET_BYTES = 16 * 2**20
_GPU_BLOCK_BUDGET_BYTES = 512 * 2**20

# Below this x = (1 - p) / p the series log1p(x) / x = 1 - x/2 + x^2/3 - ... is used; the truncation
# error x^3 / 4 < 3e-10 is far below float32 resolution and below gradcheck tolerances in float64.
_SERIES_BELOW = 1e-3

# Largest logit whose exp is safely finite (with room for the factors it is multiplied by).
_EXP_SAFE = {torch.float32: 80.0, torch.float64: 700.0}


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def auto_block_size(n_anchors: int, n_contrast: int, device: torch.device, dtype: torch.dtype) -> int:
    """Anchor rows per block so that one block's temporaries fit the per-device memory budget."""
    budget = _GPU_BLOCK_BUDGET_BYTES if device.type == "cuda" else _CPU_BLOCK_BUDGET_BYTES
    itemsize = torch.empty((), dtype=_compute_dtype(dtype)).element_size()
    rows = budget // (_LIVE_BUFFERS * max(n_contrast, 1) * itemsize)
    return int(min(max(rows, 1), max(n_anchors, 1)))


def prefer_blockwise(n_rows: int, device: torch.device) -> bool:
    """Whether the blockwise path is the faster one for a batch of ``n_rows`` contrast rows.

    From benchmarks/bench_losses.py (CPU, 2 threads, D = 128, forward + backward, medians), the
    blockwise path against the plain autograd reference (asymcl.losses._reference):
    N = 256: see benchmarks/README.md; the crossover on CPU is below 256 rows, so CPU always prefers
    blockwise above _CPU_MIN_ROWS. On CUDA the crossover is not measured (no GPU here); plain
    autograd is a handful of large fused-by-cuBLAS kernels and is fast at small N, while its memory
    grows as N^2, so blockwise is preferred from _CUDA_MIN_ROWS rows on, where the reference's
    (N, N) temporaries start to cost more than a few hundred MiB.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return n_rows >= _CUDA_MIN_ROWS
    return n_rows >= _CPU_MIN_ROWS


_CPU_MIN_ROWS = 0
_CUDA_MIN_ROWS = 4096


def _check_inputs(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    anchor_labels: Tensor | None,
    contrast_labels: Tensor | None,
    mask: Tensor | None,
    gamma: float,
    eta: float,
    temperature: float,
    normalization: str,
    n_total: int,
    block_size: int | None,
) -> None:
    for name, t in (("anchors", anchors), ("contrast", contrast), ("anchor_index", anchor_index)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if anchors.dim() != 2 or contrast.dim() != 2:
        raise ValueError(
            f"anchors and contrast must be 2-D (rows, dim), got shapes {tuple(anchors.shape)} "
            f"and {tuple(contrast.shape)}"
        )
    if not anchors.is_floating_point() or not contrast.is_floating_point():
        raise TypeError(
            f"anchors and contrast must be floating point, got {anchors.dtype} and {contrast.dtype}"
        )
    n_anchors, dim = anchors.shape
    n_contrast = contrast.shape[0]
    if contrast.shape[1] != dim:
        raise ValueError(
            f"anchors and contrast must have the same feature dimension, got {dim} and "
            f"{contrast.shape[1]}"
        )
    if n_contrast < 2:
        raise ValueError(f"contrast needs at least 2 rows (an anchor and another), got {n_contrast}")
    if anchor_index.shape != (n_anchors,) or anchor_index.dtype != torch.int64:
        raise ValueError(
            f"anchor_index must be an int64 tensor of shape ({n_anchors},), got "
            f"{anchor_index.dtype} {tuple(anchor_index.shape)}"
        )
    if n_anchors and (int(anchor_index.min()) < 0 or int(anchor_index.max()) >= n_contrast):
        raise ValueError(f"anchor_index values must lie in [0, {n_contrast}) (rows of contrast)")
    if (mask is None) == (anchor_labels is None and contrast_labels is None):
        raise ValueError("give either anchor_labels and contrast_labels, or mask (exactly one)")
    if mask is None:
        if anchor_labels is None or contrast_labels is None:
            raise ValueError("anchor_labels and contrast_labels must be given together")
        if anchor_labels.shape != (n_anchors,) or contrast_labels.shape != (n_contrast,):
            raise ValueError(
                f"anchor_labels must have shape ({n_anchors},) and contrast_labels ({n_contrast},), "
                f"got {tuple(anchor_labels.shape)} and {tuple(contrast_labels.shape)}"
            )
        if anchor_labels.is_floating_point() or contrast_labels.is_floating_point():
            raise TypeError("anchor_labels and contrast_labels must be integer class ids")
    else:
        if mask.shape != (n_anchors, n_contrast) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape ({n_anchors}, {n_contrast}), got "
                f"{mask.dtype} {tuple(mask.shape)}"
            )
    for name, value in (("gamma", gamma), ("eta", eta)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    if isinstance(n_total, bool) or not isinstance(n_total, int) or n_total < 1:
        raise ValueError(f"n_total must be a positive int, got {n_total!r}")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive int or None (automatic), got {block_size!r}")


class _Block:
    """Masks and row statistics of one block of anchor rows [start, stop)."""

    def __init__(self, ctx_like, start: int, stop: int) -> None:
        self.rows = slice(start, stop)
        self_cols = ctx_like.anchor_index[start:stop, None]
        self.self_cols = self_cols
        if ctx_like.mask is not None:
            positive = ctx_like.mask[start:stop].clone()
        else:
            positive = ctx_like.anchor_labels[start:stop, None] == ctx_like.contrast_labels[None, :]
        positive.scatter_(1, self_cols, False)
        negative = ~positive
        negative.scatter_(1, self_cols, False)
        self.positive = positive
        self.negative = negative


class _State:
    """Inputs shared by forward and backward (plain attributes, no autograd)."""

    def __init__(self, anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                 gamma, eta, temperature):
        self.anchors = anchors
        self.contrast = contrast
        self.anchor_index = anchor_index
        self.anchor_labels = anchor_labels
        self.contrast_labels = contrast_labels
        self.mask = mask
        self.gamma = float(gamma)
        self.eta = float(eta)
        self.inv_temperature = 1.0 / float(temperature)


def _similarities(state: _State, block: _Block) -> Tensor:
    """s = a c^T / tau for the block, with the anchor's own column at -inf (out of A(i))."""
    s = torch.mm(state.anchors[block.rows], state.contrast.t())
    s.mul_(state.inv_temperature)
    s.scatter_(1, block.self_cols, -math.inf)
    return s


def _row_statistics(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(LSE over the row, argmax, LSE over the row without the argmax); s is restored on return."""
    row_max, argmax = s.max(dim=1)
    argmax_col = argmax[:, None]
    s.scatter_(1, argmax_col, -math.inf)
    second_max = s.max(dim=1).values
    # A row with a single column in A(i) has nothing left once the argmax is out: LSE = -inf there.
    shift = torch.where(torch.isfinite(second_max), second_max, torch.zeros_like(second_max))
    lse_without_max = torch.exp(s - shift[:, None]).sum(dim=1).log_().add_(shift)
    s.scatter_(1, argmax_col, row_max[:, None])
    lse = torch.logaddexp(row_max, lse_without_max)
    return lse, argmax, lse_without_max


def _log_probabilities(s: Tensor, lse: Tensor, argmax: Tensor, lse_without_max: Tensor):
    """(log p, log(1 - p)) of the block, overwriting s with log p."""
    log_p = s.sub_(lse[:, None])
    log_q = torch.exp(log_p).neg_().log1p_()
    log_q.scatter_(1, argmax[:, None], (lse_without_max - lse)[:, None])
    return log_p, log_q


def _focal_gradient_weight(log_p: Tensor, log_q: Tensor, gamma: float) -> Tensor:
    """u = (1 - p)^gamma * (1 + gamma * h), h = -(p / (1 - p)) log p, finite as p -> 1."""
    logit = log_p - log_q
    low = logit <= 0
    # p <= 1/2: h = -log p * p / (1 - p); exp(logit) <= 1, no overflow.
    h_low = torch.exp(torch.clamp(logit, max=0.0)).mul_(log_p).neg_()
    # p > 1/2: x = (1 - p) / p in (0, 1), h = log1p(x) / x.
    x = torch.exp(torch.clamp(logit, min=0.0).neg_())
    series = 1.0 - x * 0.5 + x * x / 3.0
    h_high = torch.where(x < _SERIES_BELOW, series, torch.log1p(x) / x.clamp(min=_SERIES_BELOW))
    h = torch.where(low, h_low, h_high)
    return torch.exp(log_q * gamma).mul_(h.mul_(gamma).add_(1.0))


def _weights(normalization: str, n_positive: Tensor, n_negative: Tensor, n_total: int, dtype):
    if normalization == "batch":
        w = torch.full(n_positive.shape, 1.0 / n_total, dtype=dtype, device=n_positive.device)
        return w, w
    w_pos = torch.where(n_positive > 0, 1.0 / n_positive.clamp(min=1).to(dtype), 0.0)
    w_neg = torch.where(n_negative > 0, 1.0 / n_negative.clamp(min=1).to(dtype), 0.0)
    return w_pos, w_neg


def _block_gradient(state: _State, block: _Block, lse: Tensor, argmax: Tensor,
                    lse_without_max: Tensor, pos_scale: Tensor, neg_scale: Tensor) -> Tensor:
    """d loss / d s for one block, (B, M), already scaled by w(i) * upstream grad / tau.

    Away from the argmax column m the closed form of the module docstring is evaluated directly.
    At m it cancels badly when p_im -> 1 (r_im = p/(1-p) is huge while the gradient is O(1)), so
    the terms are regrouped there: with U' = U - u_im and R' = R - r_im,

        d pos / d s_im = p_im U' - (1 - p_im) u_im [m in P]
        d neg / d s_im = p_im [m in Q] - p_im R'

    and, for k != m, p_ik r_im = exp(log p_ik + logit_im) is bounded by p_im, evaluated in log
    space where r_im itself would overflow.
    """
    s = _similarities(state, block)
    log_p, log_q = _log_probabilities(s, lse, argmax, lse_without_max)
    p = torch.exp(log_p)
    am = argmax[:, None]
    p_m = p.gather(1, am)
    log_q_m = (lse_without_max - lse)[:, None]
    q_m = torch.exp(log_q_m)

    if state.gamma == 0.0:
        u = block.positive.to(p.dtype)
    else:
        u = torch.where(block.positive, _focal_gradient_weight(log_p, log_q, state.gamma), 0.0)
    u_total = u.sum(dim=1, keepdim=True)
    u_m = u.gather(1, am)
    grad_m = pos_scale * (p_m * (u_total - u_m) - q_m * u_m)
    row_coef = pos_scale * u_total
    grad_s = u.mul_(pos_scale).neg_()  # -w_pos u [P]
    del u

    if state.eta != 0.0:
        r = torch.where(block.negative, torch.exp(log_p - log_q), 0.0)
        r.scatter_(1, am, 0.0)
        r_rest = r.sum(dim=1, keepdim=True)
        m_negative = block.negative.gather(1, am)
        logit_m = log_p.gather(1, am) - log_q_m
        overflow = m_negative & (logit_m > _EXP_SAFE[p.dtype]) & torch.isfinite(log_q_m)
        r_m = torch.where(m_negative & ~overflow,
                          torch.exp(logit_m.clamp(max=_EXP_SAFE[p.dtype])), 0.0)
        row_coef = row_coef - neg_scale * (r_rest + r_m)
        grad_s.add_(r.mul_(neg_scale))
        del r
        grad_m = grad_m + neg_scale * p_m * (m_negative.to(p.dtype) - r_rest)
        rows = overflow.squeeze(1).nonzero().squeeze(1)
        if rows.numel():
            grad_s[rows] -= neg_scale[rows] * torch.exp(log_p[rows] + logit_m[rows])

    grad_s.addcmul_(p, row_coef)
    grad_s.scatter_(1, am, grad_m)
    # One column in A(i) (M = 2): p = 1 identically, the row's loss is a constant.
    grad_s.masked_fill_(~torch.isfinite(log_q_m), 0.0)
    return grad_s


class _BlockwiseAFCL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                gamma, eta, temperature, normalization, n_total, block_size):
        device_type = anchors.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            state = _State(anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                           gamma, eta, temperature)
            n_anchors = anchors.shape[0]
            dtype = anchors.dtype
            lse = anchors.new_empty(n_anchors)
            lse_without_max = anchors.new_empty(n_anchors)
            argmax = torch.empty(n_anchors, dtype=torch.int64, device=anchors.device)
            pos = anchors.new_zeros(n_anchors)
            neg = anchors.new_zeros(n_anchors)
            n_positive = torch.empty(n_anchors, dtype=torch.int64, device=anchors.device)
            for start in range(0, n_anchors, block_size):
                stop = min(start + block_size, n_anchors)
                block = _Block(state, start, stop)
                s = _similarities(state, block)
                b_lse, b_argmax, b_lse_wo = _row_statistics(s)
                lse[start:stop], argmax[start:stop], lse_without_max[start:stop] = (
                    b_lse, b_argmax, b_lse_wo)
                log_p, log_q = _log_probabilities(s, b_lse, b_argmax, b_lse_wo)
                n_positive[start:stop] = block.positive.sum(dim=1)
                if state.gamma == 0.0:
                    pos_term = log_p
                else:
                    pos_term = torch.exp(log_q * state.gamma).mul_(log_p)
                pos[start:stop] = torch.where(block.positive, pos_term, 0.0).sum(dim=1).neg_()
                if state.eta != 0.0:
                    neg[start:stop] = torch.where(block.negative, log_q, 0.0).sum(dim=1).neg_()
            n_negative = (contrast.shape[0] - 1) - n_positive
            w_pos, w_neg = _weights(normalization, n_positive, n_negative, n_total, dtype)
            out = w_pos * pos
            if state.eta != 0.0:
                out = out + state.eta * w_neg * neg
        ctx.save_for_backward(anchors, contrast, anchor_index, anchor_labels, contrast_labels,
                              mask, lse, argmax, lse_without_max, w_pos, w_neg)
        ctx.settings = (gamma, eta, temperature, block_size)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        (anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, lse, argmax,
         lse_without_max, w_pos, w_neg) = ctx.saved_tensors
        gamma, eta, temperature, block_size = ctx.settings
        need_anchors, need_contrast = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            state = _State(anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                           gamma, eta, temperature)
            grad_out = grad_out.to(anchors.dtype)
            # Fold the upstream gradient and 1/tau into the per-row weights.
            scale = grad_out * state.inv_temperature
            pos_scale = w_pos * scale
            neg_scale = w_neg * scale * state.eta
            grad_anchors = torch.empty_like(anchors) if need_anchors else None
            grad_contrast = torch.zeros_like(contrast) if need_contrast else None
            n_anchors = anchors.shape[0]
            for start in range(0, n_anchors, block_size):
                stop = min(start + block_size, n_anchors)
                block = _Block(state, start, stop)
                grad_s = _block_gradient(
                    state, block, lse[start:stop], argmax[start:stop],
                    lse_without_max[start:stop], pos_scale[start:stop, None],
                    neg_scale[start:stop, None])
                if need_anchors:
                    torch.mm(grad_s, contrast, out=grad_anchors[block.rows])
                if need_contrast:
                    grad_contrast.addmm_(grad_s.t(), anchors[block.rows])
        return (grad_anchors, grad_contrast) + (None,) * 10


def per_anchor_loss(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    *,
    anchor_labels: Tensor | None,
    contrast_labels: Tensor | None,
    mask: Tensor | None,
    gamma: float,
    eta: float,
    temperature: float,
    normalization: str,
    n_total: int,
    block_size: int | None = None,
) -> Tensor:
    """Per-anchor AFCL, ``w_pos(i) * pos_i + eta * w_neg(i) * neg_i``, shape (A,).

    anchors: (A, D) L2-normalised anchor rows; contrast: (M, D) rows every anchor is contrasted
    with; anchor_index: (A,) int64 position of each anchor in ``contrast`` (left out of its A(i)).
    Positives are the other columns with the anchor's label (``anchor_labels`` (A,),
    ``contrast_labels`` (M,)) or the True entries of ``mask`` (A, M) bool (the anchor's own column
    is ignored). ``normalization`` "batch" weighs both parts by 1/n_total, "pairs" by 1/|P(i)| and
    1/|Q(i)| (0 for an empty set). ``block_size`` anchor rows are processed at a time (None: chosen
    from a per-device memory budget, see :func:`auto_block_size`).

    The result is float32 (float64 for float64 inputs); gradients flow to ``anchors`` and
    ``contrast`` (summed by autograd when they are the same tensor) and are cast back to their dtype.
    """
    _check_inputs(anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, gamma,
                  eta, temperature, normalization, n_total, block_size)
    dtype = _compute_dtype(anchors.dtype)
    anchors_c = anchors.to(dtype)
    contrast_c = anchors_c if contrast is anchors else contrast.to(dtype)
    if block_size is None:
        block_size = auto_block_size(anchors.shape[0], contrast.shape[0], anchors.device, dtype)
    if anchors.shape[0] == 0:
        return anchors_c.new_zeros(0) + 0.0 * anchors_c.sum()
    return _BlockwiseAFCL.apply(
        anchors_c, contrast_c, anchor_index, anchor_labels, contrast_labels, mask,
        float(gamma), float(eta), float(temperature), normalization, n_total, int(block_size))

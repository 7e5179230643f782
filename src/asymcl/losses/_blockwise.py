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

from asymcl.losses import _deferred, _reference
from asymcl.losses._block_policy import (  # noqa: F401 (re-exported: the policy's old home)
    CPU_BLOCK_BUDGET_BYTES,
    CPU_MIN_ROWS,
    CUDA_MIN_ROWS,
    GPU_BLOCK_BUDGET_BYTES,
    LIVE_BUFFERS,
    auto_block_size,
    compute_dtype,
    prefer_blockwise,
)
from asymcl.losses._block_threads import PER_THREAD_NUM_THREADS, THREAD_BLOCKS_FROM, block_workers, for_each_block
from asymcl.losses._validation import check_core_arguments

__all__ = ["per_anchor_loss", "prefer_blockwise", "auto_block_size"]

# Below this x = (1 - p) / p the series log1p(x) / x = 1 - x/2 + x^2/3 - ... is used; the truncation
# error x^3 / 4 < 3e-10 is far below float32 resolution and below gradcheck tolerances in float64.
_SERIES_BELOW = 1e-3

# Largest logit whose exp is safely finite (with room for the factors it is multiplied by).
_EXP_SAFE = {torch.float32: 80.0, torch.float64: 700.0}


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
        # 1/tau folded into the (A, D) anchors once instead of into every (B, M) block.
        self.scaled_anchors = anchors * self.inv_temperature
        self.contrast_t = contrast.t()


class _Block:
    """One block of anchor rows [start, stop): its similarities and masks."""

    def __init__(self, state: _State, start: int, stop: int) -> None:
        self.rows = slice(start, stop)
        self.self_cols = state.anchor_index[start:stop, None]
        if state.mask is not None:
            positive = state.mask[start:stop].clone()
        else:
            positive = state.anchor_labels[start:stop, None] == state.contrast_labels[None, :]
        positive.scatter_(1, self.self_cols, False)
        self.positive = positive
        self._state = state

    def negative(self) -> Tensor:
        negative = ~self.positive
        negative.scatter_(1, self.self_cols, False)
        return negative

    def similarities(self) -> Tensor:
        """s = a c^T / tau, (B, M), with the anchor's own column at -inf (out of A(i))."""
        s = torch.mm(self._state.scaled_anchors[self.rows], self._state.contrast_t)
        s.scatter_(1, self.self_cols, -math.inf)
        return s


def _focal_gradient_weight(log_p: Tensor, log_q: Tensor, gamma: float) -> Tensor:
    """u = (1 - p)^gamma * (1 + gamma * h), h = -(p / (1 - p)) log p, finite as p -> 1.

    Used on the argmax column only (one entry per row), where p may be close to 1.
    """
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


def _block_forward(state: _State, block: _Block):
    """Per-row (pos, neg, LSE, argmax, LSE without the argmax) of one block.

    Every (B, M) step below is one pass over the block, most of them in place: the block's cost is
    dominated by these passes, not by the matrix product.
    """
    s = block.similarities()
    row_max, argmax = s.max(dim=1)
    am = argmax[:, None]
    s.sub_(row_max[:, None])  # s - max <= 0, 0 at the argmax
    e = torch.exp(s)
    e.scatter_(1, am, 0.0)
    rest = e.sum(dim=1)  # sum_{j != argmax} exp(s_ij - max): no 1 + tiny - 1 cancellation
    log_rest = torch.log(rest)
    # Where every other entry is far below the maximum (tau = 0.01, a near-duplicate), `rest`
    # underflows or loses precision in the subnormal range: recompute those few rows around their
    # own second maximum.
    tiny = torch.finfo(s.dtype).tiny * 2**24
    if _deferred.defers(s.device):
        # No host sync (which rows underflow is a device value): recompute every row, keep the
        # recomputed value where `rest` underflows. One extra (B, M) log-sum-exp pass.
        log_rest = torch.where(rest < tiny, torch.logsumexp(s.scatter(1, am, -math.inf), dim=1), log_rest)
    else:
        underflow = (rest < tiny).nonzero().squeeze(1)
        if underflow.numel():
            others = s[underflow].scatter_(1, am[underflow], -math.inf)
            log_rest[underflow] = torch.logsumexp(others, dim=1)
    log_total = torch.log1p(rest)  # log sum_j exp(s_ij - max), the argmax contributing 1
    lse = row_max + log_total
    lse_without_max = row_max + log_rest
    log_p = s.sub_(log_total[:, None])
    # log(1 - p) = log1p(-p): accurate off the argmax, where p <= 1/2.
    log_q = e.mul_((-1.0 / torch.exp(log_total))[:, None]).log1p_()
    log_q.scatter_(1, am, (log_rest - log_total)[:, None])

    positive = block.positive
    if state.gamma == 0.0:
        pos_terms = log_p
    else:
        pos_terms = torch.mul(log_q, state.gamma).exp_().mul_(log_p)
    pos = torch.where(positive, pos_terms, 0.0).sum(dim=1).neg_()
    del pos_terms
    if state.eta != 0.0:
        neg = torch.where(block.negative(), log_q, 0.0).sum(dim=1).neg_()
    else:
        neg = None
    return pos, neg, lse, argmax, lse_without_max, positive.sum(dim=1), log_p


def _block_gradient(state: _State, block: _Block, lse: Tensor, argmax: Tensor,
                    lse_without_max: Tensor, pos_scale: Tensor, neg_scale: Tensor,
                    log_p: Tensor | None = None) -> Tensor:
    """d loss / d s for one block, (B, M), already scaled by w(i) * upstream grad / tau.

    Off the argmax column m (where p <= 1/2, so 1 - p and p / (1 - p) are accurate) the closed
    form of the module docstring is evaluated as W + p * coef with
    W_ik = -w_pos u_ik [k in P] + eta w_neg r_ik [k in Q] and coef = w_pos U - eta w_neg R.
    At m it cancels badly when p_im -> 1 (r_im = p/(1-p) is huge while the gradient is O(1)), so
    the terms are regrouped there: with U' = U - u_im and R' = R - r_im,

        d pos / d s_im = p_im U' - (1 - p_im) u_im [m in P]
        d neg / d s_im = p_im [m in Q] - p_im R'

    and, for k != m, p_ik r_im = exp(log p_ik + logit_im) is bounded by p_im, evaluated in log
    space where r_im itself would overflow.

    ``log_p`` (B, M), when the caller still has it (the forward pass), saves recomputing the
    block's similarities; it is only read.
    """
    gamma, eta = state.gamma, state.eta
    am = argmax[:, None]
    if log_p is None:
        log_p = block.similarities().sub_(lse[:, None])
    p = torch.exp(log_p)
    q = torch.sub(1.0, p)  # wrong at the argmax column only, which is replaced below
    r = torch.div(p, q)  # p / (1 - p); 0 on the self column
    positive = block.positive
    if gamma == 0.0:
        w_pos_part = -pos_scale
    else:
        # -w_pos u = w_pos (1 - p)^gamma (gamma r log p - 1)
        w_pos_part = torch.addcmul(torch.ones((), dtype=p.dtype, device=p.device).neg_(),
                                   r, log_p, value=gamma)
        w_pos_part.mul_(q.pow_(gamma)).mul_(pos_scale)
    del q
    if eta != 0.0:
        weights = torch.where(positive, w_pos_part, r.mul_(neg_scale))
    else:
        weights = torch.where(positive, w_pos_part, 0.0)
    del w_pos_part, r
    weights.scatter_(1, am, 0.0)
    weights.scatter_(1, block.self_cols, 0.0)  # NaN-free there: -inf * 0 never reaches the sum
    row_coef = weights.sum(dim=1, keepdim=True).neg_()  # w_pos U' - eta w_neg R'

    # The argmax column, one entry per row.
    log_p_m = log_p.gather(1, am)
    log_q_m = (lse_without_max - lse)[:, None]
    p_m, q_m = torch.exp(log_p_m), torch.exp(log_q_m)
    m_positive = positive.gather(1, am)
    if gamma == 0.0:
        u_m = m_positive.to(p.dtype)
    else:
        u_m = torch.where(m_positive, _focal_gradient_weight(log_p_m, log_q_m, gamma), 0.0)
    # Row coefficient off the argmax column: w_pos U - eta w_neg R, U and R including m.
    full_coef = row_coef + pos_scale * u_m
    grad_m = p_m * row_coef - pos_scale * q_m * u_m
    if eta != 0.0:
        m_negative = ~m_positive  # the argmax is never the anchor's own column
        logit_m = log_p_m - log_q_m
        safe = _EXP_SAFE[p.dtype]
        overflow = m_negative & (logit_m > safe) & torch.isfinite(log_q_m)
        r_m = torch.where(m_negative & ~overflow, torch.exp(logit_m.clamp(max=safe)), 0.0)
        full_coef = full_coef - neg_scale * r_m
        grad_m = grad_m + neg_scale * p_m * m_negative.to(p.dtype)
        if _deferred.defers(p.device):
            # No host sync: the same update on every row, exp(-inf) = 0 where there is no overflow.
            weights.sub_(torch.exp(log_p + torch.where(overflow, logit_m, -math.inf)).mul_(neg_scale))
        else:
            rows = overflow.squeeze(1).nonzero().squeeze(1)
            if rows.numel():
                weights[rows] -= neg_scale[rows] * torch.exp(log_p[rows] + logit_m[rows])
    grad_s = weights.addcmul_(p, full_coef)
    grad_s.scatter_(1, am, grad_m)
    # One column in A(i) (M = 2): p = 1 identically, the row's loss is a constant.
    single_column = ~torch.isfinite(log_q_m)
    if _deferred.defers(p.device) or bool(single_column.any()):
        grad_s.masked_fill_(single_column, 0.0)
    return grad_s


class _BlockwiseAFCL(torch.autograd.Function):
    """forward(anchors, contrast, ...) -> (A,) per-anchor loss; analytic, row-blocked backward.

    With ``grads_in_forward`` the forward also computes the gradient for an upstream gradient of
    ones, while each block's log-probabilities are at hand: (A + M) x D numbers, the size of the
    inputs. The backward then only scales them when the upstream gradient is the same for every
    anchor (``loss = per_anchor.sum() / n_total``, ``.mean()``, the distributed form), which saves
    the recomputation of every block (one of the four N x N x D products and the exp passes). Any
    other upstream gradient takes the general path: recompute each block from the saved
    row statistics.
    """

    @staticmethod
    def forward(ctx, anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                gamma, eta, temperature, normalization, n_total, block_size, grads_in_forward,
                uniform_upstream):
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            state = _State(anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                           gamma, eta, temperature)
            n_anchors, n_contrast = anchors.shape[0], contrast.shape[0]
            dtype, device = anchors.dtype, anchors.device
            lse = anchors.new_empty(n_anchors)
            lse_without_max = anchors.new_empty(n_anchors)
            argmax = torch.empty(n_anchors, dtype=torch.int64, device=device)
            pos = anchors.new_zeros(n_anchors)
            neg = anchors.new_zeros(n_anchors)
            n_positive = torch.empty(n_anchors, dtype=torch.int64, device=device)
            unit_grad_anchors = unit_grad_contrast = None
            if grads_in_forward:
                unit_grad_anchors = torch.empty_like(anchors)
                unit_grad_contrast = torch.zeros_like(contrast)
            n_workers = block_workers(n_anchors, block_size, device)
            contrast_grads = [unit_grad_contrast] + [
                torch.zeros_like(contrast) if grads_in_forward else None
                for _ in range(n_workers - 1)]

            def forward_block(start: int, stop: int, worker: int) -> None:
                block = _Block(state, start, stop)
                b_pos, b_neg, b_lse, b_argmax, b_lse_wo, b_n_pos, b_log_p = _block_forward(
                    state, block)
                pos[start:stop], lse[start:stop], argmax[start:stop] = b_pos, b_lse, b_argmax
                lse_without_max[start:stop], n_positive[start:stop] = b_lse_wo, b_n_pos
                if b_neg is not None:
                    neg[start:stop] = b_neg
                if grads_in_forward:
                    b_w_pos, b_w_neg = _weights(normalization, b_n_pos,
                                                (n_contrast - 1) - b_n_pos, n_total, dtype)
                    grad_s = _block_gradient(
                        state, block, b_lse, b_argmax, b_lse_wo,
                        (b_w_pos * state.inv_temperature)[:, None],
                        (b_w_neg * (state.inv_temperature * state.eta))[:, None], log_p=b_log_p)
                    _accumulate_input_grads(grad_s, state, block, unit_grad_anchors,
                                            contrast_grads[worker])

            for_each_block(n_anchors, block_size, n_workers, forward_block)
            if grads_in_forward:
                for extra in contrast_grads[1:]:
                    unit_grad_contrast.add_(extra)
            n_negative = (n_contrast - 1) - n_positive
            w_pos, w_neg = _weights(normalization, n_positive, n_negative, n_total, dtype)
            out = w_pos * pos
            if state.eta != 0.0:
                out = out + state.eta * w_neg * neg
        ctx.save_for_backward(anchors, contrast, anchor_index, anchor_labels, contrast_labels,
                              mask, lse, argmax, lse_without_max, w_pos, w_neg)
        ctx.settings = (gamma, eta, temperature, block_size, normalization, n_total)
        ctx.unit_grads = (unit_grad_anchors, unit_grad_contrast)
        ctx.uniform_upstream = uniform_upstream
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need_anchors, need_contrast = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            # create_graph=True (autograd runs a backward in grad mode exactly then): the analytic
            # gradient below is a constant to autograd, so a second derivative through it would be
            # silently wrong. Differentiate the plain autograd loss instead (N x N memory, only for
            # higher-order calls).
            return _differentiable_backward(ctx, grad_out, need_anchors, need_contrast)
        unit_grad_anchors, unit_grad_contrast = ctx.unit_grads
        # The caller's promise that every anchor gets the same upstream gradient spares the
        # comparison, a host sync on CUDA.
        if unit_grad_anchors is not None and (
                ctx.uniform_upstream or bool((grad_out == grad_out[0]).all())):
            # Out of place: a second backward through a retained graph gets the very same result.
            g = grad_out[0].to(unit_grad_anchors.dtype)
            grad_anchors = unit_grad_anchors * g if need_anchors else None
            grad_contrast = unit_grad_contrast * g if need_contrast else None
            return (grad_anchors, grad_contrast) + (None,) * 12
        del unit_grad_anchors, unit_grad_contrast

        (anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, lse, argmax,
         lse_without_max, w_pos, w_neg) = ctx.saved_tensors
        gamma, eta, temperature, block_size, _, _ = ctx.settings
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            state = _State(anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask,
                           gamma, eta, temperature)
            # Fold the upstream gradient and 1/tau into the per-row weights.
            scale = grad_out.to(anchors.dtype) * state.inv_temperature
            pos_scale = w_pos * scale
            neg_scale = w_neg * scale * state.eta
            grad_anchors = torch.empty_like(anchors) if need_anchors else None
            grad_contrast = torch.zeros_like(contrast) if need_contrast else None
            n_anchors = anchors.shape[0]
            n_workers = block_workers(n_anchors, block_size, anchors.device)
            contrast_grads = [grad_contrast] + [
                torch.zeros_like(contrast) if need_contrast else None
                for _ in range(n_workers - 1)]

            def backward_block(start: int, stop: int, worker: int) -> None:
                block = _Block(state, start, stop)
                grad_s = _block_gradient(
                    state, block, lse[start:stop], argmax[start:stop],
                    lse_without_max[start:stop], pos_scale[start:stop, None],
                    neg_scale[start:stop, None])
                _accumulate_input_grads(grad_s, state, block, grad_anchors, contrast_grads[worker])

            for_each_block(n_anchors, block_size, n_workers, backward_block)
            for extra in contrast_grads[1:]:
                if extra is not None:
                    grad_contrast.add_(extra)
        return (grad_anchors, grad_contrast) + (None,) * 12


def _differentiable_backward(ctx, grad_out: Tensor, need_anchors: bool, need_contrast: bool):
    (anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, *_) = ctx.saved_tensors
    gamma, eta, temperature, _, normalization, n_total = ctx.settings
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        grad_anchors, grad_contrast = _reference.differentiable_vjp(
            anchors, contrast, grad_out.to(anchors.dtype), need_anchors, need_contrast,
            anchor_index=anchor_index, anchor_labels=anchor_labels, contrast_labels=contrast_labels,
            mask=mask, gamma=gamma, eta=eta, temperature=temperature, normalization=normalization,
            n_total=n_total)
    return (grad_anchors, grad_contrast) + (None,) * 12


def _accumulate_input_grads(grad_s: Tensor, state: _State, block: _Block,
                            grad_anchors: Tensor | None, grad_contrast: Tensor | None) -> None:
    """d/d a_i = sum_k G_ik c_k and d/d c_k += sum_i G_ik a_i (1/tau is already in G)."""
    if grad_anchors is not None:
        torch.mm(grad_s, state.contrast, out=grad_anchors[block.rows])
    if grad_contrast is not None:
        grad_contrast.addmm_(grad_s.t(), state.anchors[block.rows])


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
    uniform_upstream: bool = False,
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
    ``uniform_upstream=True`` promises that the result is only reduced with the same weight for
    every anchor (``.sum() / n``, ``.mean()``); the backward then skips checking that (a host sync
    on CUDA). A wrong promise gives wrong gradients: leave it False unless that holds by construction.
    """
    check_core_arguments(anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, gamma,
                  eta, temperature, normalization, n_total, block_size)
    dtype = compute_dtype(anchors.dtype)
    anchors_c = anchors.to(dtype)
    contrast_c = anchors_c if contrast is anchors else contrast.to(dtype)
    if block_size is None:
        block_size = auto_block_size(anchors.shape[0], contrast.shape[0], anchors.device, dtype)
        if (anchors.device.type == "cpu" and PER_THREAD_NUM_THREADS
                and anchors.shape[0] * contrast.shape[0] >= THREAD_BLOCKS_FROM):
            # At least one block per thread, so that every thread gets whole blocks (see
            # block_workers) even when the batch fits one block. Not for small batches, where
            # starting the worker threads (~1 ms) costs more than the whole loss.
            block_size = max(1, min(block_size, -(-anchors.shape[0] // torch.get_num_threads())))
    if anchors.shape[0] == 0:
        return anchors_c.new_zeros(0) + 0.0 * anchors_c.sum()
    grads_in_forward = torch.is_grad_enabled() and (anchors_c.requires_grad or contrast_c.requires_grad)
    return _BlockwiseAFCL.apply(
        anchors_c, contrast_c, anchor_index, anchor_labels, contrast_labels, mask,
        float(gamma), float(eta), float(temperature), normalization, n_total, int(block_size),
        grads_in_forward, bool(uniform_upstream))

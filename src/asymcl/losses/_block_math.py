"""One block of anchor rows of the row-blocked AFCL core (:mod:`asymcl.losses._blockwise`, whose
docstring derives the formulas): the inputs forward and backward share, a block's similarities and
masks, the forward's per-anchor quantities and the closed-form gradient of the block.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from asymcl.losses import _deferred

# Below this x = (1 - p) / p the series log1p(x) / x = 1 - x/2 + x^2/3 - ... is used; the truncation
# error x^3 / 4 < 3e-10 is far below float32 resolution and below gradcheck tolerances in float64.
_SERIES_BELOW = 1e-3

# Largest logit whose exp is safely finite (with room for the factors it is multiplied by).
_EXP_SAFE = {torch.float32: 80.0, torch.float64: 700.0}


class State:
    """Inputs shared by forward and backward (plain attributes, no autograd)."""

    def __init__(self, anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, gamma, eta, temperature):
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


class Block:
    """One block of anchor rows [start, stop): its similarities and masks."""

    def __init__(self, state: State, start: int, stop: int) -> None:
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


def row_weights(normalization: str, n_positive: Tensor, n_negative: Tensor, n_total: int, dtype):
    if normalization == "batch":
        w = torch.full(n_positive.shape, 1.0 / n_total, dtype=dtype, device=n_positive.device)
        return w, w
    w_pos = torch.where(n_positive > 0, 1.0 / n_positive.clamp(min=1).to(dtype), 0.0)
    w_neg = torch.where(n_negative > 0, 1.0 / n_negative.clamp(min=1).to(dtype), 0.0)
    return w_pos, w_neg


def block_forward(state: State, block: Block):
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


def block_gradient(
    state: State,
    block: Block,
    lse: Tensor,
    argmax: Tensor,
    lse_without_max: Tensor,
    pos_scale: Tensor,
    neg_scale: Tensor,
    log_p: Tensor | None = None,
) -> Tensor:
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
        w_pos_part = torch.addcmul(torch.ones((), dtype=p.dtype, device=p.device).neg_(), r, log_p, value=gamma)
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

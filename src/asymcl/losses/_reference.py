"""Reference implementation of the per-anchor AFCL loss: the whole (A, M) similarity matrix at once.

Plain autograd, written to be read against method.md section 1. The fast row-blocked version in
``_blockwise.py`` has the same signature and must agree with this one.

Math (for anchor i, contrast rows j, s_ij = z_i . z_j / tau, A(i) = all contrast rows but the
anchor's own row):

    log p_ij      = s_ij - LSE_{a in A(i)} s_ia                          (log-softmax, max-subtracted)
    log(1 - p_ij) = LSE_{a in A(i), a != j} s_ia - LSE_{a in A(i)} s_ia

The second line is evaluated in two ways, both accurate:

* j is not the row's argmax: then p_ij <= 1/2 and ``log1p(-p_ij)`` has no cancellation;
* j is the row's argmax: a second log-sum-exp over the row with the argmax removed, which stays
  exact even when every other term underflows next to it (tau = 0.01, near-duplicate rows).

The focal weight (1 - p)^gamma is ``exp(gamma * log(1 - p))``: not detached, finite for any
gamma >= 0 (including 0 < gamma < 1, where the power's derivative in p is unbounded as p -> 1 but
its derivative in the logits is not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import torch
from torch import Tensor

if TYPE_CHECKING:  # typing.Unpack is 3.11+; typing_extensions is only needed by the checker
    from typing_extensions import Unpack


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
) -> Tensor:
    """Per-anchor loss ``w_pos(i) * pos_i + eta * w_neg(i) * neg_i``, shape (A,).

    Args:
        anchors: (A, D) L2-normalised anchor rows (float32 or float64; the caller upcasts).
        contrast: (M, D) L2-normalised rows every anchor is contrasted with.
        anchor_index: (A,) int64, the position of each anchor in ``contrast``; that column is
            excluded from A(i) (never in a numerator or a denominator).
        anchor_labels, contrast_labels: (A,) and (M,) int64 class ids: P(i) = same label, j != i.
        mask: (A, M) bool positive mask, used when labels are None; the anchor's own column is ignored.
        gamma, eta, temperature: the AFCL hyperparameters (already validated).
        normalization: "batch" (w = 1/n_total) or "pairs" (w_pos = 1/|P(i)|, w_neg = 1/|Q(i)|,
            an empty set contributes 0).
        n_total: N of method.md: the anchor rows of the (global) batch; reference rows (in
            ``contrast`` but never anchors) do not count.

    Returns:
        (A,) tensor; the loss is ``result.sum() / n_total``.
    """
    n_anchors, n_contrast = anchors.shape[0], contrast.shape[0]
    rows = torch.arange(n_anchors, device=anchors.device)

    self_column = torch.zeros(n_anchors, n_contrast, dtype=torch.bool, device=anchors.device)
    self_column[rows, anchor_index] = True
    if mask is not None:
        positive = mask.clone()
    elif anchor_labels is not None and contrast_labels is not None:
        positive = anchor_labels[:, None] == contrast_labels[None, :]
    else:
        raise ValueError("per_anchor_loss needs anchor_labels and contrast_labels, or a mask")
    positive &= ~self_column
    negative = ~positive & ~self_column

    logits = (anchors @ contrast.T) / temperature
    logits = logits.masked_fill(self_column, float("-inf"))
    log_normaliser = torch.logsumexp(logits, dim=1, keepdim=True)
    log_p = logits - log_normaliser  # -inf on the anchor's own column

    needs_log_one_minus_p = gamma != 0 or eta != 0
    if needs_log_one_minus_p:
        log_one_minus_p = _log_one_minus_p(logits, log_p, log_normaliser, self_column)

    # pos_i = -sum_{p in P(i)} (1 - p_ip)^gamma log p_ip. Entries outside P(i) are zero-filled
    # *before* the product so that no -inf (the self column) meets a 0 weight in the backward.
    log_p_positive = log_p.masked_fill(~positive, 0.0)
    if gamma != 0:
        focal_weight = torch.exp(gamma * log_one_minus_p.masked_fill(~positive, 0.0))
        pos = -(focal_weight * log_p_positive).sum(dim=1)
    else:
        pos = -log_p_positive.sum(dim=1)

    if normalization == "batch":
        loss = pos / n_total
    else:
        n_positive = positive.sum(dim=1)
        loss = pos / n_positive.clamp(min=1).to(pos.dtype)  # empty P(i): pos_i = 0 already

    if eta != 0:
        neg = -log_one_minus_p.masked_fill(~negative, 0.0).sum(dim=1)
        if normalization == "batch":
            loss = loss + eta * neg / n_total
        else:
            n_negative = negative.sum(dim=1)
            loss = loss + eta * neg / n_negative.clamp(min=1).to(neg.dtype)
    return loss


def _log_one_minus_p(logits: Tensor, log_p: Tensor, log_normaliser: Tensor, self_column: Tensor) -> Tensor:
    """log(1 - p_ij) for every column (0 on the anchor's own column, where p = 0).

    With a single contrast row per anchor (M = 2) p = 1 exactly and log(1 - p) = -inf; it is then
    a constant, so no NaN can enter the backward through an empty log-sum-exp.
    """
    n_anchors = logits.shape[0]
    argmax = logits.argmax(dim=1)
    # Out of place: under torch.vmap the argmax is batched and cannot be written into a plain mask.
    is_argmax = torch.zeros_like(logits, dtype=torch.bool).scatter(1, argmax[:, None], True)

    # Off the argmax p <= 1/2: log1p(-p) is accurate. The argmax entry is zeroed first, so
    # log1p never sees p = 1 (whose derivative would be infinite even where it is not selected).
    p_off_argmax = log_p.exp().masked_fill(is_argmax, 0.0)
    result = torch.log1p(-p_off_argmax)

    if logits.shape[1] - 1 >= 2:
        without_argmax = logits.masked_fill(is_argmax, float("-inf"))
        at_argmax = torch.logsumexp(without_argmax, dim=1) - log_normaliser.squeeze(1)
    else:
        at_argmax = torch.full((n_anchors,), float("-inf"), dtype=logits.dtype, device=logits.device)
    return torch.where(is_argmax, at_argmax[:, None], result)


class LossCore(TypedDict):
    """The arguments of :func:`per_anchor_loss` after ``anchors`` and ``contrast``."""

    anchor_index: Tensor
    anchor_labels: Tensor | None
    contrast_labels: Tensor | None
    mask: Tensor | None
    gamma: float
    eta: float
    temperature: float
    normalization: str
    n_total: int


def differentiable_vjp(
    anchors: Tensor,
    contrast: Tensor,
    grad_per_anchor: Tensor,
    need_anchors: bool,
    need_contrast: bool,
    **core: Unpack[LossCore],
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of ``sum_i grad_per_anchor[i] * per_anchor_loss(...)[i]`` with a graph of their own.

    The row-blocked path's analytic backward is first-order only; when a caller asks for
    ``create_graph=True`` (gradient penalties, MAML-style inner steps, Hessian-vector products) it
    hands its backward to this function, which rebuilds the loss by plain autograd and returns
    gradients that are differentiable again (in anchors, contrast and ``grad_per_anchor``).
    ``core`` holds the keyword arguments of :func:`per_anchor_loss`.

    ``anchors`` and ``contrast`` may be one tensor (a single process without references): each
    gets its own view so that the anchor-side and the contrast-side parts stay apart, as the
    autograd Function that calls this expects one gradient per input.
    """
    with torch.enable_grad():
        a = anchors.view_as(anchors)
        c = contrast.view_as(contrast)
        out = per_anchor_loss(a, c, **core)
        wanted = [t for t, need in ((a, need_anchors), (c, need_contrast)) if need]
        grads = list(torch.autograd.grad(out, wanted, grad_per_anchor, create_graph=True, allow_unused=True))
    grad_anchors = grads.pop(0) if need_anchors else None
    grad_contrast = grads.pop(0) if need_contrast else None
    if need_anchors and grad_anchors is None:
        grad_anchors = torch.zeros_like(anchors)
    if need_contrast and grad_contrast is None:
        grad_contrast = torch.zeros_like(contrast)
    return grad_anchors, grad_contrast

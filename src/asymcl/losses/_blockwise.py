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

from collections.abc import Callable

import torch
from torch import Tensor

from asymcl.losses import _reference
from asymcl.losses._block_math import Block, State, block_forward, block_gradient, row_weights
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
    def forward(
        ctx,
        anchors,
        contrast,
        anchor_index,
        anchor_labels,
        contrast_labels,
        mask,
        gamma,
        eta,
        temperature,
        normalization,
        n_total,
        block_size,
        grads_in_forward,
        uniform_upstream,
    ):
        inputs = (anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask)
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            state = State(*inputs, gamma, eta, temperature)
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

            def forward_block(block: Block, grad_contrast: Tensor | None) -> None:
                start, stop = block.rows.start, block.rows.stop
                b_pos, b_neg, b_lse, b_argmax, b_lse_wo, b_n_pos, b_log_p = block_forward(state, block)
                pos[start:stop], lse[start:stop], argmax[start:stop] = b_pos, b_lse, b_argmax
                lse_without_max[start:stop], n_positive[start:stop] = b_lse_wo, b_n_pos
                if b_neg is not None:
                    neg[start:stop] = b_neg
                if grads_in_forward:
                    b_w_pos, b_w_neg = row_weights(normalization, b_n_pos, (n_contrast - 1) - b_n_pos, n_total, dtype)
                    grad_s = block_gradient(
                        state,
                        block,
                        b_lse,
                        b_argmax,
                        b_lse_wo,
                        (b_w_pos * state.inv_temperature)[:, None],
                        (b_w_neg * (state.inv_temperature * state.eta))[:, None],
                        log_p=b_log_p,
                    )
                    _accumulate_input_grads(grad_s, state, block, unit_grad_anchors, grad_contrast)

            _each_block(state, block_size, unit_grad_contrast, forward_block)
            n_negative = (n_contrast - 1) - n_positive
            w_pos, w_neg = row_weights(normalization, n_positive, n_negative, n_total, dtype)
            out = w_pos * pos
            if state.eta != 0.0:
                out = out + state.eta * w_neg * neg
        ctx.save_for_backward(*inputs, lse, argmax, lse_without_max, w_pos, w_neg)
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
        if unit_grad_anchors is not None and (ctx.uniform_upstream or bool((grad_out == grad_out[0]).all())):
            # Out of place: a second backward through a retained graph gets the very same result.
            g = grad_out[0].to(unit_grad_anchors.dtype)
            grad_anchors = unit_grad_anchors * g if need_anchors else None
            grad_contrast = unit_grad_contrast * g if need_contrast else None
            return (grad_anchors, grad_contrast) + (None,) * 12
        del unit_grad_anchors, unit_grad_contrast

        *inputs, lse, argmax, lse_without_max, w_pos, w_neg = ctx.saved_tensors
        anchors, contrast = inputs[0], inputs[1]
        gamma, eta, temperature, block_size, _, _ = ctx.settings
        with torch.autocast(device_type=anchors.device.type, enabled=False):
            state = State(*inputs, gamma, eta, temperature)
            # Fold the upstream gradient and 1/tau into the per-row weights.
            scale = grad_out.to(anchors.dtype) * state.inv_temperature
            pos_scale = w_pos * scale
            neg_scale = w_neg * scale * state.eta
            grad_anchors = torch.empty_like(anchors) if need_anchors else None
            grad_contrast = torch.zeros_like(contrast) if need_contrast else None

            def backward_block(block: Block, worker_grad_contrast: Tensor | None) -> None:
                rows = block.rows
                grad_s = block_gradient(
                    state,
                    block,
                    lse[rows],
                    argmax[rows],
                    lse_without_max[rows],
                    pos_scale[rows, None],
                    neg_scale[rows, None],
                )
                _accumulate_input_grads(grad_s, state, block, grad_anchors, worker_grad_contrast)

            _each_block(state, block_size, grad_contrast, backward_block)
        return (grad_anchors, grad_contrast) + (None,) * 12


def _differentiable_backward(ctx, grad_out: Tensor, need_anchors: bool, need_contrast: bool):
    (anchors, contrast, anchor_index, anchor_labels, contrast_labels, mask, *_) = ctx.saved_tensors
    gamma, eta, temperature, _, normalization, n_total = ctx.settings
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        grad_anchors, grad_contrast = _reference.differentiable_vjp(
            anchors,
            contrast,
            grad_out.to(anchors.dtype),
            need_anchors,
            need_contrast,
            anchor_index=anchor_index,
            anchor_labels=anchor_labels,
            contrast_labels=contrast_labels,
            mask=mask,
            gamma=gamma,
            eta=eta,
            temperature=temperature,
            normalization=normalization,
            n_total=n_total,
        )
    return (grad_anchors, grad_contrast) + (None,) * 12


def _each_block(
    state: State, block_size: int, grad_contrast: Tensor | None, work: Callable[[Block, Tensor | None], None]
) -> None:
    """work(block, its worker's contrast gradient) for every block of anchor rows, then the sum.

    Every block adds into all rows of the contrast gradient, so worker threads running at once
    would race on one buffer: each worker past the first gets its own, added into
    ``grad_contrast`` once all blocks are done (None: that gradient is not wanted).
    """
    n_anchors = state.anchors.shape[0]
    n_workers = block_workers(n_anchors, block_size, state.anchors.device)
    extra = [] if grad_contrast is None else [torch.zeros_like(grad_contrast) for _ in range(n_workers - 1)]

    def run(start: int, stop: int, worker: int) -> None:
        work(Block(state, start, stop), extra[worker - 1] if worker and extra else grad_contrast)

    for_each_block(n_anchors, block_size, n_workers, run)
    if grad_contrast is not None:
        for buffer in extra:
            grad_contrast.add_(buffer)


def _accumulate_input_grads(
    grad_s: Tensor, state: State, block: Block, grad_anchors: Tensor | None, grad_contrast: Tensor | None
) -> None:
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
    check_core_arguments(
        anchors,
        contrast,
        anchor_index,
        anchor_labels,
        contrast_labels,
        mask,
        gamma,
        eta,
        temperature,
        normalization,
        n_total,
        block_size,
    )
    dtype = compute_dtype(anchors.dtype)
    anchors_c = anchors.to(dtype)
    contrast_c = anchors_c if contrast is anchors else contrast.to(dtype)
    if block_size is None:
        block_size = auto_block_size(anchors.shape[0], contrast.shape[0], anchors.device, dtype)
        if (
            anchors.device.type == "cpu"
            and PER_THREAD_NUM_THREADS
            and anchors.shape[0] * contrast.shape[0] >= THREAD_BLOCKS_FROM
        ):
            # At least one block per thread, so that every thread gets whole blocks (see
            # block_workers) even when the batch fits one block. Not for small batches, where
            # starting the worker threads (~1 ms) costs more than the whole loss.
            block_size = max(1, min(block_size, -(-anchors.shape[0] // torch.get_num_threads())))
    if anchors.shape[0] == 0:
        return anchors_c.new_zeros(0) + 0.0 * anchors_c.sum()
    grads_in_forward = torch.is_grad_enabled() and (anchors_c.requires_grad or contrast_c.requires_grad)
    return _BlockwiseAFCL.apply(
        anchors_c,
        contrast_c,
        anchor_index,
        anchor_labels,
        contrast_labels,
        mask,
        float(gamma),
        float(eta),
        float(temperature),
        normalization,
        n_total,
        int(block_size),
        grads_in_forward,
        bool(uniform_upstream),
    )

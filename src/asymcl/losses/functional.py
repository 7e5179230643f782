"""Functional form of the asymmetric focal contrastive loss family (CL, FCL, ACL, AFCL)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from asymcl.losses import _blockwise, _reference, distributed
from asymcl.losses._validation import (
    check_block_size,
    check_features,
    check_flag,
    check_hyperparameters,
    check_impl,
    check_labels,
    check_mask,
)


def afcl_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    gamma: float = 0.0,
    eta: float = 0.0,
    temperature: float = 0.07,
    normalization: str = "batch",
    normalize: bool = True,
    impl: str = "auto",
    gather_distributed: bool = False,
    block_size: int | None = None,
) -> Tensor:
    r"""Asymmetric focal contrastive loss (AFCL) of a batch of embeddings; a scalar tensor.

    For rows z_1..z_N (L2-normalised), s_ij = z_i . z_j / temperature, A(i) = every row but i,
    P(i) = the positives of i in A(i), Q(i) = A(i) \ P(i) and
    p_ij = exp(s_ij) / sum_{a in A(i)} exp(s_ia):

        pos_i = - sum_{p in P(i)} (1 - p_ip)^gamma log p_ip
        neg_i = - sum_{q in Q(i)} log(1 - p_iq)
        AFCL  = (1/N) sum_i [ w_pos(i) pos_i + eta w_neg(i) neg_i ]

    normalization "batch" (the authors' release): w_pos = w_neg = 1/N, so AFCL is the sum over all
    anchors divided by N^2. "pairs" (SupCon's convention): w_pos = 1/|P(i)|, w_neg = 1/|Q(i)|, an
    anchor with an empty P(i) or Q(i) contributing 0 to that part. Special cases: eta = 0 is FCL,
    gamma = 0 is ACL, gamma = eta = 0 is CL; with "pairs" and gamma = eta = 0 it is SupCon's L_out.
    Anchors without a positive keep pos_i = 0 but still get the eta term. The focal weight is not
    detached: gradients flow through it.

    Args:
        features: (N, D), or (N, V, D) for V augmented views of N images. Views are flattened to
            N * V rows (image-major) and every row carries its image's label; the N of the formulas
            is this row count. float16/bfloat16 are upcast to float32; float64 stays float64. The
            computation runs with autocast disabled.
        labels: (N,) integer class ids: positives are rows of the same class (never the row itself).
        mask: (N, N) bool over images, True where image j is a positive of image i; tiled over the
            views. All views of one image are always positives of each other (the diagonal is
            ignored). With ``gather_distributed`` the shape is (local N, global N), see below.
            Give ``labels`` or ``mask``, not both. With neither, each image's other views are its
            only positives (SimCLR-style), which needs V >= 2.
        gamma: focal exponent >= 0.
        eta: weight of the negative term >= 0.
        temperature: tau > 0.
        normalization: "batch" or "pairs" (see above).
        normalize: L2-normalise the rows first (turn off only if they already are).
        impl: "reference" (plain autograd over the full N x N matrix), "blockwise" (the row-blocked
            implementation with an analytic backward) or "auto" (blockwise where it is faster).
        gather_distributed: when torch.distributed is initialised with world size W > 1, contrast
            the local rows with the rows of all ranks (see :mod:`asymcl.losses.distributed`). The
            returned value is the single-process loss on the concatenated batch, ranks in order,
            and the gradients are scaled so that DDP's averaging yields the single-process
            gradient. A ``mask`` then has shape (local images, global images), its columns the
            images of rank 0, then rank 1, ... Without an initialised group (or with W = 1) this
            switch does nothing.
        block_size: anchor rows per block of the blockwise implementation (peak extra memory is
            about 4 x block_size x N x 4 bytes); None chooses it from a memory budget. Giving it
            selects the blockwise implementation under impl="auto".

    Returns:
        A 0-dim tensor in float32 (float64 for float64 features).

    Raises:
        TypeError, ValueError: for bad input, naming the argument and what is allowed: fewer than
        2 rows, mismatched shapes, both labels and mask, non-integer labels, a non-bool mask, NaN or
        inf features, temperature <= 0, gamma or eta < 0, an unknown normalization or impl.
    """
    gamma, eta, temperature, normalization = check_hyperparameters(
        gamma=gamma, eta=eta, temperature=temperature, normalization=normalization
    )
    normalize = check_flag("normalize", normalize)
    gather_distributed = check_flag("gather_distributed", gather_distributed)
    impl = check_impl(impl)
    block_size = check_block_size(block_size, impl)
    world_size = distributed.active_world_size() if gather_distributed else 1

    if world_size == 1:
        rows, n_images, n_views, labels, mask = _check_local_inputs(features, labels, mask, n_mask_cols=None)
        layout = None
        n_global_images = n_images
        image_offset = 0
    else:
        local_error: Exception | None = None
        n_images = n_views = dim = mask_cols = 0
        mode = distributed.MODE_LABELS if labels is not None else distributed.MODE_MASK if mask is not None else distributed.MODE_VIEWS_ONLY
        try:
            rows, n_images, n_views, labels, mask = _check_local_inputs(features, labels, mask, n_mask_cols=-1)
            dim = rows.shape[1]
            mask_cols = mask.shape[1] if mask is not None else -1
        except (TypeError, ValueError) as error:
            local_error = error
        layout = distributed.exchange_metadata(
            local_error=local_error, n_images=n_images, n_views=n_views, dim=dim, mode=mode, mask_cols=mask_cols
        )
        n_global_images = layout.n_images
        image_offset = layout.image_offset

    n_total = n_global_images * n_views
    if n_total < 2:
        raise ValueError(
            f"the batch must have at least 2 rows (N * V, the rows every anchor is contrasted with), got {n_total}"
        )
    if labels is None and mask is None and n_views < 2:
        raise ValueError(
            "with neither labels nor mask, each image's other views are its only positives, so features "
            f"must have shape (N, V, D) with V >= 2 views; got {n_views} view(s). Pass labels=... "
            "(class ids) or mask=... for supervised positives, or stack >= 2 augmented views"
        )

    compute_dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    with _autocast_disabled(rows.device):
        rows = rows.to(compute_dtype)
        if normalize:
            rows = F.normalize(rows, dim=1)

        anchor_rows = torch.arange(n_images * n_views, device=rows.device)
        anchor_index = image_offset * n_views + anchor_rows
        if layout is None:
            contrast = rows
            global_labels = labels
        else:
            contrast = distributed.gather_rows(rows, layout, n_views)
            global_labels = distributed.gather_labels(labels, layout) if labels is not None else None

        anchor_labels = contrast_labels = row_mask = None
        if mask is not None:
            row_mask = _tile_image_mask(mask.to(rows.device), n_views, image_offset)
        else:
            if labels is None:  # SimCLR-style: the image id is the label
                labels = torch.arange(image_offset, image_offset + n_images, device=rows.device)
                global_labels = torch.arange(n_global_images, device=rows.device)
            anchor_labels = labels.to(rows.device).repeat_interleave(n_views)
            contrast_labels = global_labels.to(rows.device).repeat_interleave(n_views)

        if n_total == 2 and eta != 0:
            _refuse_infinite_negative_term(anchor_index, anchor_labels, contrast_labels, row_mask)

        per_anchor_loss = _select_impl("blockwise" if block_size is not None else impl, n_total, rows.device)
        extra = {"block_size": block_size} if block_size is not None else {}
        per_anchor = per_anchor_loss(
            rows,
            contrast,
            anchor_index,
            anchor_labels=anchor_labels,
            contrast_labels=contrast_labels,
            mask=row_mask,
            gamma=gamma,
            eta=eta,
            temperature=temperature,
            normalization=normalization,
            n_total=n_total,
            **extra,
        )
        loss = per_anchor.sum() / n_total
        if layout is not None:
            loss = distributed.combine_for_ddp(loss, world_size)
    return loss


def _check_local_inputs(
    features: object, labels: object, mask: object, *, n_mask_cols: int | None
) -> tuple[Tensor, int, int, Tensor | None, Tensor | None]:
    """Validate this process's features/labels/mask; ``n_mask_cols=-1`` accepts any mask width
    (checked against the global image count after the ranks exchange their sizes)."""
    if labels is not None and mask is not None:
        raise ValueError("give labels or mask, not both (labels: (N,) class ids; mask: (N, N) bool positives)")
    rows, n_images, n_views = check_features(features)
    if labels is not None:
        labels = check_labels(labels, n_images)
    if mask is not None:
        if n_mask_cols == -1:
            width = mask.shape[1] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else n_images
            mask = check_mask(mask, n_images, width, distributed=True)
        else:
            mask = check_mask(mask, n_images, n_images)
    return rows, n_images, n_views, labels, mask


def _tile_image_mask(image_mask: Tensor, n_views: int, image_offset: int) -> Tensor:
    """(n, N_global) image mask -> (n * V, N_global * V) row mask; views of one image always positive."""
    row_mask = image_mask.repeat_interleave(n_views, dim=0).repeat_interleave(n_views, dim=1)
    anchor_image = image_offset + torch.arange(row_mask.shape[0], device=row_mask.device) // n_views
    contrast_image = torch.arange(row_mask.shape[1], device=row_mask.device) // n_views
    return row_mask | (anchor_image[:, None] == contrast_image[None, :])


def _refuse_infinite_negative_term(
    anchor_index: Tensor, anchor_labels: Tensor | None, contrast_labels: Tensor | None, row_mask: Tensor | None
) -> None:
    # With 2 rows an anchor's only other row has p = 1 exactly, so a negative there gives
    # -log(1 - p) = +inf. Refuse rather than return inf.
    other = 1 - anchor_index
    if row_mask is not None:
        is_positive = row_mask[torch.arange(anchor_index.shape[0], device=row_mask.device), other]
    else:
        is_positive = anchor_labels == contrast_labels[other]
    if not bool(is_positive.all()):
        raise ValueError(
            "with only 2 rows and eta > 0, an anchor whose single other row is a negative has p = 1 and "
            "an infinite negative term -log(1 - p); use a batch of at least 3 rows or eta=0"
        )


def _select_impl(impl: str, n_rows: int, device: torch.device) -> Callable[..., Tensor]:
    if impl == "blockwise" or (impl == "auto" and _blockwise.prefer_blockwise(n_rows, device)):
        return _blockwise.per_anchor_loss
    return _reference.per_anchor_loss


def _autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    # Softmax statistics of a contrastive loss overflow/underflow in half precision at small
    # temperatures; whatever autocast region the caller is in, the loss runs in float32/64.
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):
        return contextlib.nullcontext()

"""Functional form of the asymmetric focal contrastive loss family (CL, FCL, ACL, AFCL)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from asymcl.losses import _blockwise, _deferred, _reference, distributed
from asymcl.losses._validation import (
    check_block_size,
    check_features,
    check_flag,
    check_hyperparameters,
    check_impl,
    check_labels,
    check_mask,
    check_references,
)


def afcl_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    ref_features: Tensor | None = None,
    ref_labels: Tensor | None = None,
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

    Reference rows (a cross-batch memory, see :class:`asymcl.losses.ContrastiveMemory`): with
    ``ref_features`` r_1..r_K, every anchor i = 1..N is also contrasted with them: A(i) = the other
    batch rows and all K reference rows, P(i) and Q(i) split A(i) by label as before, so the
    references enter every p_ij's denominator and are positives or negatives by ``ref_labels``.
    They are never anchors and get no gradient (they are detached). N stays the number of anchor
    rows (the batch), in the mean and in the "batch" weights w = 1/N: with K = 0 the loss is
    exactly the loss without references, and its scale does not change with K (the sums over P(i)
    and Q(i) grow with K; "pairs" divides them by |P(i)| and |Q(i)|, which count references).

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
        ref_features: (K, D) or (K, V', D) reference rows (K may be 0), on the device of
            ``features``, any floating dtype (cast to the computation's dtype; L2-normalised when
            ``normalize`` is). Needs ``labels`` (a mask or views-only positives cannot say which
            references are positives).
        ref_labels: (K,) integer class ids of the references (one per reference image).
        gamma: focal exponent >= 0.
        eta: weight of the negative term >= 0.
        temperature: tau > 0.
        normalization: "batch" or "pairs" (see above).
        normalize: L2-normalise the rows first (turn off only if they already are).
        impl: "reference" (plain autograd over the full N x N matrix), "blockwise" (the row-blocked
            implementation with an analytic backward) or "auto" (blockwise where it is faster).
            Under torch.func transforms (grad, vmap, jacrev, ...) and forward-mode AD the reference
            path runs whatever impl says (the blockwise backward is reverse mode only). Backward
            with ``create_graph=True`` through the blockwise path differentiates the reference
            loss, so second-order gradients are exact (at the reference path's N x N memory).
        gather_distributed: when torch.distributed is initialised with world size W > 1, contrast
            the local rows with the rows of all ranks (see :mod:`asymcl.losses.distributed`). The
            returned value is the single-process loss on the concatenated batch, ranks in order,
            and the gradients are scaled so that DDP's averaging yields the single-process
            gradient. A ``mask`` then has shape (local images, global images), its columns the
            images of rank 0, then rank 1, ... Reference rows are *not* gathered: each rank
            contrasts its anchors with its own ``ref_features``. They carry no gradient, so
            nothing needs to travel, and a memory that every rank fills with the gathered global
            batch (as :class:`~asymcl.losses.ContrastiveMemory` does) is already the same on every
            rank: gathering it would count each reference W times. With the same references on
            every rank the value is the single-process loss on the concatenated batch with those
            references. Without an initialised group (or with W = 1) this switch does nothing.
        block_size: anchor rows per block of the blockwise implementation (peak extra memory is
            about 4 x block_size x N x 4 bytes); None chooses it from a memory budget. Giving it
            selects the blockwise implementation under impl="auto".

    Returns:
        A 0-dim tensor in float32 (float64 for float64 features).

    Raises:
        TypeError, ValueError: for bad input, naming the argument and what is allowed: fewer than
        2 rows, mismatched shapes, both labels and mask, non-integer labels, a non-bool mask, NaN or
        inf features or references, references without labels, temperature <= 0, gamma or eta < 0,
        an unknown normalization or impl.
    """
    loss, _ = loss_and_batch(
        features,
        labels,
        mask=mask,
        ref_features=ref_features,
        ref_labels=ref_labels,
        gamma=gamma,
        eta=eta,
        temperature=temperature,
        normalization=normalization,
        normalize=normalize,
        impl=impl,
        gather_distributed=gather_distributed,
        block_size=block_size,
    )
    return loss


def loss_and_batch(
    features: object,
    labels: object,
    *,
    mask: object,
    ref_features: object,
    ref_labels: object,
    gamma: object,
    eta: object,
    temperature: object,
    normalization: object,
    normalize: object,
    impl: object,
    gather_distributed: object,
    block_size: object,
    settings_checked: bool = False,
    validate_args: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor | None]]:
    """:func:`afcl_loss` and the detached rows it contrasted, for a memory to keep.

    Returns ``(loss, (rows, row_labels))``: the (global, under ``gather_distributed``) batch rows as
    the loss saw them (normalised if ``normalize``), detached, (N * V, D), and their labels (N * V,)
    (None without labels). Not public: the modules and :class:`asymcl.losses.ContrastiveMemory`
    are its users.

    ``settings_checked=True``: the hyperparameters and switches (gamma ... block_size) come from a
    module that validated them at construction; they are not checked again on every call.
    ``validate_args=False``: skip the NaN/inf check of ``features`` and ``ref_features`` (see the
    modules); the shape and type checks read metadata only and always run.
    """
    if not settings_checked:
        gamma, eta, temperature, normalization = check_hyperparameters(
            gamma=gamma, eta=eta, temperature=temperature, normalization=normalization
        )
        normalize = check_flag("normalize", normalize)
        gather_distributed = check_flag("gather_distributed", gather_distributed)
        impl = check_impl(impl)
        block_size = check_block_size(block_size, impl)
    world_size = distributed.active_world_size() if gather_distributed else 1
    # Under vmap a check cannot branch on a tensor's values (NaN, inf): such input then gives a
    # NaN loss instead of an error (still never a silent number).
    data_checks = validate_args and not _vmap_active()

    if world_size == 1:
        _deferred.raise_ready()  # an input check of an earlier call, deferred on CUDA
        rows, n_images, n_views, label_ids, image_mask, refs = _check_local_inputs(
            features, labels, mask, ref_features, ref_labels, n_mask_cols=None, data_checks=data_checks
        )
        layout = None
        n_global_images = n_images
        image_offset = 0
    else:
        local_error: Exception | None = None
        n_images = n_views = dim = mask_cols = 0
        mode = (
            distributed.MODE_LABELS
            if labels is not None
            else distributed.MODE_MASK
            if mask is not None
            else distributed.MODE_VIEWS_ONLY
        )
        try:
            _deferred.raise_ready()  # through the exchange below, so that no rank is left waiting
            rows, n_images, n_views, label_ids, image_mask, refs = _check_local_inputs(
                features, labels, mask, ref_features, ref_labels, n_mask_cols=-1, data_checks=data_checks
            )
            dim = rows.shape[1]
            mask_cols = image_mask.shape[1] if image_mask is not None else -1
        except (TypeError, ValueError) as error:
            local_error = error
        layout = distributed.exchange_metadata(
            local_error=local_error, n_images=n_images, n_views=n_views, dim=dim, mode=mode, mask_cols=mask_cols
        )
        n_global_images = layout.n_images
        image_offset = layout.image_offset

    n_total = n_global_images * n_views  # anchors: rows of the (global) batch
    n_refs = 0 if refs is None else refs[0].shape[0]
    n_contrast = n_total + n_refs
    if refs is None and n_total < 2:
        raise ValueError(
            f"the batch must have at least 2 rows (N * V, the rows every anchor is contrasted with), got {n_total}"
        )
    if refs is not None and (n_total < 1 or n_contrast < 2):
        raise ValueError(
            f"the batch must have at least 1 row and, with the reference rows, at least 2 (every anchor "
            f"needs another row to be contrasted with), got {n_total} batch and {n_refs} reference rows"
        )
    if label_ids is None and image_mask is None and n_views < 2:
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
            global_labels = label_ids
        else:
            contrast = distributed.gather_rows(rows, layout, n_views)
            global_labels = distributed.gather_labels(label_ids, layout) if label_ids is not None else None
        batch_rows = contrast.detach()

        anchor_labels: Tensor | None = None
        contrast_labels: Tensor | None = None
        row_mask: Tensor | None = None
        if image_mask is not None:
            row_mask = _tile_image_mask(image_mask.to(rows.device), n_views, image_offset)
        else:
            # global_labels is None exactly when label_ids is: SimCLR-style, the image id is the label
            if label_ids is None or global_labels is None:
                label_ids = torch.arange(image_offset, image_offset + n_images, device=rows.device)
                global_labels = torch.arange(n_global_images, device=rows.device)
            anchor_labels = label_ids.to(rows.device).repeat_interleave(n_views)
            contrast_labels = global_labels.to(rows.device).repeat_interleave(n_views)
        batch_row_labels = contrast_labels if image_mask is None else None

        if refs is not None and n_refs:  # K = 0 leaves the computation exactly as without references
            # check_references refuses references without labels, so the batch rows have labels
            assert contrast_labels is not None
            ref_rows = refs[0].detach().to(compute_dtype)
            if normalize:
                ref_rows = F.normalize(ref_rows, dim=1)
            contrast = torch.cat([contrast, ref_rows])
            contrast_labels = torch.cat([contrast_labels, refs[1].to(rows.device)])

        if n_contrast == 2 and eta != 0:
            _refuse_infinite_negative_term(anchor_index, anchor_labels, contrast_labels, row_mask)

        if _functorch_active() or _is_dual(rows):
            chosen = "reference"
        else:
            # a str: checked above, or by the module that passed settings_checked=True
            chosen = "blockwise" if block_size is not None else cast(str, impl)
        per_anchor_loss = _select_impl(chosen, n_contrast, rows.device)
        extra = {"block_size": block_size} if block_size is not None and chosen == "blockwise" else {}
        if per_anchor_loss is _blockwise.per_anchor_loss:
            extra["uniform_upstream"] = True  # the loss below is per_anchor.sum() / n_total
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
    return loss, (batch_rows, batch_row_labels)


def _check_local_inputs(
    features: object,
    labels: object,
    mask: object,
    ref_features: object,
    ref_labels: object,
    *,
    n_mask_cols: int | None,
    data_checks: bool = True,
) -> tuple[Tensor, int, int, Tensor | None, Tensor | None, tuple[Tensor, Tensor] | None]:
    """Validate this process's features/labels/mask/references; ``n_mask_cols=-1`` accepts any mask
    width (checked against the global image count after the ranks exchange their sizes).

    The references come back as (rows (K * V', D), row labels (K * V',)), or None without them.
    """
    if labels is not None and mask is not None:
        raise ValueError("give labels or mask, not both (labels: (N,) class ids; mask: (N, N) bool positives)")
    rows, n_images, n_views = check_features(features, data_checks=data_checks)
    if labels is not None:
        labels = check_labels(labels, n_images)
    if mask is not None:
        if n_mask_cols == -1:
            width = mask.shape[1] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else n_images
            mask = check_mask(mask, n_images, width, distributed=True)
        else:
            mask = check_mask(mask, n_images, n_images)
    refs = check_references(ref_features, ref_labels, rows, has_labels=labels is not None, data_checks=data_checks)
    return rows, n_images, n_views, labels, mask, refs


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
        # loss_and_batch builds row labels whenever there is no mask
        assert anchor_labels is not None and contrast_labels is not None
        is_positive = torch.eq(anchor_labels, contrast_labels[other])
    if not bool(is_positive.all()):
        raise ValueError(
            "with only 2 rows and eta > 0, an anchor whose single other row is a negative has p = 1 and "
            "an infinite negative term -log(1 - p); use a batch of at least 3 rows or eta=0"
        )


def _functorch_active() -> bool:
    # torch.func transforms run an autograd.Function only with setup_context/vmap rules; the
    # blockwise Function's analytic backward is a reverse-mode, first-order rule, so these calls
    # take the plain autograd path, which every transform differentiates and batches.
    return bool(torch._C._are_functorch_transforms_active())


def _vmap_active() -> bool:
    stack = torch._C._functorch.get_interpreter_stack() if _functorch_active() else None
    return any(level.key() == torch._C._functorch.TransformType.Vmap for level in stack or ())


def _is_dual(rows: Tensor) -> bool:
    """Forward-mode AD (torch.autograd.forward_ad): the blockwise Function has no jvp rule."""
    return torch.autograd.forward_ad.unpack_dual(rows).tangent is not None


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

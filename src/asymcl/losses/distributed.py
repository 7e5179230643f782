"""Contrasting every anchor with the global batch under ``torch.distributed``.

Used by ``afcl_loss(..., gather_distributed=True)`` and the modules' ``gather_distributed=True``.
When torch.distributed is initialised with a world size W > 1, each rank

1. exchanges a small metadata record (local image count, views, feature dimension, label mode,
   mask width and whether its own inputs passed validation), so every rank raises the same error
   instead of one rank raising while the others wait forever in a collective;
2. gathers the L2-normalised rows of all ranks (ranks in order, each rank's rows image-major) with a
   differentiable all-gather (:class:`_GatherRows`), and the labels of all ranks;
3. uses its *local* rows as anchors and the *global* rows as the contrast set, so that A(i), P(i),
   Q(i) and the "batch" weight 1/N are those of the concatenated batch (N = global rows).

Gradient scaling (why the returned tensor is not simply the local part). Write the single-process
loss on the concatenated batch as L = sum_r L_r, with L_r = (1/N) sum_{i local to rank r} loss_i.
Backpropagating L_r on rank r sends gradient to rank r's rows directly (anchor side) and, through the
gather's backward (an all-reduce SUM of the gradient of the gathered rows, then rank r's slice),
the contrast-side gradient of every L_s. So rank r's rows receive exactly dL/dz_r, the gradient
of the *full* loss, and rank r's parameter gradient is rank r's share of dL/dtheta; the shares sum
over ranks to dL/dtheta. DDP *averages* parameter gradients over ranks (divides the sum by W), so
each rank backpropagates W * L_r. The value returned is the detached all-reduced sum L (what a
single process would report), built as

    W * L_r - (W * L_r).detach() + L.detach()

whose value is L and whose gradient is W * dL_r. After DDP's averaging the parameter gradients
equal those of the single-process loss on the concatenated batch. (Without DDP, sum the ranks'
gradients and divide by W to get the same.)

Ranks may hold different numbers of images (rows are padded to the largest rank for the
collective and the padding is dropped); V and D must agree across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Label modes exchanged between ranks; all ranks must use the same one.
MODE_LABELS, MODE_MASK, MODE_VIEWS_ONLY = 0, 1, 2
_MODE_NAMES = {MODE_LABELS: "labels", MODE_MASK: "mask", MODE_VIEWS_ONLY: "neither labels nor mask"}


def active_world_size() -> int:
    """World size of the default process group, or 1 when torch.distributed is not in use."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 1
    return torch.distributed.get_world_size()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo and others take CPU tensors.
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class GlobalLayout:
    """Where this rank's images sit in the global batch."""

    image_counts: tuple[int, ...]  # images per rank, ranks in order
    rank: int

    @property
    def image_offset(self) -> int:
        return sum(self.image_counts[: self.rank])

    @property
    def n_images(self) -> int:
        return sum(self.image_counts)


def exchange_metadata(
    *, local_error: Exception | None, n_images: int, n_views: int, dim: int, mode: int, mask_cols: int
) -> GlobalLayout:
    """All-gather each rank's batch description; raise the same error on every rank if any is bad."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    ok = 0 if local_error is not None else 1
    record = torch.tensor([ok, n_images, n_views, dim, mode, mask_cols], dtype=torch.int64, device=_collective_device())
    records = [torch.empty_like(record) for _ in range(world)]
    torch.distributed.all_gather(records, record)
    table = [r.tolist() for r in records]

    if local_error is not None:
        raise local_error
    bad_ranks = [r for r, row in enumerate(table) if row[0] == 0]
    if bad_ranks:
        raise ValueError(
            f"rank(s) {bad_ranks} rejected their loss inputs (see the error on those ranks); "
            f"every rank stops so that none waits forever in a collective"
        )
    for name, column in (("views V", 2), ("feature dimension D", 3)):
        values = [row[column] for row in table]
        if len(set(values)) != 1:
            raise ValueError(
                f"features must have the same {name} on every rank with gather_distributed=True, got {values} (by rank)"
            )
    modes = [row[4] for row in table]
    if len(set(modes)) != 1:
        raise ValueError(
            "every rank must pass the same kind of positives (labels, mask, or neither) with "
            f"gather_distributed=True, got {[_MODE_NAMES[m] for m in modes]} (by rank)"
        )
    counts = tuple(row[1] for row in table)
    if mode == MODE_MASK:
        widths = [row[5] for row in table]
        bad = [r for r, width in enumerate(widths) if width != sum(counts)]
        if bad:
            raise ValueError(
                f"with gather_distributed=True, mask must have shape (local images, global images), "
                f"its columns the images of rank 0, then rank 1, ...; the global batch has {sum(counts)} "
                f"images but rank(s) {bad} passed {[widths[r] for r in bad]} columns"
            )
    return GlobalLayout(image_counts=counts, rank=rank)


class _GatherRows(torch.autograd.Function):
    """Differentiable all-gather of (n_r, D) blocks with possibly different n_r per rank.

    Backward: the gradient of the gathered (sum n_r, D) tensor is all-reduced (summed) over ranks
    and each rank keeps its own slice, i.e. every rank's rows receive the contrast-side gradient of
    every rank's loss. Written by hand instead of torch.distributed.nn.functional.all_gather because
    that needs equal shapes and, on gloo, all_to_all, which older torch builds lack.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, counts: tuple[int, ...], rank: int) -> Tensor:  # type: ignore[override]
        largest = max(counts)
        padded = torch.zeros(largest, rows.shape[1], dtype=rows.dtype, device=rows.device)
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, rank
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx, grad_gathered: Tensor):  # type: ignore[override]
        if torch.is_grad_enabled():
            # create_graph=True: the all-reduce below is invisible to autograd, so a second
            # derivative through it would be silently wrong. Refuse instead.
            raise RuntimeError(
                "second-order gradients (create_graph=True) through gather_distributed=True are not "
                "supported: the all-gather's backward is first-order only; compute the gradient "
                "penalty on the local batch (gather_distributed=False)"
            )
        summed = grad_gathered.contiguous().clone()
        torch.distributed.all_reduce(summed, op=torch.distributed.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return summed[start : start + ctx.counts[ctx.rank]], None, None


def gather_rows(rows: Tensor, layout: GlobalLayout, n_views: int) -> Tensor:
    """(n_local * V, D) local rows -> (N_global * V, D) global rows, differentiable."""
    row_counts = tuple(count * n_views for count in layout.image_counts)
    return _GatherRows.apply(rows, row_counts, layout.rank)


def gather_labels(labels: Tensor, layout: GlobalLayout) -> Tensor:
    """(n_local,) int64 labels -> (N_global,) labels of all ranks, ranks in order."""
    device = _collective_device()
    largest = max(layout.image_counts)
    padded = torch.zeros(largest, dtype=torch.int64, device=device)
    padded[: labels.shape[0]] = labels.to(device)
    parts = [torch.empty_like(padded) for _ in layout.image_counts]
    torch.distributed.all_gather(parts, padded)
    gathered = torch.cat([part[:count] for part, count in zip(parts, layout.image_counts, strict=True)])
    return gathered.to(labels.device)


def combine_for_ddp(local_loss: Tensor, world_size: int) -> Tensor:
    """Value: the global loss sum_r L_r; gradient: world_size * dL_r (see the module docstring)."""
    total = local_loss.detach().clone()
    device = _collective_device()
    total_on_device = total.to(device)
    torch.distributed.all_reduce(total_on_device, op=torch.distributed.ReduceOp.SUM)
    total = total_on_device.to(local_loss.device)
    scaled = local_loss * world_size
    return scaled - scaled.detach() + total

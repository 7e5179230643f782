"""A labelled cross-batch memory: the loss contrasts each batch with the last K rows it saw.

With small batches and rare classes a minority anchor rarely meets a positive in its own batch,
so CL/FCL give it no signal. :class:`ContrastiveMemory` keeps a FIFO queue of the last K projected
rows and their labels (detached, the model of pytorch-metric-learning's CrossBatchMemory and of
XBM, Wang et al. 2020) and passes them to the loss as reference rows (``afcl_loss(...,
ref_features=, ref_labels=)``): contrasted with every anchor, positives or negatives by label,
never anchors, no gradient.

Per call (training mode): the loss is computed against the queue as it was *before* this batch
(else every anchor would meet its own copy as a positive), then the batch's rows are enqueued,
oldest rows dropped. The rows in the queue were produced by earlier parameters; with a slowly
changing encoder that drift is small (XBM's "slow drift"), but a memory can also hurt (see
pytorch-metric-learning issue 609 for SupCon): measure it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asymcl.losses.modules import AsymmetricFocalContrastiveLoss

_BUFFERS = ("queue_features", "queue_labels")


class ContrastiveMemory(nn.Module):
    """Wrap a loss module of this package with a FIFO memory of the last ``memory_size`` rows.

    ``ContrastiveMemory(loss, memory_size)``; ``forward(features, labels, *, enqueue=None)``:
    features (N, D) or (N, V, D), labels (N,) int (a memory needs class labels); returns the scalar
    loss of ``loss``'s settings with the filled part of the queue as reference rows. N in the
    "batch" weights and the mean is the batch's row count, not N + K (see :func:`afcl_loss`).

    - ``memory_size=0``: no queue, no buffers; exactly ``loss(features, labels)``.
    - Before the queue is full only its filled rows are used (none on the first call, which is
      then exactly the loss without memory).
    - The queue holds the rows as the loss saw them (L2-normalised when ``loss.normalize``),
      detached, in float32 (float64 for float64 features), every view a row with its image's label.
      A batch larger than the queue leaves only its last ``memory_size`` rows.
    - Enqueues in training mode only (``enqueue=None``): a validation pass (``.eval()``) is scored
      against the queue but does not put validation rows into it. ``enqueue=True/False`` overrides.
    - The queue, its labels, fill count and write position are buffers: they follow ``.to()`` and
      go into ``state_dict()``, so a resumed run continues with the same memory. A fresh module
      takes the queue's shape from the checkpoint.
    - Under DDP with ``loss.gather_distributed=True`` the gathered global batch is enqueued, ranks in
      order, so every rank holds the same queue; the references are not gathered again (each rank
      already has all of them). Without ``gather_distributed`` each rank keeps its own rows.
    """

    # Buffers (registered when memory_size > 0): declared for the type checker, which cannot see
    # through register_buffer.
    queue_features: Tensor
    queue_labels: Tensor
    queue_filled: Tensor
    queue_pointer: Tensor

    def __init__(self, loss: AsymmetricFocalContrastiveLoss, memory_size: int) -> None:
        super().__init__()
        if not isinstance(loss, AsymmetricFocalContrastiveLoss):
            raise TypeError(
                "loss must be one of asymcl.losses' loss modules (AsymmetricFocalContrastiveLoss, "
                f"AsymmetricContrastiveLoss, FocalContrastiveLoss, SupConLoss), got {type(loss).__name__}"
            )
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 0:
            raise ValueError(
                f"memory_size must be an int >= 0 (rows kept in the queue; 0 = no memory), got {memory_size!r}"
            )
        self.loss = loss
        self.memory_size = memory_size
        # Mirrors of the two counters, so that a step never waits for a device-to-host copy.
        self._filled = 0
        self._pointer = 0
        if memory_size:
            # Shapes are set by the first batch (D is not known before) or by a loaded state_dict.
            self.register_buffer("queue_features", torch.zeros(0, 0))
            self.register_buffer("queue_labels", torch.zeros(0, dtype=torch.int64))
            self.register_buffer("queue_filled", torch.zeros((), dtype=torch.int64))
            self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.int64))

    @property
    def filled(self) -> int:
        """Rows of the queue in use (at most ``memory_size``)."""
        return self._filled

    def forward(self, features: Tensor, labels: Tensor, *, enqueue: bool | None = None) -> Tensor:
        if enqueue is None:
            enqueue = self.training
        elif not isinstance(enqueue, bool):
            raise TypeError(f"enqueue must be True, False or None (= in training mode), got {enqueue!r}")
        ref_features = ref_labels = None
        if self.memory_size:
            if labels is None:
                raise ValueError(
                    "ContrastiveMemory needs labels=... (class ids): queued rows are positives or negatives by class"
                )
            if self._filled:
                self._check_matches_queue(features)
                ref_features = self.queue_features[: self._filled]
                ref_labels = self.queue_labels[: self._filled]
        # The wrapped module's settings were checked when it was built: not again on every call.
        value, (rows, row_labels) = self.loss.loss_and_batch(
            features, labels, ref_features=ref_features, ref_labels=ref_labels
        )
        if self.memory_size and enqueue:
            self._enqueue(rows, row_labels)
        return value

    @torch.no_grad()
    def reset(self) -> None:
        """Empty the queue (its shape is kept)."""
        self._filled = self._pointer = 0
        if self.memory_size:
            self.queue_filled.zero_()
            self.queue_pointer.zero_()

    def _check_matches_queue(self, features: object) -> None:
        if isinstance(features, Tensor) and features.dim() in (2, 3):
            dim = self.queue_features.shape[1]
            if features.shape[-1] != dim:
                raise ValueError(
                    f"features have dimension {features.shape[-1]} but the memory holds rows of dimension "
                    f"{dim}; use one ContrastiveMemory per embedding size (or .reset() it)"
                )
            if features.device != self.queue_features.device:
                raise ValueError(
                    f"the memory is on {self.queue_features.device} but features are on {features.device}; "
                    f"move the module with .to(device)"
                )

    @torch.no_grad()
    def _enqueue(self, rows: Tensor, row_labels: Tensor) -> None:
        capacity = self.memory_size
        rows, row_labels = rows[-capacity:], row_labels[-capacity:]
        if self.queue_features.shape != (capacity, rows.shape[1]) or self.queue_features.device != rows.device:
            self.queue_features = torch.zeros(capacity, rows.shape[1], dtype=rows.dtype, device=rows.device)
            self.queue_labels = torch.zeros(capacity, dtype=torch.int64, device=rows.device)
            self.queue_filled = self.queue_filled.to(rows.device)
            self.queue_pointer = self.queue_pointer.to(rows.device)
            self._filled = self._pointer = 0
        n_rows = rows.shape[0]
        index = (self._pointer + torch.arange(n_rows, device=rows.device)) % capacity
        self.queue_features[index] = rows.to(self.queue_features.dtype)
        self.queue_labels[index] = row_labels.to(torch.int64)
        self._pointer = (self._pointer + n_rows) % capacity
        self._filled = min(capacity, self._filled + n_rows)
        self.queue_filled.fill_(self._filled)
        self.queue_pointer.fill_(self._pointer)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # The queue's width is only known once a batch has been seen: take the stored shape.
        for name in _BUFFERS:
            stored = state_dict.get(prefix + name)
            if self.memory_size and isinstance(stored, Tensor) and stored.shape != getattr(self, name).shape:
                if stored.numel() and stored.shape[0] != self.memory_size:
                    error_msgs.append(
                        f"{prefix}{name}: the checkpoint's memory holds {stored.shape[0]} rows but this "
                        f"ContrastiveMemory has memory_size={self.memory_size}"
                    )
                    continue
                current = getattr(self, name)
                setattr(self, name, torch.zeros(stored.shape, dtype=stored.dtype, device=current.device))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if self.memory_size:
            self._filled = int(self.queue_filled)
            self._pointer = int(self.queue_pointer)

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, filled={self._filled}"

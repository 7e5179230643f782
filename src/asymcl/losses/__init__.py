"""The asymmetric focal contrastive loss family: CL, FCL, ACL, AFCL and SupCon.

Needs nothing but torch. Functional form :func:`afcl_loss`; module forms
:class:`AsymmetricFocalContrastiveLoss`, :class:`AsymmetricContrastiveLoss` (gamma = 0),
:class:`FocalContrastiveLoss` (eta = 0) and :class:`SupConLoss` (gamma = eta = 0, "pairs").

Under torch.distributed, pass ``gather_distributed=True`` (functional or constructor): every
anchor is then contrasted with the global batch, the value equals the single-process loss on the
concatenated batch and the gradients are right after DDP's averaging (see
:mod:`asymcl.losses.distributed`).

With small batches and rare classes, :class:`ContrastiveMemory` (``ContrastiveMemory(criterion,
memory_size=K)``) contrasts each batch also with the last K rows seen (labelled, detached), via the
loss's reference rows (``ref_features``/``ref_labels``).

NaN/inf input is an error. On CUDA the check does not stall the GPU: the call that receives such
input returns a NaN loss and the error is raised by a later call (normally the next one) or by
:func:`raise_pending_input_errors`, which waits for every pending check. On CPU it is immediate.

Example::

    from asymcl.losses import AsymmetricFocalContrastiveLoss

    criterion = AsymmetricFocalContrastiveLoss(gamma=2.0, eta=50.0, temperature=0.1)
    z = projection_head(encoder(torch.cat([view1, view2])))      # (2B, 128)
    z = torch.stack(z.split(len(view1)), dim=1)                  # (B, 2, 128)
    loss = criterion(z, labels)                                  # labels: (B,) int
"""

from asymcl.losses._deferred import raise_pending_input_errors
from asymcl.losses.functional import afcl_loss
from asymcl.losses.memory import ContrastiveMemory
from asymcl.losses.modules import (
    AsymmetricContrastiveLoss,
    AsymmetricFocalContrastiveLoss,
    FocalContrastiveLoss,
    SupConLoss,
)

__all__ = [
    "AsymmetricContrastiveLoss",
    "AsymmetricFocalContrastiveLoss",
    "ContrastiveMemory",
    "FocalContrastiveLoss",
    "SupConLoss",
    "afcl_loss",
    "raise_pending_input_errors",
]

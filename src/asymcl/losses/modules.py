"""``nn.Module`` forms of the loss family; thin wrappers around :func:`afcl_loss`.

The hyperparameters are checked once, when a module is built, and trusted on every call (a
training loop calls ``forward`` thousands of times with the same values). The subclasses take
``**kwargs`` and pass them to :class:`AsymmetricFocalContrastiveLoss`, as pytorch-metric-learning's
losses do, so a new keyword of the base reaches every form, and a user's own subclass is the same
few lines (examples/plugin_loss.py).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from asymcl.losses._validation import check_block_size, check_flag, check_hyperparameters, check_impl
from asymcl.losses.functional import loss_and_batch


class AsymmetricFocalContrastiveLoss(nn.Module):
    """AFCL: ``w_pos(i) (1-p)^gamma``-weighted positives plus ``eta``-weighted ``-log(1-p)`` negatives.

    See :func:`asymcl.losses.afcl_loss` for the formula, the shapes and every argument. The
    hyperparameters are validated here, at construction (the same messages as ``afcl_loss``), and
    are plain attributes afterwards; ``forward`` does not check them again.

    ``validate_args`` (as in torchmetrics): True (default) checks every call's ``features`` and
    ``ref_features`` for NaN/inf (on an accelerator without a host sync: the error comes from a
    later call, see :func:`asymcl.losses.raise_pending_input_errors`). False skips that check for
    speed: bad input then gives a NaN loss, never a silent number. Shape and type checks always run.

    ``forward(features, labels=None, *, mask=None, ref_features=None, ref_labels=None)``: features
    (N, D) or (N, V, D); labels (N,) int; or mask (N, N) bool (with neither, an image's other views
    are its only positives); optional reference rows (K, D) with labels (K,), contrasted but never
    anchors (for a queue kept across batches see :class:`asymcl.losses.ContrastiveMemory`).
    Returns a scalar tensor.
    """

    def __init__(
        self,
        gamma: float = 0.0,
        eta: float = 0.0,
        *,
        temperature: float = 0.07,
        normalization: str = "batch",
        normalize: bool = True,
        impl: str = "auto",
        gather_distributed: bool = False,
        block_size: int | None = None,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        self.gamma, self.eta, self.temperature, self.normalization = check_hyperparameters(
            gamma=gamma, eta=eta, temperature=temperature, normalization=normalization
        )
        self.normalize = check_flag("normalize", normalize)
        self.impl = check_impl(impl)
        self.gather_distributed = check_flag("gather_distributed", gather_distributed)
        self.block_size = check_block_size(block_size, self.impl)
        self.validate_args = check_flag("validate_args", validate_args)

    def forward(
        self,
        features: Tensor,
        labels: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        ref_features: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        return self.loss_and_batch(features, labels, mask=mask, ref_features=ref_features, ref_labels=ref_labels)[0]

    def loss_and_batch(self, features: Tensor, labels: Tensor | None = None, **inputs: Any):
        """``forward``'s loss and the detached rows it contrasted (what a memory queue keeps)."""
        return loss_and_batch(
            features,
            labels,
            mask=inputs.get("mask"),
            ref_features=inputs.get("ref_features"),
            ref_labels=inputs.get("ref_labels"),
            gamma=self.gamma,
            eta=self.eta,
            temperature=self.temperature,
            normalization=self.normalization,
            normalize=self.normalize,
            impl=self.impl,
            gather_distributed=self.gather_distributed,
            block_size=self.block_size,
            settings_checked=True,
            validate_args=self.validate_args,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, eta={self.eta}, temperature={self.temperature}, "
            f"normalization={self.normalization!r}, normalize={self.normalize}, impl={self.impl!r}, "
            f"gather_distributed={self.gather_distributed}, block_size={self.block_size}"
            + ("" if self.validate_args else ", validate_args=False")
        )


def _refuse_fixed(cls: type, kwargs: dict[str, Any], fixed: dict[str, Any]) -> None:
    """A subclass pins some hyperparameters by definition; one given anyway is a clear TypeError,
    not Python's "got multiple values"."""
    for name, value in fixed.items():
        if name in kwargs:
            raise TypeError(
                f"{cls.__name__} fixes {name} = {value!r}; use AsymmetricFocalContrastiveLoss to set {name}"
            )


class AsymmetricContrastiveLoss(AsymmetricFocalContrastiveLoss):
    """ACL: AFCL with gamma fixed at 0 (plain ``-log p`` positives plus the ``eta`` negative term).

    Every other keyword (temperature, normalization, validate_args, ...) goes to the base."""

    def __init__(self, eta: float = 0.0, **kwargs: Any) -> None:
        _refuse_fixed(type(self), kwargs, {"gamma": 0.0})
        super().__init__(0.0, eta, **kwargs)


class FocalContrastiveLoss(AsymmetricFocalContrastiveLoss):
    """FCL: AFCL with eta fixed at 0 (focal-weighted positives only).

    Every other keyword (temperature, normalization, validate_args, ...) goes to the base."""

    def __init__(self, gamma: float = 0.0, **kwargs: Any) -> None:
        _refuse_fixed(type(self), kwargs, {"eta": 0.0})
        super().__init__(gamma, 0.0, **kwargs)


class SupConLoss(AsymmetricFocalContrastiveLoss):
    """Standard supervised contrastive loss (Khosla et al. 2020, L_out).

    gamma = eta = 0 with "pairs" normalisation:
    ``(1/N) sum_i -(1/|P(i)|) sum_{p in P(i)} log p_ip``, where an anchor without a positive
    contributes 0 (and still counts in the 1/N). Every other keyword goes to the base.
    """

    def __init__(self, **kwargs: Any) -> None:
        _refuse_fixed(type(self), kwargs, {"gamma": 0.0, "eta": 0.0, "normalization": "pairs"})
        super().__init__(0.0, 0.0, normalization="pairs", **kwargs)

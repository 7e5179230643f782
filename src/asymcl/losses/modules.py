"""``nn.Module`` forms of the loss family; thin wrappers around :func:`afcl_loss`."""

from __future__ import annotations

from torch import Tensor, nn

from asymcl.losses._validation import check_block_size, check_flag, check_hyperparameters, check_impl
from asymcl.losses.functional import afcl_loss


class AsymmetricFocalContrastiveLoss(nn.Module):
    """AFCL: ``w_pos(i) (1-p)^gamma``-weighted positives plus ``eta``-weighted ``-log(1-p)`` negatives.

    See :func:`asymcl.losses.afcl_loss` for the formula, the shapes and every argument. The
    hyperparameters are validated here, at construction, and are plain attributes afterwards.

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
    ) -> None:
        super().__init__()
        self.gamma, self.eta, self.temperature, self.normalization = check_hyperparameters(
            gamma=gamma, eta=eta, temperature=temperature, normalization=normalization
        )
        self.normalize = check_flag("normalize", normalize)
        self.impl = check_impl(impl)
        self.gather_distributed = check_flag("gather_distributed", gather_distributed)
        self.block_size = check_block_size(block_size, self.impl)

    def forward(
        self,
        features: Tensor,
        labels: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        ref_features: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        return afcl_loss(
            features,
            labels,
            mask=mask,
            ref_features=ref_features,
            ref_labels=ref_labels,
            gamma=self.gamma,
            eta=self.eta,
            temperature=self.temperature,
            normalization=self.normalization,
            normalize=self.normalize,
            impl=self.impl,
            gather_distributed=self.gather_distributed,
            block_size=self.block_size,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, eta={self.eta}, temperature={self.temperature}, "
            f"normalization={self.normalization!r}, normalize={self.normalize}, impl={self.impl!r}, "
            f"gather_distributed={self.gather_distributed}, block_size={self.block_size}"
        )


class AsymmetricContrastiveLoss(AsymmetricFocalContrastiveLoss):
    """ACL: AFCL with gamma fixed at 0 (plain ``-log p`` positives plus the ``eta`` negative term)."""

    def __init__(
        self,
        eta: float = 0.0,
        *,
        temperature: float = 0.07,
        normalization: str = "batch",
        normalize: bool = True,
        impl: str = "auto",
        gather_distributed: bool = False,
        block_size: int | None = None,
    ) -> None:
        super().__init__(
            0.0,
            eta,
            temperature=temperature,
            normalization=normalization,
            normalize=normalize,
            impl=impl,
            gather_distributed=gather_distributed,
            block_size=block_size,
        )


class FocalContrastiveLoss(AsymmetricFocalContrastiveLoss):
    """FCL: AFCL with eta fixed at 0 (focal-weighted positives only)."""

    def __init__(
        self,
        gamma: float = 0.0,
        *,
        temperature: float = 0.07,
        normalization: str = "batch",
        normalize: bool = True,
        impl: str = "auto",
        gather_distributed: bool = False,
        block_size: int | None = None,
    ) -> None:
        super().__init__(
            gamma,
            0.0,
            temperature=temperature,
            normalization=normalization,
            normalize=normalize,
            impl=impl,
            gather_distributed=gather_distributed,
            block_size=block_size,
        )


class SupConLoss(AsymmetricFocalContrastiveLoss):
    """Standard supervised contrastive loss (Khosla et al. 2020, L_out).

    gamma = eta = 0 with "pairs" normalisation:
    ``(1/N) sum_i -(1/|P(i)|) sum_{p in P(i)} log p_ip``, where an anchor without a positive
    contributes 0 (and still counts in the 1/N).
    """

    def __init__(
        self,
        *,
        temperature: float = 0.07,
        normalize: bool = True,
        impl: str = "auto",
        gather_distributed: bool = False,
        block_size: int | None = None,
    ) -> None:
        super().__init__(
            0.0,
            0.0,
            temperature=temperature,
            normalization="pairs",
            normalize=normalize,
            impl=impl,
            gather_distributed=gather_distributed,
            block_size=block_size,
        )

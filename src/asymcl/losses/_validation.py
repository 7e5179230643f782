"""Argument checks for the loss layer.

Every public entry point (the functional form, the modules, the distributed form) funnels its
arguments through these helpers so that a user error is reported once, in one wording, naming the
argument and what is allowed, before any tensor arithmetic can turn it into a NaN or an opaque
traceback from inside torch.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from asymcl.losses import _deferred

NORMALIZATIONS = ("batch", "pairs")
IMPLS = ("auto", "reference", "blockwise")

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


#: What each hyperparameter allows, in the one wording every check uses:
#: "<name> must be <allowed>, got <value>".
_ALLOWED = {
    "gamma": "a finite number >= 0 (0 disables the focal weight)",
    "eta": "a finite number >= 0 (0 disables the negative term)",
    "temperature": "a finite number > 0, e.g. 0.07",
}


def check_hyperparameters(
    *, gamma: object, eta: object, temperature: object, normalization: object
) -> tuple[float, float, float, str]:
    """Validate the scalar hyperparameters; return them as (gamma, eta, temperature, normalization).

    The modules call this once, at construction; :func:`afcl_loss` on every call (it has no
    construction). The message is the same from every entry point."""
    values = {}
    for name, value in (("gamma", gamma), ("eta", eta), ("temperature", temperature)):
        number = _finite_real(name, value, allowed=_ALLOWED[name])
        if number < 0 or (name == "temperature" and number == 0):
            raise ValueError(f"{name} must be {_ALLOWED[name]}, got {number!r}")
        values[name] = number
    if not isinstance(normalization, str) or normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {', '.join(repr(n) for n in NORMALIZATIONS)}, got {normalization!r}"
        )
    return values["gamma"], values["eta"], values["temperature"], normalization


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_impl(impl: object) -> str:
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(repr(i) for i in IMPLS)}, got {impl!r}")
    return impl


def check_block_size(block_size: object, impl: str) -> int | None:
    """``block_size``: None (automatic) or a positive int; it only means something for blockwise."""
    if block_size is None:
        return None
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(
            f"block_size must be a positive int (anchor rows per block) or None (automatic), got {block_size!r}"
        )
    if impl == "reference":
        raise ValueError(
            "block_size applies to the row-blocked implementation; use impl='blockwise' or "
            "impl='auto' with it, or drop block_size for impl='reference'"
        )
    return block_size


def check_features(
    features: object, *, name: str = "features", data_checks: bool = True
) -> tuple[torch.Tensor, int, int]:
    """Validate ``features`` ((N, D) or (N, V, D), floating, finite).

    Returns the rows flattened image-major to (N * V, D) (row ``n * V + v`` is view ``v`` of
    image ``n``), the number of images N and the number of views V (1 for 2-D input).
    ``data_checks=False`` (under torch.vmap, which cannot branch on values) skips the NaN/inf check.
    On CUDA the NaN/inf check is deferred (no host sync): the error comes from a later call or
    from :func:`asymcl.losses.raise_pending_input_errors`, see ``losses/_deferred.py``.
    """
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D) or (N, V, D), got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {features.dtype}"
        )
    if features.dim() == 2:
        n_images, n_views = features.shape[0], 1
    elif features.dim() == 3:
        n_images, n_views = features.shape[0], features.shape[1]
    else:
        raise ValueError(
            f"{name} must have shape (N, D) or (N, V, D) (V augmented views per image), "
            f"got shape {tuple(features.shape)}"
        )
    if features.shape[-1] < 1 or n_views < 1:
        raise ValueError(f"{name} must have at least one view and one dimension, got shape {tuple(features.shape)}")
    if data_checks and _deferred.defers(features.device):
        # No host sync per step on an accelerator: raised at a later call (see losses/_deferred.py).
        _deferred.check_count((~torch.isfinite(features)).sum(), lambda n_bad: _non_finite_message(name, n_bad))
    elif data_checks and not bool(torch.isfinite(features).all()):
        raise ValueError(_non_finite_message(name, int((~torch.isfinite(features)).sum())))
    rows = features.reshape(n_images * n_views, features.shape[-1])
    return rows, n_images, n_views


def _non_finite_message(name: str, n_bad: int) -> str:
    return (
        f"{name} contains {n_bad} NaN or infinite value(s); the loss refuses to hide them "
        f"(check the encoder's outputs, the learning rate or mixed-precision overflow)"
    )


def check_references(
    ref_features: object, ref_labels: object, rows: torch.Tensor, *, has_labels: bool, data_checks: bool = True
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validate reference rows against the batch ``rows`` (N * V, D).

    Returns (reference rows (K * V', D), their labels repeated over the views (K * V',) int64), or
    None when neither is given.
    """
    if ref_features is None and ref_labels is None:
        return None
    if ref_features is None or ref_labels is None:
        raise ValueError(
            "give ref_features and ref_labels together (reference rows (K, D) and their class ids (K,)), or neither"
        )
    if not has_labels:
        raise ValueError(
            "reference rows are positives or negatives by class: pass labels=... with ref_features "
            "(a mask or views-only positives cannot say which references are positives)"
        )
    if isinstance(ref_features, torch.Tensor) and ref_features.device != rows.device:
        raise ValueError(
            f"ref_features must be on the device of features ({rows.device}), got {ref_features.device}; "
            f"move it with .to(features.device)"
        )
    ref_rows, n_refs, n_views = check_features(ref_features, name="ref_features", data_checks=data_checks)
    assert isinstance(ref_features, torch.Tensor)  # check_features refuses anything else
    if ref_rows.shape[1] != rows.shape[1]:
        raise ValueError(
            f"ref_features must have the feature dimension of features, D = {rows.shape[1]}, "
            f"got shape {tuple(ref_features.shape)}"
        )
    ref_labels = check_labels(ref_labels, n_refs, name="ref_labels")
    return ref_rows, ref_labels.to(rows.device).repeat_interleave(n_views)


def check_labels(labels: object, n_images: int, *, name: str = "labels") -> torch.Tensor:
    """Validate integer class ids of shape (n_images,); return them as int64."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of integer class ids with shape ({n_images},), "
            f"got {type(labels).__name__} (convert with torch.as_tensor(..., dtype=torch.long))"
        )
    if labels.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name} must be integer class ids (int8/16/32/64 or uint8), got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n_images:
        what = "ref_features" if name == "ref_labels" else "features"
        raise ValueError(
            f"{name} must have shape ({n_images},) to match {what} (one label per image), "
            f"got shape {tuple(labels.shape)}"
        )
    return labels.long()


def check_mask(mask: object, n_rows: int, n_cols: int, *, distributed: bool = False) -> torch.Tensor:
    """Validate a bool positive mask of shape (n_rows, n_cols) over images."""
    expected = f"({n_rows}, {n_cols})"
    where = " (local images x images of the global batch, ranks in order)" if distributed else " (N x N over images)"
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor of shape {expected}{where}, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool (True where column j is a positive of row i), "
            f"got dtype {mask.dtype}; use mask.bool() if it holds 0/1"
        )
    if tuple(mask.shape) != (n_rows, n_cols):
        raise ValueError(f"mask must have shape {expected}{where} to match features, got shape {tuple(mask.shape)}")
    return mask


def _finite_real(name: str, value: object, *, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r} ({type(value).__name__})")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be {allowed}, got {as_float!r}")
    return as_float


def check_core_arguments(
    anchors: Tensor,
    contrast: Tensor,
    anchor_index: Tensor,
    anchor_labels: Tensor | None,
    contrast_labels: Tensor | None,
    mask: Tensor | None,
    gamma: float,
    eta: float,
    temperature: float,
    normalization: str,
    n_total: int,
    block_size: int | None,
) -> None:
    """Arguments of the internal per-anchor core (docs/architecture.md, layer 1), for direct callers."""
    for name, t in (("anchors", anchors), ("contrast", contrast), ("anchor_index", anchor_index)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if anchors.dim() != 2 or contrast.dim() != 2:
        raise ValueError(
            f"anchors and contrast must be 2-D (rows, dim), got shapes {tuple(anchors.shape)} "
            f"and {tuple(contrast.shape)}"
        )
    if not anchors.is_floating_point() or not contrast.is_floating_point():
        raise TypeError(f"anchors and contrast must be floating point, got {anchors.dtype} and {contrast.dtype}")
    n_anchors, dim = anchors.shape
    n_contrast = contrast.shape[0]
    if contrast.shape[1] != dim:
        raise ValueError(
            f"anchors and contrast must have the same feature dimension, got {dim} and {contrast.shape[1]}"
        )
    if n_contrast < 2:
        raise ValueError(f"contrast needs at least 2 rows (an anchor and another), got {n_contrast}")
    if anchor_index.shape != (n_anchors,) or anchor_index.dtype != torch.int64:
        raise ValueError(
            f"anchor_index must be an int64 tensor of shape ({n_anchors},), got "
            f"{anchor_index.dtype} {tuple(anchor_index.shape)}"
        )
    if n_anchors and _deferred.defers(anchor_index.device):
        # Deferred like the NaN check (an out-of-range index may trip a device-side assert first).
        _deferred.check_count(
            ((anchor_index < 0) | (anchor_index >= n_contrast)).sum(),
            lambda n_bad: f"anchor_index values must lie in [0, {n_contrast}) (rows of contrast); {n_bad} do not",
        )
    elif n_anchors and (int(anchor_index.min()) < 0 or int(anchor_index.max()) >= n_contrast):
        raise ValueError(f"anchor_index values must lie in [0, {n_contrast}) (rows of contrast)")
    if (mask is None) == (anchor_labels is None and contrast_labels is None):
        raise ValueError("give either anchor_labels and contrast_labels, or mask (exactly one)")
    if mask is None:
        if anchor_labels is None or contrast_labels is None:
            raise ValueError("anchor_labels and contrast_labels must be given together")
        if anchor_labels.shape != (n_anchors,) or contrast_labels.shape != (n_contrast,):
            raise ValueError(
                f"anchor_labels must have shape ({n_anchors},) and contrast_labels ({n_contrast},), "
                f"got {tuple(anchor_labels.shape)} and {tuple(contrast_labels.shape)}"
            )
        if anchor_labels.is_floating_point() or contrast_labels.is_floating_point():
            raise TypeError("anchor_labels and contrast_labels must be integer class ids")
    else:
        if mask.shape != (n_anchors, n_contrast) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape ({n_anchors}, {n_contrast}), got {mask.dtype} {tuple(mask.shape)}"
            )
    check_hyperparameters(gamma=gamma, eta=eta, temperature=temperature, normalization=normalization)
    if isinstance(n_total, bool) or not isinstance(n_total, int) or n_total < 1:
        raise ValueError(f"n_total must be a positive int, got {n_total!r}")
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be a positive int or None (automatic), got {block_size!r}")

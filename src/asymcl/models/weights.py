"""Reading weight files into models: state dicts from .pth/.safetensors, strict loading with a
:class:`CheckpointError` that names what differs, RGB first-conv weights folded for grey input.

Its own module so that every backbone family (backbones.py, efficientnet_lite.py) can use it
without importing the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from asymcl.errors import CheckpointError


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a torch file (weights only; no code is unpickled).

    Accepts a bare state dict or one nested under ``state_dict``/``model``; strips a ``module.``
    prefix (a DistributedDataParallel save).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure of a user file is a user error
        raise CheckpointError(
            f"cannot read weights from {path}: {type(exc).__name__}: {exc} (is it a state dict saved "
            "with torch.save or safetensors, and complete?)"
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def fold_input_channels(state: dict[str, Tensor], reference: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Sum RGB first-conv weights (O, 3, k, k) into (O, 1, k, k) where the model is grey."""
    folded = dict(state)
    for key, value in state.items():
        target = reference.get(key)
        if (
            target is not None
            and value.ndim == 4
            and target.ndim == 4
            and target.shape[1] == 1
            and value.shape[1] != 1
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
        ):
            folded[key] = value.sum(dim=1, keepdim=True)
    return folded


def load_weights_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a :class:`CheckpointError` that names what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                shown = ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
                parts.append(f"{len(items)} {label} ({shown})")
        raise CheckpointError(
            f"weights in {source} do not fit this model ({type(model).__name__}): "
            + "; ".join(parts)
            + ". Was it saved from another backbone, class count or number of input channels?"
        )
    model.load_state_dict(state, strict=True)

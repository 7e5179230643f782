"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

``weights_only=True`` unpickles nothing but tensors and plain containers, so opening a checkpoint
cannot run code. Lightning's own checkpoints (model, optimizer, loop and callback states) fit that
restriction; :class:`SafeCheckpointIO` makes Lightning use it for resuming too.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from asymcl.atomic import atomic_write_bytes
from asymcl.errors import CheckpointError


def _read(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` of a file, or :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, disallowed pickle content, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it is corrupt, truncated or not a checkpoint. Delete it to restart that stage."
        ) from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, or :class:`CheckpointError` saying what is wrong."""
    checkpoint = _read(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an asymcl/Lightning checkpoint (no state_dict in it)")
    return checkpoint


def load_module_weights(module: torch.nn.Module, path: str | Path, prefix: str = "") -> None:
    """Load ``state_dict`` entries of a checkpoint (those under ``prefix``, renamed without it)
    strictly into ``module``; a checkpoint of another model raises :class:`CheckpointError`."""
    from asymcl.models import load_weights_strict

    state = load_checkpoint(path)["state_dict"]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    load_weights_strict(module, state, source=str(path))


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with a local atomic save and a weights-only load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # Not load_checkpoint's state_dict check: under ddp_spawn Lightning also hands the trained
        # weights back to the main process through this IO as a bare state dict. The run's own
        # checkpoints are checked with load_checkpoint before Lightning resumes from them.
        return _read(path)

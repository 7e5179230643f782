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


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, suffix: str = ".tmp") -> Iterator[IO]:
    """``with atomic_open(path) as handle: handle.write(...)``: ``path`` appears, complete, only
    when the block ends without an exception; otherwise the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), _plain_file_mode())
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any, *, default: Any = None) -> None:
    """Indented JSON with a final newline (``default``: as for :func:`json.dumps`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))

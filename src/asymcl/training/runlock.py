"""One writer per run directory: an exclusive, non-blocking lock on ``RUN_DIR/.asymcl.lock``.

Project rule: two processes never train into the same run directory at once (two ``asymcl train``
on one ``--out``, or two sweep workers reaching the same point). The lock is what enforces it, so
it sits in the training layer and every caller of :func:`asymcl.training.pipeline.run` gets it.

Why ``flock`` on a file inside the run directory:

- the kernel drops the lock when the process dies, however it dies (``kill -9``, OOM killer, a
  lost node's NFS lease expiring), so a crashed run never leaves a stale lock that a person has
  to delete: the next worker takes the lock and resumes from the checkpoints;
- ``flock`` locks belong to the open file, not to the process (unlike ``fcntl.lockf``, where
  closing *any* descriptor of the file in the process drops the lock), so a status probe in the
  same process cannot release a lock the process holds;
- on Linux NFS clients (v3 with lockd, v4) ``flock`` is carried out as an NFS byte-range lock and
  is seen by every client; mounts with ``nolock`` or ``local_lock=flock``/``all`` keep it local to
  one machine, and Lustre needs the ``flock`` mount option (docs/usage-experiments.md).

The lock file holds ``{"pid", "host", "since"}`` of the holder, only so that the error message
can say who has the run. Nothing else reads it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import functools
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from asymcl.errors import RunLockedError

LOCK_NAME = ".asymcl.lock"  # a dotfile: pipeline._check_run_dir ignores dotfiles in a new run dir

F = TypeVar("F", bound=Callable[..., Any])


def _holder_text(info: dict | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


def _read_holder(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw.decode()) if raw else None
    except (OSError, ValueError):
        return None  # the holder is between truncating and writing its line: no details


class RunLock:
    """A held lock on one run directory; :meth:`release` (or leaving the ``with``) frees it."""

    def __init__(self, run_dir: Path, fd: int, created_dir: bool):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = fd
        self._created_dir = created_dir

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            # A directory this lock created and nothing else wrote into (the run failed on its
            # config or data first) is removed again: a failed first attempt leaves nothing
            # behind. Removed while still locked; acquire() re-checks the file it locked.
            if self._created_dir and [p.name for p in self.run_dir.iterdir()] == [LOCK_NAME]:
                os.unlink(self.path)
                os.rmdir(self.run_dir)
        except OSError:
            pass  # another process wrote into it meanwhile, or NFS keeps a .nfsXXXX file: keep it
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def acquire(run_dir: str | os.PathLike) -> RunLock:
    """Lock ``run_dir`` (created if missing) for this process, or raise :class:`RunLockedError`
    at once (never waits) naming the holder."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    for _ in range(20):
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"{run_dir} is in use: {_holder_text(holder)} is training into it; wait for it "
                    "to finish (a sweep worker comes back to it) or choose another --out"
                ) from None
            raise
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # the previous holder removed the file between our open and lock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return RunLock(run_dir, fd, created)
    raise RunLockedError(f"{run_dir}: could not take the run lock {path} (it keeps being replaced)")


def holder(run_dir: str | os.PathLike) -> dict | None:
    """Who holds the lock on ``run_dir`` (``{"pid", "host", "since"}``, possibly empty), or None
    when nobody does. Read-only: never creates the directory or the lock file."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_holder(fd) or {}
    else:
        return None
    finally:
        os.close(fd)  # also drops the shared probe lock, if it was taken


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold a blocking exclusive lock on ``path`` (created if missing) for a short read-modify-write
    of a file that several workers share (e.g. a sweep's ``sweep.json``), so no update is lost."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def locked_run(when: Callable[[], bool] = lambda: True) -> Callable[[F], F]:
    """Decorator for ``run(config, out_dir, ...)``: hold ``out_dir``'s lock for the whole call.

    ``when``: whether this process takes the lock; under DDP only the main process does (the other
    ranks train the same run with it and must not be refused). A path that exists as a file is
    left to the wrapped function to refuse with its own message.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(config: Any, out_dir: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
            if not when() or (Path(out_dir).exists() and not Path(out_dir).is_dir()):
                return function(config, out_dir, *args, **kwargs)
            with acquire(out_dir):
                return function(config, out_dir, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate

"""The feature cache's files: content-addressed shards, written atomically and checked on read.

:mod:`asymcl.data.feature_cache` decides what to extract; this module only stores and finds it.
A shard ``shard-<sha256 of its bytes>.npz`` holds ``key`` (the entry's key hash), ``fingerprints``
(N,), ``clean`` (N, *S) and ``views`` (N, V, *S), float16.

Shared caches: a shard gets the mode a plain ``open()`` would give it (``mkstemp``'s 0600 made a
team's shared cache unreadable to everyone but its writer), plus group read and write when the
entry's folder is group-shared (setgid or group-writable), whatever the writer's umask; an entry
folder made in a group-shared cache folder is group-shared itself (:func:`make_entry_folder`).

In use: every process that reads an entry holds a shared ``flock`` on its ``.in-use`` file until it
exits (:func:`hold_in_use`); ``asymcl cache prune`` deletes an entry only when it can take that
lock exclusively, so an entry a running job holds is never deleted. The file's modification time
is the entry's last use.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import shutil
import stat
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from asymcl.atomic import atomic_file, atomic_write_text
from asymcl.errors import DataError


def shard_name(digest: str) -> str:
    return f"shard-{digest[:32]}.npz"


def read_shard(path: Path, key_hash: str) -> dict[str, np.ndarray] | None:
    """The shard's arrays, or None when its bytes do not match its name or it holds another key."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if shard_name(hashlib.sha256(data).hexdigest()) != path.name:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("key", "fingerprints", "clean", "views")}
    except (OSError, ValueError, KeyError):
        return None
    if str(arrays["key"]) != key_hash or len(arrays["fingerprints"]) != len(arrays["clean"]):
        return None
    return arrays


# Shards already read and checked by this process, by file identity: a sweep worker trains one run
# after another from the same entries, and reading and hashing them again was about 1.5 s of each
# pretrained Fashion-MNIST run (benchmarks/claim_run_speed.py). A shard is named by the SHA-256 of
# its bytes and only ever replaced by a rename (a new inode), so the same (inode, size, mtime) is
# the same bytes. The arrays are read-only: every reader shares them. Bounded, least recently used
# first out, so a cache of large maps (model.finetune=last:K) is simply read each time.
_MEMO_BYTES = 1 << 30
_MEMO: OrderedDict[tuple, dict[str, np.ndarray]] = OrderedDict()


def read_shard_memo(path: Path, key_hash: str) -> dict[str, np.ndarray] | None:
    """:func:`read_shard`, kept in memory (read-only arrays) for this process's next reads."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    identity = (str(path), info.st_ino, info.st_size, info.st_mtime_ns, key_hash)
    arrays = _MEMO.get(identity)
    if arrays is not None:
        _MEMO.move_to_end(identity)
        return arrays
    arrays = read_shard(path, key_hash)
    if arrays is None:
        return None
    size = sum(array.nbytes for array in arrays.values())
    if size <= _MEMO_BYTES:
        for array in arrays.values():
            array.setflags(write=False)
        _MEMO[identity] = arrays
        while sum(a.nbytes for held in _MEMO.values() for a in held.values()) > _MEMO_BYTES:
            _MEMO.popitem(last=False)  # the least recently used
    return arrays


def shared_file_mode(directory: Path) -> int:
    """What a file in ``directory`` should be: ``open()``'s mode under the umask, plus group read and
    write when the folder is group-shared (setgid bit or group-writable)."""
    from asymcl.atomic import plain_file_mode

    mode = plain_file_mode()
    try:
        folder = os.stat(directory).st_mode
    except OSError:
        return mode
    if folder & (stat.S_ISGID | stat.S_IWGRP):
        mode |= stat.S_IRGRP | stat.S_IWGRP
    return mode


def make_entry_folder(directory: Path) -> None:
    """Create an entry's folder; in a group-shared cache folder it is group-shared too (group
    rwx and setgid), so that the group's other members can add shards and take its locks."""
    directory = Path(directory)
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    try:
        parent = os.stat(directory.parent).st_mode
        if parent & (stat.S_ISGID | stat.S_IWGRP):
            os.chmod(directory, stat.S_IMODE(os.stat(directory).st_mode) | stat.S_IRWXG | stat.S_ISGID)
    except OSError:  # made by another user meanwhile: theirs to share
        pass


IN_USE = ".in-use"
# The name every temporary file of an entry starts with: what a killed writer leaves, removed by
# the next builder under the entry's lock (asymcl.data.feature_cache).
TEMP_PREFIX = ".tmp-"
_HELD: dict[str, int] = {}  # an entry's .in-use path -> the descriptor whose shared lock this process holds


def _open_marker(path: Path, directory: Path) -> int:
    """The .in-use file, created if needed; read-only when it is another user's (flock needs no write)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, shared_file_mode(directory))
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def hold_in_use(directory: Path) -> None:
    """Mark the entry as used now and hold it until this process exits (a shared flock)."""
    path = Path(directory) / IN_USE
    fd = _HELD.get(str(path))
    if fd is not None and not _same_file(fd, path):  # the entry was deleted and made again
        os.close(_HELD.pop(str(path)))
        fd = None
    if fd is None:
        try:
            fd = _open_marker(path, directory)
        except OSError:
            return  # a read-only cache: nothing can prune it from here either
        fcntl.flock(fd, fcntl.LOCK_SH)
        _HELD[str(path)] = fd
    try:
        os.utime(fd)
    except OSError:  # another user's file in a shared cache: the use is still held
        pass


def _same_file(fd: int, path: Path) -> bool:
    try:
        held, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def try_hold_exclusive(directory: Path) -> int | None:
    """A descriptor holding the entry's in-use lock exclusively (no process uses it), or None."""
    path = Path(directory) / IN_USE
    if str(path) in _HELD:
        return None
    try:
        fd = _open_marker(path, directory)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def write_shard(directory: Path, key_hash: str, fingerprints: list[str], clean: np.ndarray, views: np.ndarray) -> Path:
    """Write one shard, named by the sha256 of its bytes; a temporary ``.tmp-*.npz`` until complete
    (what :mod:`asymcl.data.feature_cache` removes under the entry lock when a writer was killed)."""
    try:
        with atomic_file(
            directory, prefix=TEMP_PREFIX, suffix=".npz", file_mode=shared_file_mode(directory)
        ) as pending:
            np.savez(
                pending.handle, key=np.array(key_hash), fingerprints=np.array(fingerprints), clean=clean, views=views
            )
            pending.handle.flush()
            final = directory / shard_name(hashlib.sha256(pending.temporary.read_bytes()).hexdigest())
            pending.target = final
        return final
    except OSError as exc:
        hint = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
        raise DataError(
            f"cannot write the feature cache in {directory}: {exc.strerror or exc}{hint}; free "
            "space or set data.cache_dir to another folder, then rerun (nothing was left half-written)"
        ) from None


# Everything in a key that concerns only the views. Two entries whose keys agree on the rest hold
# the same clean features, so an entry takes the clean features another one already computed: one
# without views (validation, test) as a shard of its own (with a seeded split, most of one seed's
# validation images are another seed's training images; ISIC: 1,725 of 2,709 clean passes, about
# 2 min, saved per preset), one with views (another seed's or preset's training split) while it
# computes only the views (asymcl.data.feature_cache; the clean pass, in float32, was about a third
# of a training entry's extraction).
_VIEW_FIELDS = ("augmentation", "augmentation_params", "views", "seed", "view_precision")


def _clean_identity(key: dict) -> str:
    plain = json.loads(json.dumps(key, default=str))  # as key.json stores it: lists, strings
    return json.dumps({name: value for name, value in plain.items() if name not in _VIEW_FIELDS}, sort_keys=True)


def find_clean(directory: Path, key: dict, wanted: set[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Clean features (fingerprint -> (*S) float16 row) of the ``wanted`` images that sibling
    entries with the same clean identity hold, and the names of those entries. Reads only."""
    identity = _clean_identity(key)
    rows: dict[str, np.ndarray] = {}
    sources = []
    for sibling in sorted(directory.parent.iterdir()):
        if sibling == directory or not (sibling / "key.json").is_file():
            continue
        try:
            if _clean_identity(json.loads((sibling / "key.json").read_text())) != identity:
                continue
        except (OSError, ValueError):
            continue
        before = len(rows)
        # A sibling's shards are complete files (atomic renames) checked against their hash, so
        # reading them without the sibling's lock is safe; one removed meanwhile is skipped.
        for shard in sorted(sibling.glob("shard-*.npz")):
            arrays = read_shard_memo(shard, sibling.name)
            if arrays is None:
                continue
            for row, fingerprint in enumerate(arrays["fingerprints"].tolist()):
                if fingerprint in wanted and fingerprint not in rows:
                    rows[fingerprint] = arrays["clean"][row]
        if len(rows) > before:
            sources.append(sibling.name)
        if len(rows) == len(wanted):
            break
    return rows, sources


def borrow_clean(directory: Path, key: dict, key_hash: str, wanted: set[str], log) -> dict | None:
    """Clean features of ``wanted`` images found in sibling entries with the same clean identity,
    written into this entry as one shard (so the next read finds them here); None if none found."""
    rows, sources = find_clean(directory, key, wanted)
    if not rows:
        return None
    names = list(rows)
    clean = np.stack([rows[name] for name in names])
    views = np.empty((len(names), 0, *clean.shape[1:]), dtype=clean.dtype)
    write_shard(directory, key_hash, names, clean, views)
    log(
        f"feature cache: {len(names)} images' clean features taken from {', '.join(sources)} (the same "
        "encoder and images; not recomputed)"
    )
    return {"fingerprints": np.array(names), "clean": clean, "views": views}


def gather(found: dict, fingerprints: list[str]) -> tuple[Tensor, Tensor]:
    first_arrays, _ = found[fingerprints[0]]
    clean = np.empty((len(fingerprints), *first_arrays["clean"].shape[1:]), dtype=np.float16)
    stacked = np.empty((len(fingerprints), *first_arrays["views"].shape[1:]), dtype=np.float16)
    for index, fingerprint in enumerate(fingerprints):
        arrays, row = found[fingerprint]
        clean[index] = arrays["clean"][row]
        stacked[index] = arrays["views"][row]
    return torch.from_numpy(clean), torch.from_numpy(stacked)


def estimate_bytes(shape: Sequence[int], images: int, views: int) -> int:
    """Bytes the shards of ``images`` images x (1 + ``views``) float16 outputs of ``shape`` (without
    the batch axis) will take (also what a plan, e.g. ``asymcl levers --dry-run``, prints)."""
    # + each image's fingerprint (40 hex characters, stored as 4-byte unicode) and the archive's headers
    return images * ((1 + views) * math.prod(shape) * 2 + 4 * 40) + 1024


def check_disk_space(directory: Path, shape: Sequence[int], images: int, views: int) -> int:
    """:func:`estimate_bytes`, with a DataError before any extraction when the disk under
    ``directory`` has less free space than that."""
    estimate = estimate_bytes(shape, images, views)
    free = shutil.disk_usage(directory).free
    if estimate > free:
        raise DataError(
            f"feature cache: {images} images x {1 + views} outputs of shape {tuple(shape)} need about "
            f"{estimate / 2**30:.2f} GB in {directory}, but only {free / 2**30:.2f} GB are free; free space, set "
            "data.cache_dir to a larger disk, or cache fewer views (data.cache_views) or another cut (model.finetune)"
        )
    return estimate


def write_info(directory: Path, describe: dict) -> None:
    """``info.json``: what the entry is for, in words (encoder, dataset), for ``asymcl cache list``;
    not part of the key. Written once; a failure to write it loses nothing."""
    path = directory / "info.json"
    if path.is_file():
        return
    try:
        atomic_write_text(
            path,
            json.dumps(describe, indent=1, sort_keys=True, default=str),
            prefix=TEMP_PREFIX,
            file_mode=shared_file_mode(directory),
        )
    except OSError:
        pass


EXTRACTIONS = "extractions.json"


def record_extraction(directory: Path, record: dict) -> None:
    """Add one extraction to the entry's ``extractions.json`` (when it finished, how many images and
    outputs, how long, which precision and which engine computed them): what the cost tables report
    as the engine of a time (``asymcl levers``), since minutes of fp32 on ONNX Runtime and of bf16 on
    torch are not the same minutes. Not part of the key. The ranks of a distributed build extract
    into one entry at once, so read-append-replace holds a lock of its own; a failure to write loses
    nothing."""
    from filelock import FileLock

    path = directory / EXTRACTIONS
    try:
        with FileLock(str(directory / ".extractions.lock"), mode=shared_file_mode(directory)):
            records = read_extractions(directory)
            atomic_write_text(
                path,
                json.dumps([*records, record], indent=1, default=str),
                prefix=TEMP_PREFIX,
                file_mode=shared_file_mode(directory),
            )
    except OSError:
        pass


def read_extractions(directory: Path) -> list[dict]:
    """The entry's extraction records, oldest first (none for an entry written before they were
    kept, or one whose file is unreadable)."""
    try:
        records = json.loads((Path(directory) / EXTRACTIONS).read_text())
    except (OSError, ValueError):
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []

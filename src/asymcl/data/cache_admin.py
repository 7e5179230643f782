"""Looking after the feature cache: what ``asymcl cache list|verify|prune|size`` do.

The cache (:mod:`asymcl.data.feature_cache`) lives in ``data.cache_dir``, else
``$ASYMCL_CACHE_DIR/features``, else ``~/.cache/asymcl/features``; decoded images (whole-dataset
uint8 arrays of file datasets, ``data.in_memory``) in ``$ASYMCL_CACHE_DIR/decoded``, else
``~/.cache/asymcl/decoded``. Moving the cache: move the folder and point ``ASYMCL_CACHE_DIR`` (or
``data.cache_dir``) at the new place; entries are found by key, not by path.

Pruning is safe beside running jobs: an entry is deleted only while this process holds both its
build lock (nobody is extracting into it) and its in-use lock exclusively (no live process has
read it, :func:`asymcl.data.cache_store.hold_in_use`); otherwise it is skipped and reported. A
pruned entry keeps its folder and lock files (a job waiting on the lock then finds it empty and
extracts again, instead of writing into a removed folder).
"""

from __future__ import annotations

import json
import os
import re
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from asymcl.data.cache_store import IN_USE, read_shard, try_hold_exclusive
from asymcl.data.datasets import default_cache_dir
from asymcl.errors import DataError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The feature cache folder: ``cache_dir`` (as ``data.cache_dir``) or the default."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir() / "features"


def decoded_root() -> Path:
    return default_cache_dir() / "decoded"


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not match:
        raise DataError(f"--older-than {text!r} is not an age; write a number and a unit, e.g. 30d, 12h, 90m, 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Entry:
    """One cache entry (a key's folder), as ``asymcl cache list`` shows it."""

    key: str
    path: str
    encoder: str
    image_size: str
    views: int
    dataset: str
    images: int
    bytes: int
    last_used: float  # seconds since the epoch

    def as_dict(self) -> dict:
        return asdict(self)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _encoder_words(key: dict, info: dict) -> str:
    if info.get("encoder"):
        words = str(info["encoder"])
        if info.get("pretrained"):
            words += f" ({info['pretrained']})"
        if info.get("finetune") and info["finetune"] != "frozen":
            words += f" {info['finetune']}"
        return words
    # An entry written before info.json existed: the frozen module's class, from the key's repr.
    found = re.search(r"\(module\): (\w+)\(", str(key.get("frozen", "")))
    return found.group(1) if found else "?"


def _image_words(key: dict, info: dict) -> str:
    channels, height, width = (key.get("image_shape") or [0, 0, 0])[:3]
    words = f"{height}x{width}x{channels}"
    size = info.get("input_size")
    if not size:  # an entry without info.json: EfficientNet-Lite's resize is in the module's repr
        found = re.search(r"input_size=\((\d+), (\d+)\)", str(key.get("frozen", "")))
        size = [int(found.group(1)), int(found.group(2))] if found else None
    if size:
        words += f" -> {size[0]}x{size[1]}"
    return words


def _images(folder: Path) -> int:
    """Distinct images in the entry's shards (their fingerprint arrays only; not verified)."""
    seen: set[str] = set()
    for shard in folder.glob("shard-*.npz"):
        try:
            with np.load(shard, allow_pickle=False) as archive:
                seen.update(archive["fingerprints"].tolist())
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            continue  # damaged: `asymcl cache verify` says so
    return len(seen)


def _last_used(folder: Path) -> float:
    marker = folder / IN_USE
    if marker.is_file():
        return marker.stat().st_mtime
    # An entry written before uses were recorded: its newest file.
    return max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0)


def list_entries(root: Path) -> list[Entry]:
    """Every entry under ``root`` (folders with a key.json), most recently used first."""
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            key = json.loads((folder / "key.json").read_text())
        except (OSError, ValueError):
            continue  # not an entry, or a pruned one (its lock files only)
        try:
            info = json.loads((folder / "info.json").read_text())
        except (OSError, ValueError):
            info = {}
        out.append(
            Entry(
                folder.name,
                str(folder),
                _encoder_words(key, info),
                _image_words(key, info),
                int(key.get("views", 0)),
                str(info.get("dataset") or "?"),
                _images(folder),
                _folder_bytes(folder),
                _last_used(folder),
            )
        )
    return sorted(out, key=lambda e: -e.last_used)


def entry_usage(root: Path) -> dict[str, tuple[int, float]]:
    """``{entry key: (bytes, last used)}`` of every entry under ``root``: what a job compares before
    and after it builds its caches to learn which entries it read or wrote (:func:`list_entries`
    without opening the shards, so it stays fast on a cache of many GB)."""
    if not root.is_dir():
        return {}
    return {
        folder.name: (_folder_bytes(folder), _last_used(folder))
        for folder in sorted(root.iterdir())
        if (folder / "key.json").is_file()
    }


def verify(root: Path) -> tuple[int, list[tuple[str, str]]]:
    """Re-hash every shard: (shards checked, [(shard path, what is wrong)])."""
    checked, damaged = 0, []
    for entry in list_entries(root):
        for shard in sorted(Path(entry.path).glob("shard-*.npz")):
            checked += 1
            if read_shard(shard, entry.key) is None:
                damaged.append(
                    (
                        str(shard),
                        "its bytes do not match its name (truncated or altered), or it "
                        "holds another key; the next run that needs it removes it and recomputes its images",
                    )
                )
    return checked, damaged


def select(
    root: Path, older_than: float | None = None, key: str | None = None, now: float | None = None
) -> list[Entry]:
    """Entries last used more than ``older_than`` seconds ago and/or whose key starts with ``key``."""
    now = time.time() if now is None else now
    entries = list_entries(root)
    if key is not None:
        entries = [e for e in entries if e.key.startswith(key)]
        if not entries:
            raise DataError(f"no feature cache entry with key {key!r} in {root}; `asymcl cache list` shows the keys")
        if len(entries) > 1:
            raise DataError(f"key {key!r} matches {len(entries)} entries in {root}; give more of it")
    if older_than is not None:
        entries = [e for e in entries if now - e.last_used > older_than]
    return entries


def prune(entries: list[Entry]) -> tuple[list[Entry], list[tuple[Entry, str]]]:
    """Delete ``entries`` that no job holds: (removed, [(skipped, why)])."""
    from filelock import FileLock, Timeout

    removed, skipped = [], []
    for entry in entries:
        folder = Path(entry.path)
        lock = FileLock(str(folder / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            skipped.append((entry, "a job is extracting into it"))
            continue
        try:
            held = try_hold_exclusive(folder)
            if held is None:
                skipped.append((entry, "a running job holds it"))
                continue
            try:
                for path in folder.iterdir():
                    if path.is_file() and path.name not in (".lock", IN_USE):
                        path.unlink(missing_ok=True)
            finally:
                os.close(held)
            removed.append(entry)
        finally:
            lock.release()
    return removed, skipped


def sizes(root: Path) -> dict[str, int]:
    """Bytes on disk: ``features`` (every entry under ``root``) and ``decoded`` (decoded images)."""
    features = sum(_folder_bytes(p) for p in root.iterdir() if p.is_dir()) if root.is_dir() else 0
    decoded = decoded_root()
    return {
        "features": features,
        "decoded": sum(p.stat().st_size for p in decoded.iterdir() if p.is_file()) if decoded.is_dir() else 0,
    }

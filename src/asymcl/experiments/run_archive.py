"""Finished runs' records in one small archive, to carry a long grid across machines and sessions.

A grid of thousands of runs (the claim grid, issue 22) takes longer than one machine is held, and
its run folders (checkpoints, predictions, logs: megabytes each) are not worth keeping. What a
resumed sweep and the analysis need of a finished run is small: its ``config.yaml`` (the run's
identity) and its ``metrics.json`` (status complete, every metric). :func:`pack_runs` writes those
(with ``versions.json`` and a copied run's ``duplicate_of.json``, and each sweep folder's
``sweep.yaml``/``sweep.json``) for every complete run under a folder into one ``.tar.xz`` of a few
MB, which can be committed. :func:`unpack_runs` writes them back: a sweep then finds those runs
complete and skips them, and ``asymcl claim``/``asymcl report`` read them as they read any run.

The archive is written deterministically (sorted members, no owner or time stamps), so the same runs
give the same bytes. A restored run keeps its ``data.root``: resume it with the same ``--data`` path
(a run folder that holds another config is refused, as for any run).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from asymcl.atomic import atomic_write_bytes
from asymcl.errors import DataError
from asymcl.experiments.runs import is_complete

#: What is kept of a finished run; metrics.json is written last on restore, so a restore cut short
#: leaves a folder that is not complete (its run is trained again) rather than a wrong one.
RUN_FILES = ("config.yaml", "versions.json", "duplicate_of.json", "metrics.json")
#: What is kept of a sweep folder (the spec that rebuilds its runs, its command log, and an
#: ``asymcl levers`` arm's measured extraction and training time, which a rerun cannot measure again).
SWEEP_FILES = ("sweep.yaml", "sweep.json", "levers-cost.json")
_MAX_MEMBER_BYTES = 64 * 1024 * 1024


def _complete_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("config.yaml") if is_complete(p.parent))


def pack_runs(root: str | Path, archive: str | Path) -> int:
    """Write every complete run under ``root`` (its :data:`RUN_FILES`) and every sweep folder's
    :data:`SWEEP_FILES` into ``archive`` (``.tar.xz``), atomically; returns the number of runs."""
    root, archive = Path(root), Path(archive)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of runs; nothing to pack")
    runs = _complete_runs(root)
    files = [run / name for run in runs for name in RUN_FILES if (run / name).is_file()]
    files += sorted(p for name in SWEEP_FILES for p in root.rglob(name) if p.is_file())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(set(files)):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    atomic_write_bytes(archive, buffer.getvalue())
    return len(runs)


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or path.name not in RUN_FILES + SWEEP_FILES:
        raise DataError(f"archive member {name!r} is not a run record; this file was not written by asymcl's pack_runs")
    return path


def unpack_runs(archive: str | Path, root: str | Path) -> tuple[int, int]:
    """Restore the runs of ``archive`` under ``root``; returns ``(restored, kept)``.

    A run folder that already exists under ``root`` (finished, or with a run in progress) is kept
    as it is and counted in ``kept``; nothing on disk is overwritten but a sweep folder's
    ``sweep.yaml``/``sweep.json`` when the folder has none.
    """
    archive, root = Path(archive), Path(root)
    if not archive.is_file():
        raise DataError(f"{archive}: no such archive of runs")
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = {}
            for member in tar.getmembers():
                path = _member_path(member.name)
                if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                    raise DataError(f"archive member {member.name!r} is not a small plain file")
                handle = tar.extractfile(member)
                assert handle is not None  # a plain file, checked above
                members[path] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive} cannot be read as a tar archive of runs ({exc})") from exc
    runs: dict[PurePosixPath, dict[str, bytes]] = {}
    for path, data in members.items():
        if path.name in SWEEP_FILES:
            if not (root / path).exists():
                atomic_write_bytes(root / path, data)
        else:
            runs.setdefault(path.parent, {})[path.name] = data
    restored = kept = 0
    for folder, files in sorted(runs.items()):
        if "config.yaml" not in files or "metrics.json" not in files:
            raise DataError(f"archive holds {folder} without its config.yaml and metrics.json")
        target = root / folder
        if target.exists() and any(target.iterdir()):
            kept += 1
            continue
        for name in RUN_FILES:
            if name in files:
                atomic_write_bytes(target / name, files[name])
        restored += 1
    return restored, kept

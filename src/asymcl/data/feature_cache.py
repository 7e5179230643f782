"""On-disk cache of a frozen encoder's outputs: the clean image and V augmented views per image.

When the encoder (or all but its last blocks) is frozen, its output for a given image and
augmentation never changes, so it is computed once and reused by every run that shares the key;
stage 1 then samples two cached views per image per step and stage 2 / evaluation read the clean
features (:class:`FeatureCache`).

Key. Everything that changes the stored numbers, hashed (``key.json`` in the entry shows it):
the images' decoded shape, the frozen module (its ``repr``, which includes the backbone's
architecture and preprocessing such as the input size, and a SHA-256 of its weights, so ImageNet
and fine-tuned or random weights never mix), the augmentation preset and its parameters, V, the
cache seed (its own, independent of the run seed, so that the runs of a sweep share one cache),
the extraction precision, and whatever the caller adds in ``extra_key``.

Storage. ``<cache_dir>/<key hash>/shard-<sha256>.npz``: per image its fingerprint (a hash of the
file's bytes, or of the pixels for in-memory arrays), the clean features and the V views, found by
fingerprint, so any split reuses what another computed. The clean features depend only on the
encoder, the images and the precision, not on the views' seed or augmentation: an entry takes those
that another entry of the same encoder already holds (a seed's training views then cost only the
views' passes; :func:`asymcl.data.cache_store.find_clean`). A process keeps the shards it read in
memory (bounded; :func:`asymcl.data.cache_store.read_shard_memo`), so a sweep worker's next run does
not read them again. An image's views are drawn from a generator
seeded by (cache seed, fingerprint). Features are float16 (half of float32's disk, a rounding far
below the bf16 extraction error; an overflow is an error); the disk space is checked first.

Reliability. A shard is written atomically and named by the SHA-256 of its bytes, checked on every
read: a truncated, altered or misplaced shard is reported, removed and recomputed. A file lock serialises builders of one entry
(the second waits, then reuses); a killed writer leaves only a temporary file, which the next
builder removes. Writing errors (a full disk) raise :class:`DataError` and leave nothing behind.
A process that read an entry holds it (a shared lock on ``.in-use``, whose mtime is the last use)
until it exits, so ``asymcl cache prune`` never deletes it under a running job
(:mod:`asymcl.data.cache_admin`). Under torch.distributed the ranks split the extraction
(:mod:`asymcl.data.cache_dist`); the key and these rules are the same.

Location: ``cache_dir``, else ``$ASYMCL_CACHE_DIR/features``, else ``$XDG_CACHE_HOME/asymcl/features``
(``~/.cache/asymcl/features``), so the runs of a sweep share it. The size and path are printed.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from asymcl.atomic import atomic_write_text
from asymcl.data.augment import build_augmentation
from asymcl.data.cache_compute import compute_outputs as _compute
from asymcl.data.cache_compute import output_shape as _output_shape
from asymcl.data.cache_compute import render_views  # noqa: F401  (public here: asymcl.training.tta)
from asymcl.data.cache_engine import check_engine, fp32_runner
from asymcl.data.cache_store import (
    TEMP_PREFIX,
    check_disk_space,
    hold_in_use,
    make_entry_folder,
    record_extraction,
    shared_file_mode,
    write_info,
)
from asymcl.data.cache_store import borrow_clean as _borrow_clean
from asymcl.data.cache_store import find_clean as _find_clean
from asymcl.data.cache_store import gather as _gather
from asymcl.data.cache_store import read_shard_memo as _read_shard
from asymcl.data.cache_store import write_shard as _write_shard
from asymcl.data.datasets import ArrayImageDataset, FileImageDataset, ImageDataset, default_cache_dir
from asymcl.errors import DataError

_FORMAT = 1
# Images per shard file: an interrupted build loses at most this many (2048 images x 9 x 1280
# float16 pooled features: 47 MB).
SHARD_IMAGES = 2048


def default_feature_cache_dir() -> Path:
    return default_cache_dir() / "features"


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def image_fingerprints(dataset: ImageDataset) -> list[str]:
    """One hex id per image: what the image's pixels depend on (not its position in a split)."""
    if isinstance(dataset, FileImageDataset):
        # The file's bytes, not its path and modification time: a dataset copied to another disk or
        # machine (cp, a container layer, a cluster's scratch space) keeps its mtimes only by
        # luck, and a stale fingerprint meant an hour of re-extraction for unchanged images. Reading
        # the files costs about a second for ISIC's 120 MB (benchmarks/README.md).
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(_file_digest, dataset.paths))
    if isinstance(dataset, ArrayImageDataset):
        return [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in dataset.images]
    out = []
    for index in range(len(dataset)):
        image = dataset[index][0].numpy()
        out.append(hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest())
    return out


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha1(handle.read()).hexdigest()
    except OSError as exc:
        raise DataError(
            f"cannot read image file {path}: {exc.strerror or exc}; restore it, or point data.root at "
            "the folder that has it"
        ) from None


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``module``'s state dict."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes bf16 natively (CPUs with AVX512-BF16/AMX,
    CUDA with bf16), else ``fp32``."""
    if precision in ("bf16", "fp32"):
        return precision
    if precision != "auto":
        raise DataError(f"feature cache precision must be auto, bf16 or fp32, got {precision!r}")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


class FeatureCache:
    """Cached outputs for one dataset, in the dataset's order.

    ``clean``: (N, *S) float16; ``views``: (N, V, *S) float16, S the frozen part's output shape
    ((D,) for a frozen encoder, (C, h, w) for ``last:K``).
    """

    def __init__(self, path: Path, key: dict, clean: Tensor, views: Tensor):
        self.path, self.key, self.clean, self.views = path, key, clean, views

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.views.shape[1])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.clean.shape[1:])

    def clean_features(self, indices: Sequence[int] | Tensor) -> Tensor:
        """(B, *S) float32 clean features of the images at ``indices``."""
        return self.clean[torch.as_tensor(indices, dtype=torch.long)].float()

    def view_pairs(self, epoch: int, seed: int) -> Tensor:
        """(N, 2) int64: the two distinct views each image contributes in ``epoch``, a pure
        function of (seed, epoch), so a resumed run draws the same pairs."""
        if self.num_views < 2:
            raise DataError(f"stage 1 needs at least 2 cached views per image; this cache has {self.num_views}")
        rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
        first = rng.integers(0, self.num_views, size=len(self))
        second = (first + rng.integers(1, self.num_views, size=len(self))) % self.num_views
        return torch.from_numpy(np.stack([first, second], axis=1))

    def two_views(self, indices: Sequence[int] | Tensor, epoch: int, seed: int) -> tuple[Tensor, Tensor]:
        """Two different cached views (B, *S) float32 of each image at ``indices`` for ``epoch``."""
        rows = torch.as_tensor(indices, dtype=torch.long)
        pairs = self.view_pairs(epoch, seed)[rows]
        return self.views[rows, pairs[:, 0]].float(), self.views[rows, pairs[:, 1]].float()


def _progress(total: int, enabled: bool | None):
    """tqdm on a terminal; elsewhere no bar (build_feature_cache prints one summary line)."""
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="extracting features", file=sys.stderr)


def build_feature_cache(
    dataset: ImageDataset,
    frozen: nn.Module,
    *,
    augmentation: str,
    views: int,
    seed: int,
    cache_dir: str | Path | None = None,
    extra_key: dict | None = None,
    batch_size: int = 64,
    precision: str = "auto",
    view_precision: str | None = None,
    channels_last: bool = True,
    engine: str = "auto",
    device: str | torch.device | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = _log_stderr,
    report_reuse: bool = True,
    describe: dict | None = None,
) -> FeatureCache:
    """Load, or compute what is missing of, the cached outputs of ``frozen`` for ``dataset``.

    ``frozen``: the frozen part of an encoder (:func:`asymcl.models.apply_finetune`); it is run in
    eval mode on (B, C, H, W) images in [0, 1] as the dataset gives them. ``augmentation``: a preset
    of :mod:`asymcl.data.augment`, applied at the dataset's image size. ``views``: V >= 0 augmented
    views per image (stage 1 needs >= 2). ``seed``: the cache seed. ``batch_size``: images per
    forward pass. ``precision``: ``auto`` | ``bf16`` | ``fp32`` (part of the key) for the clean
    images; ``view_precision``: the same for the augmented views (``None``: as ``precision``). The
    training pipeline extracts the clean images in fp32, so that evaluation, ``predict`` and
    ``export`` (which run the frozen part in fp32) see the same features, and the views, which are
    most of the work and only ever training noise, in bf16 where the device has it (about 2.4x
    faster on these CPUs, benchmarks/README.md).
    ``channels_last``: feed the batch channels-last (not part of the key: same numbers up to
    rounding; faster on CPU, see benchmarks/README.md). ``engine``: what runs the fp32 passes on a
    CPU, ``auto`` | ``torch`` | ``onnxruntime`` (:mod:`asymcl.data.cache_engine`; not part of the
    key either: the stored float16 numbers agree up to their last bit). ``report_reuse=False``: log the entry's
    location and size only when something was extracted. ``describe``: words for ``info.json``
    (encoder, dataset; what ``asymcl cache list`` shows), not part of the key.

    Under torch.distributed (an initialised process group of N > 1 processes) every rank calls
    this with the same arguments; each extracts a disjoint part of the missing images into its
    own shards and all return the whole cache (:mod:`asymcl.data.cache_dist`).
    """
    if views < 0:
        raise DataError(f"feature cache views must be >= 0, got {views}")
    check_engine(engine)
    if len(dataset) == 0:
        raise DataError("feature cache: the dataset is empty")
    device = (
        torch.device(device)
        if device is not None
        else next((p.device for p in frozen.parameters()), torch.device("cpu"))
    )
    precision = resolve_precision(precision, device)
    view_precision = resolve_precision(view_precision or precision, device) if views else precision
    channels, height, width = dataset.image_shape
    augment = build_augmentation(augmentation, (height, width), channels)
    key = {
        "format": _FORMAT,
        "image_shape": [channels, height, width],
        "frozen": repr(frozen),
        "weights_sha256": weights_digest(frozen),
        "augmentation": augmentation,
        "augmentation_params": repr(augment),
        "views": int(views),
        "seed": int(seed),
        "precision": precision,
        "extra": extra_key or {},
    }
    if view_precision != precision:  # a key of its own only when it differs: older entries stay valid
        key["view_precision"] = view_precision
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
    root = Path(cache_dir) if cache_dir is not None else default_feature_cache_dir()
    directory = root / key_hash
    try:
        make_entry_folder(directory)
    except OSError as exc:
        raise DataError(
            f"cannot create the feature cache folder {directory}: {exc.strerror}; set data.cache_dir"
        ) from None
    fingerprints = image_fingerprints(dataset)
    if describe:
        write_info(directory, describe)
    job = _Job(
        dataset,
        frozen,
        augment,
        key,
        key_hash,
        directory,
        fingerprints,
        views,
        seed,
        batch_size,
        (precision, view_precision),
        channels_last,
        engine,
        device,
        progress,
        log,
    )
    from asymcl.data.cache_dist import build_distributed, world

    if world() is not None:  # torch.distributed: every rank extracts its part (cache_dist.py)
        cache = build_distributed(
            job, report_reuse, entry_lock=entry_lock, scan=_scan, extract=_extract_missing, finish=_finish
        )
    else:
        with entry_lock(directory, log):
            hold_in_use(directory)  # under the lock: a prune cannot come between our read and this
            found, missing = _scan(job)
            computed = _extract_missing(job, list(missing.items()), found)
            cache = _finish(job, found, computed, report_reuse)
    return cache


class _Job(NamedTuple):
    """One build's fixed inputs."""

    dataset: ImageDataset
    frozen: nn.Module
    augment: nn.Module
    key: dict
    key_hash: str
    directory: Path
    fingerprints: list
    views: int
    seed: int
    batch_size: int
    precisions: tuple
    channels_last: bool
    engine: str
    device: torch.device
    progress: bool | None
    log: Callable[[str], None]


@contextmanager
def entry_lock(directory: Path, log: Callable[[str], None] = _log_stderr):
    """The entry's build lock: one builder at a time; the second waits (and says so), then reuses."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(directory / ".lock"), mode=shared_file_mode(directory))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log(f"feature cache: waiting for another process that is building {directory}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _scan(job: _Job, clean_temporaries: bool = True) -> tuple[dict, dict]:
    """Under the entry lock: (found: fingerprint -> (arrays, row), missing: fingerprint -> index)."""
    directory, key, key_hash, log = job.directory, job.key, job.key_hash, job.log
    if clean_temporaries:
        for stale in directory.glob(f"{TEMP_PREFIX}*"):  # left by a killed writer: we hold the lock, no one writes
            stale.unlink(missing_ok=True)
    key_file = directory / "key.json"
    if not key_file.is_file():  # for the user: what this entry holds
        try:
            atomic_write_text(
                key_file,
                json.dumps(key, indent=1, sort_keys=True, default=str),
                prefix=TEMP_PREFIX,
                file_mode=shared_file_mode(directory),
            )
        except OSError as exc:
            raise DataError(f"cannot write {key_file}: {exc.strerror}; free space or set data.cache_dir") from None
    found: dict[str, tuple[dict, int]] = {}
    for shard in sorted(directory.glob("shard-*.npz")):
        arrays = _read_shard(shard, key_hash)
        if arrays is None:
            log(
                f"feature cache: {shard} is truncated, damaged or from another key; removing it, its images are recomputed"
            )
            shard.unlink(missing_ok=True)
            continue
        for row, fingerprint in enumerate(arrays["fingerprints"].tolist()):
            found.setdefault(fingerprint, (arrays, row))
    missing: dict[str, int] = {}
    for index, fingerprint in enumerate(job.fingerprints):
        if fingerprint not in found and fingerprint not in missing:
            missing[fingerprint] = index
    if missing and job.views == 0:
        borrowed = _borrow_clean(directory, key, key_hash, set(missing), log)
        if borrowed is not None:
            for row, fingerprint in enumerate(borrowed["fingerprints"].tolist()):
                found[fingerprint] = (borrowed, row)
                missing.pop(fingerprint, None)
    return found, missing


def _extract_missing(job: _Job, todo: list, found: dict, part: str = "") -> int:
    """Extract ``todo`` [(fingerprint, index)] into new shards, adding them to ``found``; returns
    how many. ``part``: how a rank names its share in the log (distributed builds)."""
    if not todo:
        return 0
    log, views = job.log, job.views
    example = job.dataset[int(todo[0][1])][0][None]
    shape = _output_shape(job.frozen, example, job.device)
    estimate = check_disk_space(job.directory, shape, len(todo), views)
    log(
        f"feature cache{part}: extracting {len(todo)} images x {1 + views} (clean + views) into {job.directory}, "
        f"about {estimate / 2**20:.0f} MB"
    )
    # The clean images' features do not depend on the views' seed or augmentation: another entry
    # of the same encoder and images (another seed's training split) may hold them already.
    known = _find_clean(job.directory, job.key, {fp for fp, _ in todo})[0] if views else {}
    if known:
        log(
            f"feature cache{part}: {len(known)} of these images' clean features taken from other entries of the "
            "same encoder and images; only their views are computed"
        )
    start = time.perf_counter()
    runner = fp32_runner(job.frozen, example, job.engine, job.device, log) if "fp32" in job.precisions else None
    bar = _progress(len(todo), job.progress)
    clean_p, view_p = job.precisions
    precision = clean_p if clean_p == view_p else f"clean {clean_p}, views {view_p}"
    done = 0
    try:
        # One shard per SHARD_IMAGES images: an interrupted build keeps what it finished.
        for offset in range(0, len(todo), SHARD_IMAGES):
            arrays = _compute(
                job.dataset,
                job.frozen,
                job.augment,
                todo[offset : offset + SHARD_IMAGES],
                views,
                job.seed,
                job.batch_size,
                job.precisions,
                job.channels_last,
                job.device,
                bar,
                known_clean=known,
                fp32_runner=runner,
            )
            _write_shard(job.directory, job.key_hash, arrays["fingerprints"].tolist(), arrays["clean"], arrays["views"])
            for row, fingerprint in enumerate(arrays["fingerprints"].tolist()):
                found[fingerprint] = (arrays, row)
            done = offset + len(arrays["fingerprints"])
            if bar is None and done < len(todo):
                # Without a bar (sweeps, logs) a long extraction still says how far it is.
                elapsed = time.perf_counter() - start
                log(
                    f"feature cache{part}: {done}/{len(todo)} images in {elapsed:.0f} s, "
                    f"about {elapsed * (len(todo) - done) / done:.0f} s left"
                )
    finally:
        if bar is not None:
            bar.close()
        # Also when interrupted: the shards written so far are kept, and so is what they cost.
        record_extraction(
            job.directory,
            {
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "images": done,
                "of": len(todo),
                "outputs_per_image": 1 + views,
                "clean_reused": len(known),
                "seconds": round(time.perf_counter() - start, 3),
                "precision": precision,
                "engine": "onnxruntime" if runner is not None else "torch",
                "device": str(job.device),
            },
        )
    seconds = time.perf_counter() - start
    rate = (len(todo) * (1 + views) - len(known)) / max(seconds, 1e-9)
    used = precision
    if runner is not None:
        used += ", fp32 on onnxruntime"
    log(
        f"feature cache{part}: extracted {len(todo)} images x {1 + views} (clean + views) in {seconds:.1f} s "
        f"({rate:.1f} images/s, {used})"
    )
    return len(todo)


def _finish(job: _Job, found: dict, computed_rows: int, report_reuse: bool, log: bool = True) -> FeatureCache:
    clean, stacked = _gather(found, job.fingerprints)
    if log and (computed_rows or report_reuse):
        size = sum(p.stat().st_size for p in job.directory.glob("shard-*.npz"))
        job.log(
            f"feature cache {job.directory}: {len(job.fingerprints)} images ({computed_rows} computed, "
            f"{len(set(job.fingerprints)) - computed_rows} reused), {size / 2**20:.1f} MB on disk"
        )
    return FeatureCache(job.directory, job.key, clean, stacked)

"""The dataset objects every source produces: images as uint8 arrays or as lazily decoded files.

Both kinds are :class:`ImageDataset`: a ``torch.utils.data.Dataset`` of ``(image, label)`` with
``image`` a float32 tensor of shape (C, H, W) in [0, 1] and ``label`` an int in
``range(len(classes))``. They hold only numpy arrays and strings, so they pickle cheaply into
DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from asymcl.atomic import atomic_open
from asymcl.errors import DataError

# How many unreadable files an error message names before it only counts the rest.
_FIRST_FEW = 5


def _name_first_few(items: Sequence[str]) -> str:
    shown = ", ".join(str(item) for item in items[:_FIRST_FEW])
    more = len(items) - _FIRST_FEW
    return shown + (f" (and {more} more)" if more > 0 else "")


def normalize_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``None`` (native size), an int (square) or ``(height, width)`` -> ``(height, width)``."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise DataError(f"image_size={image_size!r} is not valid: give an int (square) or (height, width)")
    if min(size) < 1:
        raise DataError(f"image_size={image_size!r} must be positive")
    return size


class ImageDataset(Dataset):
    """Base class: labelled images with ``targets``, ``classes``, ``num_channels``, ``image_shape``
    and ``ids``.

    ``ids`` (N,) str names each image in its source, so that a prediction can be traced back to
    it: the ISIC image id (``ISIC_0034524``), the file path as the source lists it (folder: relative
    to the root; CSV: as written in the CSV), the row index in the source's array (digits,
    Fashion-MNIST: in its own train or test file; npz: in the file). Subsets and splits keep them.

    Subclasses implement :meth:`__getitem__`, :meth:`load_all` and :meth:`_take`.
    """

    targets: np.ndarray  # (N,) int64, values in range(len(classes))
    classes: list[str]
    num_channels: int  # 1 (grey) or 3 (RGB): the native channel count of the source
    ids: np.ndarray  # (N,) str, see the class docstring

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image this dataset returns."""
        raise NotImplementedError

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as a uint8 tensor (N, C, H, W) and the labels as an int64 tensor (N,)."""
        raise NotImplementedError

    def _take(self, indices: np.ndarray) -> ImageDataset:
        raise NotImplementedError

    def class_counts(self) -> np.ndarray:
        """(K,) int64: how many images of each class."""
        return np.bincount(self.targets, minlength=len(self.classes)).astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """A new dataset of the images at ``indices`` (in that order), same classes."""
        indices = np.asarray(indices, dtype=np.int64)
        out = self._take(indices)
        out.targets = self.targets[indices].copy()
        out.classes = list(self.classes)
        out.ids = self.ids[indices].copy()
        return out

    def select_classes(self, class_ids: Sequence[int]) -> ImageDataset:
        """Keep only ``class_ids`` and relabel them ``0..K-1`` in the given order."""
        class_ids = [int(c) for c in class_ids]
        keep = np.flatnonzero(np.isin(self.targets, class_ids))
        out = self.subset(keep)
        relabel = np.full(len(self.classes), -1, dtype=np.int64)
        relabel[class_ids] = np.arange(len(class_ids))
        out.targets = relabel[out.targets]
        out.classes = [self.classes[c] for c in class_ids]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, classes={len(self.classes)}, image_shape={self.image_shape})"


def _writable(array: np.ndarray) -> np.ndarray:
    # Arrays read from an .npz (or a read-only memory map) stay read-only through a view, and
    # torch.from_numpy warns about every such array; a copy costs only when there is no copy yet.
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


class ArrayImageDataset(ImageDataset):
    """Images held in memory as a uint8 array (N, H, W, C)."""

    def __init__(
        self,
        images: np.ndarray,
        targets: np.ndarray,
        classes: Sequence[str],
        ids: Sequence[str] | np.ndarray | None = None,
    ):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.num_channels = int(images.shape[3])
        self.ids = _as_ids(ids, len(self.targets))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        _, height, width, channels = self.images.shape
        return (int(channels), int(height), int(width))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(_writable(self.images[index]))
        return image.permute(2, 0, 1).float().div_(255.0), int(self.targets[index])

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(_writable(self.images.transpose(0, 3, 1, 2)))
        return images, torch.from_numpy(self.targets.copy())

    def _take(self, indices: np.ndarray) -> ArrayImageDataset:
        return ArrayImageDataset(self.images[indices], self.targets[indices], self.classes, self.ids[indices])


def _as_ids(ids: Sequence[str] | np.ndarray | None, n: int) -> np.ndarray:
    """(n,) str ids; ``None``: the row indices "0".."n-1"."""
    out = np.arange(n).astype(str) if ids is None else np.asarray([str(i) for i in ids], dtype=str)
    if out.shape != (n,):
        raise ValueError(f"ids must name each of the {n} images, got shape {out.shape}")
    return out


def _physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(n: int, size_hw: tuple[int, int], channels: int, hint: str = "") -> None:
    """DataError when n uint8 images of ``size_hw`` would take more than half the machine's RAM."""
    need = n * size_hw[0] * size_hw[1] * channels
    memory = _physical_memory_bytes()
    if memory is not None and need > memory // 2:
        raise DataError(
            f"image_size {size_hw[0]}x{size_hw[1]} for {n} images held in memory needs "
            f"{need / 2**30:.1f} GiB, more than half of this machine's {memory / 2**30:.1f} GiB; "
            f"choose a smaller image_size{hint}"
        )


# Images resized per call to interpolate: bounds the float32 intermediates (a few hundred MB at
# 224 x 224 RGB) instead of converting the whole array at once.
_RESIZE_CHUNK = 1024


def resize_array(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """Resize uint8 (N, H, W, C) images to ``size`` (antialiased bilinear), or return them as is."""
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    n, _, _, channels = images.shape
    check_fits_in_memory(n, size, channels)
    out = np.empty((n, size[0], size[1], channels), dtype=np.uint8)
    for start in range(0, n, _RESIZE_CHUNK):
        chunk = torch.from_numpy(images[start : start + _RESIZE_CHUNK]).permute(0, 3, 1, 2).float()
        resized = torch.nn.functional.interpolate(
            chunk, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def decode_image(path: str, num_channels: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Decode one image file to uint8 (H, W, C) with ``num_channels`` channels at ``size_hw``.

    JPEGs that are much larger than ``size_hw`` are decoded at a reduced DCT scale first (PIL's
    draft mode), which makes e.g. 224 -> 28 several times faster; then an antialiased resize.
    """
    from PIL import Image, UnidentifiedImageError

    mode = "L" if num_channels == 1 else "RGB"
    height, width = size_hw
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(mode, (width, height))
            image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.array(image, dtype=np.uint8)  # a writable copy
    except FileNotFoundError as exc:
        raise DataError(f"image file {path} is missing") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"image file {path} cannot be decoded ({exc}); replace or remove it") from exc
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def default_cache_dir() -> Path:
    env = os.environ.get("ASYMCL_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "asymcl"


class FileImageDataset(ImageDataset):
    """Images as files decoded on access (JPEG decoding is slow: only what is asked is decoded).

    ``load_all`` decodes every file once (in a thread pool: PIL releases the GIL while decoding)
    and, with ``cache=True``, keeps the decoded uint8 array under ``~/.cache/asymcl/decoded``
    (or ``$ASYMCL_CACHE_DIR``), keyed by the file list (paths, sizes, modification times), the
    image size and the channel count, so a changed file is never served stale. The dataset root
    is never written to.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | np.ndarray,
        targets: np.ndarray,
        classes: Sequence[str],
        num_channels: int,
        size_hw: tuple[int, int],
        cache: bool = True,
        ids: Sequence[str] | np.ndarray | None = None,
    ):
        self.paths = np.asarray([str(p) for p in paths], dtype=str)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes)
        self.num_channels = int(num_channels)
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.cache = bool(cache)
        # Default: the path as given (a caller that knows a shorter, stable name passes it).
        self.ids = self.paths.copy() if ids is None else _as_ids(ids, len(self.targets))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.num_channels, *self.size_hw)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = decode_image(str(self.paths[index]), self.num_channels, self.size_hw)
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        return image, int(self.targets[index])

    def _take(self, indices: np.ndarray) -> FileImageDataset:
        return FileImageDataset(
            self.paths[indices],
            self.targets[indices],
            self.classes,
            self.num_channels,
            self.size_hw,
            self.cache,
            self.ids[indices],
        )

    def _cache_path(self) -> Path:
        digest = hashlib.sha256()
        digest.update(json.dumps([1, self.num_channels, list(self.size_hw)]).encode())
        for path in self.paths:
            stat = os.stat(path)
            digest.update(f"\n{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        return default_cache_dir() / "decoded" / f"{digest.hexdigest()[:32]}.npy"

    def _decode_all(self) -> np.ndarray:
        check_fits_in_memory(len(self), self.size_hw, self.num_channels, " (or decode per batch: data.in_memory false)")
        out = np.empty((len(self), *self.size_hw, self.num_channels), dtype=np.uint8)
        failures: list[str] = []

        def work(i: int) -> None:
            try:
                out[i] = decode_image(str(self.paths[i]), self.num_channels, self.size_hw)
            except DataError:
                failures.append(str(self.paths[i]))

        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(len(self))))
        if failures:
            failures.sort()
            raise DataError(
                f"{len(failures)} of {len(self)} images are missing or cannot be decoded: {_name_first_few(failures)}"
            )
        return out

    def load_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = None
        cache_path = None
        if self.cache and len(self):
            try:
                cache_path = self._cache_path()
            except OSError:
                cache_path = None  # a file vanished: _decode_all names it
        if cache_path is not None and cache_path.is_file():
            try:
                cached = np.load(cache_path, allow_pickle=False)
                if cached.shape == (len(self), *self.size_hw, self.num_channels):
                    images = cached
            except (OSError, ValueError):
                images = None  # a damaged cache entry is rebuilt below
        if images is None:
            images = self._decode_all()
            if cache_path is not None:
                _save_npy_atomic(cache_path, images)
        tensor = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        return tensor, torch.from_numpy(self.targets.copy())


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Best effort: a cache that cannot be written only costs a re-decode next time."""
    try:
        with atomic_open(path, "wb", suffix=".part") as handle:
            np.save(handle, array, allow_pickle=False)
    except OSError:
        pass


def check_files_exist(paths: Sequence[str], what: str) -> None:
    """DataError naming how many of ``paths`` are missing and the first few of them."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(paths)} images listed in {what} are missing: {_name_first_few(missing)}"
        )


# Successful probes by (path, size, mtime) of every file: a sweep loads the same images for each
# of its runs in one process, and probing ISIC's 7,496 files takes about 1.5 s per run; a file
# that changes (size or mtime) is probed again. Bounded: a few datasets at a time.
_PROBED: dict[tuple, tuple[int, tuple[int, int]]] = {}
_PROBED_MAX = 8


def probe_images(paths: Sequence[str], what: str) -> tuple[int, tuple[int, int]]:
    """Check every file once: (channel count, (H, W) of the first image).

    Remembered within the process while no file's size or modification time changes.

    Catches files that are not images and files whose data is cut off or damaged before any
    training starts, so a bad file is named up front rather than in the middle of an epoch. A
    header alone does not show truncation, so each JPEG is decoded in full at PIL's smallest DCT
    scale (1/8: every entropy-coded byte is still read, little IDCT work; about 0.3 ms for a
    224 x 224 image); other formats are decoded in full. The channel count is 1 when every
    image is grey, else 3.
    """
    try:
        key = tuple((str(p), st.st_size, st.st_mtime_ns) for p in paths for st in (os.stat(p),))
    except OSError:  # a missing file: the probe below names it
        key = None
    if key is not None and key in _PROBED:
        return _PROBED[key]
    result = _probe_images(paths, what)
    if key is not None:
        if len(_PROBED) >= _PROBED_MAX:
            _PROBED.pop(next(iter(_PROBED)))
        _PROBED[key] = result
    return result


def _probe_images(paths: Sequence[str], what: str) -> tuple[int, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    bad: list[str] = []
    grey = True
    first_size: tuple[int, int] | None = None

    def header(path: str):
        try:
            with Image.open(path) as image:
                mode, size = image.mode, image.size
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
                return mode, size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            return None

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(header, paths))
    for path, result in zip(paths, results, strict=True):
        if result is None:
            bad.append(str(path))
            continue
        mode, (width, height) = result
        if first_size is None:
            first_size = (height, width)
        if mode not in ("L", "1", "I", "I;16", "F", "LA", "La"):
            grey = False
    if bad:
        raise DataError(
            f"{len(bad)} of {len(paths)} images listed in {what} are not readable images: "
            f"{_name_first_few(bad)} (not an image, or its data is truncated or damaged); "
            "replace or remove them"
        )
    if first_size is None:
        raise DataError(f"{what} lists no images")
    return (1 if grey else 3), first_size

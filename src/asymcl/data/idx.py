"""Fashion-MNIST from its official IDX files (gzipped or not).

IDX layout (big-endian): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions d, then d uint32 sizes, then the data. Every file is checked against that layout, so a
truncated download or a wrong file is an error naming the file rather than garbage images.
"""

from __future__ import annotations

import functools
import gzip
import zlib
from pathlib import Path

import numpy as np

from asymcl.errors import DataError

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_REFETCH = "get the official files again with: asymcl data download fashion-mnist --root {root}"


def read_idx(path: str | Path, expected_ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` or raw) with ``expected_ndim`` dimensions (a read-only
    array)."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        return _read_idx(path, expected_ndim)  # its own error message
    return _read_idx_kept(str(path), info.st_ino, info.st_size, info.st_mtime_ns, expected_ndim)


# A sweep worker runs one Fashion-MNIST run after another; un-gzipping the 47 MB of training images
# again was about 0.4 s of each (benchmarks/claim_run_speed.py). The file's identity is in the key,
# so a replaced file is read again; the array is read-only (np.frombuffer of bytes) and shared.
@functools.lru_cache(maxsize=4)
def _read_idx_kept(path: str, inode: int, size: int, mtime_ns: int, expected_ndim: int) -> np.ndarray:
    return _read_idx(Path(path), expected_ndim)


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} is missing") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(
            f"IDX file {path} is not a readable gzip file ({exc}); {_REFETCH.format(root=path.parent)}"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(
            f"IDX file {path} has a wrong magic number (first bytes {data[:4].hex() or 'none'}): "
            f"not an IDX file; {_REFETCH.format(root=path.parent)}"
        )
    type_code, ndim = data[2], data[3]
    if type_code != 0x08:
        raise DataError(f"IDX file {path} holds type 0x{type_code:02x}; only unsigned bytes (0x08) are supported")
    if ndim != expected_ndim:
        raise DataError(f"IDX file {path} has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} bytes)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {state}: {len(data)} bytes, dimensions {dims} need {expected}; "
            + _REFETCH.format(root=path.parent)
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def check_fashion_mnist_folder(root: Path) -> None:
    """A :class:`DataError` naming every official file (``.gz`` or not) that ``root`` lacks."""
    missing = []
    for stem in (stem for pair in FASHION_MNIST_FILES.values() for stem in pair):
        try:
            find_idx_file(root, stem)
        except DataError:
            missing.append(stem)
    if missing:
        raise DataError(f"{', '.join(missing)} (.gz or not) {'is' if len(missing) == 1 else 'are'} not there")


def find_idx_file(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}.gz (or {stem}) is missing in {root}; "
        f"get the four files with: asymcl data download fashion-mnist --root {root}"
    )


def load_fashion_mnist_arrays(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the ``train`` or ``test`` split."""
    root = Path(root)
    if not root.is_dir():
        state = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"Fashion-MNIST folder {root} {state}; --root takes the folder of the four IDX files")
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    image_path, label_path = find_idx_file(root, image_stem), find_idx_file(root, label_stem)
    images = read_idx(image_path, 3)
    labels = read_idx(label_path, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{image_path} has {images.shape[0]} images but {label_path} has {labels.shape[0]} "
            f"labels: they are not a matching pair; {_REFETCH.format(root=root)}"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{label_path} holds label {labels.max()}; Fashion-MNIST labels are 0..9")
    return images, labels
